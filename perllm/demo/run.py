"""One demo run: start the stack, watch it for --duration, stop everything, then the
routed phase (perllm/demo/routed.py) unless --no-router; report."""

from __future__ import annotations

import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live

from perllm.burst import NoReplicaNodes
from perllm.demo.binaries import ensure_binaries
from perllm.demo.config import DemoConfig
from perllm.demo.observe import OURS, Observer, Sample
from perllm.demo.rbac import CHART
from perllm.demo.report import plot, summarise, summary_table, write_json
from perllm.demo.routed import chat_edge, routed_nodes, run_routed
from perllm.demo.routed_view import routed_table
from perllm.demo.stack import Stack, demo_inputs
from perllm.demo.view import pct, render, totals
from perllm.devcluster.process import sigterm_as_interrupt


class DemoError(RuntimeError):
    """A component died or did not start; the message names it and its log."""


@dataclass
class DemoResult:
    summary: dict[str, Any]
    samples: list[Sample] = field(default_factory=list)
    json_path: Path | None = None
    plot_path: Path | None = None
    interrupted: bool = False
    error: str | None = None


def run_demo(
    config: DemoConfig,
    console: Console | None = None,
    inputs: tuple[Path, list[dict[str, Any]]] | None = None,
) -> DemoResult:
    """The demo; `inputs`: `demo_inputs(config)` if the caller checked them already."""
    # Tables are wide: keep them readable when piped (rich falls back to 80 columns).
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    # a typo in --scenario or --services is named before a first run's 10-15 minute build
    scenario, services = inputs or demo_inputs(config)
    with sigterm_as_interrupt():  # one path for Ctrl-C and SIGTERM: stop what we started
        config.out.mkdir(parents=True, exist_ok=True)
        binaries = ensure_binaries(console, helm=CHART.is_dir())
        stack = Stack(config, console, binaries, scenario, services)
        samples: list[Sample] = []
        final: Final | None = None
        interrupted, error = False, None
        try:
            stack.start()
            samples, final = _watch(stack, config, console)
        except KeyboardInterrupt:
            interrupted = True
            console.print("[yellow]interrupted: stopping everything the demo started[/yellow]")
        except DemoError as e:
            error = str(e)
            console.print(f"[red]error:[/red] {e}", highlight=False)
        finally:
            # The routed phase needs no cluster: its CPU goes to the timed replay instead.
            stack.stop()
            console.print(f"stopped; logs in {config.run_dir}")
        summary = _placement_summary(config, stack, samples, final, interrupted, error)
        if samples:
            console.print(summary_table(summary))
        if config.router and samples and not interrupted and error is None:
            interrupted, error = _routed_phase(config, console, summary)
        return _write(config, summary, samples, console, interrupted, error)


def _routed_phase(
    config: DemoConfig, console: Console, summary: dict[str, Any]
) -> tuple[bool, str | None]:
    """The routed phase after the placement phase, into `summary["routed"]`: (interrupted,
    error). Skipped with a note only where the scenario has no edge and cloud node for
    chat; any other failure is the demo's error, naming the phase and a log of its
    traceback (summary["error"] too), not a skip."""
    try:
        nodes = routed_nodes(config, chat_edge(summary["placements"]))
    except NoReplicaNodes as e:
        console.print(f"[yellow]routed phase skipped:[/yellow] {e}", highlight=False)
        return False, None
    try:
        summary["routed"] = run_routed(config, console, nodes)
        console.print(routed_table(summary["routed"]))
    except KeyboardInterrupt:
        summary["interrupted"] = True
        summary.pop("routed", None)
        console.print("[yellow]interrupted: the routed phase is left out[/yellow]")
        return True, None
    except Exception as e:
        log = config.run_dir / "routed.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(traceback.format_exc())
        error = f"routed phase (perllm.demo.routed) failed: {type(e).__name__}: {e}; log {log}"
        summary["error"] = error
        console.print(f"[red]error:[/red] {error}", highlight=False)
        return False, error
    return False, None


def _header(config: DemoConfig, t: float) -> str:
    return (
        f"PerLLM demo · scenario {config.scenario} · {t:4.0f} / {config.duration_s:.0f} s "
        f"· twin speed x{config.speed:g} (≈ {t * config.speed:,.0f} simulated s) · warm-up "
        f"{config.warmup:.0f} s · Ctrl-C stops"
    )


# the placements reported at the end: the services' status and pods once they agree
Final = tuple[Sample, bool]


def _watch(stack: Stack, config: DemoConfig, console: Console) -> tuple[list[Sample], Final]:
    assert stack.endpoints is not None and stack.cluster is not None
    obs = Observer(stack.endpoints.prometheus, stack.cluster.kubeconfig, config.namespace)
    samples: list[Sample] = []
    reported: set[str] = set()
    live = Live(console=console, refresh_per_second=2, transient=False) if config.live else None
    next_line = 0.0
    if live is not None:
        live.start()
    try:
        while True:
            s = obs.sample()
            samples.append(s)
            for p in stack.dead():
                if p.name not in reported:
                    reported.add(p.name)
                    raise DemoError(f"{p.name} exited; log {p.log}:\n{p.tail(30)}")
            if live is not None:
                live.update(
                    render(
                        samples,
                        header=_header(config, s.t),
                        warmup=config.warmup,
                        notes=stack.notes,
                    )
                )
            elif s.t >= next_line:
                next_line = s.t + 10
                console.print(_progress_line(samples, config), highlight=False)
            if s.t >= config.duration_s:
                # a re-placement begun in the last second would show a pending pod or one
                # whose decision is not yet published: report the placements once settled
                return samples, obs.settle(config.settle_timeout_s)
            time.sleep(max(0.0, config.sample_every_s - (time.monotonic() - obs.t0 - s.t)))
    finally:
        if live is not None:
            live.stop()


def _progress_line(samples: list[Sample], config: DemoConfig) -> str:
    s = samples[-1]
    placed = sum(1 for st in s.status.values() if st.get("placement"))
    bound = ", ".join(
        f"{svc}@{'+'.join(n or 'pending' for n in nodes)}" for svc, nodes in sorted(s.pods.items())
    )
    parts = [f"t={s.t:4.0f}s decisions {placed}/{len(s.status)} ({bound or 'no pods'})"]
    for p, (_, rec) in totals(samples, config.warmup).items():
        name = "perllm" if p == OURS else p
        parts.append(
            f"{name} {pct(rec.attainment)} "
            f"{'—' if rec.j_per_request is None else f'{rec.j_per_request:,.0f}'} J/req"
        )
    return " | ".join(parts)


def _placement_summary(
    config: DemoConfig,
    stack: Stack,
    samples: list[Sample],
    final: Final | None,
    interrupted: bool,
    error: str | None,
) -> dict[str, Any]:
    meta = {
        "scenario": config.scenario,
        "duration_s": config.duration_s,
        "speed": config.speed,
        "warmup_s": config.warmup,
        "namespace": config.namespace,
        "twin": stack.twin_running,
        "notes": stack.notes,
        "interrupted": interrupted,
        "error": error,
    }
    if final is not None:
        meta["placements_settled"] = final[1]
    return summarise(samples, config.warmup, meta, final=None if final is None else final[0])


def _write(
    config: DemoConfig,
    summary: dict[str, Any],
    samples: list[Sample],
    console: Console,
    interrupted: bool,
    error: str | None,
) -> DemoResult:
    res = DemoResult(summary, samples, interrupted=interrupted, error=error)
    if samples:
        res.json_path = write_json(summary, samples, config.out / "demo.json")
        res.plot_path = plot(
            samples,
            config.warmup,
            config.out / "demo.png",
            f"PerLLM demo: {config.scenario} (twin speed x{config.speed:g})",
            routed=summary.get("routed"),
        )
        console.print(f"wrote {res.json_path}" + (f" and {res.plot_path}" if res.plot_path else ""))
    return res
