"""PromQL the scheduler extender reads: the per-refresh telemetry snapshot and the
learning pass. Each query is built here once from the metric names in `names`; the
general builders shared with the operator (pod latency, node bandwidth, GPU power) stay
in `names`."""

from __future__ import annotations

import re

from perllm.telemetry import names

_BY_POD = f"sum by ({names.NAMESPACE}, {names.POD})"
_BY_SERVICE = f"sum by ({names.NAMESPACE}, {names.SERVICE})"


# A Prometheus duration: units from the largest down, each at most once ("1h30m", "90s")
_UNITS = (("y", 365 * 86400.0), ("w", 7 * 86400.0), ("d", 86400.0), ("h", 3600.0),
           ("m", 60.0), ("s", 1.0), ("ms", 0.001))  # fmt: skip
_DURATION = re.compile("".join(rf"(?:(\d+){u})?" for u, _ in _UNITS))


def window_seconds(window: str) -> float:
    """The seconds of a range-vector window such as "1m"; ValueError unless it is a
    positive Prometheus duration."""
    m = _DURATION.fullmatch(window)
    groups = m.groups() if m else ()
    seconds = sum(int(v) * s for v, (_, s) in zip(groups, _UNITS, strict=False) if v)
    if seconds <= 0:
        raise ValueError(f"{window!r} is no positive Prometheus duration (e.g. 1m, 90s, 1h30m)")
    return seconds


def _relabel(expr: str, to: str, frm: str) -> str:
    return f'label_replace({expr}, "{to}", "$1", "{frm}", "(.+)")'


def cpu_power_by_node() -> str:
    """CPU package power in W per node (sum over packages): the agent's RAPL reading,
    else Kepler's package zone (its `node_name` as `node`)."""
    kepler = _relabel(
        f'{names.KEPLER_NODE_CPU_W}{{zone="{names.KEPLER_ZONE}"}}', names.NODE,
        names.KEPLER_NODE_LABEL,
    )  # fmt: skip
    return f"(sum by ({names.NODE}) ({names.CPU_POWER_W})) or (sum by ({names.NODE}) ({kepler}))"


def pod_cpu_energy_per_request(window: str) -> str:
    """J of CPU package energy per finished request per (namespace, pod) over `window`:
    Kepler's energy attributed to the pod (series of terminated pods left out) over its
    requests (vLLM's count)."""
    energy = (
        f"increase({names.KEPLER_POD_CPU_J}"
        f'{{zone="{names.KEPLER_ZONE}",state!="terminated"}}[{window}])'
    )
    energy = _relabel(_relabel(energy, names.NAMESPACE, "pod_namespace"), names.POD, "pod_name")
    return f"{_BY_POD} ({energy}) / {_BY_POD} (increase({names.VLLM_E2E_LATENCY}_count[{window}]))"


def pod_running() -> str:
    """Requests running per (namespace, pod): vLLM's gauge, else llama.cpp's."""
    return f"({_BY_POD} ({names.VLLM_RUNNING})) or ({_BY_POD} ({names.LLAMACPP_RUNNING}))"


def pod_waiting() -> str:
    """Requests waiting per (namespace, pod): vLLM's gauge, else llama.cpp's."""
    return f"({_BY_POD} ({names.VLLM_WAITING})) or ({_BY_POD} ({names.LLAMACPP_WAITING}))"


def pod_request_rate(window: str) -> str:
    """Finished requests per second per (namespace, pod) over `window`."""
    return f"{_BY_POD} (rate({names.VLLM_E2E_LATENCY}_count[{window}]))"


def pod_output_tokens(window: str) -> str:
    """Mean generated tokens per request per (namespace, pod) over `window`."""
    return (
        f"{_BY_POD} (rate({names.VLLM_GENERATION_TOKENS}[{window}])) / {pod_request_rate(window)}"
    )


def service_energy_per_request_all(window: str) -> str:
    """Mean J per request per (namespace, service) over `window`, every service at once
    (`names.service_energy_per_request` selects one)."""
    return (
        f"{_BY_SERVICE} (increase({names.SERVICE_ENERGY_J}[{window}])) / "
        f"{_BY_SERVICE} (increase({names.SERVICE_REQUESTS}[{window}]))"
    )


def snapshot(latency_window: str) -> dict[str, str]:
    """One telemetry refresh, by the snapshot field each query fills."""
    return {
        "bandwidth": names.bandwidth_by_node(),  # bit/s per node
        "gpu_power": names.gpu_power_by_node(),  # W per Hostname / hostname
        "cpu_power": cpu_power_by_node(),
        "running": pod_running(),
        "waiting": pod_waiting(),
        "latency": names.pod_latency(latency_window),
    }


def learning(window: str) -> dict[str, str]:
    """One learning pass: per-pod latency, request rate and output tokens, per-service
    energy per request, and per-pod CPU energy per request (Kepler)."""
    return {
        "latency": names.pod_latency(window),
        "rate": pod_request_rate(window),
        "tokens": pod_output_tokens(window),
        "energy": service_energy_per_request_all(window),
        "pod_energy": pod_cpu_energy_per_request(window),
    }
