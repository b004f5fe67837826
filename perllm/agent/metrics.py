"""The agent's own series (not part of the shared contract) and the exposition it serves."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from perllm.telemetry import names

# perllm_agent_* series; PerLLM's node-level label `node` on each
SOURCE_UP = "perllm_agent_source_up"  # gauge 0/1; labels node, source
PROBE_FAILURES = "perllm_agent_probe_failures_total"  # counter; labels node, peer
SOURCES = ("nvml", "rapl", "probe")

# dcgm-exporter declares these `counter` under their bare DCGM field name (no `_total`;
# etc/default-counters.csv, rendermetrics). prometheus_client always appends `_total` to a
# counter, so the agent builds them as gauges and corrects the TYPE line: the name, value,
# labels and declared type then match dcgm-exporter's text format exactly.
DCGM_UNSUFFIXED_COUNTERS = (names.DCGM_ENERGY_MJ,)


def exposition(registry: CollectorRegistry) -> bytes:
    """Prometheus text format 0.0.4 (what dcgm-exporter serves; no OpenMetrics)."""
    text = generate_latest(registry)
    for name in DCGM_UNSUFFIXED_COUNTERS:
        text = text.replace(f"# TYPE {name} gauge\n".encode(), f"# TYPE {name} counter\n".encode())
    return text
