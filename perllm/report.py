"""Aggregate simulation runs into the paper-shaped tables and the JSON report."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from perllm.world.result import RunResult

if TYPE_CHECKING:
    from perllm.bound import BoundResult

REFERENCE_POLICY = "perllm"


@dataclass(frozen=True)
class Metrics:
    success_rate: float
    throughput_rps: float
    goodput_rps: float
    energy_j_per_service: float
    energy_breakdown_j: dict[str, float]  # per service
    services: int
    per_model: dict[str, dict[str, float]]
    per_class: dict[str, dict[str, float]]
    edge_share: float  # of the requests that ran (shed and rejected ones never did)
    wall_s: float
    # Failures by kind, as shares of all requests: shed by the policy, rejected by the
    # world's admission control, run but finished after the deadline, run on a variant
    # below the request's quality floor (a request can be both late and below its floor).
    shed_rate: float = 0.0
    rejected_rate: float = 0.0
    late_rate: float = 0.0
    quality_violation_rate: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "success_rate": self.success_rate,
            "throughput_rps": self.throughput_rps,
            "goodput_rps": self.goodput_rps,
            "energy_j_per_service": self.energy_j_per_service,
            "energy_breakdown_j": self.energy_breakdown_j,
            "services": self.services,
            "per_model": self.per_model,
            "per_class": self.per_class,
            "edge_share": self.edge_share,
            "wall_s": self.wall_s,
            "shed_rate": self.shed_rate,
            "rejected_rate": self.rejected_rate,
            "late_rate": self.late_rate,
            "quality_violation_rate": self.quality_violation_rate,
        }


def run_metrics(r: RunResult) -> Metrics:
    n = len(r.time)
    in_time = r.finish <= r.duration_s
    eb = {k: v / max(n, 1) for k, v in r.energy_breakdown_j.items()}
    per_model: dict[str, dict[str, float]] = {}
    per_class: dict[str, dict[str, float]] = {}
    cls = r.requests.cls
    shed, rejected = r.shed, r.rejected
    ran = ~(shed | rejected)
    for model in sorted(set(r.models)):
        mask = np.isin(cls, [c for c, mm in enumerate(r.models) if mm == model])
        per_model[model] = {
            "success_rate": float(r.met[mask].mean()) if mask.any() else 0.0,
            "services": int(mask.sum()),
        }
    for c, name in enumerate(r.class_names):
        mask = cls == c
        timed = mask & ran  # shed and rejected requests have no processing time
        per_class[name] = {
            "success_rate": float(r.met[mask].mean()) if mask.any() else 0.0,
            "services": int(mask.sum()),
            "p95_time_s": float(np.percentile(r.time[timed], 95)) if timed.any() else 0.0,
        }
    edge = np.array([t == "edge" for t in r.tiers], bool)[r.server[ran]]
    return Metrics(
        success_rate=float(r.met.mean()) if n else 0.0,
        # Served requests only: a rejected request has a finish time (when the client
        # heard of the rejection) but was never processed.
        throughput_rps=float((in_time & ran).sum() / r.duration_s),
        goodput_rps=float((in_time & r.met).sum() / r.duration_s),
        energy_j_per_service=float(sum(eb.values())),
        energy_breakdown_j=eb,
        services=n,
        per_model=per_model,
        per_class=per_class,
        edge_share=float(edge.mean()) if edge.size else 0.0,
        wall_s=r.wall_s,
        shed_rate=float(shed.mean()) if n else 0.0,
        rejected_rate=float(rejected.mean()) if n else 0.0,
        late_rate=float((ran & (r.time > r.requests.deadline)).mean()) if n else 0.0,
        quality_violation_rate=float((ran & ~r.quality_ok).mean()) if n else 0.0,
    )


def _mean_metrics(ms: list[Metrics]) -> dict[str, Any]:
    """Mean over seeds, with the per-seed values kept."""
    d0 = ms[0].to_dict()
    out: dict[str, Any] = {}
    for k, v in d0.items():
        if isinstance(v, int | float):
            vals = [float(m.to_dict()[k]) for m in ms]
            out[k] = float(np.mean(vals))
            if k in ("success_rate", "energy_j_per_service", "throughput_rps"):
                out[f"{k}_std"] = float(np.std(vals))
        elif k == "energy_breakdown_j":
            out[k] = {p: float(np.mean([m.energy_breakdown_j[p] for m in ms])) for p in v}
        else:  # per_model / per_class: average each inner number
            out[k] = {
                name: {f: float(np.mean([getattr(m, k)[name][f] for m in ms])) for f in inner}
                for name, inner in v.items()
            }
    out["services"] = int(sum(m.services for m in ms))
    out["seeds"] = len(ms)
    return out


def build_report(
    runs: list[RunResult],
    regret: dict[str, dict[str, float]] | None = None,
    bounds: dict[tuple[str, int], BoundResult] | None = None,
) -> dict[str, Any]:
    """JSON report: per scenario and policy the seed-mean metrics, plus ratios against
    CS-UCB (throughput: other/ours inverted as ours/other; energy: ours/other) and, with
    `bounds` (per scenario and seed), the hindsight bound and each policy's distance to it
    (`vs_bound`: success gap in points, energy ratio to the bound's least energy at the
    policy's own success; means over the seeds that have a bound, counted in `seeds`)."""
    grouped: dict[str, dict[str, list[Metrics]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        grouped[r.scenario][r.policy].append(run_metrics(r))
    scenarios: dict[str, Any] = {}
    for sc, pols in grouped.items():
        entry: dict[str, Any] = {"policies": {p: _mean_metrics(ms) for p, ms in pols.items()}}
        ours = entry["policies"].get(REFERENCE_POLICY)
        if ours:
            entry["ratios_vs_perllm"] = {
                p: {
                    "throughput_ratio": _ratio(ours["throughput_rps"], m["throughput_rps"]),
                    "goodput_ratio": _ratio(ours["goodput_rps"], m["goodput_rps"]),
                    "energy_ratio": _ratio(ours["energy_j_per_service"], m["energy_j_per_service"]),
                }
                for p, m in entry["policies"].items()
                if p != REFERENCE_POLICY
            }
        if regret and sc in regret:
            entry["regret_vs_clairvoyant_greedy"] = regret[sc]
        if bounds:
            _add_bound(entry, [r for r in runs if r.scenario == sc], bounds)
        scenarios[sc] = entry
    return {"scenarios": scenarios}


def _add_bound(
    entry: dict[str, Any], runs: list[RunResult], bounds: dict[tuple[str, int], BoundResult]
) -> None:
    mine = [b for (sc, _), b in bounds.items() if runs and sc == runs[0].scenario]
    if not mine:
        return
    per_seed = [b.to_dict() for b in sorted(mine, key=lambda b: b.seed)]
    # A skipped seed (too large, LP unsolved) has no bound: these means, and the
    # distances below (each run against its own seed's bound), cover `seeds` seeds,
    # possibly fewer than the policies' means above.
    entry["bound"] = {
        k: float(np.mean([d[k] for d in per_seed]))
        for k in (
            "success_rate_ub",
            "energy_lb_j_per_service",
            "energy_lb_floor_j_per_service",
            "build_s",
            "solve_s",
        )
    } | {"seeds": len(per_seed), "per_seed": per_seed}
    dist: dict[str, list[dict[str, float]]] = defaultdict(list)
    for r in runs:
        b = bounds.get((r.scenario, r.seed))
        if b is not None:
            total = sum(r.energy_breakdown_j.values())
            dist[r.policy].append(b.distance(int(r.met.sum()), total))
    entry["vs_bound"] = {
        p: {k: float(np.mean([d[k] for d in ds])) for k in ds[0]} | {"seeds": len(ds)}
        for p, ds in dist.items()
    }


def finite_json(x: Any) -> Any:
    """`x` for strict JSON: every non-finite float (Infinity, NaN) becomes None (null)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: finite_json(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [finite_json(v) for v in x]
    return x


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def reward_series(
    r: RunResult, energy_scale: NDArray[np.float64], theta: float
) -> NDArray[np.float64]:
    """Per-request reward in arrival order, as CS-UCB defines it."""
    e = np.minimum(r.cost / energy_scale[r.requests.cls], 2.0)
    return np.asarray(-e - theta * (~r.met), dtype=float)
