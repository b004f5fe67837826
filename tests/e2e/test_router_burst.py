"""Per-request routing against per-pod placement under a ×5 burst, on the local control
plane (issue #13; the longer run is `bench/router_burst.py`).

The demo's `chat` LLMService with one model-server pod on an edge L4 node and one on the
A100 cloud node; the twin serves both pods (its OpenAI endpoints, timed by the world model
at speed 1). The same 45 s of chat requests with a ×5 burst go, each arm against fresh
replicas: through `perllm router` (discovery of the two pods, the spec read from the
LLMService), to the edge pod alone (per-pod placement: where the extender puts chat in
the demo), and to the cloud pod alone (cloud-only).

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
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from perllm.burst import (
    CLOUD_ALONE,
    EDGE_ALONE,
    ROUTER,
    Arm,
    Burst,
    burst_scenario,
    measure,
    planned_requests,
    table,
)
from perllm.crd import CRD_PATH
from perllm.demo.services import default_sources, load_services
from perllm.devcluster.kube import Kube
from perllm.devcluster.nodes import node_manifests
from perllm.router.app import Router
from perllm.router.config import parse_config
from perllm.router.serving import serving
from perllm.scenario import load_scenario
from perllm.twin.openai import TwinOpenAI

from .test_router import _pod

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]
SECONDS = 45.0


@pytest.fixture
def chat_pods(kube: Kube) -> Iterator[str]:
    kube.kubectl("apply", "-f", str(CRD_PATH))
    kube.kubectl(
        "wait", "--for=condition=Established", "crd/llmservices.perllm.io", "--timeout=60s"
    )
    nodes = node_manifests(load_scenario("demo"))
    r = kube.kubectl("create", "-f", "-", input=yaml.safe_dump_all(nodes), check=False)
    assert r.returncode == 0 or "AlreadyExists" in r.stderr, r.stderr
    kube.kubectl("wait", "--for=condition=Ready", "node/edge-gpu-1", "node/cloud", "--timeout=60s")
    ns = f"burst-{uuid.uuid4().hex[:6]}"
    kube.kubectl("create", "namespace", ns)
    kube.kubectl("create", "serviceaccount", "default", "-n", ns, check=False)
    chat = [s for s in load_services(default_sources("demo")) if s["metadata"]["name"] == "chat"]
    kube.apply(chat, ns)
    kube.apply([_pod("chat-edge", "edge-gpu-1"), _pod("chat-cloud", "cloud")], ns)
    kube.kubectl("wait", "--for=condition=Ready", "pod", "--all", "-n", ns, "--timeout=60s")
    yield ns
    kube.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_router_keeps_deadlines_through_a_burst_where_per_pod_placement_does_not(
    kube: Kube, chat_pods: str
) -> None:
    ns = chat_pods
    burst = Burst(SECONDS, 5.0)
    sc = burst_scenario(burst)
    planned = planned_requests(sc, burst, 1)
    spec = next(s for s in sc.services() if s.name == "chat")
    pods = {"chat-edge": "edge-gpu-1", "chat-cloud": "cloud"}

    def twin() -> TwinOpenAI:
        return TwinOpenAI(
            sc,
            lambda n, p: (spec, pods[p]) if n == ns and p in pods else None,
            speed=1.0,
            seed=1,
        )

    async def arm(name: str) -> dict[str, Any]:
        tw = twin()
        async with serving(tw) as url:
            if name == ROUTER:
                router = Router(
                    parse_config(
                        {
                            "discovery": {
                                "service": f"{ns}/chat",
                                "kubeconfig": str(kube.kubeconfig),
                                "url_template": f"{url}/pods/{{namespace}}/{{pod}}",
                                "interval_s": 2,
                            }
                        }
                    )
                )
                await router.start()
                assert sorted(b.name for b in router.backends) == ["chat-cloud", "chat-edge"]
                async with serving(router) as rurl:
                    row = await measure(Arm(name), rurl, planned, SECONDS + 5)
                await router.aclose()
            else:
                pod = "chat-edge" if name == EDGE_ALONE else "chat-cloud"
                row = await measure(Arm(name), f"{url}/pods/{ns}/{pod}", planned, SECONDS + 5)
        return row | {"j_per_request": tw.energy_j / max(tw.served, 1)}

    rows = {n: asyncio.run(arm(n)) for n in (ROUTER, EDGE_ALONE, CLOUD_ALONE)}
    print(table(list(rows.values())))
    router, edge, cloud = rows[ROUTER], rows[EDGE_ALONE], rows[CLOUD_ALONE]
    assert all(r["requests"] == len(planned) and r["ok"] == len(planned) for r in rows.values())
    assert set(router["tiers"]) == {"edge", "cloud"}, router  # both tiers served requests
    assert router["attainment"] >= 0.92, rows
    assert router["attainment"] >= edge["attainment"] + 0.10, rows
    assert router["j_per_request"] < 0.9 * cloud["j_per_request"], rows
