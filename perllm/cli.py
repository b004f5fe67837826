"""The `perllm` command line."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from perllm import policies
from perllm.cli_args import number, seed_count, wait_seconds
from perllm.cli_outputs import OneLineInterrupt, ensure_writable, output_path, writing
from perllm.cli_report import print_report
from perllm.scenario import (
    REFERENCE_SCENARIOS,
    Scenario,
    ScenarioError,
    builtin_scenarios,
    check_unique_names,
    load_scenario,
    parse_scenario,
)

if TYPE_CHECKING:
    from perllm.experiment import Experiment

app = typer.Typer(
    cls=OneLineInterrupt,
    help="PerLLM: personalized edge-cloud inference scheduling (CS-UCB).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
scenarios_app = typer.Typer(help="List, show and validate scenario files.", no_args_is_help=True)
app.add_typer(scenarios_app, name="scenarios")
# Tables are wide: keep them readable when piped (rich falls back to 80 columns).
console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True)  # an error stays one line when piped

DEFAULT_POLICY_ORDER = [
    "perllm",
    "fineinfer",
    "agod",
    "rewardless-guidance",
    "edge-only",
    "cloud-only",
    "round-robin",
    "least-loaded",
    "greedy-deadline",
    "clairvoyant-greedy",
]


def _load(name: str, duration: float | None) -> Scenario:
    try:
        sc = load_scenario(name)
        if duration is not None:
            sc = parse_scenario(
                {**sc.model_dump(mode="json", exclude_defaults=False), "duration_s": duration},
                name,
            )
    except ScenarioError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    return sc


@app.command()
def simulate(
    scenario: Annotated[
        list[str] | None,
        typer.Argument(
            help="Scenario files or built-in names (default: the four paper reference scenarios)."
        ),
    ] = None,
    policy: Annotated[
        list[str] | None,
        typer.Option("--policy", "-p", help="Policies to run (repeat; default: all available)."),
    ] = None,
    seeds: Annotated[int, seed_count(..., help="Number of seeds (runs seeds 1..N).")] = 3,
    duration: Annotated[
        float | None,
        number(help="Override each scenario's duration (s).", min=1),
    ] = None,
    json_out: Annotated[
        Path | None, output_path(..., "--json", help="Write the JSON report here.")
    ] = None,
    out: Annotated[Path | None, output_path(..., help="Write PNG plots to this directory.")] = None,
    detail: Annotated[bool, typer.Option(help="Also print per-class tables.")] = False,
    bound: Annotated[
        bool,
        typer.Option(
            help="Also solve the hindsight bound (an LP per scenario and seed, docs/bound.md) "
            "and print each policy's distance to it."
        ),
    ] = True,
) -> None:
    """Run the paper's experiment: policies × scenarios × seeds on the world model."""
    from perllm.experiment import write_plots
    from perllm.report import finite_json

    names = scenario or list(REFERENCE_SCENARIOS)
    scs = [_load(n, duration) for n in names]
    try:
        check_unique_names(list(zip(names, scs, strict=True)))
    except ScenarioError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    wanted = _wanted_policies(policy)
    _check_outputs(json_out, out)
    try:
        # Trace files are read when a run starts: their errors name the field too.
        exp = _run_with_progress(scs, wanted, seeds)
        if bound:
            _add_bounds(exp, scs, seeds)
    except ScenarioError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    _print_report(exp.report, wanted, detail)
    if json_out:
        # strict JSON: an undefined number (an infinite energy ratio) is null
        report = finite_json(exp.report)
        with writing("--json", err):
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(report, indent=2, sort_keys=True, allow_nan=False))
        console.print(f"JSON report: {json_out}")
    if out:
        with writing("--out", err):
            for p in write_plots(exp, out):
                console.print(f"plot: {p}")


def _check_outputs(json_out: Path | None, out: Path | None) -> None:
    """Fail before the runs, not after them, when --json or --out cannot be written."""
    if json_out is not None:
        ensure_writable("--json", json_out.parent, err, json_out)
    if out is not None:
        ensure_writable("--out", out, err)


def _wanted_policies(policy: list[str] | None) -> list[str]:
    """The policies asked for (default: all available, in the paper's order); exits on an
    unknown name or one named twice."""
    avail = policies.available()
    wanted = policy or [p for p in DEFAULT_POLICY_ORDER if p in avail]
    why = policies.name_error(wanted)  # an unknown name, or one named twice (as sweep)
    if why is not None:
        err.print(f"[red]error:[/red] {escape(why)}")
        raise typer.Exit(2)
    if policy is None and "agod" not in avail:
        err.print(
            "[yellow]note:[/yellow] AGOD needs the bench extra "
            "(pip install -e '.[bench]'); running without it"
        )
    return wanted


def _run_with_progress(scs: list[Scenario], wanted: list[str], seeds: int) -> Experiment:
    """Every (scenario, policy, seed) run, with a progress bar on stderr."""
    from perllm.experiment import run_experiment

    total = len(scs) * len(wanted) * seeds
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} runs"),
        TimeElapsedColumn(),
        console=err,
        transient=not sys.stderr.isatty(),
    ) as prog:
        task = prog.add_task("simulating", total=total)
        state = {"label": ""}

        def tick(label: str, done: int, slots: int) -> None:
            if label != state["label"]:
                state["label"] = label
                prog.update(task, description=label)
            if done == slots:
                prog.advance(task)

        return run_experiment(scs, wanted, list(range(1, seeds + 1)), progress=tick)


def _add_bounds(exp: Experiment, scs: list[Scenario], seeds: int) -> None:
    """Solve the hindsight bound per scenario and seed and rebuild the report with it."""
    from perllm.bound import bounds_for
    from perllm.report import build_report

    err.print("solving the hindsight bound (docs/bound.md)")
    skipped: dict[tuple[str, int], str] = {}
    exp.bounds = bounds_for(
        scs, range(1, seeds + 1), progress=lambda m: err.print(f"  {m}"), skipped=skipped
    )
    exp.report = build_report(exp.runs, exp.report_regret(), exp.bounds)
    for (name, seed), why in sorted(skipped.items()):  # (as sweep's JSON records them)
        entry = exp.report["scenarios"].get(name)
        if entry is not None:
            entry.setdefault("bound_skipped", []).append({"seed": seed, "reason": why})


def _print_report(report: dict[str, Any], order: list[str], detail: bool) -> None:
    """The report's tables on the command's console (`cli_report`)."""
    print_report(console, report, order, detail)


@scenarios_app.command("list")
def scenarios_list() -> None:
    """List the built-in scenarios."""
    for name in builtin_scenarios():
        sc = load_scenario(name)
        ref = " (reference)" if name in REFERENCE_SCENARIOS else ""
        console.print(f"[bold]{name}[/bold]{ref}: {sc.description}")


@scenarios_app.command("validate")
def scenarios_validate(files: Annotated[list[str], typer.Argument(help="Scenario files.")]) -> None:
    """Validate scenario files; errors name the field."""
    bad = 0
    for f in files:
        try:
            sc = load_scenario(f)
            console.print(
                f"[green]ok[/green] {f}: {len(sc.expanded_servers())} servers, "
                f"{len(sc.workload.classes)} service classes"
            )
        except ScenarioError as e:
            err.print(f"[red]invalid[/red] {e}")
            bad += 1
    raise typer.Exit(1 if bad else 0)


@scenarios_app.command("show")
def scenarios_show(name: str) -> None:
    """Print a scenario's YAML (a built-in name or a file), if it is a valid scenario."""
    from perllm.scenario import builtin_dir, builtin_scenarios

    path = Path(name) if Path(name).exists() else builtin_dir() / f"{name}.yaml"
    if not path.is_file():
        err.print(
            f"[red]error:[/red] no scenario {name!r}; built-ins: {', '.join(builtin_scenarios())}"
        )
        raise typer.Exit(2)
    try:  # as `scenarios validate`: a malformed file is not printed as if it were one
        load_scenario(path)
    except ScenarioError as e:
        err.print(f"[red]invalid[/red] {e}")
        raise typer.Exit(1) from None
    # Verbatim (`show NAME > my.yaml` starts a scenario): rich would wrap long lines and
    # turn `:x:` into an emoji.
    typer.echo(path.read_text(), nl=False)


def _mount_optional() -> None:
    """Sub-apps of other components (local control plane, operator, extender)."""
    try:
        from perllm.devcluster.cli import app as dev_app
    except ImportError:
        return
    app.add_typer(dev_app, name="dev")
    _mount_operator()
    _register("perllm_extender.cli", optional=True)


def _mount_operator() -> None:
    try:
        from perllm_operator.main import run as run_operator
    except ImportError:
        return

    @app.command("operator")
    def operator_cmd(
        namespace: list[str] = typer.Option(  # noqa: B008
            [], "--namespace", "-n", help="Watch only this namespace (repeatable; default all)."
        ),
        liveness: str | None = typer.Option(
            None, help="Liveness endpoint, e.g. http://0.0.0.0:8080/healthz."
        ),
        prometheus: str | None = typer.Option(
            None, envvar="PERLLM_PROMETHEUS_URL", help="Prometheus URL for status telemetry."
        ),
        status_interval: float = wait_seconds(
            30.0,
            "--status-interval",
            min=1.0,
            envvar="PERLLM_STATUS_INTERVAL",
            help="Seconds between status refreshes (and re-placement checks).",
        ),
        verbose: bool = typer.Option(False, "--verbose"),
    ) -> None:
        """Run the LLMService operator (kopf, standalone) against KUBECONFIG or in-cluster."""
        from perllm_operator.config import ConfigError

        try:
            run_operator(namespace, liveness, verbose, prometheus, status_interval)
        except ConfigError as e:
            err.print(f"[red]error:[/red] {e}")
            raise typer.Exit(2) from None


def _mount_twin() -> None:
    from perllm.twin.cli import register, register_openai

    register(app)
    register_openai(app)


def _register(module: str, optional: bool = False) -> None:
    """Add the commands of `module.register(app)`; an optional component may be missing."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        if optional:
            return
        raise
    mod.register(app)


_mount_optional()
_register("perllm.demo.cli", optional=True)
_register("perllm.agent.cli")
_mount_twin()
_register("perllm.router.cli")
_register("perllm.load_cli")
_register("perllm.sweep.cli")
