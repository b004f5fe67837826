"""Per-run metrics of a sweep, read from a `RunResult` (shed/rejected when it has them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from perllm.world.result import RunResult


@dataclass(frozen=True)
class Metric:
    key: str
    label: str  # axis label of its panel
    scale: float = 1.0  # stored value × scale = plotted / printed value


# Order = the panels of the PNG and the columns of the CSV.
METRICS: tuple[Metric, ...] = (
    Metric("success_rate", "deadline success (%)", 100.0),
    Metric("goodput_rps", "goodput (req/s)"),
    Metric("energy_j_per_service", "energy (J / service)"),
    Metric("edge_share", "on edge (% of run)", 100.0),
    Metric("quality_violation_rate", "quality floor violated (%)", 100.0),
    Metric("late_rate", "late: ran, missed deadline (%)", 100.0),
    Metric("shed_rate", "shed by policy (%)", 100.0),
    Metric("rejected_rate", "rejected by admission (%)", 100.0),
    Metric("success_gap_points", "success gap to bound (points)"),
    Metric("energy_ratio", "energy / bound's least (×)"),
)
BOUND_METRICS = ("success_gap_points", "energy_ratio", "bound_energy_lb_j_per_service")


def _flag(r: RunResult, name: str, n: int) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """RunResult.shed / .rejected if this version of the simulator has them, else none."""
    v = getattr(r, name, None)
    a = np.zeros(n, bool) if v is None else np.asarray(v, bool)
    return a if a.shape == (n,) else np.zeros(n, bool)


def run_row(r: RunResult) -> dict[str, float]:
    """The sweep's metrics of one run (fractions of all requests unless named otherwise).

    success_rate: met deadline and quality floor; goodput_rps: met and completed within the
    scenario's duration, per second; energy_j_per_service: transmission + inference + idle
    of every powered server over each one's horizon / requests (as `report.run_metrics`);
    edge_share: of the requests that ran, placed on an edge server; quality_violation_rate:
    ran on a variant below the request's floor; late_rate: ran but finished after its
    deadline; shed_rate / rejected_rate: never ran (shed by the policy / refused by the
    world's admission control); 0 on simulators without them."""
    n = len(r.time)
    shed, rejected = _flag(r, "shed", n), _flag(r, "rejected", n)
    ran = ~shed & ~rejected & (r.server >= 0)
    nn = max(n, 1)
    edge_tier = np.array([t == "edge" for t in r.tiers], bool)
    on_edge = np.zeros(n, bool)
    on_edge[ran] = edge_tier[r.server[ran]]
    in_time = r.finish <= r.duration_s
    total_j = float(sum(r.energy_breakdown_j.values()))
    return {
        "requests": float(n),
        "met": float(r.met.sum()),
        "energy_j": total_j,
        "success_rate": float(r.met.sum()) / nn,
        "goodput_rps": float((in_time & r.met).sum()) / r.duration_s,
        "energy_j_per_service": total_j / nn,
        "edge_share": float(on_edge.sum()) / max(int(ran.sum()), 1),
        "quality_violation_rate": float((ran & ~r.quality_ok).sum()) / nn,
        "late_rate": float((ran & (r.time > r.requests.deadline)).sum()) / nn,
        "shed_rate": float(shed.sum()) / nn,
        "rejected_rate": float(rejected.sum()) / nn,
        "wall_s": r.wall_s,
    }
