"""The extender's HTTP API against a hostile or careless client: every bad request is a 4xx
with a reason in one shape, replies stay valid JSON, and a good request after a bad one
still decides correctly (docs/extender.md, "Security", "Errors")."""

from __future__ import annotations

import http.client
import json
import threading
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from perllm_extender import ExtenderConfig, create_app
from perllm_extender.app import probe_app
from test_extender_fakes import NAMES, NODES, Obj, spec
from test_extender_fakes import args as by_names
from test_extender_security import Served

from perllm.labels import LABEL_SERVICE, SCHEDULER_NAME


def pod(uid: str = "u1", **meta: Any) -> Obj:
    m: Obj = {
        "name": "p",
        "namespace": "llm",
        "uid": uid,
        "labels": {LABEL_SERVICE: "chat"},
        "annotations": {"perllm.io/deadline-s": "30"},
    }
    m.update(meta)
    return {"metadata": m, "spec": {"schedulerName": SCHEDULER_NAME}}


def by_objects(p: Obj, nodes: list[Obj]) -> Obj:
    return {"Pod": p, "Nodes": {"metadata": {}, "items": nodes}, "NodeNames": None}


def strict_json(text: str) -> Any:
    """RFC 8259 JSON only: Python's `json` reads NaN and Infinity unless told not to."""

    def no_constants(c: str) -> Any:
        raise ValueError(f"not JSON: {c}")

    return json.loads(text, parse_constant=no_constants)


def passed(doc: Obj) -> list[str]:
    if doc["NodeNames"] is not None:
        return list(doc["NodeNames"])
    return [o["metadata"]["name"] for o in doc["Nodes"]["items"]]


@pytest.fixture
def client() -> TestClient:
    return TestClient(create_app(ExtenderConfig()))


def test_a_json_syntax_error_says_where(client: TestClient) -> None:
    r = client.post(
        "/scheduler/filter", content=b'{"Pod": {', headers={"content-type": "application/json"}
    )
    assert r.status_code == 422
    msg = r.json()["detail"][0]["msg"]
    assert "JSON" in msg and "line 1 column" in msg, msg


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_json_number_literals_are_422(client: TestClient, literal: str) -> None:
    body = f'{{"Pod": {{"metadata": {{"name": "p"}}, "x": {literal}}}, "NodeNames": []}}'
    r = client.post("/scheduler/filter", content=body)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body"]


def test_replies_are_json_even_when_a_node_carries_an_overflowing_number(
    client: TestClient,
) -> None:
    """1e999 is valid JSON syntax that decodes to inf; the filter reply echoes the Node and
    must not write `Infinity` (kube-scheduler's decoder, like any other, refuses it)."""
    nodes = [{**n, "status": {"capacity": {"x": 1}}} for n in NODES]
    raw = json.dumps(by_objects(pod(), nodes)).replace('{"x": 1}', '{"x": 1e999}')
    r = client.post("/scheduler/filter", content=raw)
    assert r.status_code == 200
    assert passed(strict_json(r.text)) == ["cloud"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("namespace", "a/b"),
        ("namespace", "Llm"),
        ("namespace", ""),
        ("namespace", "x" * 64),
        ("name", "p/q"),
        ("name", "-p"),
        ("name", "ü"),
        ("name", "x" * 254),
    ],
)
def test_pod_names_kubernetes_cannot_have_are_422(
    client: TestClient, field: str, value: str
) -> None:
    r = client.post("/scheduler/filter", json=by_names(pod(**{field: value}), NAMES))
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "Pod", "metadata", field]


def test_a_slash_in_the_namespace_does_not_borrow_another_namespace_service() -> None:
    """The pod key is `namespace/name`: a namespace `a/b` read as namespace `a` decided the
    pod with namespace a's LLMService (and would learn and publish there)."""
    app = create_app(ExtenderConfig())
    app.state.scheduler.services.add(spec("chat", 0.5, per_token=0.05), "a")
    c = TestClient(app)
    for n in NODES:
        app.state.scheduler.nodes.upsert(n)
    p = pod(namespace="a/b", annotations={})  # no deadline: only a's spec could decide it
    r = c.post("/scheduler/filter", json=by_names(p, NAMES))
    assert r.status_code == 422
    assert list(app.state.scheduler.log) == []


def test_a_duplicated_node_is_echoed_once_as_the_copy_decided_on(client: TestClient) -> None:
    """The first occurrence of a name is the one modelled (`NodeCache.ingest`); a second copy
    (here unlabelled, so unmodellable) must not pass along with it."""
    cloud = next(n for n in NODES if n["metadata"]["name"] == "cloud")
    bare = {"metadata": {"name": "cloud"}, "marker": "second"}
    r = client.post("/scheduler/filter", json=by_objects(pod(), [*NODES, bare, cloud]))
    assert r.status_code == 200
    items = r.json()["Nodes"]["items"]
    assert [o["metadata"]["name"] for o in items] == ["cloud"]
    assert "marker" not in items[0]


def test_names_that_cannot_be_nodes_are_not_read_from_the_api() -> None:
    """`read_node("")` is GET /api/v1/nodes/ (the whole list) and "..", "a/b" are other
    paths; what comes back has no name, so nothing was cached and every request read it
    again. Such names fail with a reason and no read; a read answering with another node
    is not that node."""
    calls: list[str] = []

    def source(name: str) -> Obj | None:
        calls.append(name)
        if name == "liar":
            return NODES[0]
        if name in ("", "..", "a/b"):  # what the API would answer for such paths
            return {"kind": "NodeList", "metadata": {"resourceVersion": "1"}, "items": NODES}
        return next((n for n in NODES if n["metadata"]["name"] == name), None)

    c = TestClient(create_app(ExtenderConfig(node_source=source)))
    odd = ["", "..", "a/b", "UPPER", "x" * 254]
    for i in range(2):
        r = c.post("/scheduler/filter", json=by_names(pod(uid=f"u{i}"), [*NAMES, *odd, "liar"]))
        assert r.status_code == 200
        doc = r.json()
        assert doc["NodeNames"] == ["cloud"]
        for n in odd:
            assert "not a valid node name" in doc["FailedNodes"][n], doc["FailedNodes"][n]
        assert "not found" in doc["FailedNodes"]["liar"]
    assert sorted(calls) == sorted([*NAMES, "liar"])  # each valid name read once
    assert c.app.state.scheduler.nodes.get("liar") is None  # type: ignore[attr-defined]


def test_every_error_has_the_same_shape_with_a_reason() -> None:
    """kube-scheduler reads only the status, but people read the bodies: one shape,
    `{"Error": reason}`, for 403, 404, 405, 413, 422, 400 alike."""
    app = create_app(ExtenderConfig(client_auth=True, max_body_bytes=10_000))
    c = TestClient(app)
    tls = TestClient(app, base_url="https://testserver")
    answers = [
        (c.post("/scheduler/filter", json=by_names(pod(), NAMES)), 403, "certificate"),
        (c.get("/decisions"), 403, "certificate"),
        (tls.get("/scheduler/filter"), 405, "Method Not Allowed"),
        (tls.post("/scheduler/bind", json={}), 404, "Not Found"),
        (tls.post("/scheduler/filter", content=b" " * 20_000), 413, "over 10000 bytes"),
        (tls.post("/scheduler/filter", content=b"{"), 422, "invalid request"),
        (tls.get("/decisions?limit=x"), 422, "invalid request"),
        (tls.post("/scheduler/filter", json=by_names(pod(annotations={}), NAMES)), 400, "BadPod"),
    ]
    for r, status, why in answers:
        assert r.status_code == status, (r.request.url, r.text)
        assert why in r.json()["Error"], r.text
    assert tls.get("/scheduler/filter").headers["allow"] == "POST"
    probes = TestClient(probe_app(app))  # the plain-HTTP probe port: nothing but probes
    r = probes.post("/scheduler/filter", json=by_names(pod(), NAMES))
    assert r.status_code == 404 and r.json() == {"Error": "Not Found"}


def test_a_good_request_after_every_kind_of_bad_one_decides_as_before(
    client: TestClient,
) -> None:
    first = client.post("/scheduler/filter", json=by_objects(pod(uid="g0"), NODES))
    assert passed(first.json()) == ["cloud"]
    bad: list[bytes | Obj] = [
        b"{",
        b"null",
        b'{"Pod": {"x": NaN}}',
        {"Pod": pod(namespace="a/b")},
        {"Pod": pod(uid="b1"), "Nodes": {"items": [{"metadata": {"name": 5}}]}},
        {"Pod": pod(uid="b2", annotations={"perllm.io/deadline-s": "nan"}), "NodeNames": NAMES},
        by_objects(pod(uid="b3"), [*NODES, {"metadata": {"name": "cloud"}}]),
        {"Pod": pod(uid="b4"), "NodeNames": ["", "..", *NAMES, *NAMES]},
    ]
    for b in bad:
        for verb in ("filter", "prioritize"):
            raw = b if isinstance(b, bytes) else json.dumps(b).encode()
            assert client.post(f"/scheduler/{verb}", content=raw).status_code < 500
    for i, body in enumerate(
        [by_objects(pod(uid="g1"), NODES), by_names(pod(uid="g2"), list(reversed(NAMES)))]
    ):
        r = client.post("/scheduler/filter", json=body)
        assert r.status_code == 200 and passed(r.json()) == ["cloud"], (i, r.text)
        assert r.json()["FailedNodes"] == first.json()["FailedNodes"]


@pytest.mark.parametrize(
    ("field", "loc"),
    [("NodeNames", ["body", "NodeNames", 2]), ("Nodes", ["body", "Nodes", "items", 2])],
)
def test_a_list_of_a_million_bad_entries_is_one_error_at_once(field: str, loc: list[Any]) -> None:
    """Every bad entry was an error: 4 M of them (an 8 MB body) took over a minute and
    ~5 GB to report, the event loop (and /healthz) stopped meanwhile. The first one is
    the error now. (With --max-nodes raised past them: by default the count is a 413.)"""
    client = TestClient(create_app(ExtenderConfig(max_nodes=2_000_000)))
    good = "{}, {}, " if field == "Nodes" else '"a", "b", '  # entries 0 and 1 pass
    entries = good + ", ".join(["1"] * 1_000_000)
    value = f'{{"items": [{entries}]}}' if field == "Nodes" else f"[{entries}]"
    t0 = time.perf_counter()
    r = client.post("/scheduler/filter", content=f'{{"Pod": {{}}, "{field}": {value}}}')
    took = time.perf_counter() - t0
    assert r.status_code == 422
    assert [e["loc"] for e in r.json()["detail"]] == [loc]
    assert took < 3.0, took  # ~9 s before, ~0.1 s now


def test_a_perllm_pod_without_a_name_is_400_not_another_pods_decision(
    client: TestClient,
) -> None:
    """Nameless pods all had the key `llm/?`: a prioritize for one reused the filter
    decision of another (another service, another deadline)."""
    for n in NODES:
        client.app.state.scheduler.nodes.upsert(n)  # type: ignore[attr-defined]

    def nameless(svc: str, deadline: str) -> Obj:
        p = pod(labels={LABEL_SERVICE: svc}, annotations={"perllm.io/deadline-s": deadline})
        del p["metadata"]["name"], p["metadata"]["uid"]
        return p

    for verb in ("filter", "prioritize"):
        for p in (nameless("fast", "0.6"), nameless("slow", "600")):
            r = client.post(f"/scheduler/{verb}", json=by_names(p, NAMES))
            assert r.status_code == 400 and "needs metadata.name" in r.json()["Error"]
    assert list(client.app.state.scheduler.log) == []  # type: ignore[attr-defined]
    # a pod without the label is not PerLLM's: passed through, name or not
    r = client.post("/scheduler/filter", json=by_names({"metadata": {}}, NAMES))
    assert r.status_code == 200 and r.json()["NodeNames"] == NAMES


def test_a_uid_sent_again_for_another_pod_does_not_get_its_decision(
    client: TestClient,
) -> None:
    """Reuse (filter, then prioritize of the same cycle) is keyed by uid: a request naming
    another pod with the same uid got the first pod's decision."""
    for n in NODES:
        client.app.state.scheduler.nodes.upsert(n)  # type: ignore[attr-defined]
    a = pod(uid="same", name="a", labels={LABEL_SERVICE: "fast"})
    b = pod(uid="same", name="b", labels={LABEL_SERVICE: "slow"})
    assert client.post("/scheduler/filter", json=by_names(a, NAMES)).status_code == 200
    assert client.post("/scheduler/prioritize", json=by_names(b, NAMES)).status_code == 200
    log = client.app.state.scheduler.log  # type: ignore[attr-defined]
    assert [(e["pod"], e["service"]) for e in log] == [("llm/a", "fast"), ("llm/b", "slow")]


def test_concurrent_good_and_bad_requests_over_kept_alive_connections() -> None:
    """Four clients, each on one keep-alive connection to a real listener, interleave bad
    bodies with decisions of their own pods: no 5xx, no dropped connection, and every
    good request decides as a lone one does."""
    app = create_app(ExtenderConfig())
    for n in NODES:
        app.state.scheduler.nodes.upsert(n)
    bad = [
        b"{",
        b'{"Pod": {"metadata": {"name": {"a": 1}}}}',
        json.dumps({"Pod": pod(uid="b1", namespace="a/b"), "NodeNames": NAMES}).encode(),
        json.dumps({"Pod": pod(uid="b2", annotations={}), "NodeNames": NAMES}).encode(),
    ]
    seen: list[tuple[int, list[str] | None]] = []
    lock = threading.Lock()

    def client(i: int, port: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for j in range(20):
            good = j % 2 == 0
            p = pod(uid=f"u{i}-{j}", name=f"p{i}-{j}")
            body = json.dumps(by_names(p, NAMES)).encode() if good else bad[j // 2 % len(bad)]
            conn.request("POST", "/scheduler/filter", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            doc = json.loads(r.read())
            with lock:
                seen.append((r.status, doc["NodeNames"] if good else None))

    with Served(app, None) as s:
        threads = [threading.Thread(target=client, args=(i, s.port)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert len(seen) == 80
    assert {st for st, _ in seen} <= {200, 400, 422}
    assert [names for st, names in seen if names is not None] == [["cloud"]] * 40


@pytest.mark.parametrize("objects", [False, True])
def test_more_candidate_nodes_than_max_nodes_are_a_413_naming_the_limit(objects: bool) -> None:
    """A request may carry at most `max_nodes` candidates (--max-nodes): 8 MiB of short
    names is ~1 M of them, each validated, looked up and modelled on the event loop."""
    c = TestClient(create_app(ExtenderConfig(max_nodes=3)))
    names = [f"n{i}" for i in range(4)]
    body = (
        by_objects(pod(), [{"metadata": {"name": n}} for n in names])
        if objects
        else by_names(pod(), names)
    )
    for verb in ("filter", "prioritize"):
        r = c.post(f"/scheduler/{verb}", json=body)
        assert r.status_code == 413, r.text
        field = "Nodes.items" if objects else "NodeNames"
        assert r.json() == {
            "Error": f"{field}: 4 candidate nodes, over the limit of 3 (perllm extender "
            "--max-nodes)"
        }
    ok = by_names(pod(), names[:3])
    assert c.post("/scheduler/filter", json=ok).status_code == 200
    assert "perllm_extender_bad_requests_total 2.0" in c.get("/metrics").text
    # the CLI's default is the config's
    import typer

    from perllm.cli import app

    cmd = typer.main.get_command(app).commands["extender"]  # type: ignore[attr-defined]
    flag = next(p for p in cmd.params if p.name == "max_nodes")
    assert flag.default == ExtenderConfig().max_nodes == 10_000


def test_a_body_sent_as_another_type_than_json_is_a_415(client: TestClient) -> None:
    """kube-scheduler sends application/json; no Content-Type, or JSON with parameters,
    is read too, anything else is a 415 with the reason, before the body is decided on."""
    body = json.dumps(by_names(pod(), NAMES))
    for verb in ("filter", "prioritize"):
        r = client.post(f"/scheduler/{verb}", content=body, headers={"content-type": "text/plain"})
        assert r.status_code == 415
        assert r.json() == {
            "Error": "content-type 'text/plain': the body must be JSON, sent as application/json"
        }
        for headers in ({}, {"content-type": "application/json; charset=utf-8"}):
            r = client.post(f"/scheduler/{verb}", content=body, headers=headers)
            assert r.status_code == 200, r.text


def test_a_huge_annotation_or_service_label_is_not_echoed_in_full(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A 1 MB deadline annotation came back whole in the 400 and in its log line (on every
    retry of the pod: log volume at a pod author's will); the value is shown shortened."""
    huge = "9" * 1_000_000
    cases = [
        (pod(annotations={"perllm.io/deadline-s": huge}), "perllm.io/deadline-s='99999"),
        (pod(annotations={"perllm.io/deadline-s": "x" + huge}), "is not a number"),
        (pod(annotations={"perllm.io/deadline-s": "30", "perllm.io/min-quality": "n" + huge}), ""),
    ]
    for p, why in cases:
        with caplog.at_level("WARNING", "perllm.extender"):
            r = client.post("/scheduler/filter", json=by_names(p, NAMES))
        assert r.status_code == 400 and why in r.json()["Error"], r.text[:300]
        assert len(r.content) < 500 and "..." in r.json()["Error"]
        assert max(len(rec.getMessage()) for rec in caplog.records) < 500
        caplog.clear()
    # a Node's reasons (FailedNodes, once per node, and the decision log) likewise
    for key in ("perllm.io/tier", "perllm.io/hardware", "perllm.io/link-bandwidth-mbps"):
        node = json.loads(json.dumps(NODES[0]))
        where = "annotations" if key.startswith("perllm.io/link") else "labels"
        node["metadata"][where][key] = "x" + huge
        r = client.post("/scheduler/filter", json=by_objects(pod(uid=key), [node]))
        assert r.status_code == 200 and len(r.content) < 500, r.text[:300]


@pytest.mark.parametrize("svc", ["a" * 64, "a" * 100_000, "Chat", "chat."])
def test_a_service_label_no_llmservice_can_have_is_400_naming_it(
    client: TestClient, svc: str
) -> None:
    """A label value of 100,000 characters was decided on (200): a bandit, a log entry and
    a pod record under that name. An LLMService name is an RFC 1123 label (Kubernetes
    refuses longer label values), so the pod is refused, naming the label."""
    body = by_names(pod(labels={LABEL_SERVICE: svc}), NAMES)
    for verb in ("filter", "prioritize"):
        r = client.post(f"/scheduler/{verb}", json=body)
        assert r.status_code == 400, r.text[:300]
        why = r.json()["Error"]
        assert f"label {LABEL_SERVICE}=" in why and "RFC 1123 label" in why, why
        assert len(r.content) < 500
    assert list(client.app.state.scheduler.log) == []  # type: ignore[attr-defined]
