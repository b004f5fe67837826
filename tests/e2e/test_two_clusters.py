"""Two clusters, each with PerLLM (docs/router.md, "Two clusters"): two local control
planes started here (each its own run directory and ports), an edge one with the demo's
edge nodes only and a cloud one with its cloud node only. Each has PerLLM's operator (with
its ServiceAccount's rights only), the same `chat` LLMService of the demo (its
model-server pod rendered by the operator, bound by perllm-scheduler to that cluster's
nodes, made Ready by KWOK, served by that side's twin), and a router that discovers it
from its own API server. The cloud side's router asks for
a token; the edge side's has the cloud side's router as a remote tier with that token.

A burst the edge replica cannot finish in time alone: part goes to the cloud side (its
router's records and its LLMService's status in the cloud API server say so), deadlines
are kept. Then the path is cut (the cloud router stops): the edge keeps serving with no
error, and the edge LLMService's status in the edge API server says which tier is
unreachable and why, with the per-tier shares; when the cloud router is back, the
condition is True again (the edge router's health probe finds it: no request needed) and
bursts reach it again. The operator writes the same status meanwhile (every 2 s): its
conditions and the router's, and `status.routing`, all stay. This replaces the earlier
test of both sides as namespaces of one API server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

import httpx
import pytest
import yaml

from perllm.crd import PLURAL
from perllm.demo.services import default_sources, load_services
from perllm.devcluster.binaries import Binaries, BinariesMissing
from perllm.devcluster.cluster import Cluster, ClusterConfig, temporary_run_dir
from perllm.devcluster.kube import Kube, wait_for
from perllm.devcluster.nodes import node_manifests
from perllm.labels import LABEL_TIER
from perllm.router.status import CONDITION
from perllm.scenario import load_scenario
from perllm.twin.openai import pod_url

from .operator_harness import bound_pods, start_operator
from .test_router import PERLLM, _metric, _port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
# Short answers with long prompts: the deadline (1 s + 0.15 s a token) is within what the
# edge replica takes alone, not under a burst.
CHAT = {"model": "chat", "max_tokens": 8, "messages": [{"role": "user", "content": "hi " * 400}]}
NS = f"two-{uuid.uuid4().hex[:6]}"  # the same namespace and service on both sides


@pytest.fixture(scope="module")
def sides(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Kube]]:
    """Two control planes, each with the demo's nodes of its tier and the operator."""
    try:
        Binaries.locate().require(prometheus=False)
    except BinariesMissing as e:
        pytest.fail(str(e), pytrace=False)
    clusters = {
        tier: Cluster(ClusterConfig(run_dir=temporary_run_dir(), scenario=None,
                                    prometheus=False, die_with_parent=True))
        for tier in ("edge", "cloud")
    }  # fmt: skip
    with contextlib.ExitStack() as stack:
        for c in clusters.values():
            stack.callback(shutil.rmtree, c.run_dir, ignore_errors=True)
            stack.callback(c.down)
        for c in clusters.values():  # one after the other: ports are picked free, then bound
            c.up()
        out = {t: Kube(c.kubeconfig, str(c.bin.kubectl), c) for t, c in clusters.items()}
        nodes = node_manifests(load_scenario("demo"))
        for tier, k in out.items():
            mine = [n for n in nodes if n["metadata"]["labels"][LABEL_TIER] == tier]
            k.kubectl("create", "-f", "-", input=yaml.safe_dump_all(mine))
            names = [f"node/{n['metadata']['name']}" for n in mine]
            k.kubectl("wait", "--for=condition=Ready", *names, "--timeout=60s")
            operator = contextlib.contextmanager(start_operator)(k, tmp_path_factory)
            stack.enter_context(operator)
        yield out


def _apply(kube: Kube) -> None:
    """The chat LLMService (both tiers allowed, the same on both sides)."""
    kube.kubectl("create", "namespace", NS)
    kube.kubectl("create", "serviceaccount", "default", "-n", NS, check=False)
    chat = [s for s in load_services(default_sources("demo")) if s["metadata"]["name"] == "chat"]
    kube.apply(chat, NS)


def _pod(kube: Kube, tier: str) -> str:
    """The name of the service's model-server pod once the operator's Deployment has it
    bound (to a node of `tier`: the only ones there) and Ready."""
    (pod,) = wait_for(lambda: bound_pods(kube, NS, "chat"), f"the {tier} pod bound", timeout=60)
    node = kube.get("node", pod["spec"]["nodeName"])
    assert node["metadata"]["labels"][LABEL_TIER] == tier
    name = str(pod["metadata"]["name"])
    kube.kubectl("wait", "--for=condition=Ready", f"pod/{name}", "-n", NS, "--timeout=60s")
    return name


def _status(kube: Kube) -> dict[str, Any]:
    return (kube.get_or_none(PLURAL, "chat", "-n", NS) or {}).get("status") or {}


def _cond(kube: Kube) -> dict[str, Any]:
    conds = _status(kube).get("conditions") or []
    return next((c for c in conds if c["type"] == CONDITION), {})


def _tiers(routing: dict[str, Any]) -> dict[str, int]:
    return {t["tier"]: t["requests"] for t in routing.get("tiers") or []}


def _backend(r: httpx.Response) -> str:
    return r.headers["x-perllm-decision"].split(";")[0].removeprefix("backend=")


def _burst(url: str, n: int, concurrency: int) -> list[httpx.Response]:
    with httpx.Client(timeout=60) as c, ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda _: c.post(f"{url}/v1/chat/completions", json=CHAT), range(n)))


def test_the_edge_cluster_offloads_to_the_cloud_cluster_and_says_when_it_cannot(
    sides: dict[str, Kube], tmp_path: Path
) -> None:
    edge_k, cloud_k = sides["edge"], sides["cloud"]
    _apply(edge_k)
    _apply(cloud_k)

    token = tmp_path / "cloud-token"
    token.write_text("edge-to-cloud\n")
    ports = {n: _port() for n in ("edge-twin", "edge-openai", "cloud-twin", "cloud-openai",
                                  "edge", "cloud")}  # fmt: skip
    edge, cloud = f"http://127.0.0.1:{ports['edge']}", f"http://127.0.0.1:{ports['cloud']}"

    def discovery(side: str, k: Kube) -> dict[str, Any]:
        pods = pod_url(f"http://127.0.0.1:{ports[side + '-openai']}", "{namespace}", "{pod}")
        return {"service": f"{NS}/chat", "kubeconfig": str(k.kubeconfig), "url_template": pods,
                "interval_s": 1, "status_interval_s": 1}  # fmt: skip

    configs: dict[str, dict[str, Any]] = {
        "cloud": {"discovery": discovery("cloud", cloud_k), "auth": {"token_file": str(token)}},
        "edge": {
            "discovery": discovery("edge", edge_k),
            "backends": [
                {
                    "name": "cloud-cluster",
                    "url": cloud,
                    "tier": "cloud",
                    "hardware": "a100-80gb-sxm",
                    "link": {"bandwidth_mbps": 100, "rtt_ms": 40},
                    "token_file": str(token),
                }
            ],
            # Back within a second or two once the cloud side answers again.
            "limits": {"eject_s": 0.5, "eject_max_s": 1},
        },
    }
    for side, cfg in configs.items():
        (tmp_path / f"{side}.yaml").write_text(yaml.safe_dump(cfg))
    logs: dict[str, TextIO] = {}
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(name: str, k: Kube, *args: str) -> None:
        logs[name] = logs.get(name) or (tmp_path / f"{name}.log").open("a")
        env = {**os.environ, "KUBECONFIG": str(k.kubeconfig)}
        procs[name] = subprocess.Popen(
            [*PERLLM, *args], env=env, stdout=logs[name], stderr=subprocess.STDOUT
        )

    def tails() -> str:
        return "\n".join(
            f"--- {n} ---\n{(tmp_path / f'{n}.log').read_text()[-2500:]}" for n in logs
        )

    for side, k in (("edge", edge_k), ("cloud", cloud_k)):
        spawn(f"{side}-twin", k, "twin", "--scenario", "demo", "--port", str(ports[f"{side}-twin"]),
              "--openai-port", str(ports[f"{side}-openai"]), "--speed", "10",
              "--poll-interval", "1")  # fmt: skip
    router_args = {s: ("router", "--config", str(tmp_path / f"{s}.yaml"), "--port", str(ports[s]))
                   for s in ("edge", "cloud")}  # fmt: skip
    spawn("cloud", cloud_k, *router_args["cloud"])
    spawn("edge", edge_k, *router_args["edge"])
    t0 = time.monotonic()
    try:
        # The twins and routers start meanwhile (discovery waits for the pods).
        pod = {"edge": _pod(edge_k, "edge"), "cloud": _pod(cloud_k, "cloud")}

        def up() -> bool:  # both twins serve their pod, the edge router has both tiers
            try:
                for side, name in pod.items():
                    u = (
                        pod_url(f"http://127.0.0.1:{ports[side + '-openai']}", NS, name)
                        + "/v1/models"
                    )
                    if httpx.get(u, timeout=5).status_code != 200:
                        return False
                m = httpx.get(f"{edge}/metrics").text
                return f'backend="{pod["edge"]}"' in m and 'backend="cloud-cluster"' in m
            except httpx.HTTPError:
                return False

        wait_for(up, "both sides serving", timeout=60, every=1)
        # Without the token the cloud side refuses; the edge router presents it.
        assert httpx.post(f"{cloud}/v1/chat/completions", json=CHAT).status_code == 401

        # A burst: more than the edge replica finishes in time, part goes to the cloud.
        burst = _burst(edge, 40, 16)
        assert {r.status_code for r in burst} == {200}, (burst[0].text, tails())
        used = {b: sum(_backend(r) == b for r in burst) for b in (pod["edge"], "cloud-cluster")}
        assert used["cloud-cluster"] >= 1 and used[pod["edge"]] >= 1, used
        cm = httpx.get(f"{cloud}/metrics").text  # the cloud side's own records
        judged = f'perllm_router_requests_judged_total{{backend="{pod["cloud"]}"'
        assert _metric(cm, judged) >= used["cloud-cluster"], cm
        em = httpx.get(f"{edge}/metrics").text
        assert _metric(em, "perllm_router_attainment_ratio") >= 0.9, em

        # Each side's LLMService status, in its own API server.
        def routed(k: Kube, n: int) -> dict[str, Any] | None:
            rt = _status(k).get("routing") or {}
            return rt if rt.get("requests", 0) >= n else None

        edge_rt = wait_for(lambda: routed(edge_k, len(burst)), "the edge status", timeout=15)
        assert _tiers(edge_rt) == {"edge": used[pod["edge"]], "cloud": used["cloud-cluster"]}
        assert sum(t["share"] for t in edge_rt["tiers"]) == pytest.approx(1, abs=1e-3)
        assert edge_rt["attainment"] >= 0.9, edge_rt
        remote = next(b for b in edge_rt["backends"] if b["name"] == "cloud-cluster")
        assert remote["remote"] is True and remote["tier"] == "cloud"
        cloud_rt = wait_for(lambda: routed(cloud_k, used["cloud-cluster"]), "the cloud status")
        assert _tiers(cloud_rt).get("cloud", 0) >= used["cloud-cluster"], cloud_rt
        print(f"burst: {used}, edge attainment {edge_rt['attainment']}")
        assert _cond(edge_k)["status"] == "True", _status(edge_k)
        assert _cond(cloud_k)["status"] == "True", _status(cloud_k)

        # Cut the path: the cloud side's router goes away. The edge serves all of it.
        procs["cloud"].terminate()
        procs["cloud"].wait(15)
        after = _burst(edge, 30, 16)
        assert [r.status_code for r in after] == [200] * 30, (after[0].text, tails())
        assert {_backend(r) for r in after} == {pod["edge"]}

        def unreachable() -> dict[str, Any] | None:
            c = _cond(edge_k)
            return c if c.get("status") == "False" else None

        cond = wait_for(unreachable, "the edge status to say the cloud is cut off", timeout=15)
        assert cond["reason"] == "RemoteUnreachable", cond
        assert cond["message"].startswith(f"remote tier cloud-cluster (cloud, {cloud})"), cond
        assert "refuses connections" in cond["message"] and pod["edge"] in cond["message"]
        rt = wait_for(lambda: routed(edge_k, len(burst) + len(after)), "the edge status")
        assert _tiers(rt)["edge"] == used[pod["edge"]] + len(after), rt
        ready = httpx.get(f"{edge}/readyz").json()
        assert ready in ({"status": "degraded", "down": ["cloud-cluster"]}, {"status": "ok"})

        # The path is back: the edge router's health probe finds the cloud side answering
        # (no request needed: the condition is True again), and bursts reach it again.
        spawn("cloud", cloud_k, *router_args["cloud"])

        def reachable() -> bool:
            return _cond(edge_k).get("status") == "True"

        wait_for(reachable, "the edge status to say the cloud is back", timeout=30, every=1)
        cond = _cond(edge_k)
        assert cond["reason"] == "AllReachable" and "remote tier cloud-cluster" in cond["message"]

        def served_again() -> bool:
            _burst(edge, 16, 16)
            return bool((_status(cloud_k).get("routing") or {}).get("requests"))

        wait_for(served_again, "the cloud side to serve the edge again", timeout=30, every=1)
        # The operator's writes and the router's kept each other's: both sides' status has
        # the operator's conditions and child, the router's condition and routing.
        for k in (edge_k, cloud_k):
            st = _status(k)
            types = {c["type"] for c in st["conditions"]}
            assert {"Reconciled", "Placed", "Ready", CONDITION} <= types, st
            assert st["child"]["kind"] == "Deployment" and st["routing"]["requests"] > 0, st
        print(f"two clusters: {time.monotonic() - t0:.1f} s after the processes started")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            p.wait(15)
        for f in logs.values():
            f.close()
