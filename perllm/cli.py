"""The `perllm` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from perllm import policies
from perllm.scenario import (
    REFERENCE_SCENARIOS,
    Scenario,
    ScenarioError,
    builtin_scenarios,
    load_scenario,
    parse_scenario,
)

app = typer.Typer(
    help="PerLLM: personalized edge-cloud inference scheduling (CS-UCB).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
scenarios_app = typer.Typer(help="List, show and validate scenario files.", no_args_is_help=True)
app.add_typer(scenarios_app, name="scenarios")
# Tables are wide: keep them readable when piped (rich falls back to 80 columns).
console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)

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
    except ScenarioError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    if duration is not None:
        sc = parse_scenario(
            {**sc.model_dump(mode="json", exclude_defaults=False), "duration_s": duration}, name
        )
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
    seeds: Annotated[int, typer.Option(help="Number of seeds (1..N).", min=1)] = 3,
    duration: Annotated[
        float | None, typer.Option(help="Override each scenario's duration (s).", min=1)
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the JSON report here.")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write PNG plots to this directory.")] = None,
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
    from perllm.experiment import run_experiment, write_plots

    names = scenario or list(REFERENCE_SCENARIOS)
    scs = [_load(n, duration) for n in names]
    avail = policies.available()
    wanted = policy or [p for p in DEFAULT_POLICY_ORDER if p in avail]
    unknown = [p for p in wanted if p not in avail]
    if unknown:
        err.print(
            f"[red]error:[/red] unknown policy {', '.join(unknown)}; available: {', '.join(avail)}"
        )
        raise typer.Exit(2)
    if policy is None and "agod" not in avail:
        err.print(
            "[yellow]note:[/yellow] AGOD needs the bench extra "
            "(pip install -e '.[bench]'); running without it"
        )
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

        exp = run_experiment(scs, wanted, list(range(1, seeds + 1)), progress=tick)
    if bound:
        from perllm.bound import bounds_for
        from perllm.report import build_report

        err.print("solving the hindsight bound (docs/bound.md)")
        exp.bounds = bounds_for(scs, range(1, seeds + 1), progress=lambda m: err.print(f"  {m}"))
        exp.report = build_report(exp.runs, exp.report_regret(), exp.bounds)
    _print_report(exp.report, wanted, detail)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(exp.report, indent=2, sort_keys=True))
        console.print(f"JSON report: {json_out}")
    if out:
        for p in write_plots(exp, out):
            console.print(f"plot: {p}")


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _print_report(report: dict[str, Any], order: list[str], detail: bool) -> None:
    scs = report["scenarios"]
    t = Table(title="Processing-time success rate (%) per model (scenario), mean over seeds")
    t.add_column("policy")
    for s in scs:
        t.add_column(s, justify="right")
    for p in order:
        t.add_row(p, *[_pct(scs[s]["policies"].get(p, {}).get("success_rate")) for s in scs])
    console.print(t)
    t2 = Table(
        title="Throughput, goodput and energy (mean over scenarios); ratios: PerLLM / policy"
    )
    for c in (
        "policy",
        "throughput rps",
        "goodput rps",
        "J/service",
        "tran",
        "infer",
        "idle",
        "edge %",
        "thr. ratio",
        "energy ratio",
        "regret vs clairvoyant greedy",
    ):
        t2.add_column(c, justify="right" if c != "policy" else "left")
    for p in order:
        ms = [s["policies"][p] for s in scs.values() if p in s["policies"]]
        if not ms:
            continue

        def mean(k: str, ms: list[dict[str, Any]] = ms) -> float:
            return float(sum(m[k] for m in ms) / len(ms))

        def br(k: str, ms: list[dict[str, Any]] = ms) -> float:
            return float(sum(m["energy_breakdown_j"][k] for m in ms) / len(ms))

        rat = [s.get("ratios_vs_perllm", {}).get(p) for s in scs.values()]
        rat = [r for r in rat if r]
        thr = sum(r["throughput_ratio"] or 0 for r in rat) / len(rat) if rat else None
        en = sum(r["energy_ratio"] or 0 for r in rat) / len(rat) if rat else None
        reg = [s.get("regret_vs_clairvoyant_greedy", {}).get(p) for s in scs.values()]
        reg = [r for r in reg if r is not None]
        t2.add_row(
            p,
            f"{mean('throughput_rps'):.2f}",
            f"{mean('goodput_rps'):.2f}",
            f"{mean('energy_j_per_service'):.1f}",
            f"{br('tran'):.2f}",
            f"{br('infer'):.1f}",
            f"{br('idle'):.1f}",
            _pct(mean("edge_share")),
            "—" if thr is None else f"{thr:.2f}×",
            "—" if en is None else f"{en:.2f}×",
            "—" if not reg else f"{sum(reg) / len(reg):.1f}",
        )
    console.print(t2)
    if any("bound" in s for s in scs.values()):
        _print_bound(scs, order)
    if detail:
        for s, entry in scs.items():
            t3 = Table(title=f"{s}: success rate (%) per service class")
            classes = list(next(iter(entry["policies"].values()))["per_class"])
            t3.add_column("policy")
            for c in classes:
                t3.add_column(c, justify="right")
            for p in order:
                if p in entry["policies"]:
                    pc = entry["policies"][p]["per_class"]
                    t3.add_row(p, *[_pct(pc[c]["success_rate"]) for c in classes])
            console.print(t3)


def _print_bound(scs: dict[str, Any], order: list[str]) -> None:
    t = Table(
        title="Distance to the hindsight bound (docs/bound.md): success gap in points "
        "(bound − policy) / energy ratio (policy J ÷ the least J at the policy's success)"
    )
    t.add_column("policy")
    for s in scs:
        t.add_column(s, justify="right")
    bounded = {s: e for s, e in scs.items() if "bound" in e}
    t.add_row(
        "[bold]bound[/bold] (success ≤, J/service ≥)",
        *[
            f"{_pct(e['bound']['success_rate_ub'])} %, {e['bound']['energy_lb_j_per_service']:.1f}"
            if s in bounded
            else "—"
            for s, e in scs.items()
        ],
    )
    for p in order:
        cells = []
        for e in scs.values():
            d = e.get("vs_bound", {}).get(p)
            cells.append(
                "—" if d is None else f"{d['success_gap_points']:.2f} / {d['energy_ratio']:.2f}×"
            )
        t.add_row(p, *cells)
    console.print(t)


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
    """Print a built-in scenario's YAML."""
    from perllm.scenario import _builtin_dir

    path = Path(name) if Path(name).exists() else _builtin_dir() / f"{name}.yaml"
    if not path.is_file():
        err.print(f"[red]error:[/red] no scenario {name!r}")
        raise typer.Exit(2)
    console.print(path.read_text(), markup=False, highlight=False)


def _mount_optional() -> None:
    """Sub-apps of other components (local control plane, operator, extender)."""
    try:
        from perllm.devcluster.cli import app as dev_app
    except ImportError:
        return
    app.add_typer(dev_app, name="dev")
    _mount_operator()
    _mount_extender()


def _mount_extender() -> None:
    try:
        from perllm_extender.cli import register
    except ImportError:
        return
    register(app)


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
        status_interval: float = typer.Option(
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


def _mount_demo() -> None:
    try:
        from perllm.demo.cli import register
    except ImportError:
        return
    register(app)


def _mount_agent() -> None:
    from perllm.agent.cli import register

    register(app)


def _mount_twin() -> None:
    from perllm.twin.cli import register

    register(app)


_mount_optional()
_mount_demo()
_mount_agent()
_mount_twin()
__import__("perllm.sweep.cli", fromlist=["register"]).register(app)  # perllm sweep
