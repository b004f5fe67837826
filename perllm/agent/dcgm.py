"""NVML readings in dcgm-exporter's shape: its units, its GPU label set, its series.

Units follow DCGM: NVML's mW become W, bytes become MiB (floored, as DCGM reports them),
energy stays mJ (nvml.py converts; this module names and exports).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from perllm.telemetry import names

MIB = 1 << 20
# NVML_VALUE_NOT_AVAILABLE_{uint,ulonglong}: "no value" spelled as a number (as power, 4.29 MW)
NOT_AVAILABLE = (0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF)
# dcgm-exporter's GPU label set (rendermetrics gpuMetricsFormat), host label as released,
# and the driver version that its default-counters.csv attaches as a `label` row
LABELS = ("gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname", "DCGM_FI_DRIVER_VERSION")


@dataclass(frozen=True)
class GpuReading:
    labels: tuple[str, ...]  # values for LABELS
    power_w: float | None = None
    energy_mj: float | None = None
    util_pct: float | None = None
    fb_used_mib: float | None = None
    fb_free_mib: float | None = None

    @property
    def has_value(self) -> bool:
        """Whether any field was read (a lost GPU answers none)."""
        vals = (self.power_w, self.energy_mj, self.util_pct, self.fb_used_mib, self.fb_free_mib)
        return any(v is not None for v in vals)


def text(v: Any) -> str:
    """NVML strings are bytes in old bindings, str in current ones."""
    return v.decode() if isinstance(v, bytes) else str(v)


def families(rs: Iterable[GpuReading]) -> list[Metric]:
    """The DCGM series of `rs`; a field not read is absent for that GPU only."""
    fams = {
        "power_w": GaugeMetricFamily(names.DCGM_POWER_W, "Power draw (in W).", labels=LABELS),
        "energy_mj": GaugeMetricFamily(
            names.DCGM_ENERGY_MJ, "Total energy consumption since boot (in mJ).", labels=LABELS
        ),
        "util_pct": GaugeMetricFamily(
            names.DCGM_GPU_UTIL, "GPU utilization (in %).", labels=LABELS
        ),
        "fb_used_mib": GaugeMetricFamily(
            names.DCGM_FB_USED_MIB, "Framebuffer memory used (in MiB).", labels=LABELS
        ),
        "fb_free_mib": GaugeMetricFamily(
            names.DCGM_FB_FREE_MIB, "Framebuffer memory free (in MiB).", labels=LABELS
        ),
    }
    for r in rs:
        for attr, fam in fams.items():
            v = getattr(r, attr)
            if v is not None:
                fam.add_metric(list(r.labels), v)
    return [f for f in fams.values() if f.samples]
