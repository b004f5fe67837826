"""`State`: what `Cluster.up` records in the run directory (PIDs, ports, kubeconfig), so a
later `down` from another process finds and stops exactly these processes; `starting`:
the run directory's lock while one `up` writes it."""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
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
LOCK_FILE = ".up.lock"
RUN_DIR_MARKS = (STATE_FILE, "kubeconfig", LOCK_FILE)


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
        fd = os.open(rd / LOCK_FILE, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # (releases the lock if this took it)
    return False


def missing_dirs(path: Path) -> list[Path]:
    """The folders of `path` (itself, then its parents) that do not exist yet: what making
    it creates, and what a refused `up` removes again (`remove_empty`)."""
    out: list[Path] = []
    while path != path.parent and not os.path.lexists(path):
        out.append(path)
        path = path.parent
    return out


def remove_empty(dirs: list[Path]) -> None:
    """Remove the folders `dirs` (deepest first, as `missing_dirs` lists them) while they
    are empty: one with anything in it (an `up`'s logs) is kept, and its parents."""
    for d in dirs:
        try:
            d.rmdir()
        except OSError:
            return


@contextmanager
def starting(rd: Path) -> Iterator[None]:
    """One `up` at a time per run directory: a second one started meanwhile would take the
    first's half-written state for a half-dead cluster and stop its processes. The lock
    (flock on `.up.lock`) goes with the process, so a killed `up` never leaves it held.

    An `up` refused before it wrote anything (binaries missing, a bad scenario) leaves the
    run directory as it found it: the lock and the folders are removed if this made them
    (an empty folder holding only `.up.lock` was left behind)."""
    made_dirs = missing_dirs(rd)
    fd, made_lock = _lock(rd)
    before = _names(rd) if made_lock else None
    try:
        yield
    except BaseException:
        if before is not None and _names(rd) == before:  # (still holding it: see `_lock`)
            with suppress(OSError):
                (rd / LOCK_FILE).unlink()
            remove_empty(made_dirs)
        raise
    finally:
        os.close(fd)  # (releases the lock)


def _names(rd: Path) -> set[str] | None:
    try:
        return set(os.listdir(rd))
    except OSError:  # (unreadable: nothing is removed)
        return None


def _lock(rd: Path) -> tuple[int, bool]:
    """The start lock of `rd`, taken: its descriptor, and whether this made the file. A
    refused `up` removes the lock it made while it holds it, so one taken on a file
    removed since it was opened is no lock: opened again."""
    lock = rd / LOCK_FILE
    for _ in range(5):
        try:
            rd.mkdir(parents=True, exist_ok=True)
            try:
                fd, made = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600), True
            except FileExistsError:
                fd, made = os.open(lock, os.O_RDWR), False
        except FileNotFoundError:  # removed meanwhile by a refused `up`
            continue
        except OSError as e:
            raise StartError(f"run directory {rd}: {e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StartError(
                f"another cluster is starting from {rd}: wait for it (then cluster down), "
                "or give another --run-dir"
            ) from None
        try:
            if os.path.samestat(os.fstat(fd), os.stat(lock)):
                return fd, made
        except OSError:
            pass
        os.close(fd)
    raise StartError(f"run directory {rd}: its start lock {lock} kept being removed; try again")
