"""Hindsight bound: an offline LP relaxation over a whole run with the world's realised
sizes, speeds and bandwidths. It gives an upper bound on deadline success and, at a given
success, a lower bound on the energy per service the report counts (docs/bound.md)."""

from perllm.bound.model import Pairs, build_pairs, demand_rows
from perllm.bound.result import BoundResult, BoundSkipped, bounds_for, compute_bound
from perllm.bound.solve import BoundError, EnergySolution, HindsightBound

__all__ = [
    "BoundError",
    "BoundResult",
    "BoundSkipped",
    "EnergySolution",
    "HindsightBound",
    "Pairs",
    "bounds_for",
    "build_pairs",
    "compute_bound",
    "demand_rows",
]
