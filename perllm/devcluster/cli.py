"""`perllm dev cluster up|down|status|env` (also `python -m perllm.devcluster cluster ...`)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from perllm.cli_outputs import OneLineInterrupt, ensure_writable
from perllm.devcluster.binaries import Binaries, BinariesMissing
from perllm.devcluster.cluster import (
    DEFAULT_SCENARIO,
    Cluster,
    ClusterConfig,
    State,
    default_run_dir,
)
from perllm.devcluster.config import Extender, kubeconfig_server
from perllm.devcluster.process import Proc, StartError, sigterm_as_interrupt
from perllm.devcluster.state import (
    foreign_folder,
    missing_dirs,
    remove_empty,
    start_in_progress,
)
from perllm.scenario import ScenarioError
from perllm.urls import http_url_error, redact

app = typer.Typer(cls=OneLineInterrupt, help="Development tools.", no_args_is_help=True)
cluster_app = typer.Typer(
    help="A local Kubernetes control plane with KWOK nodes.", no_args_is_help=True
)
app.add_typer(cluster_app, name="cluster")


def _run_dir(text: str | Path) -> Path:
    """`--run-dir ""` was the current folder: `up` cleared its etcd/, pki/, logs/ and
    prometheus/ and ran the cluster there. A relative one is made absolute, so the printed
    KUBECONFIG still works after a `cd`."""
    if not str(text).strip():
        raise typer.BadParameter("must not be empty")
    return Path(text).absolute()


RunDir = Annotated[
    Path, typer.Option(help="Run directory: state, kubeconfig, logs.", parser=_run_dir)
]


@cluster_app.command()
def up(
    run_dir: RunDir = default_run_dir(),  # noqa: B008
    scenario: Annotated[
        str,
        typer.Option(
            help="Scenario file or built-in name whose servers become KWOK nodes ('' = none)."
        ),
    ] = DEFAULT_SCENARIO,
    extender_url: Annotated[
        str,
        typer.Option(envvar="PERLLM_EXTENDER_URL", help="Extender urlPrefix for perllm-scheduler."),
    ] = Extender.url,
    extender_ignorable: Annotated[
        bool, typer.Option(help="Schedule perllm-scheduler pods even while the extender is down.")
    ] = True,
    prometheus: Annotated[bool, typer.Option(help="Start Prometheus.")] = True,
    attach: Annotated[
        Path | None,
        typer.Option(
            help="Existing cluster's kubeconfig (kind, k3s): start only perllm-scheduler, "
            "KWOK and the nodes there.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Start the cluster (binaries from the cache: tools/build-binaries.sh builds them)."""
    if why := http_url_error(extender_url):
        # else it goes unchecked into perllm-scheduler's config: an extender no call reaches
        typer.echo(
            f"error: --extender-url (or PERLLM_EXTENDER_URL): {redact(extender_url)!r}: {why}; "
            f"give an http:// or https:// URL (e.g. {Extender.url})",
            err=True,
        )
        raise typer.Exit(2)
    conf = ClusterConfig(
        run_dir=run_dir,
        scenario=scenario or None,
        prometheus=prometheus,
        extender=Extender(url=extender_url, ignorable=extender_ignorable),
        external_kubeconfig=attach,
    )
    if attach is not None:
        try:
            kubeconfig_server(attach)
        except ValueError as e:
            typer.echo(f"error: --attach: {attach}: {e}", err=True)
            raise typer.Exit(2) from None
    running = Cluster.find(run_dir)
    if running is not None and running.state is not None:
        typer.echo(f"cluster already running from {run_dir} (options ignored)")
        _print_env(running.state)
        return
    if foreign_folder(run_dir):
        typer.echo(
            f"error: --run-dir {run_dir}: a folder with other files and no cluster run in it "
            "(up clears etcd/, pki/, prometheus/ and logs/ in its run directory): give an "
            "empty or new folder",
            err=True,
        )
        raise typer.Exit(2)
    made = missing_dirs(run_dir)
    t0 = time.monotonic()
    try:
        state = _start(conf)
    except BaseException:  # a refused `up` leaves no empty run directory behind
        remove_empty(made)
        raise
    typer.echo(f"cluster ready in {time.monotonic() - t0:.1f}s (run dir {run_dir})")
    _print_env(state)


def _start(conf: ClusterConfig) -> State:
    """`Cluster.up`, its failures said in one line (exit 1 or 2, 130 if interrupted)."""
    run_dir = conf.run_dir
    ensure_writable("--run-dir", run_dir, Console(stderr=True))
    cluster = Cluster(conf)
    try:
        with sigterm_as_interrupt():  # a CI cancel or `timeout` stops what was started
            state = cluster.up()
    except ScenarioError as e:
        typer.echo(f"error: --scenario: {e}", err=True)
        raise typer.Exit(2) from None
    except (BinariesMissing, StartError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    except OSError as e:  # a full disk, an odd file in the run dir (what started is stopped)
        typer.echo(f"error: --run-dir {run_dir}: {e}; free it or give another", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:  # Cluster.up has stopped what it started, unless interrupted
        left = _still_running(cluster.procs)
        if left:  # (a second Ctrl-C or SIGTERM cut its cleanup short)
            typer.echo(f"interrupted while stopping: {left}; {_finish(run_dir)}", err=True)
        else:
            typer.echo(
                f"interrupted: every component started was stopped; logs in {run_dir}", err=True
            )
        raise typer.Exit(130) from None
    return state


@cluster_app.command()
def down(run_dir: RunDir = default_run_dir()) -> None:  # noqa: B008
    """Stop every process of the cluster by PID; logs stay in the run directory."""
    state = State.load(run_dir)
    if state is None:
        typer.echo(f"no cluster recorded in {run_dir}")
        return
    # counted before: a component that had already exited was reported as stopped
    dead = [p.name for p in state.procs() if not p.alive()]
    try:
        with sigterm_as_interrupt():  # (SIGTERM ended Python mid-way, without a word)
            Cluster(ClusterConfig(run_dir=run_dir)).down()
    except KeyboardInterrupt:  # the state stays recorded until every process is stopped
        left = _still_running(state.procs())
        what = left or "every process had stopped, its state is still recorded"
        typer.echo(f"interrupted while stopping: {what}; {_finish(run_dir)}", err=True)
        raise typer.Exit(130) from None
    gone = f" ({', '.join(dead)} had already exited)" if dead else ""
    typer.echo(
        f"stopped {len(state.processes) - len(dead)} processes{gone}; logs in {run_dir / 'logs'}"
    )


@cluster_app.command()
def status(
    run_dir: RunDir = default_run_dir(),  # noqa: B008
    as_json: Annotated[bool, typer.Option("--json", help="Print the state as JSON.")] = False,
) -> None:
    """Show the processes, ports and kubeconfig; exit 1 if no complete cluster runs."""
    state = State.load(run_dir)
    if state is None:
        typer.echo(f"no cluster recorded in {run_dir}", err=True)
        raise typer.Exit(1)
    alive = {p.name: p.alive() for p in state.procs()}
    unfinished = _unfinished(state, run_dir)
    if as_json:
        typer.echo(json.dumps({**asdict(state), "alive": alive}, indent=2))
    else:
        for p in state.procs():
            how = "running" if alive[p.name] else f"DEAD (log {p.log})"
            typer.echo(f"{p.name:24} pid {p.pid:<8} {how}")
        typer.echo(f"ports: {state.ports}")
        if not unfinished:  # (no `export` of a cluster not there yet)
            _print_env(state)
    if unfinished:
        typer.echo(f"the cluster in {run_dir} is not complete: {unfinished}", err=True)
        raise typer.Exit(1)
    if not all(alive.values()):
        raise typer.Exit(1)


@cluster_app.command()
def env(run_dir: RunDir = default_run_dir()) -> None:  # noqa: B008
    """Print shell exports for the running cluster: eval "$(perllm dev cluster env)".

    Exit 1, printing none, if no complete cluster runs (as `status`)."""
    state = State.load(run_dir)
    if state is None:
        typer.echo(f"no cluster recorded in {run_dir}", err=True)
        raise typer.Exit(1)
    if why := _unfinished(state, run_dir):  # (no nodes yet, or never any)
        typer.echo(f"error: the cluster in {run_dir} is not complete: {why}", err=True)
        raise typer.Exit(1)
    dead = [p for p in state.procs() if not p.alive()]
    if dead:  # (the exports of a dead API server: `kubectl` then failed, far from here)
        logs = ", ".join(f"{p.name} (log {p.log})" for p in dead)
        typer.echo(
            f"error: the cluster in {run_dir} is not complete: not running: {logs}; "
            f"restart it: perllm dev cluster down --run-dir {run_dir}, then up",
            err=True,
        )
        raise typer.Exit(1)
    typer.echo(f"export KUBECONFIG={state.kubeconfig}")
    typer.echo(f"export PATH={Path(state.kubectl).parent}:$PATH")


@cluster_app.command()
def binaries() -> None:
    """Print where the pinned binaries are expected and whether each is present."""
    b = Binaries.locate()
    for name, path in asdict(b).items():
        ok = path is not None and Path(path).exists()
        typer.echo(f"{name:24} {'ok     ' if ok else 'MISSING'} {path}")


def _still_running(procs: list[Proc]) -> str:
    """The components of `procs` still running, as "a, b still run" ("" if none)."""
    left = [p.name for p in procs if p.alive()]
    return f"{', '.join(left)} still run{'s' if len(left) == 1 else ''}" if left else ""


def _unfinished(state: State, run_dir: Path) -> str | None:
    """Why the recorded cluster is not one yet (its `up` has not finished), or None."""
    if state.ready:
        return None
    if start_in_progress(run_dir):
        return "a `cluster up` is still starting it; wait for it to print `cluster ready`"
    return (
        "its `cluster up` stopped before it finished (killed?); restart it: "
        f"perllm dev cluster down --run-dir {run_dir}, then up"
    )


def _finish(run_dir: Path) -> str:
    return f"finish with: perllm dev cluster down --run-dir {run_dir}"


def _print_env(state: State) -> None:
    typer.echo(f"KUBECONFIG={state.kubeconfig}")
    typer.echo(f"kubectl:   {state.kubectl}")
    if "prometheus" in state.ports:
        typer.echo(f"prometheus: http://127.0.0.1:{state.ports['prometheus']}")
    typer.echo(f"use it:    export KUBECONFIG={state.kubeconfig}; {state.kubectl} get nodes")
