"""`perllm dev cluster up` on bad input: one line naming the option, before any component
starts (a typo'd --scenario used to start the whole control plane, then fail with a
traceback)."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from typer.testing import CliRunner

import perllm.devcluster.cluster as cluster_mod
import perllm.devcluster.launch as launch_mod
from perllm.devcluster.cli import app
from perllm.devcluster.process import Proc


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


def test_an_empty_run_dir_is_refused_not_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--run-dir ""` (an unset variable) was Path(""): `up` cleared the current folder's
    logs/, etcd/, pki/, prometheus/ and ran the cluster there."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "mine.txt").write_text("keep")
    code, out = _up("--run-dir", "", "--scenario", "")
    assert code == 2, out
    assert "--run-dir" in out and "must not be empty" in out
    assert (tmp_path / "logs" / "mine.txt").read_text() == "keep"
    r = CliRunner().invoke(app, ["cluster", "down", "--run-dir", " "])
    assert r.exit_code == 2 and "--run-dir" in r.output, r.output


def test_a_relative_run_dir_records_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`up --run-dir rd` printed `export KUBECONFIG=rd/kubeconfig`, which stops working
    after a `cd`."""
    from perllm.devcluster.cluster import Cluster, ClusterConfig

    monkeypatch.chdir(tmp_path)
    c = Cluster(ClusterConfig(run_dir=Path("rd"), scenario=None))
    (tmp_path / "rd").mkdir()
    state = c._control_plane_state()
    for p in (state.run_dir, state.kubeconfig, state.viewer_kubeconfig):
        assert p is not None and Path(p).is_absolute(), p
    assert Path(state.kubeconfig) == tmp_path / "rd" / "kubeconfig"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{}\n", "no current-context"),
        ("- a\n", "not a kubeconfig"),
        ("current-context: x\ncontexts: []\n", "no context 'x'"),
        (
            "current-context: x\ncontexts: [{name: x, context: {cluster: c}}]\n"
            "clusters: [{name: c, cluster: {}}]\n",
            "has no server URL",
        ),
        ("key: [unclosed\n", "cannot read it"),
    ],
)
def test_an_attach_file_that_is_no_kubeconfig_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, reason: str
) -> None:
    """`--attach` of a file that is not a kubeconfig ended in a KeyError traceback once
    the run directory was cleared."""
    from perllm.devcluster.binaries import Binaries

    monkeypatch.setattr(Binaries, "require", lambda self, **_k: self)
    kc = tmp_path / "kc.yaml"
    kc.write_text(text)
    code, out = _up("--run-dir", str(tmp_path / "rd"), "--attach", str(kc))
    assert code == 2, out
    assert "--attach" in out and str(kc) in out and reason in out, out
    assert not (tmp_path / "rd").exists()


def test_a_run_dir_that_cannot_be_laid_out_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An OSError while laying out the run directory (here a file where logs/ goes; a
    full disk alike) was a FileExistsError traceback."""
    from perllm.devcluster.binaries import Binaries

    monkeypatch.setattr(Binaries, "require", lambda self, **_k: self)
    rd = tmp_path / "rd"
    rd.mkdir()
    (rd / ".up.lock").write_text("")  # (a run directory an `up` used before)
    (rd / "logs").write_text("")
    r = CliRunner().invoke(app, ["cluster", "up", "--run-dir", str(rd), "--scenario", ""])
    assert r.exit_code == 1, r.output
    assert not isinstance(r.exception, (AssertionError, OSError)), r.exception
    assert f"--run-dir {rd}" in r.output and "File exists" in r.output, r.output


def test_a_folder_that_is_no_run_dir_is_refused_before_anything_is_cleared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--run-dir` naming a project folder: `up` deleted its etcd/, pki/, prometheus/ and
    logs/ in silence. A folder with files and nothing an `up` leaves is refused (exit 2);
    an empty one, or one an `up` used, is taken."""
    from perllm.devcluster.binaries import Binaries

    monkeypatch.setattr(Binaries, "require", lambda self, **_k: self)
    rd = tmp_path / "project"
    (rd / "logs").mkdir(parents=True)
    (rd / "logs" / "keep.txt").write_text("mine")
    (rd / "README.md").write_text("mine")
    r = CliRunner().invoke(app, ["cluster", "up", "--run-dir", str(rd), "--scenario", ""])
    assert r.exit_code == 2, r.output
    assert f"--run-dir {rd}: a folder with other files and no cluster run in it" in r.output
    assert (rd / "logs" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "url", ["127.0.0.1:8888/scheduler", "ftp://h/x", "https://", "", "https://bad..host:8888/x"]
)
def test_an_extender_url_that_is_no_http_url_is_refused(tmp_path: Path, url: str) -> None:
    """It went unchecked into perllm-scheduler's config as the extender's urlPrefix, so
    the cluster came up with an extender no call could reach."""
    code, out = _up("--run-dir", str(tmp_path / "rd"), "--scenario", "", "--extender-url", url)
    assert code == 2, out
    assert "--extender-url" in out and "http:// or https://" in out


def _ctrl_c_at_etcd(monkeypatch: pytest.MonkeyPatch) -> list[Proc]:
    """`cluster up` starting `sleep 60` for each component and interrupted (Ctrl-C) while
    waiting for etcd's /health; returns the processes it started."""
    from perllm.devcluster.binaries import Binaries
    from perllm.devcluster.process import start

    monkeypatch.setattr(Binaries, "require", lambda self, **_k: self)
    started: list[Proc] = []

    def start_sleep(name: str, argv: list[str], log: Path, **kw: object) -> Proc:
        started.append(start(name, ["sleep", "60"], log))
        return started[-1]

    def ctrl_c(*_a: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(launch_mod, "start", start_sleep)
    monkeypatch.setattr(cluster_mod, "wait_until", ctrl_c)
    return started


def test_ctrl_c_while_starting_stops_what_started_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C during `up` printed nothing at all (exit 130 with no word)."""
    started = _ctrl_c_at_etcd(monkeypatch)
    rd = tmp_path / "rd"
    r = CliRunner().invoke(app, ["cluster", "up", "--run-dir", str(rd), "--scenario", ""])
    assert r.exit_code == 130, r.output
    assert "interrupted: every component started was stopped" in r.output
    assert started and not started[0].alive()
    assert not (rd / "state.json").exists()


def test_sigterm_while_starting_stops_what_started_as_ctrl_c_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM during `up` (`timeout`, a CI cancel) ended Python at once and left the
    components it had started running; it now takes Ctrl-C's path."""
    import signal

    from perllm.devcluster.binaries import Binaries
    from perllm.devcluster.process import start

    class Killed(Exception):
        pass

    def killed(*_a: object) -> None:  # what the test sees if SIGTERM is not handled
        raise Killed

    monkeypatch.setattr(Binaries, "require", lambda self, **_k: self)
    started: list[Proc] = []

    def start_sleep(name: str, argv: list[str], log: Path, **kw: object) -> Proc:
        started.append(start(name, ["sleep", "60"], log))
        return started[-1]

    def sigterm(*_a: object) -> None:  # while waiting for etcd's /health
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    monkeypatch.setattr(launch_mod, "start", start_sleep)
    monkeypatch.setattr(cluster_mod, "wait_until", sigterm)
    old = signal.signal(signal.SIGTERM, killed)
    try:
        rd = tmp_path / "rd"
        r = CliRunner().invoke(app, ["cluster", "up", "--run-dir", str(rd), "--scenario", ""])
        assert signal.getsignal(signal.SIGTERM) is killed  # restored after `up`
    finally:
        signal.signal(signal.SIGTERM, old)
    assert r.exit_code == 130, (r.output, r.exception)
    assert "interrupted: every component started was stopped" in r.output
    assert started and not started[0].alive()


def test_status_and_down_say_which_component_had_died(tmp_path: Path) -> None:
    """`down` counted a component that had already exited as stopped; `status` said DEAD
    without where to look."""
    from perllm.devcluster.process import start
    from perllm.devcluster.state import State

    rd = tmp_path / "rd"
    live = start("etcd", ["sleep", "60"], rd / "logs" / "etcd.log")
    dead = start("kwok", ["true"], rd / "logs" / "kwok.log")
    try:
        while dead.alive():
            time.sleep(0.05)
            with contextlib.suppress(ChildProcessError):  # (subprocess may reap it first)
                os.waitpid(dead.pid, os.WNOHANG)
        state = State(
            run_dir=str(rd),
            kubeconfig=str(rd / "kubeconfig"),
            kubectl="kubectl",
            api_server="https://127.0.0.1:1",
            external=False,
            processes=[asdict(live), asdict(dead)],
            ports={},
        )
        state.save(rd)
        r = CliRunner().invoke(app, ["cluster", "status", "--run-dir", str(rd)])
        assert r.exit_code == 1
        assert f"DEAD (log {rd / 'logs' / 'kwok.log'})" in r.output, r.output
        r = CliRunner().invoke(app, ["cluster", "down", "--run-dir", str(rd)])
        assert r.exit_code == 0, r.output
        assert "stopped 1 processes (kwok had already exited)" in r.output, r.output
        assert not live.alive()
    finally:
        live.stop()


def test_missing_binaries_name_the_build_of_just_those(tmp_path: Path) -> None:
    """The message said `tools/build-binaries.sh (or: make binaries)`, which also builds
    Helm, llama.cpp and a second Prometheus, minutes the control plane does not need."""
    from perllm.devcluster.binaries import Binaries, BinariesMissing

    k8s = tmp_path / "k8s"
    b = Binaries(
        etcd=tmp_path / "etcd",
        kube_apiserver=k8s,
        kube_controller_manager=k8s,
        kube_scheduler=k8s,
        kubectl=k8s,
        kwok=tmp_path / "kwok",
        helm=tmp_path / "helm",
        prometheus=None,
    )
    with pytest.raises(BinariesMissing) as e:
        b.require()
    assert "tools/build-binaries.sh etcd k8s kwok prometheus " in str(e.value)
    assert str(tmp_path / "etcd") in str(e.value)
    for p in (tmp_path / "etcd", tmp_path / "kwok"):
        p.write_text("")
        p.chmod(0o755)
    with pytest.raises(BinariesMissing, match=r"build-binaries\.sh k8s  \("):
        b.require(prometheus=False)


def _recorded(rd: Path, *procs: Proc, ready: bool = True) -> None:
    from perllm.devcluster.state import State

    State(
        run_dir=str(rd),
        kubeconfig=str(rd / "kubeconfig"),
        kubectl="/bin/kubectl",
        api_server="https://127.0.0.1:1",
        external=False,
        processes=[asdict(p) for p in procs],
        ports={},
        ready=ready,
    ).save(rd)


def _exited(name: str, rd: Path) -> Proc:
    from perllm.devcluster.process import start

    p = start(name, ["true"], rd / "logs" / f"{name}.log")
    while p.alive():
        time.sleep(0.05)
        with contextlib.suppress(ChildProcessError):  # (subprocess may reap it first)
            os.waitpid(p.pid, os.WNOHANG)
    return p


def test_env_refuses_a_cluster_with_a_dead_component(tmp_path: Path) -> None:
    """`eval "$(cluster env)"` exported a dead API server's kubeconfig with exit 0."""
    from perllm.devcluster.process import start

    rd = tmp_path / "rd"
    live = start("etcd", ["sleep", "60"], rd / "logs" / "etcd.log")
    try:
        _recorded(rd, live)
        r = CliRunner().invoke(app, ["cluster", "env", "--run-dir", str(rd)])
        assert r.exit_code == 0 and f"export KUBECONFIG={rd / 'kubeconfig'}" in r.output
        _recorded(rd, live, _exited("kube-apiserver", rd))
        r = CliRunner().invoke(app, ["cluster", "env", "--run-dir", str(rd)])
        assert r.exit_code == 1, r.output
        assert "export" not in r.stdout
        assert (
            f"error: the cluster in {rd} is not complete: not running: kube-apiserver (log "
            f"{rd / 'logs' / 'kube-apiserver.log'}); restart it: perllm dev cluster down"
        ) in r.output
    finally:
        live.stop()


_STOP = Proc.stop


def _interrupt_stop(monkeypatch: pytest.MonkeyPatch, after: int) -> None:
    """Ctrl-C arrives while `Proc.stop` stops the process after the first `after`."""
    calls = []

    def interrupted(self: Proc, timeout: float = 10.0) -> None:
        calls.append(self.name)
        if len(calls) > after:
            raise KeyboardInterrupt
        _STOP(self, timeout)

    monkeypatch.setattr(Proc, "stop", interrupted)


def test_ctrl_c_during_down_names_what_still_runs_and_how_to_finish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C during `down` was a bare 'Aborted!' with processes left running."""
    from perllm.devcluster.process import start

    rd = tmp_path / "rd"
    etcd = start("etcd", ["sleep", "60"], rd / "logs" / "etcd.log")
    kwok = start("kwok", ["sleep", "60"], rd / "logs" / "kwok.log")
    try:
        _recorded(rd, etcd, kwok)
        _interrupt_stop(monkeypatch, after=1)  # (newest first: kwok stopped, then etcd)
        r = CliRunner().invoke(app, ["cluster", "down", "--run-dir", str(rd)])
        assert r.exit_code == 130, r.output
        assert (
            f"interrupted while stopping: etcd still runs; finish with: perllm dev cluster "
            f"down --run-dir {rd}"
        ) in r.output
        assert etcd.alive() and not kwok.alive()
        monkeypatch.undo()
        r = CliRunner().invoke(app, ["cluster", "down", "--run-dir", str(rd)])
        assert r.exit_code == 0 and not etcd.alive(), r.output
    finally:
        etcd.stop()
        kwok.stop()


def test_a_second_ctrl_c_while_up_cleans_up_says_what_still_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C during `up`, then again while it stopped what had started: it said 'every
    component started was stopped' with etcd still running."""
    started = _ctrl_c_at_etcd(monkeypatch)
    _interrupt_stop(monkeypatch, after=0)
    rd = tmp_path / "rd"
    try:
        r = CliRunner().invoke(app, ["cluster", "up", "--run-dir", str(rd), "--scenario", ""])
        assert r.exit_code == 130, r.output
        assert (
            f"interrupted while stopping: etcd still runs; finish with: perllm dev cluster "
            f"down --run-dir {rd}"
        ) in r.output
        assert "every component started was stopped" not in r.output
        assert started and started[0].alive()
        monkeypatch.setattr(Proc, "stop", _STOP)  # (no more Ctrl-C)
        r = CliRunner().invoke(app, ["cluster", "down", "--run-dir", str(rd)])
        assert r.exit_code == 0 and not started[0].alive(), r.output
    finally:
        for p in started:
            _STOP(p)


def test_a_cluster_still_starting_is_not_reported_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second `up` while the first was starting (etcd and the API server up, no nodes
    yet) said "cluster already running" with exit 0 and printed its KUBECONFIG, and
    `status` and `env` took it for a complete cluster: a script's `up && kubectl ...`
    went on before the nodes existed."""
    import fcntl

    from perllm.devcluster.binaries import Binaries
    from perllm.devcluster.process import start

    monkeypatch.setattr(Binaries, "require", lambda self, **_k: self)
    rd = tmp_path / "rd"
    etcd = start("etcd", ["sleep", "60"], rd / "logs" / "etcd.log")
    fd = os.open(rd / ".up.lock", os.O_RDWR | os.O_CREAT)
    try:
        _recorded(rd, etcd, ready=False)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the first `up`, still starting
        code, out = _up("--run-dir", str(rd), "--scenario", "")
        assert code == 1, out
        assert "already running" not in out and "KUBECONFIG" not in out, out
        assert f"another cluster is starting from {rd}" in out, out
        for cmd in ("status", "env"):
            r = CliRunner().invoke(app, ["cluster", cmd, "--run-dir", str(rd)])
            assert r.exit_code == 1, (cmd, r.output)
            assert "export" not in r.stdout, r.output
            assert f"the cluster in {rd} is not complete: a `cluster up` is still starting it" in (
                r.output
            ), (cmd, r.output)
        assert etcd.alive()  # the first `up`'s processes are left alone
    finally:
        os.close(fd)
        etcd.stop()


def test_the_survivors_of_a_killed_up_are_no_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An `up` killed half-way (kill -9, a closed terminal) left its processes running:
    the next `up` said "cluster already running" (exit 0) for a cluster with no nodes,
    and `status` said every component runs."""
    from perllm.devcluster.binaries import Binaries
    from perllm.devcluster.process import start

    monkeypatch.setattr(Binaries, "require", lambda self, **_k: self)
    rd = tmp_path / "rd"
    etcd = start("etcd", ["sleep", "60"], rd / "logs" / "etcd.log")
    try:
        _recorded(rd, etcd, ready=False)
        r = CliRunner().invoke(app, ["cluster", "status", "--run-dir", str(rd)])
        assert r.exit_code == 1, r.output
        assert "its `cluster up` stopped before it finished (killed?); restart it" in r.output
        # `up` stops the survivors and starts afresh (here: the stand-in start refuses)
        r = CliRunner().invoke(app, ["cluster", "up", "--run-dir", str(rd), "--scenario", ""])
        assert "already running" not in r.output, r.output
        assert isinstance(r.exception, AssertionError), r.output
        assert not etcd.alive()
    finally:
        etcd.stop()


def _missing(self: object, **_k: object) -> object:
    from perllm.devcluster.binaries import BinariesMissing

    raise BinariesMissing("kwok missing: build it with tools/build-binaries.sh kwok")


def test_a_refused_up_leaves_the_run_dir_as_it_found_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused before anything started (binaries missing, a bad scenario), `up` left an
    empty run directory holding only its start lock `.up.lock`: it removes what it made,
    and only that."""
    from perllm.devcluster.binaries import Binaries

    monkeypatch.setattr(Binaries, "require", _missing)
    new = tmp_path / "a" / "b" / "rd"  # made by this `up`, parents included
    code, out = _up("--run-dir", str(new), "--scenario", "")
    assert code == 1 and "kwok missing" in out, out
    assert not (tmp_path / "a").exists()
    code, out = _up("--run-dir", str(new), "--scenario", "no-such-scenario")
    assert code == 2 and "no-such-scenario" in out, out
    assert not (tmp_path / "a").exists()

    empty = tmp_path / "empty"  # there before: kept, as empty as it was
    empty.mkdir()
    code, out = _up("--run-dir", str(empty), "--scenario", "")
    assert code == 1, out
    assert list(empty.iterdir()) == []

    used = tmp_path / "used"  # the lock of an earlier `up` is its, not this one's: kept
    used.mkdir()
    (used / ".up.lock").write_text("")
    code, out = _up("--run-dir", str(used), "--scenario", "")
    assert code == 1, out
    assert [p.name for p in used.iterdir()] == [".up.lock"]

    # Cluster.up alone (no CLI) the same
    from perllm.devcluster.binaries import BinariesMissing
    from perllm.devcluster.cluster import Cluster, ClusterConfig

    with pytest.raises(BinariesMissing):
        Cluster(ClusterConfig(run_dir=new, scenario=None)).up()
    assert not (tmp_path / "a").exists()


def test_an_up_that_started_keeps_its_run_dir_and_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused after it laid out its run directory (here: the stand-in start): its logs
    and lock stay, for `down` and for reading."""
    from perllm.devcluster.binaries import Binaries

    monkeypatch.setattr(Binaries, "require", lambda self, **_k: self)
    rd = tmp_path / "rd"
    r = CliRunner().invoke(app, ["cluster", "up", "--run-dir", str(rd), "--scenario", ""])
    assert isinstance(r.exception, AssertionError)  # (the fixture's stand-in start)
    assert (rd / ".up.lock").exists() and (rd / "logs").is_dir()


def test_a_lock_removed_between_its_open_and_its_flock_is_opened_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused `up` removes the lock it made while holding it: another `up` that had
    opened that file before and locks it after would hold a lock nobody else sees."""
    import fcntl

    from perllm.devcluster import state as state_mod

    rd = tmp_path / "rd"
    rd.mkdir()
    (rd / ".up.lock").write_text("")
    real = fcntl.flock
    calls: list[int] = []

    def flock(fd: int, op: int) -> None:
        calls.append(fd)
        if len(calls) == 1:  # the other `up` removes its lock just now
            (rd / ".up.lock").unlink()
        real(fd, op)

    monkeypatch.setattr(state_mod.fcntl, "flock", flock)
    with state_mod.starting(rd):
        assert len(calls) == 2  # the first one, on the removed file, was given up
        assert state_mod.start_in_progress(rd)  # the lock taken is the one others see


@pytest.mark.parametrize("cmd", ["status", "env", "down"])
def test_ctrl_c_in_a_cluster_command_is_one_line_and_exit_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cmd: str
) -> None:
    """typer turned the interrupt into exit 130 with nothing said; `up` and `down` say
    their own (what was stopped), the others said nothing."""
    from perllm.devcluster.cluster import State

    def interrupted(*_a: object, **_k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(State, "load", interrupted)
    r = CliRunner().invoke(app, ["cluster", cmd, "--run-dir", str(tmp_path)])
    assert r.exit_code == 130 and r.output == "interrupted\n", r.output
