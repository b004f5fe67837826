"""`perllm router`'s discovery: ready pods of an LLMService and their nodes as backends."""

from __future__ import annotations

import asyncio
import json
import re
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fake_kube import pod_of

from perllm.labels import (
    ANN_LINK_BANDWIDTH,
    ANN_LINK_RTT,
    LABEL_HARDWARE,
    LABEL_SERVICE,
    LABEL_TIER,
)
from perllm.router.app import Router
from perllm.router.config import RouterConfigError, parse_config
from perllm.router.discovery import backends_from
from perllm.scenario import load_scenario
from perllm.twin.openai import pod_url


def node(name: str, tier: str, hw: str, bw: float = 100) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": {LABEL_TIER: tier, LABEL_HARDWARE: hw},
            "annotations": {ANN_LINK_BANDWIDTH: str(bw), ANN_LINK_RTT: "5"},
        }
    }


def pod(
    name: str, node: str, ip: str = "10.0.0.1", ready: bool = True, deployment: str | None = "chat"
) -> dict[str, Any]:
    """A pod labelled for the service `chat`, made by the Deployment `deployment` (the demo's
    chat, `backend: deployment`, has one, `chat`), or a bare pod (None)."""
    meta = pod_of(deployment) if deployment else {"labels": {}}
    meta["labels"][LABEL_SERVICE] = "chat"
    return {
        "metadata": {"name": name, "namespace": "ns", **meta},
        "spec": {
            "nodeName": node,
            "containers": [{"ports": [{"name": "http", "containerPort": 8080}]}],
        },
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


NODES = {
    "edge-1": node("edge-1", "edge", "nvidia-l4"),
    "cloud-1": node("cloud-1", "cloud", "a100-80gb-sxm", 300),
    "odd": {"metadata": {"name": "odd", "labels": {LABEL_TIER: "edge"}}},
}


def router() -> Router:
    return Router(
        parse_config(
            {"scenario": "demo", "service_class": "chat", "discovery": {"service": "ns/chat"}}
        )
    )


def test_ready_pods_on_modelled_nodes_are_backends() -> None:
    r = router()
    skipped: dict[str, str] = {}
    pods = [pod("a", "edge-1"), pod("b", "cloud-1", "10.0.0.2"), pod("c", "edge-1", ready=False),
            pod("d", "odd"), pod("e", "gone")]  # fmt: skip
    got = backends_from(pods, NODES, r.catalogue, skipped=skipped)
    assert [(b.name, b.tier.value, b.hardware, b.url, b.node) for b in got] == [
        ("a", "edge", "nvidia-l4", "http://10.0.0.1:8080", "edge-1"),
        ("b", "cloud", "a100-80gb-sxm", "http://10.0.0.2:8080", "cloud-1"),
    ]
    assert got[1].link.bandwidth_mbps == 300
    assert skipped["c"] == "not ready" and "hardware" in skipped["d"] and "gone" in skipped["e"]
    twin = backends_from(
        pods[:1], NODES, r.catalogue, pod_url("http://127.0.0.1:9", "{namespace}", "{pod}")
    )
    assert twin[0].url == "http://127.0.0.1:9/pods/ns/a"


def test_an_ipv6_pod_is_bracketed_and_a_bad_url_skips_only_its_pod() -> None:
    r = router()
    pods = [pod("a", "edge-1", "fd00::7"), pod("b", "cloud-1", "10.0.0.2")]
    got = backends_from(pods, NODES, r.catalogue)
    assert [b.url for b in got] == ["http://[fd00::7]:8080", "http://10.0.0.2:8080"]
    # a template that brackets {ip} itself (what an IPv6 cluster had to write) still works
    own = backends_from(pods[:1], NODES, r.catalogue, "http://[{ip}]:{port}")
    assert [b.url for b in own] == ["http://[fd00::7]:8080"]  # (not [[fd00::7]]: skipped)
    skipped: dict[str, str] = {}
    bad = backends_from(pods, NODES, r.catalogue, "http://{ip}:{port}{pod}", skipped=skipped)
    assert bad == [] and all("port" in skipped[p].lower() for p in "ab")


def _chat(**spec: Any) -> dict[str, Any]:
    """The demo's chat LLMService (`backend: deployment`) in namespace ns, `spec` merged."""
    from perllm.demo.services import default_sources, load_services

    chat = next(
        s for s in load_services(default_sources("demo")) if s["metadata"]["name"] == "chat"
    )
    chat = json.loads(json.dumps({**chat, "metadata": {"name": "chat", "namespace": "ns"}}))
    chat["spec"].update(spec)
    return chat


class FakeApi:
    def __init__(self) -> None:
        self.pods = [pod("a", "edge-1")]
        self.fail = False

    def list_namespaced_pod(self, ns: str, label_selector: str, **kw: Any) -> Any:
        assert ns == "ns" and label_selector == f"{LABEL_SERVICE}=chat"
        assert kw["_request_timeout"] > 0
        if self.fail:
            raise OSError("API down")
        return SimpleNamespace(data=json.dumps({"items": self.pods}).encode())

    def read_node(self, name: str, **kw: Any) -> Any:
        if name not in NODES:
            from kubernetes.client import ApiException

            raise ApiException(status=404, reason="Not Found")
        return SimpleNamespace(data=json.dumps(NODES[name]).encode())


def test_membership_follows_the_cluster_and_keeps_what_was_learned() -> None:
    async def go() -> None:
        r = router()
        assert r.backends == [] and r.discovery is not None
        api = FakeApi()
        r.discovery._api, r.discovery._custom = api, FakeCustom(_chat())
        await r.discovery.refresh()
        assert [b.name for b in r.backends] == ["a"]
        stats = r.decider.bandit.stats
        api.pods = [pod("a", "edge-1"), pod("b", "cloud-1", "10.0.0.2")]
        await r.discovery.refresh()
        assert [b.name for b in r.backends] == ["a", "b"]
        assert r.decider.bandit.stats is stats  # learning carries over
        api.fail = True
        await r.discovery.refresh()  # a failed list keeps the membership
        assert [b.name for b in r.backends] == ["a", "b"] and r.discovery.errors == 1
        api.fail, api.pods = False, []
        await r.discovery.refresh()
        assert r.backends == []
        r.set_bandwidth("a", 42.0)
        await r.aclose()

    asyncio.run(go())


def test_static_remote_backends_stay_beside_the_discovered_pods() -> None:
    """A remote tier (another cluster's router) is a static backend: every refresh keeps
    it in the membership with the ready pods; a pod with its name is left out."""

    async def go() -> None:
        remote = {
            "name": "cloud-cluster",
            "url": "https://router.cloud.example",
            "tier": "cloud",
            "hardware": "a100-80gb-sxm",
            "link": {"bandwidth_mbps": 50, "rtt_ms": 40},
        }
        r = Router(
            parse_config(
                {
                    "scenario": "demo",
                    "service_class": "chat",
                    "discovery": {"service": "ns/chat"},
                    "backends": [remote],
                }
            )
        )
        assert r.discovery is not None
        api = FakeApi()
        r.discovery._api, r.discovery._custom = api, FakeCustom(_chat())
        await r.discovery.refresh()
        assert [b.name for b in r.backends] == ["a", "cloud-cluster"]
        api.pods = [pod("cloud-cluster", "edge-1")]  # a clash: the static one wins
        await r.discovery.refresh()
        assert [(b.name, b.url) for b in r.backends] == [
            ("cloud-cluster", "https://router.cloud.example")
        ]
        await r.aclose()

    asyncio.run(go())


def test_discovery_alone_reads_the_service_from_the_cluster() -> None:
    cfg = parse_config({"discovery": {"service": "ns/chat"}})
    assert cfg.service is None and cfg.scenario is None
    with pytest.raises(RouterConfigError, match="service: not given"):
        cfg.resolve()
    spec = load_scenario("demo").services()[0].model_dump(mode="json")
    both = {"scenario": "demo", "service_class": "chat", "service": spec}
    with pytest.raises(RouterConfigError, match="not both"):
        parse_config({**both, "discovery": {"service": "ns/chat"}})


@pytest.mark.parametrize("value", [float("inf"), 1e300])
def test_a_discovery_timeout_a_socket_cannot_take_is_refused(value: float) -> None:
    """The timeout reaches the kubernetes client's and Prometheus' sockets: above
    threading.TIMEOUT_MAX (inf passed gt=0) every read raised OverflowError and the
    router waited for a spec it could never read."""
    with pytest.raises(RouterConfigError, match=r"discovery\.timeout_s"):
        parse_config({"discovery": {"service": "ns/chat", "timeout_s": value}})


class FakeCustom:
    """The LLMService as the API returns it (or a 404)."""

    def __init__(self, obj: dict[str, Any] | None = None) -> None:
        self.obj = obj

    def get_namespaced_custom_object(self, *args: Any, **kw: Any) -> Any:
        assert args == ("perllm.io", "v1alpha1", "ns", "llmservices", "chat"), args
        if self.obj is None:
            raise OSError("(404) Reason: Not Found")
        return self.obj


def test_discovery_alone_waits_for_the_llmservice_and_follows_its_edits() -> None:
    from perllm.demo.services import default_sources, load_services

    chat = next(
        s for s in load_services(default_sources("demo")) if s["metadata"]["name"] == "chat"
    )
    chat = {**chat, "metadata": {"name": "chat", "namespace": "ns"}}

    async def go() -> None:
        r = Router(parse_config({"discovery": {"service": "ns/chat"}}))
        assert r.spec is None and r.discovery is not None and r.discovery.follow_spec
        api, custom = FakeApi(), FakeCustom()
        r.discovery._api, r.discovery._custom = api, custom
        c = httpx.AsyncClient(transport=httpx.ASGITransport(app=r), base_url="http://r")
        await r.discovery.refresh()
        assert r.backends == []  # no spec: no decisions, and it says why
        ready = await c.get("/readyz")
        assert ready.status_code == 503 and "LLMService ns/chat" in ready.text
        resp = await c.post("/v1/chat/completions", json={"model": "chat", "messages": []})
        assert resp.status_code == 503 and "Not Found" in resp.text
        # (the model list is the spec's: it was an AttributeError, a 500 with a traceback)
        models = await c.get("/v1/models")
        assert models.status_code == 503 and models.json()["error"]["type"] == "not_ready"
        assert "Not Found" in models.json()["error"]["message"]
        custom.obj = chat
        await r.discovery.refresh()
        assert r.spec is not None and r.spec.name == "chat"
        assert [b.name for b in r.backends] == ["a"]
        assert {m["id"] for m in (await c.get("/v1/models")).json()["data"]} == {
            "chat",
            "llama3-8b",
        }
        stats, deadline = r.decider.bandit.stats, r.spec.requirements.deadline.seconds
        edited = json.loads(json.dumps(chat))
        edited["spec"]["requirements"]["deadline"]["seconds"] = deadline * 2
        custom.obj = edited
        await r.discovery.refresh()
        assert r.spec.requirements.deadline.seconds == deadline * 2
        assert r.decider.bandit.stats is stats  # what was learned carries over
        custom.obj = None  # gone or unreadable: keep routing with the last spec
        await r.discovery.refresh()
        assert r.spec.requirements.deadline.seconds == deadline * 2 and r.backends
        await r.aclose()

    asyncio.run(go())


class FakeClient:
    """What `api_client` returns: counts its closes; any call through it fails."""

    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1

    def __getattr__(self, name: str) -> Any:
        raise OSError(f"no API server here ({name})")


def test_stopping_discovery_closes_its_one_api_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both APIs discovery uses (pods and nodes, the LLMService) share one ApiClient, which
    the router's stop closes, once however often it is stopped; a later round opens anew."""
    from perllm.router import discovery

    made: list[FakeClient] = []
    monkeypatch.setattr(discovery, "api_client", lambda kc: made.append(FakeClient()) or made[-1])

    async def go() -> None:
        r = router()
        d = r.discovery
        assert d is not None
        await r.aclose()  # never started, nothing opened: nothing to close
        core = d._core()
        assert core.api_client is made[0] and d._core() is core
        with pytest.raises(OSError, match="no API server"):
            d.spec_once()
        assert d._custom.api_client is made[0] and len(made) == 1
        await r.aclose()
        await r.aclose()
        assert made[0].closed == 1 and d._api is None and d._custom is None
        assert d._core().api_client is made[1]
        await r.aclose()
        assert [c.closed for c in made] == [1, 1]

    asyncio.run(go())


def test_an_llmservice_edited_to_an_unknown_model_keeps_the_last_spec_and_the_loop() -> None:
    """An edit naming a model the router's catalogue lacks is an invalid LLMService: the
    router keeps routing with the spec it had and says why (its deciders could not be
    built: the loop died on a KeyError with the router left without backends, for good)."""
    from perllm.demo.services import default_sources, load_services

    chat = next(
        s for s in load_services(default_sources("demo")) if s["metadata"]["name"] == "chat"
    )
    chat = {**chat, "metadata": {"name": "chat", "namespace": "ns"}}

    async def go() -> None:
        cfg = {"discovery": {"service": "ns/chat", "interval_s": 0.01, "status_interval_s": 0}}
        r = Router(parse_config(cfg))
        api, custom = FakeApi(), FakeCustom()
        assert r.discovery is not None
        r.discovery._api, r.discovery._custom = api, custom
        custom.obj = chat
        await r.start()
        assert [b.name for b in r.backends] == ["a"]
        edited = json.loads(json.dumps(chat))
        edited["spec"]["model"]["name"] = "no-such-model"
        custom.obj = edited
        rounds = r.discovery.rounds
        for _ in range(200):
            await asyncio.sleep(0.01)
            if r.discovery.rounds > rounds + 2:
                break
        assert r.discovery.rounds > rounds + 2  # the loop goes on
        assert r.spec is not None and r.spec.model == "llama3-8b"
        assert [b.name for b in r.backends] == ["a"]
        assert "no-such-model" in r.discovery.spec_error
        api.pods = [pod("a", "edge-1"), pod("b", "cloud-1", "10.0.0.2")]
        custom.obj = chat
        for _ in range(200):
            await asyncio.sleep(0.01)
            if len(r.backends) == 2:
                break
        assert [b.name for b in r.backends] == ["a", "b"]
        await r.aclose()

    asyncio.run(asyncio.wait_for(go(), 30))


def test_a_round_that_raises_does_not_end_a_routers_loop() -> None:
    from dataclasses import dataclass, field

    from perllm.router.periodic import Periodic

    @dataclass
    class Flaky(Periodic):
        interval_s: float = 0.0
        calls: int = 0
        _task: asyncio.Task[None] | None = field(default=None)

        async def step(self) -> None:
            self.calls += 1
            if self.calls < 3:
                raise KeyError("boom")

    async def go() -> None:
        f = Flaky()
        f.start()
        for _ in range(100):
            await asyncio.sleep(0.001)
        assert f.calls > 3
        await f.stop()  # (it raised the loop's exception, here at shutdown)

    asyncio.run(asyncio.wait_for(go(), 10))


@pytest.mark.parametrize(
    "template, why",
    [
        ("http://{ip}:{prot}", "unknown placeholder {prot}"),
        ("http://{ip.__class__}:{port}", "unknown placeholder {ip.__class__}"),
        ("http://{0}:{port}", "unknown placeholder {0}"),
        ("http://{ip!r}:{port}", "unknown placeholder {ip!r}"),
        ("http://{ip:", "url_template"),
        ("{ip}:{port}", "not an http(s) URL"),
    ],
)
def test_a_url_template_discovery_cannot_fill_is_a_config_error(template: str, why: str) -> None:
    """(an unknown placeholder failed every discovery round with a bare KeyError: no
    backends, ever, and a log line saying `'prot'`)"""
    d = {"service": "ns/chat", "url_template": template}
    with pytest.raises(RouterConfigError, match=re.escape(why)):
        parse_config({"scenario": "demo", "service_class": "chat", "discovery": d})
    ok = {"service": "ns/chat", "url_template": "https://{{x}}{pod}.{namespace}:{port}/{node}"}
    parse_config({"scenario": "demo", "service_class": "chat", "discovery": ok})


def test_rollouts_leave_no_state_behind_for_pods_that_are_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pod names change at every rollout, and a connection error's text at every attempt:
    what discovery remembers (the measured bandwidth per backend, what it logged) is for
    the current pods and the last error only (both grew by every pod and error ever seen)."""

    async def go() -> None:
        r = router()
        assert r.discovery is not None
        api = FakeApi()
        r.discovery._api, r.discovery._custom = api, FakeCustom(_chat())
        r.discovery.prometheus = "http://prom:9090"
        monkeypatch.setattr(
            r.discovery, "bandwidth_once", lambda: {"edge-1": 50.0, "cloud-1": 200.0}
        )
        for i in range(50):
            api.pods = [pod(f"a-{i}", "edge-1"), pod(f"b-{i}", "odd")]
            await r.discovery.refresh()
            assert [b.name for b in r.backends] == [f"a-{i}"]
            assert r.members is not None and list(r.members.bw) == [50.0]
        assert set(r._bw_override) == {"a-49"}
        assert set(r.discovery._skipped) == {"b-49"}

        def down() -> list[Any]:
            raise OSError(f"connection refused ({object()!r})")  # a new text each time

        custom = SimpleNamespace(get_namespaced_custom_object=lambda *a, **k: down())
        r.discovery._custom, r.discovery.follow_spec = custom, True
        for _ in range(20):
            await r.discovery.refresh()
        assert "connection refused" in r.discovery.spec_error
        await r.aclose()

    asyncio.run(go())


def test_a_pod_on_a_deleted_node_is_left_out_not_the_whole_round() -> None:
    """A node deleted while its pods are still listed (404 on reading it): those pods are
    left out; the round failed whole, every round, the membership frozen."""

    async def go() -> None:
        r = router()
        assert r.discovery is not None
        api = FakeApi()
        r.discovery._api, r.discovery._custom = api, FakeCustom(_chat())
        api.pods = [pod("a", "edge-1"), pod("gone", "deleted-node")]
        await r.discovery.refresh()
        assert [b.name for b in r.backends] == ["a"] and r.discovery.errors == 0
        assert "deleted-node not found" in r.discovery._skipped["gone"]
        await r.aclose()

    asyncio.run(go())


def test_a_failing_pod_list_and_pods_left_out_are_said_in_the_condition_and_metrics() -> None:
    """A pod list refused (API down, RBAC) kept the last members with only a log line each
    round, and BackendsReachable said AllReachable; ready pods all left out (no tier label)
    read "no ready backend". Both are now in the condition and perllm_router_discovery_
    errors_total."""
    from perllm.router.status import reachable

    async def go() -> None:
        r = router()
        d = r.discovery
        assert d is not None
        api = FakeApi()
        d._api, d._custom = api, FakeCustom(_chat())
        await d.refresh()
        assert [b.name for b in r.backends] == ["a"]
        assert reachable(r.backends, [], {}, d)[1] == "AllReachable"
        api.fail = True
        await d.refresh()
        await d.refresh()
        ok, reason, msg = reachable(r.backends, [], {}, d)
        assert [b.name for b in r.backends] == ["a"]  # the last good round's, said so
        assert ok and "listing pods fails since" in msg and "API down" in msg
        m = r.metrics.exposition().decode()
        assert 'perllm_router_discovery_errors_total{what="pods"} 2.0' in m
        api.fail = False
        api.pods = [pod("x", "odd")]  # ready, on a node without a hardware label
        await d.refresh()
        ok, reason, msg = reachable(r.backends, [], {}, d)
        assert (ok, reason) == (False, "NoBackends")
        assert "1 ready pod(s) left out: x:" in msg and "listing pods fails" not in msg
        await r.aclose()

    asyncio.run(go())


@pytest.mark.parametrize("follow_spec", [False, True])
def test_only_the_services_own_pods_are_backends(follow_spec: bool) -> None:
    """A copy of a child made by hand (another Deployment keeping the pod labels), a bare
    pod with the label: their pods were routed to (and counted in status.routing) as the
    service's. Now discovery keeps the pods of the LLMService's own Deployments, by the
    operator's rule (perllm.service_pods), read from the LLMService every round."""
    from perllm.router.status import reachable

    async def go() -> None:
        cfg: dict[str, Any] = {"discovery": {"service": "ns/chat"}}
        if not follow_spec:
            cfg.update(scenario="demo", service_class="chat")
        r = Router(parse_config(cfg))
        d = r.discovery
        assert d is not None and d.follow_spec is follow_spec
        api, custom = FakeApi(), FakeCustom()
        d._api, d._custom = api, custom
        custom.obj = _chat()
        api.pods = [
            pod("chat-5d8f7c9b6-a", "edge-1"),
            pod("chat-copy-5d8f7c9b6-b", "cloud-1", "10.0.0.2", deployment="chat-copy"),
            pod("bare", "cloud-1", "10.0.0.3", deployment=None),
        ]
        await d.refresh()
        assert [b.name for b in r.backends] == ["chat-5d8f7c9b6-a"]
        assert set(d.left_out) == {"chat-copy-5d8f7c9b6-b", "bare"}
        assert "Deployment chat-copy" in d.left_out["chat-copy-5d8f7c9b6-b"]
        assert "not ns/chat's own" in d.left_out["bare"]
        # The same rule as the operator's: tiers per spec.tierReplicas, KServe's predictors.
        custom.obj = _chat(tierReplicas={"edge": 1, "cloud": 1})
        api.pods = [
            pod("e", "edge-1", deployment="chat-edge"),
            pod("c", "cloud-1", "10.0.0.2", deployment="chat-cloud"),
            pod("old", "cloud-1", "10.0.0.3", deployment="chat"),  # not a child now
        ]
        await d.refresh()
        assert [b.name for b in r.backends] == ["c", "e"]
        custom.obj = _chat(backend="kserve")
        api.pods = [pod("k", "edge-1", deployment="chat-predictor"), pod("x", "cloud-1")]
        await d.refresh()
        assert [b.name for b in r.backends] == ["k"]
        # none of its own: no backend, and the condition says which were left out and why
        api.pods = [pod("copy", "edge-1", deployment="chat-copy")]
        await d.refresh()
        ok, reason, msg = reachable(r.backends, [], {}, d)
        assert (ok, reason) == (False, "NoBackends") and "copy: not ns/chat's own" in msg
        await r.aclose()

    asyncio.run(go())


def test_without_the_llmservice_the_last_one_read_decides_whose_pods_are_kept() -> None:
    """A static spec (no spec to follow): discovery still reads the LLMService every round
    for its children. Unreadable, it keeps the last one read; never read, the round fails
    as a failed pod list does (the last membership kept, the condition says why)."""
    from perllm.router.status import reachable

    async def go() -> None:
        r = router()
        d = r.discovery
        assert d is not None and not d.follow_spec
        api, custom = FakeApi(), FakeCustom()
        d._api, d._custom = api, custom
        await d.refresh()
        assert r.backends == [] and d.errors == 1
        msg = reachable(r.backends, [], {}, d)[2]
        assert "cannot read LLMService ns/chat" in msg and "Not Found" in msg
        custom.obj = _chat()
        await d.refresh()
        assert [b.name for b in r.backends] == ["a"] and not d.list_error
        custom.obj = None
        api.pods = [pod("a", "edge-1"), pod("copy", "edge-1", deployment="chat-copy")]
        await d.refresh()
        assert [b.name for b in r.backends] == ["a"] and not d.list_error
        assert "Not Found" in d.owner_error
        await r.aclose()

    asyncio.run(go())
