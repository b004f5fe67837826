"""Metric names, labels and units PerLLM reads and writes, and the PromQL built on them.

External names follow their exporters exactly: DCGM exporter (W, mJ,
host label `Hostname` in releases, `hostname` on main: match both), vLLM (`vllm:*`,
counters with `_total`). PerLLM's own series use the `perllm_` prefix, base units and a
`node` label holding the Kubernetes node name.
"""

from __future__ import annotations

# -- GPU (DCGM exporter, or the PerLLM agent under the same names) ----------------------
DCGM_POWER_W = "DCGM_FI_DEV_POWER_USAGE"  # gauge, W; labels gpu, UUID, Hostname
DCGM_ENERGY_MJ = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"  # counter, mJ since boot
DCGM_GPU_UTIL = "DCGM_FI_DEV_GPU_UTIL"  # gauge, %
DCGM_FB_USED_MIB = "DCGM_FI_DEV_FB_USED"  # gauge, MiB
DCGM_FB_FREE_MIB = "DCGM_FI_DEV_FB_FREE"  # gauge, MiB
DCGM_HOST_LABELS = ("Hostname", "hostname")

# -- CPU package power (RAPL via the PerLLM agent; else Kepler's, below) ----------------
CPU_POWER_W = "perllm_node_cpu_package_watts"  # gauge, W; labels node, package
CPU_ENERGY_J = "perllm_node_cpu_package_joules_total"  # counter, J; labels node, package

# -- Kepler >= 0.10 (its metrics reference, "Kepler Metrics": RAPL energy of nodes, and
# attributed to pods by CPU time); zones package/core/uncore/dram, constant label
# node_name. Read where the agent's are absent (queries.cpu_power_by_node) and as a CPU
# pod's energy per request (queries.pod_cpu_energy_per_request). Kepler 0.7's
# kepler_container_* names are not read.
KEPLER_NODE_CPU_W = "kepler_node_cpu_watts"  # gauge, W; labels zone, path, node_name
KEPLER_POD_CPU_J = "kepler_pod_cpu_joules_total"  # counter, J; pod_name, pod_namespace, zone
KEPLER_ZONE = "package"  # cores + uncore: what the agent's package reading covers
KEPLER_NODE_LABEL = "node_name"

# -- measured edge<->cloud path bandwidth (agent probe, or the twin) ---------------------
PATH_BANDWIDTH_BPS = "perllm_path_bandwidth_bits_per_second"  # gauge; labels node, peer
PATH_RTT_S = "perllm_path_rtt_seconds"  # gauge; labels node, peer

# -- model server (vLLM names; labels namespace, pod, model_name) -----------------------
VLLM_E2E_LATENCY = "vllm:e2e_request_latency_seconds"  # histogram: _bucket/_sum/_count
VLLM_RUNNING = "vllm:num_requests_running"
VLLM_WAITING = "vllm:num_requests_waiting"
VLLM_SUCCESS = "vllm:request_success_total"
VLLM_GENERATION_TOKENS = "vllm:generation_tokens_total"
VLLM_PROMPT_TOKENS = "vllm:prompt_tokens_total"
# llama.cpp's server (`llama-server --metrics`, the edge runtime; tools/server/README.md,
# "GET /metrics"): load gauges and token counters, but no per-request latency histogram
# and no request counter, so a llama.cpp pod's latency is learned from what the router
# measures per request (docs/router.md), not from Prometheus.
LLAMACPP_RUNNING = "llamacpp:requests_processing"  # gauge: requests in a slot
LLAMACPP_WAITING = "llamacpp:requests_deferred"  # gauge: requests waiting for a slot
# KServe's Python model server (sklearn, xgboost, custom predictors; kserve/metrics.py):
# latency histograms per step with label model_name. Used when a pod has no vLLM series.
KSERVE_PREDICT_LATENCY = "request_predict_seconds"
# vLLM's own e2e latency buckets (vllm/v1/metrics/loggers.py), which the twin reuses
VLLM_LATENCY_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)

# -- energy attributed to a service's requests (twin; an agent with pod attribution) ----
SERVICE_ENERGY_J = "perllm_service_energy_joules_total"  # counter; labels namespace, service
SERVICE_REQUESTS = "perllm_service_requests_total"  # counter; labels namespace, service
SERVICE_DEADLINE_MET = "perllm_service_deadline_met_total"  # counter; labels namespace, service

# -- counterfactual baselines on the same load (twin) -----------------------------------
COUNTERFACTUAL_ENERGY_J = "perllm_counterfactual_energy_joules_total"  # labels policy, ...
COUNTERFACTUAL_REQUESTS = "perllm_counterfactual_requests_total"
COUNTERFACTUAL_DEADLINE_MET = "perllm_counterfactual_deadline_met_total"

# Label keys
NODE = "node"
NAMESPACE = "namespace"
POD = "pod"
SERVICE = "service"
POLICY = "policy"
MODEL_NAME = "model_name"
# vLLM V1 labels every series with its engine index and `request_success` with why the
# request ended (stop, length, abort).
ENGINE = "engine"
FINISHED_REASON = "finished_reason"


def host_selector(node: str) -> str:
    """DCGM series of `node`, whichever spelling of the host label the exporter uses."""
    return f'{{Hostname="{node}"}} or {{hostname="{node}"}}'


def gpu_power_by_node() -> str:
    """W per node (sum over GPUs), keyed by `Hostname` or `hostname`."""
    return f"sum by (Hostname) ({DCGM_POWER_W}) or sum by (hostname) ({DCGM_POWER_W})"


def bandwidth_by_node() -> str:
    """Path bandwidth in bit/s per node (the worst peer when several are probed)."""
    return f"min by (node) ({PATH_BANDWIDTH_BPS})"


def _mean_by_pod(histogram: str, window: str) -> str:
    return (
        f"sum by (namespace, pod) (rate({histogram}_sum[{window}])) / "
        f"sum by (namespace, pod) (rate({histogram}_count[{window}]))"
    )


def pod_latency(window: str = "5m") -> str:
    """Mean request latency per (namespace, pod) over `window`, seconds: vLLM's end-to-end
    latency, else (pods without vLLM series) KServe's predict latency."""
    return (
        f"({_mean_by_pod(VLLM_E2E_LATENCY, window)}) or "
        f"({_mean_by_pod(KSERVE_PREDICT_LATENCY, window)})"
    )


def pod_load() -> str:
    """Running + waiting requests per (namespace, pod)."""
    return f"sum by (namespace, pod) ({VLLM_RUNNING}) + sum by (namespace, pod) ({VLLM_WAITING})"


def deadline_bucket(deadline_s: float) -> float | None:
    """The largest vLLM latency bucket bound at or below the deadline (None: below all).
    Counting requests under it under-reports attainment, never over-reports it."""
    under = [b for b in VLLM_LATENCY_BUCKETS if b <= deadline_s + 1e-9]
    return under[-1] if under else None


def fmt_le(bound: float) -> str:
    """Prometheus' text form of a bucket bound (`1.0`, `0.3`, `7680.0`)."""
    return repr(float(bound))
