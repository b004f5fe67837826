"""`perllm router` end to end on the local control plane: discovery of an LLMService's
ready pods, the twin's OpenAI endpoints serving them, `perllm load` replaying a burst.

The chat LLMService of the demo is applied (for the twin: its spec), with a replica per
tier (`spec.tierReplicas`: its children are the Deployments chat-edge and chat-cloud);
those two Deployments are made here as the operator would, their pods bound to an edge
GPU node and a cloud node (nodeName: the operator and extender are not part of this
test), ReplicaSet-owned by the local control plane's controller manager and made Ready by
KWOK. A hand-made copy, a third Deployment chat-copy with the same pod labels, is never
routed to: discovery keeps the service's own pods only (perllm.service_pods). `perllm twin
--openai-port` serves them, timed by the world model at x10; `perllm router` discovers
them (url_template onto the twin's /pods/<ns>/<pod> paths) and `perllm load` sends a
short burst through it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from perllm.crd import CRD_PATH
from perllm.demo.services import default_sources, load_services
from perllm.devcluster.kube import Kube
from perllm.labels import LABEL_SERVICE, LABEL_TIER
from perllm.twin.openai import pod_url

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
PERLLM = [
    sys.executable,
    "-c",
    "import sys; sys.argv[0] = 'perllm'; from perllm.cli import app; app()",
]
REQUESTS = 60


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _deployment(name: str, node: str) -> dict[str, Any]:
    """A Deployment of one model-server pod of chat on `node` (its pods labelled with the
    service, as every child's and every copy's are)."""
    labels = {LABEL_SERVICE: "chat", "app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeName": node,
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [
                        {
                            "name": "server",
                            "image": "vllm",
                            "ports": [{"name": "http", "containerPort": 8080}],
                        }
                    ],
                },
            },
        },
    }


def _pod_of(kube: Kube, namespace: str, deployment: str) -> str:
    (p,) = kube.get("pods", "-n", namespace, "-l", f"app={deployment}")["items"]
    return str(p["metadata"]["name"])


def _nodes(kube: Kube) -> tuple[str, str]:
    items = kube.get("nodes")["items"]
    labels = {n["metadata"]["name"]: n["metadata"].get("labels", {}) for n in items}
    edge = [n for n, lb in labels.items() if lb.get(LABEL_TIER) == "edge"]
    cloud = [n for n, lb in labels.items() if lb.get(LABEL_TIER) == "cloud"]
    assert edge and cloud, labels
    return sorted(edge)[0], sorted(cloud)[0]


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_router_discovers_twin_pods_spreads_and_learns(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    kube.kubectl("apply", "-f", str(CRD_PATH))
    kube.kubectl(
        "wait", "--for=condition=Established", "crd/llmservices.perllm.io", "--timeout=60s"
    )
    chat = [s for s in load_services(default_sources("demo")) if s["metadata"]["name"] == "chat"]
    chat[0]["spec"]["tierReplicas"] = {"edge": 1, "cloud": 1}
    kube.apply(chat, namespace)
    edge, cloud = _nodes(kube)
    deps = {"chat-edge": edge, "chat-cloud": cloud, "chat-copy": edge}
    kube.apply([_deployment(d, n) for d, n in deps.items()], namespace)
    for d in deps:
        kube.kubectl("rollout", "status", f"deployment/{d}", "-n", namespace, "--timeout=60s")
    kube.kubectl("wait", "--for=condition=Ready", "pod", "--all", "-n", namespace, "--timeout=60s")
    pods = {d: _pod_of(kube, namespace, d) for d in deps}
    own = {pods["chat-edge"], pods["chat-cloud"]}

    env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig)}
    twin_port, openai_port, router_port = _port(), _port(), _port()
    cfg = tmp_path / "router.yaml"
    cfg.write_text(yaml.safe_dump({
        "scenario": "demo", "service_class": "chat",
        "discovery": {
            "service": f"{namespace}/chat", "interval_s": 1, "kubeconfig": str(kube.kubeconfig),
            "url_template": pod_url(f"http://127.0.0.1:{openai_port}", "{namespace}", "{pod}"),
        },
    }))  # fmt: skip
    logs = {n: (tmp_path / f"{n}.log").open("w") for n in ("twin", "router")}
    procs = [
        subprocess.Popen(
            [
                *PERLLM,
                "twin",
                "--scenario",
                "demo",
                "--port",
                str(twin_port),
                "--openai-port",
                str(openai_port),
                "--speed",
                "10",
                "--poll-interval",
                "1",
            ],
            env=env,
            stdout=logs["twin"],
            stderr=subprocess.STDOUT,
        ),
        subprocess.Popen(
            [*PERLLM, "router", "--config", str(cfg), "--port", str(router_port)],
            env=env,
            stdout=logs["router"],
            stderr=subprocess.STDOUT,
        ),
    ]
    url = f"http://127.0.0.1:{router_port}"
    try:
        deadline = time.time() + 60
        ready = False
        while time.time() < deadline and not ready:  # the router has both, the twin serves
            time.sleep(1)
            try:
                r = httpx.post(f"{url}/v1/chat/completions", timeout=10, json={
                    "model": "chat", "max_tokens": 4,
                    "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
                ready = r.status_code == 200
            except httpx.HTTPError:
                pass
        assert ready, (tmp_path / "router.log").read_text()[-3000:] + (
            tmp_path / "twin.log"
        ).read_text()[-3000:]
        before = httpx.get(f"{url}/metrics").text
        out = tmp_path / "load.json"
        done = subprocess.run(
            [*PERLLM, "load", "demo", "--target", url, "--class", "chat", "--speed", "20",
             "--max-requests", str(REQUESTS), "--max-duration", "60", "--json", str(out)],
            env=env, capture_output=True, text=True, timeout=150, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        rep = json.loads(out.read_text())
        metrics = httpx.get(f"{url}/metrics").text
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(15)
    router_log = (tmp_path / "router.log").read_text()
    assert rep["sent"] == REQUESTS and rep["ok"] == REQUESTS, (rep, router_log[-3000:])
    # spread by its decisions: each discovered pod was tried (unplayed arms first), then
    # CS-UCB kept to what met deadlines; the header names only discovered pods, the
    # service's own: never the hand-made copy's (it was a backend like them)
    assert set(rep["backends"]) <= own, rep["backends"]
    per = {b: _metric(metrics, f'perllm_router_decisions_total{{backend="{b}"') for b in own}
    assert min(per.values()) >= 1, per
    copy = pods["chat-copy"]
    assert f'backend="{copy}"' not in metrics, metrics
    assert f"pod {namespace}/{copy} left out: not {namespace}/chat's own" in router_log
    # learned: every completion judged and fed back; exploration was only the first plays
    judged = _metric(metrics, "perllm_router_requests_judged_total") - _metric(
        before, "perllm_router_requests_judged_total"
    )
    assert judged == REQUESTS, metrics
    decisions = _metric(metrics, "perllm_router_decisions_total")
    assert decisions >= REQUESTS + 1
    assert _metric(metrics, "perllm_router_exploration_total") <= 2 < decisions
    assert "perllm_router_attainment_ratio" in metrics
    assert "perllm_router_inflight_requests" in metrics
