"""The LLMService operator's status timer against the harness' Prometheus: a static exporter
serves vLLM latency histograms for a service's pods, one of them too slow, and the operator
evicts exactly that pod (Eviction API) and the ReplicaSet replaces it; `kubectl describe`
shows the conditions and the Events, including a `Placed` Event published as the extender
does; an unreachable Prometheus marks the status stale while placement continues.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from perllm.crd import PLURAL
from perllm.devcluster.exporter import TextExporter
from perllm.devcluster.kube import Kube, wait_for
from perllm.telemetry import names

from . import manifests
from .operator_harness import (
    Operator,
    bound_pods,
    events,
    llmsvc_condition,
    merge_patch,
    wait_condition,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600), pytest.mark.usefixtures("operator_log")]


class LatencyExporter(TextExporter):
    """A static exporter of vLLM's e2e latency histogram (names.VLLM_E2E_LATENCY) with the
    `namespace`, `pod`, `model_name` labels: each registered pod serves `rps` requests per
    second, all taking `latency_s`. Counters grow with wall time, so `rate()` sees them."""

    def __init__(self) -> None:
        self.pods: dict[tuple[str, str], tuple[float, float]] = {}
        self.t0 = time.monotonic()
        super().__init__()

    def serve(self, namespace: str, pod: str, latency_s: float, rps: float = 5.0) -> None:
        self.pods[(namespace, pod)] = (latency_s, rps)

    def render(self) -> str:
        m = names.VLLM_E2E_LATENCY
        lines = [f"# TYPE {m} histogram"]
        elapsed = time.monotonic() - self.t0
        for (ns, pod), (lat, rps) in sorted(self.pods.items()):
            n = int(rps * elapsed)
            lab = f'namespace="{ns}",pod="{pod}",model_name="m"'
            for b in names.VLLM_LATENCY_BUCKETS:
                lines.append(f'{m}_bucket{{{lab},le="{names.fmt_le(b)}"}} {n if lat <= b else 0}')
            lines.append(f'{m}_bucket{{{lab},le="+Inf"}} {n}')
            lines.append(f"{m}_sum{{{lab}}} {n * lat}")
            lines.append(f"{m}_count{{{lab}}} {n}")
        return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def exporter(kube: Kube) -> Iterator[LatencyExporter]:
    if kube.local is None or kube.local.prometheus_url is None:
        pytest.skip("needs the local harness' Prometheus (set_scrape_configs)")
    ex = LatencyExporter()
    kube.local.set_scrape_configs([ex.scrape_config("vllm-e2e")])
    try:
        yield ex
    finally:
        kube.local.set_scrape_configs([])
        ex.close()


def _edge_service(name: str, replicas: int) -> dict[str, Any]:
    """A small edge-only service on the deployment backend (pods land on KWOK edge nodes);
    deadline 2 s for 10 output tokens (2.0 + 0 × 10), 95 % of requests."""
    return manifests.llmservice(
        name,
        [
            {
                "tier": "edge",
                "precision": "q4_k_m",
                "resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
            }
        ],
        requirements={"deadline": {"seconds": 2.0, "percentile": 95}},
        traffic={"rateRps": 5, "promptTokens": 100, "outputTokens": 10},
        allowedTiers=["edge"],
        replicas=replicas,
        backend="deployment",
    )


def _ready_pods(kube: Kube, ns: str, name: str, n: int) -> list[dict[str, Any]] | None:
    pods = [
        p
        for p in (bound_pods(kube, ns, name) or [])
        if not p["metadata"].get("deletionTimestamp")
        and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p.get("status", {}).get("conditions", [])
        )
    ]
    return pods if len(pods) == n else None


def test_slow_pod_is_evicted_and_replaced(
    kube: Kube, operator: Operator, exporter: LatencyExporter, namespace: str
) -> None:
    name = "slow-edge"
    kube.apply(_edge_service(name, replicas=2), namespace)
    pods = wait_for(lambda: _ready_pods(kube, namespace, name, 2), "2 ready pods", timeout=120)
    slow, fast = sorted(p["metadata"]["name"] for p in pods)
    slow_node = next(p["spec"]["nodeName"] for p in pods if p["metadata"]["name"] == slow)
    exporter.serve(namespace, slow, latency_s=12.0)  # far past the 2 s deadline
    exporter.serve(namespace, fast, latency_s=0.5)
    # Telemetry reaches the status: attainment 50 % (half the requests are slow) < 95 %.
    obj = wait_for(
        lambda: (
            lambda o: (
                o
                if (o.get("status", {}).get("observed") or {}).get("attainment") is not None
                else None
            )
        )(kube.get_or_none(PLURAL, name, "-n", namespace)),
        "status.observed.attainment",
        timeout=60,
    )
    obs = obj["status"]["observed"]
    assert 0.3 <= obs["attainment"] <= 0.7, obs
    assert obs["window"] == "20s" and obs["requestsPerSecond"] > 0
    assert obs["latencyP95Seconds"] > 2.0
    # Exactly the slow pod is evicted (the fast one stays), and a replacement comes up.
    wait_for(
        lambda: kube.get_or_none("pod", slow, "-n", namespace) is None,
        "eviction of the slow pod",
        timeout=90,
    )
    now = wait_for(lambda: _ready_pods(kube, namespace, name, 2), "replacement pod", timeout=120)
    live = sorted(p["metadata"]["name"] for p in now)
    assert fast in live and slow not in live
    evs = wait_for(
        lambda: (
            lambda e: e if {"ReplacementTriggered", "Evicted"} <= {x["reason"] for x in e} else None
        )(events(kube, namespace, name)),
        "Events",
        timeout=30,
    )
    trig = next(e for e in evs if e["reason"] == "ReplacementTriggered")
    assert slow in trig["message"] and slow_node in trig["message"] and "95%" in trig["message"]
    ev = next(e for e in evs if e["reason"] == "Evicted")
    assert slow in ev["message"] and slow_node in ev["message"]
    st = kube.get_or_none(PLURAL, name, "-n", namespace)["status"]
    assert st["replacement"]["lastEvictedPod"] == slow and st["replacement"]["evictions"] == 1
    assert llmsvc_condition(kube, namespace, name, "DeadlineMet") is not None
    # The evicted pod's series no longer count: the service recovers to 100 %.
    wait_condition(kube, namespace, name, "DeadlineMet")
    assert operator.alive()


def test_describe_shows_conditions_and_events(
    kube: Kube, operator: Operator, exporter: LatencyExporter, namespace: str
) -> None:
    name = "described"
    kube.apply(_edge_service(name, replicas=1), namespace)
    (pod,) = wait_for(lambda: _ready_pods(kube, namespace, name, 1), "a ready pod", timeout=120)
    node = pod["spec"]["nodeName"]
    exporter.serve(namespace, pod["metadata"]["name"], latency_s=0.5)
    # Publish a decision exactly as the extender does: status.placement and a
    # `Placed` Event from component perllm-extender.
    obj = kube.get_or_none(PLURAL, name, "-n", namespace)
    placement = {
        "tier": "edge",
        "nodes": [node],
        "pod": pod["metadata"]["name"],
        "chosen": node,
        "predictedTimeSeconds": 1.2,
        "predictedEnergyJ": 35.0,
        "feasible": True,
        "decidedAt": "2026-01-01T00:00:00Z",
        "explanation": {"candidates": []},
    }
    merge_patch(kube, namespace, name, {"status": {"placement": placement}}, status=True)
    kube.kubectl(
        "create",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": f"{name}.placed", "namespace": namespace},
                "involvedObject": {
                    "apiVersion": "perllm.io/v1alpha1",
                    "kind": "LLMService",
                    "name": name,
                    "namespace": namespace,
                    "uid": obj["metadata"]["uid"],
                },
                "reason": "Placed",
                "type": "Normal",
                "source": {"component": "perllm-extender"},
                "message": f"node {node} (tier edge): predicted 1.2 s vs deadline 2 s, 35 J",
                "firstTimestamp": "2026-01-01T00:00:00Z",
                "lastTimestamp": "2026-01-01T00:00:00Z",
                "count": 1,
            }
        ),
    )

    def described() -> str | None:
        out = kube.kubectl("describe", PLURAL, name, "-n", namespace).stdout
        want = (
            "DeadlineMet",
            "TelemetryStale",
            "Placed",
            "Ready",
            "Reconciled",
            f"tier edge on {node}",
            "perllm-extender",
            "Reconciled",
        )
        if not (all(w in out for w in want) and "attainment 100.0%" in out):
            return None
        # (read in the same wait: on a loaded machine a late scrape leaves the 20 s rate
        # window without two samples for a tick, and the condition reads NoData then)
        stale = llmsvc_condition(kube, namespace, name, "TelemetryStale")
        return out if stale is not None and stale["status"] == "False" else None

    out = wait_for(described, "describe with conditions and Events, telemetry fresh", timeout=60)
    assert "Events:" in out and "Placed" in out.split("Events:")[1]
    cond = llmsvc_condition(kube, namespace, name, "Placed")
    assert cond is not None and cond["status"] == "True" and node in cond["message"]


def test_prometheus_unreachable_marks_status_stale_and_placement_continues(
    kube: Kube, operator: Operator, namespace: str, tmp_path: Path
) -> None:
    # The same operator identity, but pointed at a Prometheus that refuses connections.
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{dead.getsockname()[1]}"
    dead.close()  # nothing listens there now
    alt = Operator(
        operator.kubeconfig,
        tmp_path / "operator-no-prom.log",
        dict(operator.env, PERLLM_PROMETHEUS_URL=url),
    )
    operator.stop()
    try:
        alt.start()
        name = "no-telemetry"
        kube.apply(_edge_service(name, replicas=1), namespace)
        # Placement continues: the pod is bound by perllm-scheduler and becomes ready.
        wait_for(lambda: _ready_pods(kube, namespace, name, 1), "a ready pod", timeout=120)

        def stale() -> dict[str, Any] | None:
            c = llmsvc_condition(kube, namespace, name, "TelemetryStale")
            return c if c and c["status"] == "True" else None

        cond = wait_for(stale, "TelemetryStale=True", timeout=60)
        assert cond["reason"] == "PrometheusUnreachable", cond
        assert "placement continues" in cond["message"] and url in cond["message"]
        met = llmsvc_condition(kube, namespace, name, "DeadlineMet")
        assert met is not None and met["status"] == "Unknown" and met["reason"] == "TelemetryStale"
        # The first tick may write before the reconcile records its child: wait for Ready.
        wait_condition(kube, namespace, name, "Ready")
        assert alt.alive()
    finally:
        alt.stop()
        operator.start()
