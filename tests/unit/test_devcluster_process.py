"""`Proc.alive`: a started process is recognised by PID and start time, so one that execs
another program (the chart's `sh -c "exec /app/llama-server ..."`) stays alive, while a
process that merely holds the PID later is not ours."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from perllm.devcluster.process import Proc, start, start_ticks, wait_until
from perllm.devcluster.state import State


def _wait_for_exec(proc: Proc, argv0: bytes) -> None:
    for _ in range(100):
        if Path(f"/proc/{proc.pid}/cmdline").read_bytes().startswith(argv0):
            return
        time.sleep(0.05)
    raise AssertionError("the shell never exec'd")


def test_a_process_that_execs_another_program_stays_alive(tmp_path: Path) -> None:
    proc = start("runtime", ["sh", "-c", "exec sleep 30"], tmp_path / "runtime.log")
    try:
        _wait_for_exec(proc, b"sleep\0")
        assert proc.alive()
        # wait_until keeps polling (it used to report "exited" once the shell was gone)
        polls = iter(range(5))
        wait_until(proc, lambda: next(polls) == 4, 10, "ready")
    finally:
        proc.stop()
    assert not proc.alive()


def test_a_recycled_pid_is_not_our_process(tmp_path: Path) -> None:
    mine = start("sleeper", ["sleep", "30"], tmp_path / "s.log")
    try:
        assert mine.started is not None and mine.alive()
        # The same PID with another start time: what a PID reused after ours exited looks like.
        assert not Proc("sleeper", mine.pid, mine.log, started=mine.started + 1).alive()
    finally:
        mine.stop()


def test_an_exited_or_missing_process_is_not_alive(tmp_path: Path) -> None:
    proc = start("quick", ["true"], tmp_path / "q.log")
    for _ in range(100):
        if not proc.alive():
            break
        time.sleep(0.05)
    assert not proc.alive()  # (a zombie until reaped, then gone)
    assert start_ticks(2**22 + 1) is None  # above pid_max: no such process
    assert not Proc.attach("none", 2**22 + 1, tmp_path / "n.log").alive()


def test_state_round_trips_the_start_time_and_reads_an_older_state_file(tmp_path: Path) -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        proc = Proc.attach("etcd", child.pid, tmp_path / "etcd.log")
        State(
            run_dir=str(tmp_path),
            kubeconfig="k",
            kubectl="kubectl",
            api_server="https://127.0.0.1:1",
            external=False,
            processes=[{"name": "etcd", "pid": child.pid, "log": "l", "started": proc.started}],
            ports={},
        ).save(tmp_path)
        loaded = State.load(tmp_path)
        assert loaded is not None
        assert [p.alive() for p in loaded.procs()] == [True]
        # A state.json from before start times were recorded: the command line decides.
        # (Right after a spawn it may still be empty: the kernel lets a vfork parent go on
        # before the new program's arguments are mapped. The start time has no such gap.)
        _wait_for_exec(proc, b"sleep\0")
        old = {"name": "etcd", "pid": child.pid, "log": "l"}
        loaded.processes = [{**old, "argv0": "sleep"}, {**old, "argv0": "etcd"}, old]
        assert [p.alive() for p in loaded.procs()] == [True, False, False]
    finally:
        child.kill()
        child.wait()
