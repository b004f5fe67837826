"""Per-request routing against per-pod placement under a ×5 burst, on the local control
plane (issue #13; the longer run is `bench/router_burst.py`).

The demo's `chat` LLMService with `spec.tierReplicas: {edge: 1, cloud: 1}`: the operator
(its ServiceAccount's rights only) renders one child per tier, `chat-edge` and
`chat-cloud`, and perllm-scheduler with the PerLLM extender deciding binds their pods to
an edge L4 node and the A100 node; KWOK makes them Ready and the twin serves both (its
OpenAI endpoints, timed by the world model at speed 1). The same 45 s of chat requests
with a ×5 burst go, each arm against fresh replicas (a fresh twin): through `perllm
router` (discovery of the two pods, the spec read from the LLMService), to the edge pod
alone (per-pod placement: where the extender puts chat in the demo), and to the cloud pod
alone (cloud-only). At the end the LLMService's status has the router's `status.routing`,
both tiers with the shares of the router's own decisions, beside the operator's
`status.children`.

Measured with bench/router_burst.py (90 s and 45 s, seeds 1 and 2): the router kept
98.9 % / 100 % of deadlines where the edge pod alone kept 53.3 % / 79.4 %, at 77 / 83 J
per request against cloud-only's 148 / 143 J (97.3 % / 97.9 % at 97 / 114 J before issue
#13's fix); this test, one run: router 99.0 % at 110 J, edge pod alone 66.0 %, cloud-only
151 J. The bounds below leave room for a loaded CI machine (the client, router and twin
share its two cores): the router within 3 points of 95 % and at least 10 above per-pod
placement, below 90 % of cloud-only's energy.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import yaml

from perllm.burst import (
    CLOUD_ALONE,
    EDGE_ALONE,
    ROUTER,
    SERVICE,
    Arm,
    Burst,
    burst_scenario,
    planned_requests,
    run_arm,
    table,
)
from perllm.crd import PLURAL
from perllm.demo.services import default_sources, load_services
from perllm.devcluster.kube import Kube, wait_for
from perllm.devcluster.nodes import node_manifests
from perllm.labels import LABEL_HARDWARE
from perllm.router.app import Router
from perllm.router.config import parse_config
from perllm.router.status import CONDITION
from perllm.scenario import load_scenario
from perllm.twin.openai import TwinOpenAI, pod_url

from .operator_harness import Operator, condition, pods_by_tier
from .test_extender import Extender

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420), pytest.mark.usefixtures("operator_log")]
SECONDS = 45.0


@pytest.fixture
def chat_replicas(
    kube: Kube, operator: Operator, deciding_extender: Extender, namespace: str
) -> dict[str, tuple[str, str]]:
    """The demo's nodes and its chat LLMService with a replica per tier, rendered by the
    operator and placed by the extender: tier -> (pod, node), once both pods are Ready."""
    nodes = node_manifests(load_scenario("demo"))
    r = kube.kubectl("create", "-f", "-", input=yaml.safe_dump_all(nodes), check=False)
    assert r.returncode == 0 or "AlreadyExists" in r.stderr, r.stderr
    names = [f"node/{n['metadata']['name']}" for n in nodes]
    kube.kubectl("wait", "--for=condition=Ready", *names, "--timeout=60s")
    (chat,) = [
        s for s in load_services(default_sources("demo")) if s["metadata"]["name"] == SERVICE
    ]
    chat["spec"]["tierReplicas"] = {"edge": 1, "cloud": 1}
    kube.apply([chat], namespace)
    by_tier = wait_for(
        lambda: pods_by_tier(kube, namespace, SERVICE), "one bound chat pod per tier", 120
    )
    out = {t: (p["metadata"]["name"], p["spec"]["nodeName"]) for t, (p,) in by_tier.items()}
    for pod, node in out.values():  # bound where the extender decided
        assert deciding_extender.decision(f"{namespace}/{pod}")["chosen"] == node, pod
    pods = [f"pod/{pod}" for pod, _ in out.values()]
    kube.kubectl("wait", "--for=condition=Ready", *pods, "-n", namespace, "--timeout=60s")
    return out


def test_router_keeps_deadlines_through_a_burst_where_per_pod_placement_does_not(
    kube: Kube, namespace: str, chat_replicas: dict[str, tuple[str, str]]
) -> None:
    ns = namespace
    (edge_pod, edge_node), (cloud_pod, cloud_node) = chat_replicas["edge"], chat_replicas["cloud"]
    # Where the extender put them: an edge L4 (not a Xeon) and the A100.
    hardware = {
        n: kube.get("node", n)["metadata"]["labels"][LABEL_HARDWARE]
        for n in (edge_node, cloud_node)
    }
    assert hardware == {edge_node: "nvidia-l4", cloud_node: "a100-80gb-sxm"}, chat_replicas
    burst = Burst(SECONDS, 5.0)
    sc = burst_scenario(burst)
    planned = planned_requests(sc, burst, 1)
    spec = next(s for s in sc.services() if s.name == SERVICE)
    pods = {edge_pod: edge_node, cloud_pod: cloud_node}
    arms = {n: Arm(n) for n in (ROUTER, EDGE_ALONE, CLOUD_ALONE)}
    served: dict[str, int] = {}  # the router's own count of judged requests per backend

    def twin() -> TwinOpenAI:
        return TwinOpenAI(
            sc,
            lambda n, p: (spec, pods[p]) if n == ns and p in pods else None,
            speed=1.0,
            seed=1,
        )

    @asynccontextmanager
    async def discovered(url: str) -> AsyncIterator[Router]:
        """The router arm's router: discovery of the two pods, served by the twin at `url`."""
        router = Router(
            parse_config(
                {
                    "discovery": {
                        "service": f"{ns}/{SERVICE}",
                        "kubeconfig": str(kube.kubeconfig),
                        "url_template": pod_url(url, "{namespace}", "{pod}"),
                        "interval_s": 2,
                    }
                }
            )
        )
        try:
            await router.start()
            assert sorted(b.name for b in router.backends) == sorted(pods)
            yield router
            # The last counts written now, not a status interval later.
            assert router.status_writer is not None
            await router.status_writer.tick()
            served.update((b.name, b.requests) for b in router.metrics.served())
        finally:
            await router.aclose()

    def run(arm: Arm) -> dict[str, Any]:
        """`run_arm` on fresh replicas of these two pods (a fresh twin per arm)."""
        return asyncio.run(run_arm(arm, sc, planned, (edge_node, cloud_node), 1, SECONDS + 5,
                                   twin=twin(), pods=(edge_pod, cloud_pod), namespace=ns,
                                   router=discovered))  # fmt: skip

    rows = {n: run(a) for n, a in arms.items()}
    print(f"replicas (pod, node) per tier: {chat_replicas}")
    print(table(list(rows.values())))
    router, edge, cloud = rows[ROUTER], rows[EDGE_ALONE], rows[CLOUD_ALONE]
    assert all(r["requests"] == len(planned) and r["ok"] == len(planned) for r in rows.values())
    assert set(router["tiers"]) == {"edge", "cloud"}, router  # both tiers served requests
    assert router["attainment"] >= 0.92, rows
    assert router["attainment"] >= edge["attainment"] + 0.10, rows
    assert router["j_per_request"] < 0.9 * cloud["j_per_request"], rows

    # The router's view in the LLMService: both tiers, with the shares of its decisions
    # (each request's decision header) and its per-backend counts; the operator's children.
    st = kube.get(PLURAL, SERVICE, "-n", ns)["status"]
    rt = st["routing"]
    print(f"status.routing: {rt['tiers']}")
    decided = Counter(tier for _, tier in arms[ROUTER].decided)
    assert rt["requests"] == len(planned) == sum(decided.values()), (rt, decided)
    assert {t["tier"]: t["requests"] for t in rt["tiers"]} == dict(decided), (rt, decided)
    for t in rt["tiers"]:
        assert t["share"] == pytest.approx(decided[t["tier"]] / len(planned), abs=1e-4), rt
        assert t["share"] == pytest.approx(router["tiers"][t["tier"]], abs=1e-3), (rt, router)
    assert {b["name"]: (b["tier"], b["requests"]) for b in rt["backends"]} == {
        edge_pod: ("edge", served[edge_pod]),
        cloud_pod: ("cloud", served[cloud_pod]),
    }, (rt, served)
    cond = condition({"status": st}, CONDITION)
    assert cond is not None and cond["status"] == "True", st["conditions"]
    assert [(c["tier"], c["kind"], c["name"]) for c in st["children"]] == [
        ("edge", "Deployment", f"{SERVICE}-edge"),
        ("cloud", "Deployment", f"{SERVICE}-cloud"),
    ], st["children"]
