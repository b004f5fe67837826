"""Per-run metrics of a sweep: the report's, per run, in the order of the panels."""

from __future__ import annotations

from dataclasses import dataclass

from perllm.report import run_metrics
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


def run_row(r: RunResult) -> dict[str, float | None]:
    """The sweep's metrics of one run: `report.run_metrics` (fractions of all requests
    unless named otherwise; edge share of the requests that ran; None where undefined: a
    run without requests), plus the counts and the total energy the sweep's aggregation
    needs."""
    m = run_metrics(r)
    return {
        "requests": float(m.services),
        "met": float(r.met.sum()),
        "energy_j": float(sum(r.energy_breakdown_j.values())),
        "success_rate": m.success_rate,
        "goodput_rps": m.goodput_rps,
        "energy_j_per_service": m.energy_j_per_service,
        "edge_share": m.edge_share,
        "quality_violation_rate": m.quality_violation_rate,
        "late_rate": m.late_rate,
        "shed_rate": m.shed_rate,
        "rejected_rate": m.rejected_rate,
        "wall_s": m.wall_s,
    }
