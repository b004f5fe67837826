"""Child processes: own process group, log file, readiness polling, stop by PID."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1


class StartError(RuntimeError):
    """A component did not become ready; the message carries its log tail."""


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (`timeout`, a CI cancel, `kill`) takes Ctrl-C's path while this runs, so
    what was started is stopped: by default SIGTERM ends Python at once, leaving the
    children it started running."""
    old = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (the kernel picks it; the race is benign here)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(names: Sequence[str]) -> dict[str, int]:
    """Distinct free ports: all sockets stay bound until every port is chosen."""
    socks = []
    try:
        for _ in names:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("127.0.0.1", 0))
        return {n: int(s.getsockname()[1]) for n, s in zip(names, socks, strict=True)}
    finally:
        for s in socks:
            s.close()


def sigterm_with_parent() -> None:
    # Runs in the child between fork and exec: SIGTERM it when the starting process dies, so
    # a killed pytest cannot leave a control plane behind.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time) of `pid` from /proc/PID/stat, or None if no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the parenthesised command name (which may hold spaces): state is field 3,
    # starttime field 22.
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[0], int(fields[19])


def start_ticks(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot, /proc/PID/stat field 22), or None if no
    such process. Unlike the command line it survives exec (`sh -c "exec server"`), and a
    recycled PID has a later one: together with the PID it names one process."""
    st = _stat(pid)
    return None if st is None else st[1]


@dataclass
class Proc:
    name: str
    pid: int
    log: Path
    # start_ticks(pid) when started; None only in a state.json written before it was
    # recorded, which `argv0` (the command line's first word) then stands in for.
    started: int | None = None
    argv0: str | None = None

    @classmethod
    def attach(cls, name: str, pid: int, log: Path) -> Proc:
        """The process running as `pid` now (not one that later reuses the PID)."""
        return cls(name=name, pid=pid, log=log, started=start_ticks(pid))

    def alive(self) -> bool:
        """True while our process (not a recycled PID) runs and is not a zombie."""
        st = _stat(self.pid)
        if st is None or st[0] == "Z":
            return False
        if self.started is not None:
            return st[1] == self.started
        if self.argv0 is None:
            return False
        try:
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes()
        except OSError:
            return False
        return cmdline.split(b"\0", 1)[0].decode(errors="replace") == self.argv0

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left after `timeout`."""
        if not self.alive():
            return
        _signal_group(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _reap(self.pid)
            if not self.alive():
                return
            time.sleep(0.1)
        _signal_group(self.pid, signal.SIGKILL)
        for _ in range(50):
            _reap(self.pid)
            if not self.alive():
                return
            time.sleep(0.1)


def terminate(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM a child started with `subprocess.Popen` and reap it; SIGKILL it if it is
    still there after `timeout` (for single processes; `Proc.stop` handles groups)."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)  # started with start_new_session: pgid == pid
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)


def _reap(pid: int) -> None:
    # ChildProcessError: not our child (stopped from another process, e.g. `cluster down`).
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def start(
    name: str,
    argv: Sequence[str],
    log: Path,
    *,
    env: dict[str, str] | None = None,
    die_with_parent: bool = False,
) -> Proc:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        p = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            close_fds=True,
            preexec_fn=sigterm_with_parent if die_with_parent else None,
        )
    # Read while the child is ours and unreaped (a zombie keeps its stat): never a reused PID.
    return Proc.attach(name, p.pid, log)


def http_ok(url: str, *, token: str | None = None, timeout: float = 2.0) -> bool:
    """GET url (TLS unverified: loopback components use self-signed certs) and return 2xx."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as r:
            return 200 <= int(r.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_until(proc: Proc, ready: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `ready` until true; fail fast if the process died, with its log tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if not proc.alive():
            raise StartError(f"{proc.name} exited before {what}; log {proc.log}:\n{proc.tail()}")
        time.sleep(0.2)
    raise StartError(f"{proc.name}: no {what} after {timeout:.0f}s; log {proc.log}:\n{proc.tail()}")
