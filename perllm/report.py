"""Aggregate simulation runs into the paper-shaped tables and the JSON report."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from perllm.world.result import NO_REQUESTS, RunResult

if TYPE_CHECKING:
    from perllm.bound import BoundResult

REFERENCE_POLICY = "perllm"


@dataclass(frozen=True)
class Metrics:
    # None: undefined, the run had no request (`world.result.NO_REQUESTS`): not 0 %, nor
    # its idle energy "per service" (null in JSON, empty in CSV, n/a in tables)
    success_rate: float | None
    throughput_rps: float
    goodput_rps: float
    energy_j_per_service: float | None
    energy_breakdown_j: dict[str, float | None]  # per service
    services: int
    per_model: dict[str, dict[str, float | None]]
    per_class: dict[str, dict[str, float | None]]
    # of the requests that ran (shed and rejected ones never did); None: none ran
    edge_share: float | None
    wall_s: float
    # Failures by kind, as shares of all requests: shed by the policy, rejected by the
    # world's admission control, run but finished after the deadline, run on a variant
    # below the request's quality floor (a request can be both late and below its floor).
    shed_rate: float | None = 0.0
    rejected_rate: float | None = 0.0
    late_rate: float | None = 0.0
    quality_violation_rate: float | None = 0.0

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


def _share(mask: NDArray[np.bool_]) -> float | None:
    """The share of True in `mask`; None for no element (0 of 0 is no 0 %)."""
    return float(mask.mean()) if mask.size else None


def run_metrics(r: RunResult) -> Metrics:
    n = len(r.time)
    in_time = r.finish <= r.duration_s
    per_service = {k: v / max(n, 1) for k, v in r.energy_breakdown_j.items()}
    eb: dict[str, float | None] = {k: v if n else None for k, v in per_service.items()}
    per_model: dict[str, dict[str, float | None]] = {}
    per_class: dict[str, dict[str, float | None]] = {}
    cls = r.requests.cls
    shed, rejected = r.shed, r.rejected
    ran = ~(shed | rejected)
    for model in sorted(set(r.models)):
        mask = np.isin(cls, [c for c, mm in enumerate(r.models) if mm == model])
        per_model[model] = {"success_rate": _share(r.met[mask]), "services": int(mask.sum())}
    for c, name in enumerate(r.class_names):
        mask = cls == c
        timed = mask & ran  # shed and rejected requests have no processing time
        per_class[name] = {
            "success_rate": _share(r.met[mask]),
            "services": int(mask.sum()),
            "p95_time_s": float(np.percentile(r.time[timed], 95)) if timed.any() else None,
        }
    edge = np.array([t == "edge" for t in r.tiers], bool)[r.server[ran]]
    return Metrics(
        success_rate=_share(r.met),
        # Served requests only: a rejected request has a finish time (when the client
        # heard of the rejection) but was never processed.
        throughput_rps=float((in_time & ran).sum() / r.duration_s),
        goodput_rps=float((in_time & r.met).sum() / r.duration_s),
        energy_j_per_service=float(sum(per_service.values())) if n else None,
        energy_breakdown_j=eb,
        services=n,
        per_model=per_model,
        per_class=per_class,
        edge_share=_share(edge),
        wall_s=r.wall_s,
        shed_rate=_share(shed),
        rejected_rate=_share(rejected),
        late_rate=_share(ran & (r.time > r.requests.deadline)),
        quality_violation_rate=_share(ran & ~r.quality_ok),
    )


def _mean(vals: list[float | None]) -> float | None:
    """Mean over the seeds where the value is defined (None: in none)."""
    v = [x for x in vals if x is not None]
    return float(np.mean(v)) if v else None


def _mean_metrics(ms: list[Metrics]) -> dict[str, Any]:
    """Mean over seeds, with the per-seed values kept; an undefined value (a seed without
    requests) is left out of its mean."""
    d0 = ms[0].to_dict()
    ds = [m.to_dict() for m in ms]
    out: dict[str, Any] = {}
    for k, v in d0.items():
        if k == "energy_breakdown_j":
            out[k] = {p: _mean([m.energy_breakdown_j[p] for m in ms]) for p in v}
        elif k in ("per_model", "per_class"):  # average each inner number
            out[k] = {
                name: {f: _mean([getattr(m, k)[name][f] for m in ms]) for f in inner}
                for name, inner in v.items()
            }
        else:
            vals = [d[k] for d in ds]
            out[k] = _mean(vals)
            if k in ("success_rate", "energy_j_per_service", "throughput_rps"):
                defined = [x for x in vals if x is not None]
                out[f"{k}_std"] = float(np.std(defined)) if defined else None
    out["services"] = int(sum(m.services for m in ms))
    out["seeds"] = len(ms)
    out["seeds_without_requests"] = sum(m.services == 0 for m in ms)
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
        empty = max(m["seeds_without_requests"] for m in entry["policies"].values())
        if empty:  # (the same arrivals for every policy of a seed)
            seeds = max(m["seeds"] for m in entry["policies"].values())
            what = "success, J/service, edge share and the failure rates are undefined"
            entry["note"] = (
                f"{NO_REQUESTS} in any of its {seeds} seed(s): {what} (null)"
                if empty == seeds
                else f"{NO_REQUESTS} in {empty} of {seeds} seeds: {what} there (null), and "
                "each mean is over the other seeds"
            )
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


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b is not None and b > 0 else None


def reward_series(
    r: RunResult, energy_scale: NDArray[np.float64], theta: float
) -> NDArray[np.float64]:
    """Per-request reward in arrival order, as CS-UCB defines it."""
    e = np.minimum(r.cost / energy_scale[r.requests.cls], 2.0)
    return np.asarray(-e - theta * (~r.met), dtype=float)
