"""Telemetry wired by the chart's objects: with the chart installed (agent on), the agent's
and a model server's series reach Prometheus through the pods' own `prometheus.io/*`
annotations (the chart's on the agent DaemonSet, the operator's on model-server pods),
discovered by the annotation-driven job an annotation-driven Prometheus runs (the
prometheus-community chart's `kubernetes-pods`: `perllm.devcluster.config.
annotation_scrape_job`), with nothing target-specific written by hand; and the extender's
queries read them by namespace and pod, and its learner makes a CS-UCB update from
them. That Prometheus is built from source
(`tools/build-binaries.sh promsd`): Debian's has no Kubernetes discovery.

Pods need addresses that something answers on: a second KWOK manages two nodes of this
test and gives their pods IPs in 127.64.0.0/16, where the real `perllm agent` and a
model-server exporter (vLLM's series, as the operator e2e tests serve them) listen.
The Prometheus Operator path (the chart's PodMonitors) needs that operator and is run by
the kind workflow, not here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from perllm_operator import render

from perllm.devcluster import argv
from perllm.devcluster import config as devcfg
from perllm.devcluster.binaries import Binaries, prometheus_sd_path
from perllm.devcluster.exporter import TextExporter
from perllm.devcluster.kube import Kube, wait_for
from perllm.devcluster.nodes import KWOK_ANNOTATION, node_manifests
from perllm.devcluster.process import Proc, free_port, http_ok, start, wait_until
from perllm.scenario import load_scenario
from perllm.telemetry import names, queries

from .promql import prom_query

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
ROOT = Path(__file__).parents[2]
LOOPBACK = "perllm.io/e2e-loopback"
RELEASE, NS, TEAM = "scrape", "perllm-scrape", "scrape-team"


class VllmServer(TextExporter):
    """A model server's /metrics (vLLM's names, no namespace/pod labels: discovery adds
    them), on the pod's own address."""

    def __init__(self, host: str, port: int) -> None:
        self.t0 = time.time()
        super().__init__(host, port)

    def render(self) -> str:
        n = int(4 * (time.time() - self.t0))  # 4 requests/s, 0.5 s each
        v = names.VLLM_E2E_LATENCY
        return (
            "\n".join(
                [
                    f"# TYPE {names.VLLM_RUNNING} gauge",
                    f'{names.VLLM_RUNNING}{{model_name="chat"}} 3',
                    f"# TYPE {names.VLLM_WAITING} gauge",
                    f'{names.VLLM_WAITING}{{model_name="chat"}} 1',
                    f"# TYPE {v} histogram",
                    f'{v}_bucket{{model_name="chat",le="+Inf"}} {n}',
                    f'{v}_sum{{model_name="chat"}} {0.5 * n}',
                    f'{v}_count{{model_name="chat"}} {n}',
                ]
            )
            + "\n"
        )


@pytest.fixture
def prometheus(kube: Kube, tmp_path: Path) -> Iterator[str]:
    """A Prometheus with Kubernetes discovery (built from source: Debian's, the harness',
    has none) running only the annotation-driven pod job."""
    binary = prometheus_sd_path()
    if not binary.is_file():
        pytest.fail(f"{binary} is missing: tools/build-binaries.sh promsd", pytrace=False)
    port = free_port()
    conf = tmp_path / "prometheus.yml"
    conf.write_text(devcfg.prometheus_config([devcfg.annotation_scrape_job(kube.kubeconfig)], port))
    proc = start(
        "prometheus-sd", argv.prometheus(binary, conf, tmp_path / "tsdb", port),
        tmp_path / "prometheus.log", die_with_parent=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(proc, lambda: http_ok(f"{url}/-/ready"), 60, "/-/ready")
        yield url
    finally:
        proc.stop()


@pytest.fixture
def loopback_nodes(kube: Kube, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Two nodes (the demo's edge GPU and cloud shapes) managed by a KWOK of this test
    whose pods get 127.64.x.y addresses."""
    bins = Binaries.locate()
    stages = tmp_path / "kwok-stages.yaml"
    stages.write_text(devcfg.KWOK_STAGES)
    proc: Proc = start(
        "kwok-loopback",
        argv.kwok(
            bins.kwok, kube.kubeconfig, stages, f"{LOOPBACK}=true", free_port(), 0,
            cidr="127.64.0.0/16",
        ),
        tmp_path / "kwok.log",
        die_with_parent=True,
    )  # fmt: skip
    demo = {n["metadata"]["name"]: n for n in node_manifests(load_scenario("demo"))}
    made: dict[str, str] = {}
    for tier, src in (("edge", "edge-gpu-1"), ("cloud", "cloud")):
        node = json.loads(json.dumps(demo[src]))
        name = f"lo-{tier}"
        node["metadata"]["name"] = name
        node["metadata"]["labels"] |= {"kubernetes.io/hostname": name, LOOPBACK: "true"}
        del node["metadata"]["annotations"][KWOK_ANNOTATION]  # not the harness KWOK's
        node["metadata"]["annotations"][LOOPBACK] = "true"
        kube.kubectl("create", "-f", "-", input=yaml.safe_dump(node), check=False)
        made[tier] = name
    try:
        kube.kubectl(
            "wait", "--for=condition=Ready", *(f"node/{n}" for n in made.values()),
            "--timeout=60s", timeout=70,
        )  # fmt: skip
        yield made
    finally:
        kube.kubectl("delete", "node", *made.values(), "--wait=false", check=False)
        proc.stop()


def _extender_learns(
    kube: Kube, prom: str, svc: dict[str, Any], pod: dict[str, Any], nodes: dict[str, str]
) -> Any:
    """The extender (in process, reading this Prometheus) decides the model-server pod
    and learns from the series scraped for it: one CS-UCB update, from the observed
    0.5 s mean latency."""
    from fastapi.testclient import TestClient
    from perllm_extender import ExtenderConfig, create_app

    from perllm.telemetry.prom import Prometheus

    client = TestClient(create_app(ExtenderConfig(prometheus=Prometheus(prom, timeout_s=5))))
    live = client.app.state.live  # type: ignore[attr-defined]
    for n in nodes.values():
        live.scheduler.nodes.upsert(kube.get("node", n))
    live.scheduler.services.add_llmservice(svc)
    pending = json.loads(json.dumps(pod))
    pending["metadata"] |= {"namespace": TEAM, "uid": "uid-chat-model"}
    pending["spec"].pop("nodeName")
    pending["status"] = {"phase": "Pending"}
    r = client.post(
        "/scheduler/filter",
        json={"Pod": pending, "Nodes": None, "NodeNames": sorted(nodes.values())},
    )
    assert r.status_code == 200 and r.json()["NodeNames"], r.text
    obs = live.learner.observe()
    assert len(obs) == 1, obs
    assert client.post("/learn").json()["updated"] == 1
    return obs[0]


def test_agent_and_model_server_series_are_scraped_through_the_charts_objects(
    kube: Kube, loopback_nodes: dict[str, str], prometheus: str, tmp_path: Path
) -> None:
    prom = prometheus
    helm = str(Binaries.locate().helm)
    kube.kubectl("create", "namespace", TEAM, check=False)
    kube.kubectl("create", "serviceaccount", "default", "-n", TEAM, check=False)
    env = {"KUBECONFIG": str(kube.kubeconfig), "PATH": "/usr/bin:/bin"}
    install = subprocess.run(
        [helm, "install", RELEASE, str(ROOT / "charts" / "perllm"), "-n", NS,
         "--create-namespace", "--wait", "--timeout=2m",
         "--set", "agent.enabled=true,operator.enabled=false,extender.enabled=false,"
                  "scheduler.enabled=false",
         "--set-json", f'agent.nodeSelector={{"{LOOPBACK}":"true"}}'],
        capture_output=True, text=True, timeout=150, env=env, check=False,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    procs: list[subprocess.Popen[bytes]] = []
    servers: list[TextExporter] = []
    try:
        # The operator's model-server pod for an LLMService (backend: deployment), pinned
        # to the loopback edge node.
        svc = yaml.safe_load((ROOT / "manifests" / "chat-assistant.yaml").read_text())
        svc["metadata"] = {"name": "chat", "namespace": TEAM, "uid": "u-chat"}
        svc["spec"]["backend"] = "deployment"
        tpl = render.deployment(svc)["spec"]["template"]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {**tpl["metadata"], "name": "chat-model"},
            "spec": {**tpl["spec"], "nodeName": loopback_nodes["edge"]},
        }
        pod["spec"].pop("affinity", None)
        kube.apply([pod], TEAM)

        def pods() -> dict[str, dict[str, Any]]:
            out = {}
            for ns in (NS, TEAM):
                for p in kube.get("pods", "-n", ns)["items"]:
                    if p["spec"].get("nodeName") in loopback_nodes.values():
                        out[p["metadata"]["name"]] = p
            return out

        def addressed() -> dict[str, dict[str, Any]] | None:
            ps = pods()
            ok = len(ps) == 3 and all(
                p["status"].get("podIP", "").startswith("127.64.") for p in ps.values()
            )
            return ps if ok else None

        ps = wait_for(addressed, "pods with loopback addresses", timeout=60)
        model = ps["chat-model"]
        ann = model["metadata"]["annotations"]
        servers.append(VllmServer(model["status"]["podIP"], int(ann["prometheus.io/port"])))
        agents = {p["spec"]["nodeName"]: p for n, p in ps.items() if n != "chat-model"}
        assert set(agents) == set(loopback_nodes.values())
        for node, p in agents.items():
            a = p["metadata"]["annotations"]
            assert a["prometheus.io/scrape"] == "true", a  # the chart's annotations
            log = (tmp_path / f"agent-{node}.log").open("wb")
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c",
                     "import sys; sys.argv[0] = 'perllm'; from perllm.cli import app; app()",
                     "agent", f"--node={node}", f"--host={p['status']['podIP']}",
                     f"--port={a['prometheus.io/port']}", "--no-nvml", "--rapl-root=/nonexistent"],
                    stdout=log, stderr=subprocess.STDOUT,
                )
            )  # fmt: skip

        def scraped() -> bool:
            up = prom_query(prom, 'up{job="kubernetes-pods"}')
            mine = {
                r["metric"]["pod"]: r["value"][1]
                for r in up
                if r["metric"].get("node") in loopback_nodes.values()
            }
            return len(mine) == 3 and set(mine.values()) == {"1"}

        assert wait_for(scraped, "the three loopback pods scraped", timeout=90)
        # The agent's own series, with the node it names and the pod it came from.
        src = prom_query(prom, f'perllm_agent_source_up{{namespace="{NS}"}}')
        assert {r["metric"]["node"] for r in src} == set(loopback_nodes.values()), src
        # The extender's queries see the model server by namespace and pod.
        key = {"namespace": TEAM, "pod": "chat-model"}
        running = prom_query(prom, queries.pod_running())
        assert any(r["metric"] == key and float(r["value"][1]) == 3.0 for r in running), running
        waiting = prom_query(prom, queries.pod_waiting())
        assert any(r["metric"] == key and float(r["value"][1]) == 1.0 for r in waiting), waiting

        def latency() -> list[dict[str, Any]]:
            return [r for r in prom_query(prom, names.pod_latency("30s")) if r["metric"] == key]

        lat = wait_for(latency, "a latency over the scraped histogram", timeout=60)
        assert float(lat[0]["value"][1]) == pytest.approx(0.5, rel=0.05)
        learned = _extender_learns(kube, prom, svc, pod, loopback_nodes)
        assert learned.time_s == pytest.approx(0.5, rel=0.05)
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        for s in servers:
            s.close()
        subprocess.run(
            [helm, "uninstall", RELEASE, "-n", NS, "--wait"], env=env, timeout=120,
            capture_output=True, check=False,
        )  # fmt: skip
        kube.kubectl("delete", "namespace", NS, TEAM, "--wait=false", check=False)
