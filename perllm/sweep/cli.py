"""`perllm sweep`: policies against load and cloud bandwidth, with the hindsight bound."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from perllm.cli_args import integer, seed_count
from perllm.cli_outputs import ensure_writable, output_path, writing
from perllm.world.result import NO_REQUESTS

if TYPE_CHECKING:
    from perllm.sweep.run import Sweep, SweepResult

DEFAULT_SCENARIOS = ["paper-llama2-7b", "edge-gpu"]
DEFAULT_POLICIES = [
    "perllm",
    "fineinfer",
    "cloud-only",
    "edge-only",
    "greedy-deadline",
    "clairvoyant-greedy",
]
# The defaults (bench/sweep.py): load in req/s and cloud link in Mbps.
DEFAULT_LOADS = "4,5,6,8,12,16,24"
# Each worker is a process of its own (numpy, numba, the scenario): 100,000 were accepted
# and spawned as the jobs were handed out, one per job. The work is CPU-bound: more
# workers than cores only cost memory.
MAX_PROCESSES = 64
DEFAULT_CLOUD_MBPS = "300,100,30,10,3"

err = Console(stderr=True, soft_wrap=True)  # an error stays one line when piped


def parse_values(option: str, text: str | None) -> list[float]:
    """`"4,5,6"` -> [4.0, 5.0, 6.0]; a clear error for anything else."""
    from perllm.contract import MAX_LINK_MBPS, MIN_LINK_MBPS
    from perllm.sweep.transforms import SweepError

    if text is None:
        return []
    parts = [p.strip() for p in text.split(",")]
    if not parts or any(p == "" for p in parts):
        raise SweepError(f"{option}: expected comma-separated numbers such as 4,8,16, got {text!r}")
    out = []
    for p in parts:
        try:
            v = float(p)
        except ValueError:
            raise SweepError(f"{option}: {p!r} is not a number") from None
        if not (v > 0 and v != float("inf")):
            raise SweepError(f"{option}: every value must be a finite number > 0, got {p}")
        if option == "--cloud-mbps" and not MIN_LINK_MBPS <= v <= MAX_LINK_MBPS:
            # (the link's own bounds, as a scenario's servers[i].link.bandwidth_mbps)
            raise SweepError(
                f"{option}: {p} Mbps is outside the {MIN_LINK_MBPS:g} to {MAX_LINK_MBPS:,.0f} "
                "Mbps (1 kbit/s to 10 Tbit/s) a link has"
            )
        out.append(v)
    if len(set(out)) != len(out):
        raise SweepError(f"{option}: a value is repeated in {text!r}")
    return out


def _fmt(x: Any, scale: float = 1.0, digits: int = 1) -> str:
    return "—" if x is None else f"{x * scale:.{digits}f}"


def _run_fmt(x: Any, scale: float = 1.0, digits: int = 1) -> str:
    """A run metric: None is undefined (no request arrived in any seed), n/a."""
    return "n/a" if x is None else _fmt(x, scale, digits)


def print_table(console: Console, data: dict[str, Any]) -> None:
    t = Table(
        title=f"{data['sweep']} ({data['duration_s']:g} s, {len(data['seeds'])} seed(s))",
        title_justify="left",
    )
    cols = [
        ("value", "right"),
        ("policy", "left"),
        ("success %", "right"),
        ("bound %", "right"),
        ("gap pts", "right"),
        ("goodput", "right"),
        ("J/svc", "right"),
        ("bound J", "right"),
        ("E ratio", "right"),
        ("edge %", "right"),
        ("q-viol %", "right"),
        ("late %", "right"),
        ("shed %", "right"),
        ("rej %", "right"),
    ]
    for name, j in cols:
        t.add_column(name, justify=j)  # type: ignore[arg-type]
    partial = False
    for r in data["rows"]:
        # A bound over fewer seeds than the row's runs (the others skipped) is marked.
        mark = "†" if 0 < r["bound_seeds"] < r["seeds"] else ""
        partial = partial or bool(mark)
        t.add_row(
            f"{r['value']:g}",
            r["policy"],
            _run_fmt(r["success_rate"], 100),
            _fmt(r["bound_success_rate"], 100) + mark,
            _fmt(r["success_gap_points"]) + mark,
            _run_fmt(r["goodput_rps"], 1, 2),
            _run_fmt(r["energy_j_per_service"]),
            _fmt(r["bound_energy_lb_j_per_service"]) + mark,
            # (null in the JSON data: infinite where a seed's ratio is, to a 0 J bound)
            ("inf" if r["energy_ratio_inf_seeds"] else _fmt(r["energy_ratio"], 1, 2)) + mark,
            _run_fmt(r["edge_share"], 100),
            _run_fmt(r["quality_violation_rate"], 100),
            _run_fmt(r["late_rate"], 100),
            _run_fmt(r["shed_rate"], 100),
            _run_fmt(r["rejected_rate"], 100),
        )
    captions = []
    if partial:
        captions.append(
            "†: the bound of only some seeds (bound_seeds of seeds; the others skipped, "
            "below): bound, gap and E ratio over those seeds, each run against its own "
            "seed's bound; success over all"
        )
    if any(r["seeds_without_requests"] for r in data["rows"]):
        captions.append(
            f"n/a: {NO_REQUESTS} in any seed of the point (undefined, null in the JSON); "
            "where only some seeds had none (seeds_without_requests), the means are over "
            "the others"
        )
    if captions:
        t.caption = "\n".join(captions)
        t.caption_justify = "left"
    console.print(t)


# The command is one typer declaration per flag: long by nature, not by logic (that is in
# `build_sweeps`, `run_with_progress` and `report`).
def register(app: typer.Typer) -> None:
    @app.command("sweep")
    def sweep_cmd(
        scenarios: Annotated[
            list[str] | None,
            typer.Argument(
                help="Base scenarios (names or files; default: paper-llama2-7b edge-gpu)."
            ),
        ] = None,
        load: Annotated[
            str | None,
            typer.Option("--load", help="Total arrival rates to sweep, req/s, e.g. 4,8,16."),
        ] = None,
        load_x: Annotated[
            str | None,
            typer.Option("--load-x", help="Arrival-rate multipliers to sweep, e.g. 1,1.5,2."),
        ] = None,
        cloud_mbps: Annotated[
            str | None,
            typer.Option(
                "--cloud-mbps", help="Cloud link bandwidths to sweep, Mbps, e.g. 300,30,3."
            ),
        ] = None,
        policy: Annotated[
            list[str] | None,
            typer.Option("--policy", "-p", help="Policies (repeat; default: a set of six)."),
        ] = None,
        seeds: Annotated[int, seed_count(..., help="Number of seeds (runs seeds 1..N).")] = 1,
        duration: Annotated[
            float | None, typer.Option(help="Override each scenario's duration (s).")
        ] = None,
        processes: Annotated[
            int,
            integer(..., min=1, max=MAX_PROCESSES, help="Worker processes (1: this one)."),
        ] = 1,
        bound: Annotated[
            bool, typer.Option("--bound/--no-bound", help="Hindsight bound at every point.")
        ] = True,
        out: Annotated[
            Path, output_path(..., help="Folder for the JSON, CSV and PNG files.")
        ] = Path("out/sweep"),
    ) -> None:
        """Every policy against load and/or cloud bandwidth, with the hindsight bound.

        Success, goodput, energy, edge share, quality violations, late/shed/rejected and
        the distance to the bound; one JSON, CSV and PNG per (scenario, axis)
        (docs/sweep.md)."""
        from perllm.scenario import ScenarioError
        from perllm.sweep.transforms import SweepError

        try:
            if duration is not None and not (math.isfinite(duration) and duration >= 1):
                # as `perllm simulate --duration`: at least one second (one decision slot)
                raise SweepError(f"--duration: must be a finite number ≥ 1 (s), got {duration}")
            axes = sweep_axes(load, load_x, cloud_mbps)
            pols = policy or DEFAULT_POLICIES
            sweeps = build_sweeps(scenarios or DEFAULT_SCENARIOS, axes, pols, duration)
        except (SweepError, ScenarioError) as e:
            err.print(f"[red]error:[/red] {e}")
            raise typer.Exit(2) from None
        ensure_writable("--out", out, err)  # before the runs, not after them
        try:
            # Trace files are read when the runs start: their errors name the field too.
            results, total = run_with_progress(sweeps, pols, seeds, processes, bound)
        except ScenarioError as e:
            err.print(f"[red]error:[/red] {e}")
            raise typer.Exit(2) from None
        report(results, out, total, processes)


def sweep_axes(
    load: str | None, load_x: str | None, cloud_mbps: str | None
) -> list[tuple[str, list[float]]]:
    """The axes the flags ask for, each with its values (`SweepError` if none or both loads)."""
    from perllm.sweep.transforms import SweepError

    if load is not None and load_x is not None:
        raise SweepError("--load and --load-x: choose one (absolute req/s or multipliers)")
    axes: list[tuple[str, list[float]]] = []
    if load is not None:
        axes.append(("load_rps", parse_values("--load", load)))
    if load_x is not None:
        axes.append(("load_x", parse_values("--load-x", load_x)))
    if cloud_mbps is not None:
        axes.append(("cloud_mbps", parse_values("--cloud-mbps", cloud_mbps)))
    if not axes:
        raise SweepError(
            "nothing to sweep: give --load (req/s), --load-x (multipliers) "
            "and/or --cloud-mbps (Mbps)"
        )
    return axes


def build_sweeps(
    scenarios: list[str],
    axes: list[tuple[str, list[float]]],
    pols: list[str],
    duration: float | None,
) -> list[Sweep]:
    """One sweep per (scenario, axis), after checking the policies."""
    from perllm.scenario import check_unique_names, load_scenario
    from perllm.sweep.run import Sweep, check_policies
    from perllm.sweep.transforms import set_duration

    check_policies(pols)
    loaded = [(name, load_scenario(name)) for name in scenarios]
    check_unique_names(loaded)  # their files are named after them
    sweeps = []
    for _, sc in loaded:
        if duration is not None:
            sc = set_duration(sc, duration)
        for axis, values in axes:
            sweeps.append(Sweep.build(sc, axis, values))  # type: ignore[arg-type]
    return sweeps


def run_with_progress(
    sweeps: list[Sweep], pols: list[str], seeds: int, processes: int, bound: bool
) -> tuple[list[SweepResult], int]:
    """Run the sweeps with a progress bar on stderr; (results, number of jobs)."""
    from perllm.sweep.run import run_sweep, total_jobs

    seed_list = list(range(1, seeds + 1))
    total = total_jobs(sweeps, len(pols), seeds, bound)
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=not sys.stderr.isatty(),
    ) as prog:
        task = prog.add_task(
            f"{sum(len(s.points) for s in sweeps)} points × {len(pols)} policies × "
            f"{seeds} seeds{' + bounds' if bound else ''}",
            total=total,
        )

        def done(label: str) -> None:
            prog.update(task, advance=1, description=label)

        results = run_sweep(sweeps, pols, seed_list, processes, bound, done)
    return results, total


def report(results: list[SweepResult], out: Path, total: int, processes: int) -> None:
    """Write each sweep's files and print its table."""
    from perllm.sweep.outputs import write_outputs

    console = Console(width=None if sys.stdout.isatty() else 160)
    for res in results:
        print_table(console, res.to_dict())  # (before the files: printed if they fail)
        for d in res.bound_skipped:
            console.print(f"note: {d['reason']}")
        with writing("--out", err):
            paths = write_outputs(res, out)
        console.print("wrote " + ", ".join(str(p) for p in paths))
    console.print(f"{total} jobs in {results[0].wall_s:.1f} s with {processes} process(es)")
