"""`perllm sweep`: every chosen policy against load and cloud bandwidth, with the hindsight
bound at every point (docs/sweep.md)."""

from perllm.sweep.metrics import METRICS, run_row
from perllm.sweep.outputs import write_outputs
from perllm.sweep.run import Sweep, SweepPoint, SweepResult, run_sweep
from perllm.sweep.transforms import (
    SweepError,
    base_rate,
    scale_load,
    set_cloud_bandwidth,
    set_load,
)

__all__ = [
    "METRICS",
    "Sweep",
    "SweepError",
    "SweepPoint",
    "SweepResult",
    "base_rate",
    "run_row",
    "run_sweep",
    "scale_load",
    "set_cloud_bandwidth",
    "set_load",
    "write_outputs",
]
