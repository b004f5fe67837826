"""Two sides, each with its router (docs/router.md, "Two clusters"): the edge side's router
places each request on its own edge replica or on the cloud side's router, a remote tier
reached with that side's bearer token; cutting the path keeps the edge serving, with
`/readyz` saying which tier is out and why.

One local control plane stands in for both sides (two namespaces, each with the demo's
`chat` LLMService and one model-server pod: edge node in one, cloud node in the other);
the twin serves both pods as OpenAI endpoints. Two real control planes were not run here:
the routers talk only HTTP to each other, so what differs is the network between them.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from perllm.crd import CRD_PATH
from perllm.demo.services import default_sources, load_services
from perllm.devcluster.kube import Kube
from perllm.devcluster.nodes import node_manifests
from perllm.scenario import load_scenario

from .test_router import PERLLM, _metric, _pod, _port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
CHAT = {"model": "chat", "max_tokens": 8, "messages": [{"role": "user", "content": "hi " * 40}]}


@pytest.fixture
def sides(kube: Kube) -> Iterator[dict[str, str]]:
    """Two namespaces: the edge side's and the cloud side's."""
    tag = uuid.uuid4().hex[:6]
    out = {"edge": f"edge-{tag}", "cloud": f"cloud-{tag}"}
    for ns in out.values():
        kube.kubectl("create", "namespace", ns)
        kube.kubectl("create", "serviceaccount", "default", "-n", ns, check=False)
    yield out
    for ns in out.values():
        kube.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def _ready(url: str) -> bool:
    try:
        r = httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=10)
        return r.status_code == 200
    except httpx.HTTPError:
        return False


def _has_both(edge: str) -> bool:
    """The edge router's membership: its discovered pod and the remote tier."""
    m = httpx.get(f"{edge}/metrics").text
    return all(f'perllm_router_inflight_requests{{backend="{b}"}}' in m
               for b in ("chat-edge", "cloud-cluster"))  # fmt: skip


def test_edge_router_sends_to_the_cloud_sides_router_and_survives_losing_it(
    kube: Kube, sides: dict[str, str], tmp_path: Path
) -> None:
    kube.kubectl("apply", "-f", str(CRD_PATH))
    kube.kubectl(
        "wait", "--for=condition=Established", "crd/llmservices.perllm.io", "--timeout=60s"
    )
    chat = [s for s in load_services(default_sources("demo")) if s["metadata"]["name"] == "chat"]
    # The twin simulates the demo's nodes: make sure they exist (create keeps their status).
    nodes = node_manifests(load_scenario("demo"))
    r = kube.kubectl("create", "-f", "-", input=yaml.safe_dump_all(nodes), check=False)
    assert r.returncode == 0 or "AlreadyExists" in r.stderr, r.stderr
    kube.kubectl("wait", "--for=condition=Ready", "node/edge-gpu-1", "node/cloud", "--timeout=60s")
    edge_node, cloud_node = "edge-gpu-1", "cloud"
    kube.apply(chat, sides["edge"])
    kube.apply(chat, sides["cloud"])
    kube.apply([_pod("chat-edge", edge_node)], sides["edge"])
    kube.apply([_pod("chat-cloud", cloud_node)], sides["cloud"])
    for ns in sides.values():
        kube.kubectl("wait", "--for=condition=Ready", "pod", "--all", "-n", ns, "--timeout=60s")

    token = tmp_path / "cloud-token"
    token.write_text("edge-to-cloud\n")
    twin_port, openai_port, edge_port, cloud_port = _port(), _port(), _port(), _port()
    pods = f"http://127.0.0.1:{openai_port}/pods/{{namespace}}/{{pod}}"
    discovery = {"interval_s": 1, "kubeconfig": str(kube.kubeconfig), "url_template": pods}
    configs: dict[str, dict[str, Any]] = {
        # The cloud side asks for the token; its LLMService spec comes from its cluster.
        "cloud": {
            "discovery": {**discovery, "service": f"{sides['cloud']}/chat"},
            "auth": {"token_file": str(token)},
        },
        "edge": {
            "discovery": {**discovery, "service": f"{sides['edge']}/chat"},
            "backends": [
                {
                    "name": "cloud-cluster",
                    "url": f"http://127.0.0.1:{cloud_port}",
                    "tier": "cloud",
                    "hardware": "a100-80gb-sxm",
                    "link": {"bandwidth_mbps": 100, "rtt_ms": 40},
                    "token_file": str(token),
                }
            ],
        },
    }
    for side, cfg in configs.items():
        (tmp_path / f"{side}.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig)}
    logs = {n: (tmp_path / f"{n}.log").open("w") for n in ("twin", "edge", "cloud")}

    def spawn(name: str, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [*PERLLM, *args], env=env, stdout=logs[name], stderr=subprocess.STDOUT
        )

    procs = {
        "twin": spawn(
            "twin", "twin", "--scenario", "demo", "--port", str(twin_port), "--openai-port",
            str(openai_port), "--speed", "10", "--poll-interval", "1",
        ),
        "cloud": spawn("cloud", "router", "--config", str(tmp_path / "cloud.yaml"),
                       "--port", str(cloud_port)),
        "edge": spawn("edge", "router", "--config", str(tmp_path / "edge.yaml"),
                      "--port", str(edge_port)),
    }  # fmt: skip
    edge, cloud = f"http://127.0.0.1:{edge_port}", f"http://127.0.0.1:{cloud_port}"

    def tails() -> str:
        return "\n".join(
            f"--- {n} ---\n{(tmp_path / f'{n}.log').read_text()[-2500:]}" for n in logs
        )

    try:
        twin_pods = [
            f"http://127.0.0.1:{openai_port}/pods/{sides['edge']}/chat-edge/v1/models",
            f"http://127.0.0.1:{openai_port}/pods/{sides['cloud']}/chat-cloud/v1/models",
        ]

        def up() -> bool:  # the twin serves both pods, the edge router has both tiers
            try:
                if not all(httpx.get(u, timeout=5).status_code == 200 for u in twin_pods):
                    return False
            except httpx.HTTPError:
                return False
            return _has_both(edge) and _ready(edge)

        deadline = time.time() + 60
        while time.time() < deadline and not up():
            time.sleep(1)
        assert up(), tails()
        # Without the token the cloud side refuses; the edge router presents it.
        assert httpx.post(f"{cloud}/v1/chat/completions", json=CHAT).status_code == 401
        used: dict[str, int] = {}
        for _ in range(20):
            r = httpx.post(f"{edge}/v1/chat/completions", json=CHAT, timeout=30)
            assert r.status_code == 200, (r.text, tails())
            b = r.headers["x-perllm-decision"].split(";")[0].removeprefix("backend=")
            used[b] = used.get(b, 0) + 1
        assert used.get("cloud-cluster", 0) >= 1, used
        cm = httpx.get(f"{cloud}/metrics").text
        assert (
            _metric(cm, 'perllm_router_requests_judged_total{backend="chat-cloud"')
            >= used["cloud-cluster"]
        ), cm
        assert 'perllm_router_rejected_requests_total{status="401"} 1.0' in cm

        # Cut the path: the cloud side's router goes away.
        procs["cloud"].terminate()
        procs["cloud"].wait(15)
        after = [
            httpx.post(f"{edge}/v1/chat/completions", json=CHAT, timeout=30) for _ in range(10)
        ]
        assert [r.status_code for r in after] == [200] * 10, (after[0].text, tails())
        assert {r.headers["x-perllm-decision"].split(";")[0] for r in after} == {
            "backend=chat-edge"
        }
        ready = httpx.get(f"{edge}/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "degraded", "down": ["cloud-cluster"]}
        em = httpx.get(f"{edge}/metrics").text
        assert 'perllm_router_backend_ejected{backend="cloud-cluster"} 1.0' in em
        assert "left out of decisions" in (tmp_path / "edge.log").read_text()
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            p.wait(15)
