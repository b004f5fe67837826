"""The extender's live side: publication, informers, metrics, CLI flags."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from perllm_extender import ExtenderConfig, create_app
from perllm_extender.decision import trimmed
from perllm_extender.informers import (
    Informer,
    node_handlers,
    pod_handlers,
    service_handlers,
)
from perllm_extender.live import Live
from perllm_extender.nodes import NodeCache
from perllm_extender.pods import PodIndex
from perllm_extender.publish import MAX_CANDIDATES
from perllm_extender.services import ServiceRegistry
from test_extender_fakes import EDGES, NAMES, NODES, args, llmservice, pod, spec

Obj = dict[str, Any]
TIGHT = spec("code", 0.5, per_token=0.05)
LOOSE = spec("batch", 600.0)


class FakeApi:
    def __init__(self) -> None:
        self.patches: list[tuple[str, str, Obj]] = []
        self.events: list[tuple[str, Obj]] = []
        self.fail: Exception | None = None
        self.lock = threading.Lock()

    def patch_status(self, namespace: str, name: str, body: Obj) -> None:
        if self.fail is not None:
            raise self.fail
        with self.lock:
            self.patches.append((namespace, name, body))

    def create_event(self, namespace: str, body: Obj) -> None:
        if self.fail is not None:
            raise self.fail
        with self.lock:
            self.events.append((namespace, body))


def client(api: FakeApi, interval: float = 0.0) -> TestClient:
    app = create_app(ExtenderConfig(publish_api=api, publish_interval_s=interval))
    live: Live = app.state.live
    for n in NODES:
        live.scheduler.nodes.upsert(n)
    return TestClient(app)


def wait_for(cond: Any, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return bool(cond())


def test_decision_is_published_to_status_and_as_an_event() -> None:
    api = FakeApi()
    with client(api) as c:
        c.post("/scheduler/filter", json=args(pod(TIGHT, name="code-0", uid="u0")))
        assert wait_for(lambda: api.patches and api.events)
    ns, name, body = api.patches[0]
    assert (ns, name) == ("llm", "code")
    p = body["status"]["placement"]
    assert set(p) == {
        "tier",
        "nodes",
        "pod",
        "chosen",
        "predictedTimeSeconds",
        "predictedEnergyJ",
        "feasible",
        "decidedAt",
        "explanation",
    }
    assert p["chosen"] == "cloud" and p["tier"] == "cloud" and p["nodes"] == ["cloud"]
    assert p["pod"] == "code-0" and p["feasible"] is True
    assert p["decidedAt"].endswith("Z") and "T" in p["decidedAt"]
    assert len(p["explanation"]["candidates"]) <= MAX_CANDIDATES
    assert p["explanation"]["candidates"][0]["node"] == "cloud"
    _, ev = api.events[0]
    assert ev["reason"] == "Placed" and ev["type"] == "Normal"
    assert ev["involvedObject"]["kind"] == "LLMService"
    assert ev["involvedObject"]["name"] == "code"
    assert ev["involvedObject"]["apiVersion"] == "perllm.io/v1alpha1"
    assert ev["source"]["component"] == "perllm-extender"
    assert "uid" not in ev["involvedObject"]  # not registered: no uid known
    assert "cloud" in ev["message"] and "deadline" in ev["message"] and "J" in ev["message"]


def test_least_violating_placement_is_a_warning_event() -> None:
    api = FakeApi()
    with client(api) as c:
        c.post("/scheduler/filter", json=args(pod(spec("x", 0.001), uid="u0"), EDGES))
        assert wait_for(lambda: api.events)
    assert api.events[0][1]["reason"] == "PlacedLeastViolating"
    assert api.events[0][1]["type"] == "Warning"
    assert api.patches[0][2]["status"]["placement"]["feasible"] is False


def test_publication_is_coalesced_per_service_and_lists_every_placed_pod() -> None:
    api = FakeApi()
    with client(api, interval=3600.0) as c:  # one write per service per hour
        for i in range(5):
            c.post("/scheduler/filter", json=args(pod(LOOSE, name=f"b{i}", uid=f"u{i}")))
        assert wait_for(lambda: len(api.patches) == 1)
        time.sleep(0.1)
        assert len(api.patches) == 1  # the rest waits, coalesced
    # shutdown flushes the latest
    assert len(api.patches) == 2 and len(api.events) == 2
    last = api.patches[-1][2]["status"]["placement"]
    assert last["pod"] == "b4" and len(last["nodes"]) == 5
    assert last["nodes"] == sorted(last["nodes"])
    assert "coalesced" in api.events[-1][1]["message"]


def test_status_nodes_follow_pods_that_go_without_a_new_decision() -> None:
    """A replaced pod's old copy leaves status.placement.nodes when it starts terminating
    (a status patch of nodes alone, no Event); nothing is written for a service whose
    LLMService is gone."""
    api = FakeApi()
    with client(api) as c:
        live: Live = c.app.state.live  # type: ignore[attr-defined]
        svc = {
            **LLMSVC,
            "metadata": {"name": "batch", "namespace": "llm", "uid": "svc-uid"},
        }
        live.scheduler.services.add_llmservice(svc)
        pods = live.scheduler.pods
        for i in range(2):
            c.post("/scheduler/filter", json=args(pod(LOOSE, name=f"b{i}", uid=f"u{i}")))
            assert wait_for(lambda i=i: len(api.patches) == i + 1)
        placed = api.patches[-1][2]["status"]["placement"]["nodes"]
        assert len(placed) == 2
        node0 = pods.node_of("llm/b0")
        assert node0 is not None
        pods.upsert(pod(LOOSE, name="b0", uid="u0", node=node0))  # bound where assumed
        time.sleep(0.1)
        assert len(api.patches) == 2  # nothing changed
        going = pod(LOOSE, name="b0", uid="u0", node=node0)
        going["metadata"]["deletionTimestamp"] = "2026-11-24T00:00:00Z"
        pods.upsert(going)
        assert wait_for(lambda: len(api.patches) == 3)
        assert api.patches[-1][2] == {"status": {"placement": {"nodes": [pods.node_of("llm/b1")]}}}
        pods.remove("llm/b0")  # gone for good: the nodes were already right
        live.scheduler.services.remove("batch", "llm")  # the LLMService is deleted
        pods.remove("llm/b1")
        time.sleep(0.1)
    assert len(api.patches) == 3 and len(api.events) == 2  # no Event for a nodes update


def test_publication_failures_never_reach_decisions_and_are_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    api = FakeApi()
    api.fail = ConnectionError("apiserver down")
    with caplog.at_level(logging.WARNING, "perllm.extender.publish"), client(api) as c:
        live: Live = c.app.state.live  # type: ignore[attr-defined]
        pub = live.publisher
        assert pub is not None
        for i in range(3):
            r = c.post("/scheduler/filter", json=args(pod(LOOSE, name=f"b{i}", uid=f"u{i}")))
            assert r.status_code == 200
            want = i + 1
            assert wait_for(lambda want=want: pub.failures >= want)
        text = c.get("/metrics").text
    assert 'perllm_extender_publish_failures_total{what="status"} 3.0' in text
    # no Event is tried once the status patch failed (the LLMService may not exist)
    assert 'perllm_extender_publish_failures_total{what="event"}' not in text
    msgs = [r.message for r in caplog.records if "failed" in r.message]
    assert len(msgs) == 1  # once for status


def test_trimmed_explanation_keeps_the_chosen_and_the_best() -> None:
    cands = [
        {"node": f"n{i}", "feasible": i % 2 == 0, "score": float(i), "predicted_time_s": float(i)}
        for i in range(20)
    ]
    out = trimmed({"chosen": "n3", "candidates": cands}, MAX_CANDIDATES)
    nodes = [c["node"] for c in out["candidates"]]
    assert nodes[0] == "n3" and len(nodes) == MAX_CANDIDATES
    assert nodes[1:4] == ["n18", "n16", "n14"] and out["candidates_total"] == 20


# -- informers on synthetic events --------------------------------------------------------
def test_node_informer_events() -> None:
    cache = NodeCache()
    on_event, on_list = node_handlers(cache)
    on_list(NODES[:2])
    assert len(cache) == 2
    on_event("ADDED", NODES[2])
    changed = {**NODES[0], "metadata": {**NODES[0]["metadata"], "labels": {"x": "y"}}}
    on_event("MODIFIED", changed)
    assert cache.get(NAMES[0]) == changed
    on_event("DELETED", NODES[1])
    assert cache.get(NAMES[1]) is None and len(cache) == 2
    on_list([NODES[3]])  # a re-list replaces everything
    assert len(cache) == 1 and cache.get(NAMES[3]) is not None


def test_pod_informer_tracks_bindings_and_removals() -> None:
    pods = PodIndex()
    on_event, on_list = pod_handlers(pods)
    on_list([pod(LOOSE, name="a", uid="ua")])
    assert pods.informed and pods.node_of("llm/a") is None
    pods.assume("llm/a", "ua", "batch", "edge-1")  # the extender's decision
    on_event("MODIFIED", pod(LOOSE, name="a", uid="ua"))  # still pending: keep the guess
    assert pods.node_of("llm/a") == "edge-1"
    on_event("MODIFIED", pod(LOOSE, name="a", uid="ua", node="edge-2"))  # bound elsewhere
    assert pods.node_of("llm/a") == "edge-2"
    pods.assume("llm/a", "ua", "batch", "edge-3")  # a binding is not overridden
    assert pods.node_of("llm/a") == "edge-2"
    on_event("ADDED", pod(LOOSE, name="b", uid="ub", node="cloud"))
    assert pods.service_nodes("llm", "batch") == ["cloud", "edge-2"]
    going = pod(LOOSE, name="b", uid="ub", node="cloud")
    going["metadata"]["deletionTimestamp"] = "2026-11-24T00:00:00Z"  # replaced, terminating
    on_event("MODIFIED", going)
    assert pods.service_nodes("llm", "batch") == ["edge-2"]
    assert pods.node_of("llm/b") == "cloud"  # its load still counts until it is gone
    done = pod(LOOSE, name="b", uid="ub", node="cloud")
    done["status"]["phase"] = "Succeeded"
    on_event("MODIFIED", done)
    on_event("DELETED", pod(LOOSE, name="a", uid="ua"))
    assert len(pods) == 0


LLMSVC = llmservice(resourceVersion="7")


def test_llmservice_informer_events(caplog: pytest.LogCaptureFixture) -> None:
    reg = ServiceRegistry()
    on_event, on_list = service_handlers(reg)
    on_list([{**LLMSVC, "metadata": {**LLMSVC["metadata"], "uid": "u-chat"}}])
    assert reg.get("chat", "llm") is not None and reg.get("chat", "other") is None
    assert reg.uid("llm", "chat") == "u-chat"
    bad = {**LLMSVC, "spec": {**LLMSVC["spec"], "requirements": {"deadline": {"seconds": -1}}}}
    with caplog.at_level(logging.WARNING):
        on_event("MODIFIED", bad)
        on_event("MODIFIED", bad)
    assert reg.get("chat", "llm") is None  # an invalid edit withdraws the old spec
    assert len([r for r in caplog.records if "ignoring" in r.message]) == 1
    on_event("MODIFIED", LLMSVC)
    on_event("DELETED", LLMSVC)
    assert reg.get("chat", "llm") is None


def test_a_wrongly_shaped_llmservice_does_not_fail_the_list() -> None:
    """One object outside admission with a string spec raised AttributeError out of
    on_list: the informer re-listed into the same error and registered no service."""
    reg = ServiceRegistry()
    on_event, on_list = service_handlers(reg)
    odd = {**LLMSVC, "metadata": {"name": "odd", "namespace": "llm"}, "spec": "x"}
    on_list([odd, LLMSVC])
    assert reg.get("chat", "llm") is not None and reg.get("odd", "llm") is None
    on_event("MODIFIED", {**LLMSVC, "spec": {**LLMSVC["spec"], "requirements": "fast"}})
    assert reg.get("chat", "llm") is None


def test_informer_handles_bookmarks_410_and_resource_versions() -> None:
    seen: list[tuple[str, str]] = []

    def on_event(kind: str, obj: Obj) -> None:
        seen.append((kind, obj["metadata"]["name"]))

    inf = Informer("t", lambda **_: None, on_event, lambda _objs: None)
    assert inf.handle(
        {"type": "ADDED", "raw_object": {"metadata": {"name": "a", "resourceVersion": "5"}}}
    )
    assert inf.handle({"type": "BOOKMARK", "raw_object": {"metadata": {"resourceVersion": "9"}}})
    assert inf.resource_version == "9" and seen == [("ADDED", "a")]
    assert inf.handle({"type": "ERROR", "raw_object": {"code": 410}}) is False
    with pytest.raises(RuntimeError):
        inf.handle({"type": "ERROR", "raw_object": {"code": 500, "reason": "x"}})


def test_informer_list_retries_with_backoff_and_stops() -> None:
    calls: list[float] = []

    def broken_list(**_: Any) -> Any:
        calls.append(time.monotonic())
        raise ConnectionError("refused")

    inf = Informer("t", broken_list, lambda k, o: None, lambda objs: None, backoff_max_s=0.2)
    inf.start()
    assert wait_for(lambda: len(calls) >= 3)
    inf.stop()
    n = len(calls)
    time.sleep(0.3)
    assert len(calls) == n and not inf.synced and "refused" in (inf.last_error or "")

    class Resp:
        data = b'{"metadata": {"resourceVersion": "42"}, "items": [{"metadata": {"name": "x"}}]}'

    got: list[list[Obj]] = []
    ok = Informer("t", lambda **_: Resp(), lambda k, o: None, got.append)
    ok.list_once()
    assert ok.synced and ok.resource_version == "42" and got == [[{"metadata": {"name": "x"}}]]


def test_registered_services_are_per_namespace() -> None:
    c = TestClient(create_app())
    live: Live = c.app.state.live  # type: ignore[attr-defined]
    for n in NODES:
        live.scheduler.nodes.upsert(n)
    live.scheduler.services.add_llmservice(LLMSVC)
    p = pod(LOOSE, name="x", uid="ux", ns="other")
    p["metadata"]["labels"] = {"perllm.io/service": "chat"}
    p["metadata"]["annotations"] = {}
    r = c.post("/scheduler/filter", json=args(p))
    assert r.status_code == 400 and "not registered" in r.json()["Error"]
    p["metadata"]["namespace"] = "llm"
    assert c.post("/scheduler/filter", json=args(p)).status_code == 200


# -- metrics ------------------------------------------------------------------------------
def test_decision_metrics() -> None:
    c = TestClient(create_app())
    for n in NODES:
        c.app.state.scheduler.nodes.upsert(n)  # type: ignore[attr-defined]
    for i in range(4):
        p = pod(LOOSE, name=f"l{i}", uid=f"l{i}")
        c.post("/scheduler/filter", json=args(p))
        c.post("/scheduler/prioritize", json=args(p))
    c.post("/scheduler/filter", json=args(pod(TIGHT, uid="t")))
    c.post("/scheduler/filter", json=args(pod(spec("x", 0.001), uid="x"), EDGES))
    text = c.get("/metrics").text

    def value(prefix: str) -> float:
        line = next(ln for ln in text.splitlines() if ln.startswith(prefix))
        return float(line.rsplit(" ", 1)[1])

    # unplayed pools are explored first: the first loose pods explore
    assert value("perllm_extender_exploration_total") >= 1
    assert value("perllm_extender_estimated_regret_total") >= 0
    assert value('perllm_extender_constraint_violations_total{constraint="deadline"}') == 1
    assert value('perllm_extender_exclusions_total{constraint="deadline"}') == len(EDGES) + 4
    assert value("perllm_extender_feasible_nodes_count") == 6


def test_cli_flags_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import gc

    import typer
    from perllm_extender import serve as serving
    from perllm_extender.cli import register
    from typer.testing import CliRunner

    from perllm.devcluster.certs import generate

    app = typer.Typer()
    register(app)

    @app.command("noop")
    def noop() -> None:  # a second command keeps `extender` a sub-command
        pass

    got: dict[str, Any] = {}

    def fake_serve(fapp: Any, host: str, port: int, tls: Any, metrics_port: int, _l: str) -> None:
        got.update(cfg=fapp.state.config, port=port, tls=tls, metrics_port=metrics_port)

    monkeypatch.setattr(serving, "serve", fake_serve)
    # the server freezes its startup heap out of the cyclic GC; not this test process's
    monkeypatch.setattr(gc, "freeze", lambda: got.setdefault("gc_frozen", True))
    monkeypatch.setenv("PERLLM_PROMETHEUS_URL", "http://prom:9090")
    monkeypatch.setenv("PERLLM_STATE_NAMESPACE", "ns-x")
    monkeypatch.setenv("PERLLM_PROMETHEUS_TOKEN_FILE", "/var/run/secrets/prom/token")
    base = ["extender", "--no-kube", "--learn-interval", "3", "--port", "9999"]
    r = CliRunner().invoke(app, [*base, "--insecure-http"])
    assert r.exit_code == 0, r.output
    cfg = got["cfg"]
    assert cfg.prometheus_access.url == "http://prom:9090" and cfg.state_namespace == "ns-x"
    assert cfg.prometheus_access.token_file == "/var/run/secrets/prom/token"
    assert cfg.learn_interval_s == 3.0 and cfg.kube is False and cfg.api_client is None
    assert got["port"] == 9999 and got["gc_frozen"]
    # plain HTTP only on request; debug routes off unless asked
    assert got["tls"] is None and cfg.client_auth is False and cfg.debug_routes is False
    assert cfg.api_docs is False  # /openapi.json, /docs, /redoc: only with --api-docs
    refused = CliRunner().invoke(app, base)
    assert refused.exit_code != 0 and "--tls-cert" in refused.output
    # an https Prometheus: a CA file, or no verification, not both
    r = CliRunner().invoke(app, [*base, "--insecure-http", "--prometheus-ca-file", "/ca.crt"])
    assert r.exit_code == 0, r.output
    assert got["cfg"].prometheus_access.ca_file == "/ca.crt"
    assert not got["cfg"].prometheus_access.insecure_skip_verify
    both = ["--prometheus-ca-file", "/ca.crt", "--prometheus-insecure-skip-verify"]
    r = CliRunner().invoke(app, [*base, "--insecure-http", *both])
    assert r.exit_code != 0 and "choose one" in r.output
    files = generate(tmp_path)
    r = CliRunner().invoke(
        app,
        [*base, *files.extender_args(), "--debug-routes", "--api-docs", "--metrics-port", "9998"],
    )
    assert r.exit_code == 0, r.output
    assert got["tls"].client_ca == files.ca and got["cfg"].client_auth is True
    assert got["cfg"].debug_routes is True and got["metrics_port"] == 9998
    assert got["cfg"].api_docs is True
    both = CliRunner().invoke(app, [*base, *files.extender_args(), "--insecure-http"])
    assert both.exit_code != 0
    missing = CliRunner().invoke(
        app,
        [
            *base,
            f"--tls-cert={tmp_path / 'nope'}",
            f"--tls-key={files.server_key}",
            f"--tls-client-ca={files.ca}",
        ],
    )
    assert missing.exit_code != 0 and "not found" in missing.output
    help_text = CliRunner().invoke(app, ["extender", "--help"]).output
    for flag in (
        "--prometheus",
        "--state-namespace",
        "--learn-interval",
        "--no-kube",
        "--log-level",
        "--prefix",
        "--tls-cert",
        "--tls-client-ca",
        "--insecure-http",
        "--debug-routes",
        "--metrics-port",
    ):
        assert flag in help_text


def test_prioritize_over_the_filtered_nodes_reuses_the_filter_decision() -> None:
    """kube-scheduler sends prioritize only the nodes that passed filter: still one play,
    one published decision, and scores for exactly the nodes asked."""
    api = FakeApi()
    with client(api) as c:
        live: Live = c.app.state.live  # type: ignore[attr-defined]
        p = pod(LOOSE, name="v", uid="uv")
        passed = c.post("/scheduler/filter", json=args(p)).json()
        subset = passed["NodeNames"][:3]
        scores = c.post("/scheduler/prioritize", json=args(p, subset)).json()
        assert [s["Host"] for s in scores] == subset
        assert len(c.get("/decisions").json()) == 1
        chosen = live.scheduler.log[-1]["chosen"]
        if chosen in subset:
            assert {s["Host"]: s["Score"] for s in scores}[chosen] == 10
        # a new filter over another node set is a new decision (a retry elsewhere)
        c.post("/scheduler/filter", json=args(p, subset))
        assert len(c.get("/decisions").json()) == 2
        assert wait_for(lambda: len(api.events) >= 1)


def test_a_filter_retry_decides_again_once_a_node_or_the_service_changed() -> None:
    """The same filter again (a new scheduling cycle for the pod) reuses the decision only
    while the nodes' labels and annotations and the service's spec are what it was made
    on; prioritize still reuses its filter's decision."""
    import copy

    c = TestClient(create_app())
    live: Live = c.app.state.live  # type: ignore[attr-defined]
    p = pod(LOOSE, uid="r1")
    full = {"Pod": p, "Nodes": {"items": copy.deepcopy(NODES)}, "NodeNames": None}
    assert c.post("/scheduler/filter", json=full).status_code == 200
    assert c.post("/scheduler/filter", json=full).status_code == 200
    assert len(live.scheduler.log) == 1  # unchanged: reused, one play
    moved = copy.deepcopy(NODES)
    moved[-1]["metadata"]["labels"]["perllm.io/tier"] = "moon"
    body = c.post("/scheduler/filter", json={**full, "Nodes": {"items": moved}}).json()
    assert len(live.scheduler.log) == 2  # relabelled: decided again
    assert "tier" in body["FailedNodes"][moved[-1]["metadata"]["name"]]
    c.post("/scheduler/prioritize", json={**full, "Nodes": {"items": moved}})
    assert len(live.scheduler.log) == 2  # prioritize: the filter's decision
    # names-only requests: a service whose spec changed (pod annotations) decides again
    assert c.post("/scheduler/filter", json=args(p)).status_code == 200
    n = len(live.scheduler.log)
    assert c.post("/scheduler/filter", json=args(p)).status_code == 200
    assert len(live.scheduler.log) == n
    tighter = pod(spec("batch", 300.0), uid="r1")
    assert c.post("/scheduler/filter", json=args(tighter)).status_code == 200
    assert len(live.scheduler.log) == n + 1


def test_node_changes_reach_cached_node_sets() -> None:
    """Models of a node set are reused until a node's labels or annotations change; status
    churn (heartbeats) keeps them."""
    import copy

    c = TestClient(create_app())
    live: Live = c.app.state.live  # type: ignore[attr-defined]
    for n in NODES:
        live.scheduler.nodes.upsert(n)
    failed = c.post("/scheduler/filter", json=args(pod(LOOSE, uid="a"))).json()["FailedNodes"]
    assert all(v.startswith("feasible, not chosen") for v in failed.values())
    gen = live.scheduler.nodes.gen
    beat = copy.deepcopy(NODES[-1])
    beat["status"] = {"conditions": [{"type": "Ready", "status": "True"}]}
    live.scheduler.nodes.upsert(beat)
    assert live.scheduler.nodes.gen == gen
    odd = copy.deepcopy(NODES[-1])
    odd["metadata"]["labels"]["perllm.io/tier"] = "moon"
    live.scheduler.nodes.upsert(odd)
    failed = c.post("/scheduler/filter", json=args(pod(LOOSE, uid="b"))).json()["FailedNodes"]
    assert "tier" in failed["cloud"]


def test_large_fleet_explanations_are_trimmed() -> None:
    import copy

    from perllm_extender.decision import EXPLAIN_LIMIT

    nodes = []
    for i in range(EXPLAIN_LIMIT + 8):
        n = copy.deepcopy(NODES[i % len(NODES)])
        n["metadata"]["name"] = f"n{i}"
        nodes.append(n)
    c = TestClient(create_app())
    for n in nodes:
        c.app.state.scheduler.nodes.upsert(n)  # type: ignore[attr-defined]
    names = [n["metadata"]["name"] for n in nodes]
    body = c.post("/scheduler/filter", json=args(pod(LOOSE), names)).json()
    assert len(body["NodeNames"]) + len(body["FailedNodes"]) == len(names)
    expl = c.get("/decisions").json()[-1]["explanation"]
    assert len(expl["candidates"]) == EXPLAIN_LIMIT
    assert expl["candidates_total"] == len(names)
    assert expl["candidates"][0]["node"] == expl["chosen"]


def test_events_carry_the_llmservice_uid() -> None:
    api = FakeApi()
    with client(api) as c:
        live: Live = c.app.state.live  # type: ignore[attr-defined]
        live.scheduler.services.add_llmservice(
            {**LLMSVC, "metadata": {**LLMSVC["metadata"], "uid": "u-chat"}}
        )
        p = pod(LOOSE, name="chat-0", uid="c0")
        p["metadata"]["labels"] = {"perllm.io/service": "chat"}
        p["metadata"]["annotations"] = {}
        assert c.post("/scheduler/filter", json=args(p)).status_code == 200
        assert wait_for(lambda: api.events)
    assert api.events[0][1]["involvedObject"]["uid"] == "u-chat"


@pytest.mark.parametrize("flag", ["--learn-interval", "--telemetry-interval", "--state-interval"])
@pytest.mark.parametrize("value", ["inf", "1e300", "nan"])
def test_cli_refuses_an_interval_a_thread_cannot_wait(
    flag: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`inf` (and any number above threading.TIMEOUT_MAX) passed typer's min= and
    ExtenderConfig's gt=0; the background loop's first Event.wait then raised
    OverflowError and its thread died (no more learning, telemetry or saves)."""
    import gc

    import typer
    from perllm_extender import serve as serving
    from perllm_extender.cli import register

    monkeypatch.setattr(serving, "serve", lambda *a: None)  # never listen
    monkeypatch.setattr(gc, "freeze", lambda: None)
    from typer.testing import CliRunner

    app = typer.Typer()
    register(app)

    @app.command("noop")
    def noop() -> None:
        pass

    r = CliRunner().invoke(app, ["extender", "--no-kube", "--insecure-http", flag, value])
    assert r.exit_code == 2 and flag in r.output, r.output
    field = flag.removeprefix("--").replace("-", "_") + "_s"
    with pytest.raises(ValueError, match=field):
        ExtenderConfig(**{field: float(value)})


def test_shutdown_saves_the_learned_state_before_the_last_publications() -> None:
    from perllm_extender.state import MemoryStore

    order: list[str] = []

    class RecordingApi(FakeApi):
        def patch_status(self, namespace: str, name: str, body: Obj) -> None:
            order.append("publish")

    class Store(MemoryStore):
        def save(self, text: str) -> None:
            order.append("save")
            super().save(text)

    app = create_app(
        ExtenderConfig(publish_api=RecordingApi(), publish_interval_s=3600, state_store=Store())
    )
    live: Live = app.state.live
    for n in NODES:
        live.scheduler.nodes.upsert(n)
    live.scheduler.services.add(LOOSE)
    with TestClient(app) as c:
        for i in range(2):  # the first is written at once, the second waits its interval
            assert c.post("/scheduler/filter", json=args(pod(LOOSE, name=f"p{i}"))).status_code
            assert wait_for(lambda: "publish" in order)
        order.clear()
    assert order and order[0] == "save", order  # then what was left to publish


def _place_services(pub: Any, n: int, each: Callable[[], object] | None = None) -> None:
    """Services s0 … s{n-1}, each placed once by an extender whose decisions `pub`
    publishes (`each` after every placement)."""
    app = create_app(ExtenderConfig())
    live: Live = app.state.live
    for node in NODES:
        live.scheduler.nodes.upsert(node)
    live.scheduler.listeners.append(pub.submit)
    c = TestClient(app)
    for i in range(n):
        s = LOOSE.model_copy(update={"name": f"s{i}"})
        live.scheduler.services.add(s, "llm")
        assert c.post("/scheduler/filter", json=args(pod(s, name=f"p{i}"))).status_code == 200
        if each is not None:
            each()


def test_publications_left_at_shutdown_are_bounded_in_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from perllm_extender.publish import Publisher

    class Blackhole(FakeApi):  # every call runs into its timeout
        def patch_status(self, namespace: str, name: str, body: Obj) -> None:
            time.sleep(0.2)
            raise TimeoutError("read timed out")

    pub = Publisher(Blackhole(), min_interval_s=3600)
    _place_services(pub, 20)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, "perllm.extender.publish"):
        pub.stop(timeout=0.5)
    assert time.monotonic() - t0 < 1.5  # not 20 × 0.2 s
    assert "dropped: past the shutdown deadline" in caplog.text


@pytest.mark.parametrize("ends", ["cleanly", "410"])
def test_a_watch_that_ends_at_once_is_paced_not_spun(ends: str) -> None:
    """A proxy (or an API server going down) ending every watch at once, or a 410 on every
    watch right after its list: each went straight into the next request, thousands a
    second, a full list each time for the 410."""
    from kubernetes.client.exceptions import ApiException

    class Resp:
        data = b'{"metadata": {"resourceVersion": "1"}, "items": []}'

    lists: list[float] = []
    watches: list[float] = []

    def list_fn(**_: Any) -> Any:
        lists.append(time.monotonic())
        return Resp()

    class Quick(Informer):
        def _watch_once(self) -> bool:
            watches.append(time.monotonic())
            if ends == "410":
                raise ApiException(status=410, reason="Gone")
            return True

    inf = Quick("t", list_fn, lambda k, o: None, lambda objs: None, backoff_max_s=0.2)
    inf.start()
    time.sleep(0.8)
    inf.stop()
    assert inf.synced
    assert 2 <= len(watches) <= 8, len(watches)  # 0.5 s, then at most 0.2 s apart
    assert len(lists) <= len(watches)
    assert "within 1 s" in (inf.last_error or "")  # in /readyz


def test_the_publisher_remembers_a_bounded_number_of_services() -> None:
    """Services come and go (a namespace per CI run): each one's last write time, nodes and
    logged failures stayed in the publisher for good."""
    from perllm_extender.publish import Publisher

    api = FakeApi()
    api.fail = RuntimeError("not found")
    pub = Publisher(api, min_interval_s=0.0, max_services=3)
    _place_services(pub, 10, each=pub.flush)
    assert len(pub._last) <= 3 and len(pub._nodes) <= 3 and len(pub._logged) <= 12
    assert ("llm", "s9") in pub._last and ("llm", "s0") not in pub._nodes  # newest kept
    assert pub.failures == 10


def test_a_blank_line_in_the_watch_stream_is_skipped_not_a_relist() -> None:
    """The kubernetes client yields None for a blank (keep-alive) line of a watch: it reached
    `handle` as an event, raised, and the informer re-listed everything after a backoff."""

    class Resp:  # what the client's watch reads: a urllib3 response, streamed by lines
        status = 200

        def stream(self, **_: Any) -> Any:
            yield (
                b'{"type": "ADDED", "object": {"metadata": '
                + b'{"name": "a", "resourceVersion": "2"}}}\n'
            )
            yield b"\n  \n"
            yield (
                b'{"type": "ADDED", "object": {"metadata": '
                + b'{"name": "b", "resourceVersion": "3"}}}\n'
            )

        def close(self) -> None: ...
        def release_conn(self) -> None: ...

    def list_node(**_: Any) -> Any:
        return Resp()

    seen: list[str] = []
    inf = Informer("t", list_node, lambda k, o: seen.append(o["metadata"]["name"]), lambda _: None)
    assert inf._watch_once() is True  # the watch ended cleanly: watch again, no list
    assert seen == ["a", "b"] and inf.resource_version == "3"
