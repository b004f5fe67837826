"""First run: build the local control plane's binaries, with progress and the reason."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections import deque

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from perllm.demo.config import REPO_ROOT
from perllm.devcluster.binaries import Binaries, BinariesMissing, cache_dir

BUILD_SCRIPT = REPO_ROOT / "tools" / "build-binaries.sh"


def ensure_binaries(console: Console, *, helm: bool) -> Binaries:
    """The pinned binaries; builds the missing ones (once: they are cached) first."""
    try:
        return Binaries.locate().require(prometheus=True, helm=helm)
    except BinariesMissing as e:
        missing = str(e)
    parts = ["k8s", "etcd", "kwok", "prometheus"] + (["helm"] if helm else [])
    console.print(
        "[bold]First run:[/bold] building the local Kubernetes binaries (etcd, kube-apiserver, "
        "schedulers, kubectl, KWOK" + (", Helm" if helm else "") + ") from their pinned Go "
        f"modules and installing Prometheus. This happens once (cached in {cache_dir()}) and "
        "takes about 10-15 minutes on 2 cores."
    )
    console.print(f"[dim]{escape(missing)}[/dim]", highlight=False)
    if not BUILD_SCRIPT.is_file():
        raise BinariesMissing(f"{missing}\n(no {BUILD_SCRIPT}: run the demo from a clone)")
    tail: deque[str] = deque(maxlen=1)
    t0 = time.monotonic()
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("building ...", total=None)
        proc = subprocess.Popen(
            [str(BUILD_SCRIPT), *parts],
            cwd=REPO_ROOT,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its go builds are stopped with it, as one group
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip()
                if line:
                    tail.append(line)
                    progress.console.print(f"[dim]{escape(line)}[/dim]", highlight=False)
                    progress.update(task, description=f"building: {escape(line[:90])}")
            rc = proc.wait()
        except BaseException:
            # Ctrl-C or SIGTERM (the demo's handler): no build keeps running behind us
            _stop_group(proc)
            raise
    if rc != 0:
        raise BinariesMissing(f"{BUILD_SCRIPT} failed (exit {rc}): {''.join(tail)}")
    console.print(f"binaries built in {time.monotonic() - t0:.0f} s")
    return Binaries.locate().require(prometheus=True, helm=helm)


def _stop_group(proc: subprocess.Popen[str], timeout: float = 10.0) -> None:
    """SIGTERM the build's process group (the script and its go builds), SIGKILL it after
    `timeout`; an interrupted build leaves nothing cached (tools/build-binaries.sh)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue
