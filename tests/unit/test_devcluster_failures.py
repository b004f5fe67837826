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
