"""The extender's defences (docs/extender.md, "Security"): pod verification, debug routes,
500s that keep the connection, TLS with client authentication on a real listener."""

from __future__ import annotations

import asyncio
import http.client
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import pytest
import uvicorn
from fastapi.testclient import TestClient
from perllm_extender import ExtenderConfig, create_app
from perllm_extender.app import probe_app
from perllm_extender.publish import Publisher
from perllm_extender.serve import Tls, main_config

from perllm.devcluster.certs import generate, self_signed_client
from perllm.devcluster.nodes import node_manifests
from perllm.devcluster.process import free_port
from perllm.labels import LABEL_SERVICE, SCHEDULER_NAME
from perllm.scenario import load_scenario

Obj = dict[str, Any]
ANN = {"perllm.io/deadline-s": "30"}


def pod(
    name: str = "p", uid: str = "u1", svc: str | None = "chat", sched: str = SCHEDULER_NAME
) -> Obj:
    labels = {LABEL_SERVICE: svc} if svc else {}
    return {
        "metadata": {
            "name": name,
            "namespace": "llm",
            "uid": uid,
            "labels": labels,
            "annotations": ANN,
        },
        "spec": {"schedulerName": sched},
    }


NODES: list[Obj] = node_manifests(load_scenario("paper-llama2-7b"))


def body(p: Obj) -> Obj:
    return {"Pod": p, "Nodes": {"items": NODES}}


def rejected(c: TestClient, reason: str) -> float:
    for line in c.get("/metrics").text.splitlines():
        if line.startswith(f'perllm_extender_rejected_pods_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    raise AssertionError(f"no counter for {reason}")


@pytest.fixture
def verified() -> Iterator[tuple[TestClient, list[tuple[str, str]]]]:
    asked: list[tuple[str, str]] = []
    known = {("llm", "late"): pod("late", uid="u-late")}

    def source(ns: str, name: str) -> Obj | None:
        asked.append((ns, name))
        return known.get((ns, name))

    app = create_app(ExtenderConfig(verify_pods=True, pod_source=source))
    app.state.scheduler.pods.upsert(pod())  # what the informer listed
    yield TestClient(app), asked


@pytest.mark.parametrize(
    ("forged", "reason"),
    [
        (pod(name="ghost", uid="u9"), "unknown"),
        (pod(uid="forged-uid"), "uid"),
        (pod(svc="victim"), "service"),
        (pod(sched="default-scheduler"), "scheduler"),
    ],
)
def test_forged_pods_are_refused_and_counted(
    verified: tuple[TestClient, list[tuple[str, str]]], forged: Obj, reason: str
) -> None:
    c, _ = verified
    for verb in ("filter", "prioritize"):
        r = c.post(f"/scheduler/{verb}", json=body(forged))
        assert r.status_code == 403, r.text
        assert "refused" in r.json()["Error"]
    assert rejected(c, reason) == 2
    assert c.get("/decisions").json() == []  # no decision, so nothing learned or published
    assert c.app.state.scheduler.pods.get("llm/p").uid == "u1"  # type: ignore[attr-defined]


def test_a_real_pod_is_decided_and_a_bound_one_is_not(
    verified: tuple[TestClient, list[tuple[str, str]]],
) -> None:
    c, asked = verified
    assert c.post("/scheduler/filter", json=body(pod())).status_code == 200
    assert [d["pod"] for d in c.get("/decisions").json()] == ["llm/p"]
    assert asked == []  # the informer knew it: no API call
    bound = pod()
    bound["spec"]["nodeName"] = "cloud-0"
    c.app.state.scheduler.pods.upsert(bound)  # type: ignore[attr-defined]
    assert c.post("/scheduler/filter", json=body(pod())).status_code == 403
    assert rejected(c, "bound") == 1


def test_informer_miss_asks_the_api_once_per_request(
    verified: tuple[TestClient, list[tuple[str, str]]],
) -> None:
    c, asked = verified
    assert c.post("/scheduler/filter", json=body(pod("late", uid="u-late"))).status_code == 200
    assert asked == [("llm", "late")]
    # names that are not Kubernetes names never reach a field selector: the request is
    # refused as malformed (`wire`), and the verifier would not ask either
    evil = pod("x,metadata.namespace=kube-system", uid="u")
    assert c.post("/scheduler/filter", json=body(evil)).status_code == 422
    verifier = c.app.state.verifier  # type: ignore[attr-defined]
    assert asyncio.run(verifier.verify(evil)) is not None
    assert asked == [("llm", "late")]


def test_unlabelled_pods_pass_through_unverified(
    verified: tuple[TestClient, list[tuple[str, str]]],
) -> None:
    c, asked = verified
    r = c.post("/scheduler/filter", json=body(pod(name="other", svc=None)))
    assert r.status_code == 200 and len(r.json()["Nodes"]["items"]) == len(NODES)
    assert asked == [] and c.get("/decisions").json() == []


def test_the_api_docs_are_served_only_when_asked() -> None:
    """FastAPI's /openapi.json, /docs and /redoc were served on the port kube-scheduler
    calls (its TLS one; to anyone with --insecure-http), though nothing calls them: off
    unless `api_docs` (`--api-docs`); the schema stays at hand offline (`openapi()`)."""
    off = TestClient(create_app(ExtenderConfig()))
    for path in ("/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect"):
        r = off.get(path)
        assert r.status_code == 404 and r.json() == {"Error": "Not Found"}, path
    schema = off.app.openapi()  # type: ignore[attr-defined]
    assert "/scheduler/filter" in schema["paths"]
    on = TestClient(create_app(ExtenderConfig(api_docs=True)))
    assert on.get("/openapi.json").json()["paths"].keys() == schema["paths"].keys()
    assert on.get("/docs").status_code == 200 and on.get("/redoc").status_code == 200


def test_debug_routes_off_or_refused_without_a_client_certificate() -> None:
    off = TestClient(create_app(ExtenderConfig(debug_routes=False)))
    for method, path in (
        ("get", "/decisions"),
        ("post", "/learn"),
        ("post", "/state/save"),
        ("get", "/telemetry"),
        ("post", "/telemetry/refresh"),
    ):
        assert getattr(off, method)(path).status_code in (404, 405), path
    assert off.get("/healthz").status_code == 200 and off.get("/metrics").status_code == 200
    on = TestClient(create_app(ExtenderConfig(client_auth=True)))
    assert on.post("/learn").status_code == 403  # plain http: no certificate was verified
    assert on.post("/scheduler/filter", json=body(pod())).status_code == 403
    assert on.get("/healthz").status_code == 200
    tls = TestClient(create_app(ExtenderConfig(client_auth=True)), base_url="https://testserver")
    assert tls.post("/learn").status_code == 200
    side = TestClient(probe_app(on.app))  # type: ignore[arg-type]
    assert side.get("/readyz").status_code == 200 and side.get("/metrics").status_code == 200
    assert side.post("/learn").status_code == 404 and side.get("/decisions").status_code == 404
    assert side.post("/scheduler/filter", json=body(pod())).status_code == 404


def test_events_only_after_the_status_patch_proved_the_service() -> None:
    class Api:
        def __init__(self) -> None:
            self.events: list[Obj] = []

        def patch_status(self, namespace: str, name: str, body: Obj) -> None:
            raise RuntimeError("404 Not Found")

        def create_event(self, namespace: str, body: Obj) -> None:
            self.events.append(body)

    api = Api()
    app = create_app(ExtenderConfig(publish_api=api, publish_interval_s=0))
    c = TestClient(app)
    victim = pod(name="x", uid="ux")
    victim["metadata"]["namespace"] = "kube-system"
    assert c.post("/scheduler/filter", json=body(victim)).status_code == 200
    pub: Publisher = app.state.live.publisher
    pub.flush()
    assert pub.failures == 1 and api.events == []


# ---- a real listener ---------------------------------------------------------------------
class Listener:
    """A uvicorn `cfg(port)` on a free port, on a thread (the router's tests use it too)."""

    def __init__(self, cfg: Callable[[int], uvicorn.Config]) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(cfg(self.port))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class Served(Listener):
    """The extender's main listener (`main_config`)."""

    def __init__(self, app: Any, tls: Tls | None) -> None:
        super().__init__(lambda port: main_config(app, "127.0.0.1", port, tls, "warning"))


def _post(conn: http.client.HTTPConnection, path: str, payload: bytes) -> tuple[int, Obj]:
    conn.request("POST", path, payload, {"Content-Type": "application/json"})
    r = conn.getresponse()
    return r.status, json.loads(r.read() or b"{}")


def test_bugs_are_500_and_malformed_names_422_on_one_kept_alive_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = create_app(ExtenderConfig())

    def boom(*_a: Any) -> None:
        raise RuntimeError("a bug")

    with Served(app, None) as s:
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
        bad = {"Pod": pod(), "Nodes": {"items": [{"metadata": {"name": {"a": 1}}}]}}
        st, doc = _post(conn, "/scheduler/filter", json.dumps(bad).encode())
        assert st == 422 and doc["detail"][0]["loc"][-1] == "name"
        bad_pod = {"Pod": {"metadata": {"name": ["x"]}}, "NodeNames": ["a"]}
        assert _post(conn, "/scheduler/filter", json.dumps(bad_pod).encode())[0] == 422
        ok = _post(conn, "/scheduler/filter", json.dumps(body(pod())).encode())
        assert ok[0] == 200  # same connection, still open
        app.state.scheduler.decide = boom
        with caplog.at_level("ERROR", "perllm.extender"):
            st, doc = _post(conn, "/scheduler/filter", json.dumps(body(pod())).encode())
        assert st == 500 and "a bug" not in json.dumps(doc)
        assert any("a bug" in (r.exc_text or "") for r in caplog.records)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200  # and still open after the 500


def test_tls_listener_serves_only_clients_with_a_certificate_of_its_ca(tmp_path: Path) -> None:
    files = generate(tmp_path / "pki")
    intruder = self_signed_client(tmp_path, "intruder")
    app = create_app(ExtenderConfig(client_auth=True))
    tls = Tls(files.server_cert, files.server_key, files.ca)

    def client(cert: tuple[Path, Path] | None) -> http.client.HTTPSConnection:
        ctx = ssl.create_default_context(cafile=str(files.ca))
        if cert is not None:
            ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        return http.client.HTTPSConnection("127.0.0.1", s.port, context=ctx, timeout=10)

    with Served(app, tls) as s:
        good = client((files.client_cert, files.client_key))
        good.request("POST", "/learn")
        assert good.getresponse().status == 200  # debug routes: authenticated client
        for cert in (None, intruder):
            conn = client(cert)
            with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
                conn.request("POST", "/learn")
                conn.getresponse()
        plain = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            plain.request("GET", "/healthz")
            plain.getresponse()
