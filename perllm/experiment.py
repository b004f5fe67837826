"""The paper's experiment: scenarios × policies × seeds, with regret and learning curves."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from perllm import policies
from perllm.bound import BoundResult, bounds_for
from perllm.costmodel import build_cost_table
from perllm.csucb import CSUCBConfig
from perllm.estimate import energy_scale
from perllm.report import build_report, reward_series
from perllm.scenario import Scenario
from perllm.world.result import RunResult
from perllm.world.sim import simulate

F = NDArray[np.float64]
Progress = Callable[[str, int, int], None]  # (label, done slots, total slots)
# The per-round clairvoyant policy regret is measured against (not an optimum: docs/bound.md).
BASELINE = "clairvoyant-greedy"


@dataclass
class Experiment:
    runs: list[RunResult]
    report: dict[str, Any]
    regret_curves: dict[str, dict[str, F]] = field(default_factory=dict)
    learning: dict[str, dict[str, tuple[F, F, F]]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    bounds: dict[tuple[str, int], BoundResult] = field(default_factory=dict)
    regret_totals: dict[str, dict[str, float]] = field(default_factory=dict)

    def report_regret(self) -> dict[str, dict[str, float]]:
        return self.regret_totals


def run_experiment(
    scenarios: Sequence[Scenario],
    policy_names: Sequence[str],
    seeds: Sequence[int],
    progress: Progress | None = None,
    bound: bool = False,
    bound_progress: Callable[[str], None] | None = None,
) -> Experiment:
    """Every policy on every scenario and seed; with `bound`, also the hindsight bound of
    each (scenario, seed) and every run's distance to it (docs/bound.md)."""
    runs: list[RunResult] = []
    for sc in scenarios:
        for seed in seeds:
            for name in policy_names:
                label = f"{sc.name} · {name} · seed {seed}"
                cb = (lambda d, t, lab=label: progress(lab, d, t)) if progress else None
                runs.append(simulate(sc, policies.make(name), seed, on_slot=cb))
    regret, regret_summary = _regret(scenarios, runs)
    bounds = bounds_for(scenarios, seeds, progress=bound_progress) if bound else {}
    report = build_report(runs, regret_summary, bounds)
    return Experiment(
        runs=runs,
        report=report,
        regret_curves=regret,
        learning=_learning(scenarios, runs),
        bounds=bounds,
        regret_totals=regret_summary,
    )


def _regret(
    scenarios: Sequence[Scenario], runs: list[RunResult]
) -> tuple[dict[str, dict[str, F]], dict[str, dict[str, float]]]:
    """Cumulative regret of each policy against clairvoyant greedy on the same workload
    (reward as CS-UCB defines it), first seed for the curves, mean over seeds for totals."""
    theta = CSUCBConfig().theta
    curves: dict[str, dict[str, F]] = {}
    totals: dict[str, dict[str, list[float]]] = {}
    for sc in scenarios:
        t = build_cost_table(sc.services(), sc.expanded_servers(), sc.catalogue)
        scale = energy_scale(t, sc.weights)
        mine = [r for r in runs if r.scenario == sc.name]
        greedy = {r.seed: r for r in mine if r.policy == BASELINE}
        if not greedy:
            continue
        first = min(greedy)
        for r in mine:
            if r.policy == BASELINE or r.seed not in greedy:
                continue
            diff = reward_series(greedy[r.seed], scale, theta) - reward_series(r, scale, theta)
            cum = np.cumsum(diff)
            total = float(cum[-1]) if len(cum) else 0.0  # a run without requests: none
            totals.setdefault(sc.name, {}).setdefault(r.policy, []).append(total)
            if r.seed == first:
                curves.setdefault(sc.name, {})[r.policy] = cum
    summary = {sc: {p: float(np.mean(v)) for p, v in pols.items()} for sc, pols in totals.items()}
    return curves, summary


def _learning(
    scenarios: Sequence[Scenario], runs: list[RunResult], window_s: float = 60.0
) -> dict[str, dict[str, tuple[F, F, F]]]:
    """Windowed success and marginal energy per service over time, first seed."""
    out: dict[str, dict[str, tuple[F, F, F]]] = {}
    for sc in scenarios:
        seeds = [r.seed for r in runs if r.scenario == sc.name]
        if not seeds:
            continue
        for r in runs:
            if (
                r.scenario != sc.name
                or r.seed != min(seeds)
                or r.policy not in ("perllm", BASELINE)
            ):
                continue
            w = np.floor(r.requests.arrival / window_s).astype(int)
            nw = int(w.max()) + 1 if len(w) else 0
            count = np.bincount(w, minlength=nw).astype(float)
            succ = np.bincount(w, weights=r.met.astype(float), minlength=nw) / np.maximum(count, 1)
            energy = np.bincount(w, weights=r.cost, minlength=nw) / np.maximum(count, 1)
            t_mid = (np.arange(nw, dtype=float) + 0.5) * window_s
            out.setdefault(sc.name, {})[r.policy] = (t_mid, succ, energy)
    return out


def write_plots(exp: Experiment, out: Path) -> list[Path]:
    from perllm import plots

    out.mkdir(parents=True, exist_ok=True)
    paths = [plots.success_per_model(exp.report, out), plots.energy_breakdown(exp.report, out)]
    if exp.regret_curves:
        paths.append(plots.cumulative_regret(exp.regret_curves, out))
    if exp.learning:
        paths.append(plots.learning_curve(exp.learning, out))
    return paths
