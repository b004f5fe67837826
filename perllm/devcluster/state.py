"""`State`: what `Cluster.up` records in the run directory (PIDs, ports, kubeconfig), so a
later `down` from another process finds and stops exactly these processes; `starting`:
the run directory's lock while one `up` writes it."""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from perllm.devcluster.process import Proc, StartError

STATE_FILE = "state.json"


@dataclass
class State:
    run_dir: str
    kubeconfig: str
    kubectl: str
    api_server: str
    external: bool
    processes: list[dict[str, Any]]
    ports: dict[str, int]
    viewer_kubeconfig: str | None = None
    extender: dict[str, Any] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    # False from the first save until `up` has started everything (nodes, Prometheus): a
    # state with every recorded process alive is not yet a cluster while this is False
    # (an `up` still starting, or one killed half-way). True where absent (older files).
    ready: bool = True

    def procs(self) -> list[Proc]:
        return [
            Proc(
                name=p["name"],
                pid=p["pid"],
                log=Path(p["log"]),
                started=p.get("started"),
                argv0=p.get("argv0"),
            )
            for p in self.processes
        ]

    def save(self, run_dir: Path) -> None:
        tmp = run_dir / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2, default=str))
        tmp.replace(run_dir / STATE_FILE)

    @classmethod
    def load(cls, run_dir: Path) -> State | None:
        try:
            return cls(**json.loads((run_dir / STATE_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return None


# Files only an `up` leaves in its run directory (its start lock stays after `down`); `up`
# clears etcd/, pki/, prometheus/ and logs/ there.
RUN_DIR_MARKS = (STATE_FILE, "kubeconfig", ".up.lock")


def foreign_folder(rd: Path) -> bool:
    """`rd` is a folder with files in it and nothing an `up` leaves: not a run directory
    (a project folder given as --run-dir, whose etcd/, pki/ or logs/ `up` would delete)."""
    try:
        names = {p.name for p in rd.iterdir()}
    except OSError:  # (absent, or no folder: said elsewhere)
        return False
    return bool(names) and not names & set(RUN_DIR_MARKS)


def start_in_progress(rd: Path) -> bool:
    """Whether an `up` holds `rd`'s start lock now (`starting`)."""
    try:
        fd = os.open(rd / ".up.lock", os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # (releases the lock if this took it)
    return False


@contextmanager
def starting(rd: Path) -> Iterator[None]:
    """One `up` at a time per run directory: a second one started meanwhile would take the
    first's half-written state for a half-dead cluster and stop its processes. The lock
    (flock on `.up.lock`) goes with the process, so a killed `up` never leaves it held."""
    try:
        rd.mkdir(parents=True, exist_ok=True)
        fd = os.open(rd / ".up.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise StartError(f"run directory {rd}: {e}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StartError(
                f"another cluster is starting from {rd}: wait for it (then cluster down), "
                "or give another --run-dir"
            ) from None
        yield
    finally:
        os.close(fd)  # (releases the lock)
