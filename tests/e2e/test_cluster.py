"""The control plane does what the project relies on (issue #3 acceptance).

Runs against whatever `kube` provides: the local harness, or KUBECONFIG (kind, k3s) where
`perllm dev cluster up --attach` has added perllm-scheduler, KWOK and the fake nodes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import pytest

from perllm.devcluster.binaries import versions
from perllm.devcluster.cluster import DEFAULT_SCENARIO
from perllm.devcluster.config import PERLLM_SCHEDULER, VIEWER_USER
from perllm.devcluster.kube import Kube
from perllm.devcluster.nodes import ANN_LINK_BANDWIDTH, GPU_RESOURCE, LABEL_TIER
from perllm.scenario import load_scenario

from .promql import prom_query

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

T = TypeVar("T")
SCENARIO = os.environ.get("PERLLM_E2E_SCENARIO", DEFAULT_SCENARIO)
PAUSE = "registry.k8s.io/pause:3.10"  # never pulled: KWOK nodes run no containers


def eventually(fn: Callable[[], T | None], timeout: float = 60, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def _ready(node: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in node.get("status", {}).get("conditions", [])
    )


def test_scenario_nodes_are_ready_with_tier_capacity_and_annotations(kube: Kube) -> None:
    sc = load_scenario(SCENARIO)
    nodes = {n["metadata"]["name"]: n for n in kube.get("nodes")["items"]}
    for name, server in sc.expanded_servers():
        assert name in nodes, f"node {name} of scenario {SCENARIO} missing"
        n = nodes[name]
        hw = sc.catalogue.hardware[server.hardware]
        assert _ready(n), f"{name} not Ready: {n['status'].get('conditions')}"
        assert n["metadata"]["labels"][LABEL_TIER] == server.tier.value
        cap = n["status"]["capacity"]
        assert cap["cpu"] == str(hw.cpu_cores)
        assert cap["pods"] == "110"
        assert cap.get(GPU_RESOURCE) == (str(hw.gpus) if hw.gpus else None)
        assert n["status"]["allocatable"] == cap
        ann = n["metadata"]["annotations"]
        assert float(ann[ANN_LINK_BANDWIDTH]) == server.link.bandwidth_mbps
    tiers = {s.tier.value for _, s in sc.expanded_servers()}
    assert tiers == {"edge", "cloud"}, "the reference scenario has both tiers"


def _can_i(kube: Kube, *args: str) -> str:
    return kube.kubectl("auth", "can-i", *args, check=False).stdout.strip()


def test_rbac_is_enforced(kube: Kube, namespace: str) -> None:
    assert _can_i(kube, "create", "deployments", "-n", namespace) == "yes"
    as_viewer = (f"--as={VIEWER_USER}",)
    assert _can_i(kube, "list", "pods", "-n", namespace, *as_viewer) == "no"
    kube.kubectl(
        "create",
        "rolebinding",
        "viewer",
        "-n",
        namespace,
        "--clusterrole=view",
        f"--user={VIEWER_USER}",
    )
    eventually(
        lambda: _can_i(kube, "list", "pods", "-n", namespace, *as_viewer) == "yes",
        30,
        "the RoleBinding to take effect",
    )
    assert _can_i(kube, "delete", "pods", "-n", namespace, *as_viewer) == "no"
    assert _can_i(kube, "list", "pods", "-n", "kube-system", *as_viewer) == "no"
    if kube.local is not None and kube.local.state and kube.local.state.viewer_kubeconfig:
        # Same through real token authentication, not only impersonation.
        r = kube.kubectl(
            f"--kubeconfig={kube.local.state.viewer_kubeconfig}",
            "get",
            "pods",
            "-n",
            "kube-system",
            check=False,
        )
        assert r.returncode != 0 and "Forbidden" in r.stderr, r.stderr


def _pods(kube: Kube, namespace: str, selector: str) -> list[dict[str, Any]]:
    return list(kube.get("pods", "-n", namespace, "-l", selector)["items"])


def _scheduled_by(kube: Kube, namespace: str, pod: str) -> str | None:
    events = kube.get(
        "events", "-n", namespace, "--field-selector", f"involvedObject.name={pod},reason=Scheduled"
    )
    for e in events["items"]:
        return str(e.get("reportingComponent") or e.get("source", {}).get("component"))
    return None


def _kwok_nodes(kube: Kube) -> set[str]:
    return {n["metadata"]["name"] for n in kube.get("nodes", "-l", "type=kwok")["items"]}


def test_deployment_runs_on_kwok_nodes_and_its_pods_go_with_it(kube: Kube, namespace: str) -> None:
    labels = {"app": "web"}
    kube.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "nodeSelector": {"type": "kwok"},
                        "containers": [
                            {
                                "name": "web",
                                "image": PAUSE,
                                "resources": {"requests": {"cpu": "100m"}},
                            }
                        ],
                    },
                },
            },
        },
        namespace,
    )
    fake = _kwok_nodes(kube)

    def running() -> list[dict[str, Any]] | None:
        pods = _pods(kube, namespace, "app=web")
        ok = [
            p
            for p in pods
            if p["status"].get("phase") == "Running" and p["spec"].get("nodeName") in fake
        ]
        return ok if len(ok) == 3 and len(pods) == 3 else None

    pods = eventually(running, 90, "3 Running pods on KWOK nodes")
    for p in pods:
        assert p["spec"]["schedulerName"] == "default-scheduler"
        assert p["status"]["podIP"]
        name = p["metadata"]["name"]
        assert (
            eventually(partial(_scheduled_by, kube, namespace, name), 30, "Scheduled event")
            == "default-scheduler"
        )
    out = kube.kubectl(
        "get", "deployment", "web", "-n", namespace, "-o", "jsonpath={.status.readyReplicas}"
    ).stdout
    assert eventually(
        lambda: (
            kube.kubectl(
                "get",
                "deployment",
                "web",
                "-n",
                namespace,
                "-o",
                "jsonpath={.status.readyReplicas}",
            ).stdout
            == "3"
        ),
        60,
        f"readyReplicas=3 (was {out!r})",
    )

    kube.kubectl("delete", "deployment", "web", "-n", namespace, "--wait=false")
    eventually(
        lambda: _pods(kube, namespace, "app=web") == [],
        90,
        "the Deployment's pods to be deleted (garbage collection + kwok pod-delete)",
    )


def test_second_scheduler_schedules_its_pods(kube: Kube, namespace: str) -> None:
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "llm", "labels": {"app": "llm"}},
            "spec": {
                "schedulerName": PERLLM_SCHEDULER,
                "nodeSelector": {"type": "kwok"},
                "containers": [{"name": "llm", "image": PAUSE}],
            },
        },
        namespace,
    )

    def bound() -> dict[str, Any] | None:
        pods = _pods(kube, namespace, "app=llm")
        return pods[0] if pods and pods[0]["spec"].get("nodeName") else None

    pod = eventually(bound, 60, "perllm-scheduler to bind the pod")
    assert pod["spec"]["nodeName"] in _kwok_nodes(kube)
    assert (
        eventually(lambda: _scheduled_by(kube, namespace, "llm"), 30, "Scheduled event")
        == PERLLM_SCHEDULER
    )
    eventually(
        lambda: _pods(kube, namespace, "app=llm")[0]["status"].get("phase") == "Running",
        60,
        "pod Running",
    )


def test_pod_for_an_absent_scheduler_stays_pending(kube: Kube, namespace: str) -> None:
    """Control: scheduling above really came from the named schedulers."""
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "orphan"},
            "spec": {
                "schedulerName": "no-such-scheduler",
                "containers": [{"name": "c", "image": PAUSE}],
            },
        },
        namespace,
    )
    time.sleep(3)
    pod = kube.get("pod", "orphan", "-n", namespace)
    assert not pod["spec"].get("nodeName")
    assert pod["status"].get("phase") == "Pending"


def _local(kube: Kube) -> Any:
    if kube.local is None or kube.local.state is None:
        pytest.skip("checks the local harness itself (KUBECONFIG points elsewhere)")
    return kube.local


def test_pinned_versions(kube: Kube) -> None:
    _local(kube)
    v = json.loads(kube.kubectl("version", "-o", "json").stdout)
    want = versions()["K8S_VERSION"]
    assert v["clientVersion"]["gitVersion"] == want
    assert v["serverVersion"]["gitVersion"] == want


def test_prometheus_scrapes_and_reloads(kube: Kube) -> None:
    cluster = _local(kube)
    url = cluster.prometheus_url
    if url is None:
        pytest.skip("cluster started without Prometheus")

    def query(q: str) -> list[dict[str, Any]]:
        return prom_query(url, q)

    eventually(
        lambda: [s for s in query('up{job="prometheus"}') if s["value"][1] == "1"],
        60,
        "Prometheus scraping itself",
    )
    port = url.rsplit(":", 1)[1]
    # Tests add their own jobs (the digital twin's exporter, the extender): here, itself again.
    cluster.set_scrape_configs(
        [{"job_name": "extra", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}]
    )
    eventually(
        lambda: [s for s in query('up{job="extra"}') if s["value"][1] == "1"],
        60,
        "the added scrape job",
    )
    cluster.set_scrape_configs([])
