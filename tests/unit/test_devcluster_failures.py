"""`perllm dev cluster up` on bad input: one line naming the option, before any component
starts (a typo'd --scenario used to start the whole control plane, then fail with a
traceback)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import perllm.devcluster.launch as launch_mod
from perllm.devcluster.cli import app


@pytest.fixture(autouse=True)
def nothing_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    def start(*_a: object, **_k: object) -> None:
        raise AssertionError("a component started although the input was refused")

    monkeypatch.setattr(launch_mod, "start", start)


def _up(*argv: str) -> tuple[int, str]:
    r = CliRunner().invoke(app, ["cluster", "up", *argv])
    assert "Traceback" not in r.output and not isinstance(r.exception, AssertionError), r.output
    return r.exit_code, r.output


def test_an_unknown_scenario_is_refused_before_the_control_plane_starts(tmp_path: Path) -> None:
    code, out = _up("--run-dir", str(tmp_path / "rd"), "--scenario", "no-such-scenario")
    assert code == 2, out
    assert "no-such-scenario" in out


def test_a_run_dir_that_cannot_be_made_is_named(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for rd in (a_file, a_file / "cluster"):
        code, out = _up("--run-dir", str(rd), "--scenario", "")
        assert code == 2, out
        assert "--run-dir" in out


def test_a_missing_attach_kubeconfig_is_named(tmp_path: Path) -> None:
    code, out = _up("--run-dir", str(tmp_path / "rd"), "--attach", str(tmp_path / "nope"))
    assert code == 2, out
    assert "--attach" in out


def test_a_second_up_while_one_starts_from_the_same_run_dir_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two `cluster up` at once on one run directory: the second would read the first's
    half-written state.json as a half-dead cluster and stop its processes; it is refused
    while the first holds the run directory's start lock, and proceeds once it is free."""
    import fcntl
    import os

    from perllm.devcluster.binaries import Binaries
    from perllm.devcluster.cluster import Cluster, ClusterConfig
    from perllm.devcluster.process import StartError

    # (this test needs no binaries built: the stand-in start refuses before any is run)
    monkeypatch.setattr(Binaries, "require", lambda self, **_k: self)

    rd = tmp_path / "rd"
    rd.mkdir()
    fd = os.open(rd / ".up.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a first `up` is starting
    try:
        with pytest.raises(StartError, match="another cluster is starting"):
            Cluster(ClusterConfig(run_dir=rd, scenario=None)).up()
    finally:
        os.close(fd)
    # the lock free again: this `up` goes on (to the stand-in start, refused by the fixture)
    with pytest.raises(AssertionError, match="a component started"):
        Cluster(ClusterConfig(run_dir=rd, scenario=None)).up()
