"""PromQL the scheduler extender reads: the per-refresh telemetry snapshot and the
learning pass. Each query is built here once from the metric names in `names`; the
general builders shared with the operator (pod latency, node bandwidth, GPU power) stay
in `names`."""

from __future__ import annotations

from perllm.telemetry import names

_BY_POD = f"sum by ({names.NAMESPACE}, {names.POD})"
_BY_SERVICE = f"sum by ({names.NAMESPACE}, {names.SERVICE})"


def cpu_power_by_node() -> str:
    """CPU package power in W per node (sum over packages)."""
    return f"sum by ({names.NODE}) ({names.CPU_POWER_W})"


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
    energy per request."""
    return {
        "latency": names.pod_latency(window),
        "rate": pod_request_rate(window),
        "tokens": pod_output_tokens(window),
        "energy": service_energy_per_request_all(window),
    }
