"""Persistence of the extender's learned state: round trip, bad state, ConfigMap."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from fastapi.testclient import TestClient
from perllm_extender import ExtenderConfig, create_app
from perllm_extender.bandits import ArmStore, service_key
from perllm_extender.live import Live
from perllm_extender.nodes import to_server
from perllm_extender.state import CONFIGMAP, KEY, ConfigMapStore, MemoryStore, StateKeeper, dumps
from test_extender_fakes import NAMES, NODES, StubProm, args, pod, spec

from perllm.csucb import CSUCB
from perllm.profiles import default_catalogue

LOOSE = spec("batch", 600.0)
CAT = default_catalogue()


def make(store: MemoryStore) -> TestClient:
    app = create_app(ExtenderConfig(state_store=store, prometheus=StubProm()))
    live: Live = app.state.live
    for n in NODES:
        live.scheduler.nodes.upsert(n)
    live.scheduler.services.add(LOOSE)
    return TestClient(app)


def bandit(c: TestClient, names: list[str] = NAMES) -> CSUCB:
    live: Live = c.app.state.live  # type: ignore[attr-defined]
    servers = [to_server(n, CAT) for n in NODES if n["metadata"]["name"] in names]
    return live.scheduler.bandit(LOOSE, servers, service_key("llm", LOOSE))  # type: ignore[arg-type]


def test_round_trip_through_the_store_across_a_restart() -> None:
    store = MemoryStore()
    with make(store) as c:
        for i in range(5):
            c.post("/scheduler/filter", json=args(pod(LOOSE, name=f"p{i}", uid=f"u{i}")))
        b = bandit(c)
        before = b.export_state()
        assert before["total"] == 5
    assert store.saves >= 1  # saved on shutdown
    doc = json.loads(store.text or "")
    assert doc["version"] == 1 and set(doc["services"]) == {"llm/batch@llama2-7b"}
    with make(store) as c2:
        after = bandit(c2).export_state()
        # a different candidate set of the same service starts from the same arms
        sub = bandit(c2, [NAMES[0], "cloud"]).export_state()
    assert after["arms"] == before["arms"] and after["total"] == before["total"]
    assert after["outputs"] == before["outputs"]
    assert set(sub["arms"]) <= set(before["arms"]) and sub["total"] == 5


def test_save_endpoint_and_metric() -> None:
    store = MemoryStore()
    c = make(store)
    c.post("/scheduler/filter", json=args(pod(LOOSE)))
    r = c.post("/state/save").json()
    assert r["saved"] is True and r["services"] == 1
    assert 'perllm_extender_state_saves_total{result="ok"} 1.0' in c.get("/metrics").text
    assert TestClient(create_app()).post("/state/save").status_code == 409


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "[]",
        json.dumps({"version": 99, "services": {}}),
        json.dumps({"version": 1, "services": []}),
    ],
)
def test_corrupted_state_starts_fresh_with_a_warning(
    text: str, caplog: pytest.LogCaptureFixture
) -> None:
    arms = ArmStore()
    keeper = StateKeeper(MemoryStore(text), arms)
    with caplog.at_level(logging.WARNING, "perllm.extender.state"):
        assert keeper.restore() == 0
    assert len(arms) == 0
    assert any("starting fresh" in r.message for r in caplog.records)
    assert keeper.last_error


def test_absent_state_starts_fresh_quietly(caplog: pytest.LogCaptureFixture) -> None:
    keeper = StateKeeper(MemoryStore(None), ArmStore())
    with caplog.at_level(logging.WARNING):
        assert keeper.restore() == 0
    assert not caplog.records and keeper.last_error is None


def test_a_bad_service_entry_is_dropped_the_rest_restored(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore()
    with make(store) as c:
        c.post("/scheduler/filter", json=args(pod(LOOSE)))
    doc = json.loads(store.text or "")
    doc["services"]["llm/broken@x"] = {"version": 0}
    store.text = json.dumps(doc)
    arms = ArmStore()
    with caplog.at_level(logging.WARNING):
        assert StateKeeper(store, arms).restore() == 1
    assert "llm/broken@x" in caplog.text


def test_store_failures_are_survived() -> None:
    class Broken:
        def load(self) -> str | None:
            raise ConnectionError("apiserver down")

        def save(self, text: str) -> None:
            raise ConnectionError("apiserver down")

    keeper = StateKeeper(Broken(), ArmStore())
    assert keeper.restore() == 0
    assert keeper.save() is False and "apiserver down" in (keeper.last_error or "")


class FakeCore:
    """The three CoreV1Api calls ConfigMapStore uses, on a dict."""

    def __init__(self) -> None:
        self.cms: dict[tuple[str, str], dict[str, Any]] = {}

    def read_namespaced_config_map(self, name: str, ns: str, **_: Any) -> Any:
        from kubernetes.client.exceptions import ApiException

        if (ns, name) not in self.cms:
            raise ApiException(status=404, reason="Not Found")
        return type("CM", (), {"data": self.cms[(ns, name)]["data"]})()

    def patch_namespaced_config_map(self, name: str, ns: str, body: Any, **_: Any) -> None:
        from kubernetes.client.exceptions import ApiException

        if (ns, name) not in self.cms:
            raise ApiException(status=404, reason="Not Found")
        self.cms[(ns, name)]["data"].update(body["data"])

    def create_namespaced_config_map(self, ns: str, body: Any, **_: Any) -> None:
        self.cms[(ns, body["metadata"]["name"])] = body


def test_configmap_store_creates_then_patches() -> None:
    store = ConfigMapStore(None, "perllm-system")
    core = FakeCore()
    store.core = core  # type: ignore[assignment]
    assert store.load() is None
    arms = ArmStore()
    store.save(dumps(arms)[0])
    cm = core.cms[("perllm-system", CONFIGMAP)]
    assert KEY in cm["data"] and json.loads(cm["data"][KEY])["services"] == {}
    store.save('{"version": 1, "services": {}, "x": 1}')
    assert json.loads(store.load() or "")["x"] == 1


class Flaky(MemoryStore):
    """A store whose reads fail until `up` (the API server busy at startup)."""

    up = False

    def load(self) -> str | None:
        if not self.up:
            raise ConnectionError("apiserver busy")
        return super().load()


def test_an_unreadable_store_is_not_overwritten_and_is_restored_late() -> None:
    stored = MemoryStore()
    with make(stored) as c:
        for i in range(3):
            c.post("/scheduler/filter", json=args(pod(LOOSE, name=f"p{i}", uid=f"u{i}")))
    before = json.loads(stored.text or "")["services"]["llm/batch@llama2-7b"]
    store = Flaky(stored.text)
    c = make(store)
    live: Live = c.app.state.live  # type: ignore[attr-defined]
    assert live.keeper is not None and live.keeper.restore() == 0
    c.post("/scheduler/filter", json=args(pod(LOOSE, name="new", uid="unew")))
    assert live.keeper.save() is False
    assert store.text == stored.text and store.saves == 0  # the stored state is intact
    ready = c.get("/readyz").json()
    assert "stored state not read yet (ConnectionError: apiserver busy)" in ready["reason"]
    assert 'perllm_extender_state_saves_total{result="error"} 1.0' in c.get("/metrics").text
    store.up = True
    assert live.keeper.save() is True  # read first, then saved
    after = json.loads(store.text or "")["services"]["llm/batch@llama2-7b"]
    assert after["arms"] == before["arms"] and after["total"] == before["total"]
    assert "learned state" not in (c.get("/readyz").json()["reason"] or "")


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("n", '"abc"', "n not a finite number"),
        ("n", "NaN", "n not a finite number"),
        ("sum_ratio", "Infinity", "sum_ratio not a finite number"),
        ("plays", "null", "plays not a finite number"),
        ("n", "-5", "n not a finite number"),
        ("n", "[1]", "n not a finite number"),
        ("sum_reward", "true", "sum_reward not a finite number"),
        (None, None, "lacks one of"),
    ],
)
def test_a_hand_edited_arm_is_refused_with_the_reason_not_imported(
    field: str | None, value: str | None, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    stored = MemoryStore()
    with make(stored) as c:
        c.post("/scheduler/filter", json=args(pod(LOOSE, name="p0", uid="u0")))
    doc = json.loads(stored.text or "")
    arms = doc["services"]["llm/batch@llama2-7b"]["arms"]
    arm = next(iter(arms.values()))
    if field is None:
        del arm["sum_ratio"]
    else:
        arm[field] = "@@"
    text = json.dumps(doc).replace('"@@"', value or "")
    with caplog.at_level(logging.WARNING, "perllm.extender.state"):
        c = make(MemoryStore(text))
        with c:
            r = c.post("/scheduler/filter", json=args(pod(LOOSE, name="q", uid="uq")))
            assert r.status_code == 200 and r.json()["NodeNames"]
            learned = bandit(c).export_state()
    assert "learned state of llm/batch@llama2-7b dropped" in caplog.text and why in caplog.text
    for a in learned["arms"].values():  # started fresh: one play, nothing poisoned
        assert a["n"] == 0 and a["plays"] <= 1


@pytest.mark.parametrize(
    ("patch", "why"),
    [
        ({"outputs": []}, "'outputs' is not an object"),
        ({"outputs": {"batch": ["x"] * 64}}, "outputs of 'batch'"),
        ({"outputs": {"batch": [0] * 64}}, "are all zero"),
        ({"total": "many"}, "'total' is not"),
        ({"arms": {"nopipe": {}}}, "is not <service>|<pool>"),
    ],
)
def test_a_wrongly_shaped_service_entry_is_dropped(
    patch: dict[str, Any], why: str, caplog: pytest.LogCaptureFixture
) -> None:
    stored = MemoryStore()
    with make(stored) as c:
        c.post("/scheduler/filter", json=args(pod(LOOSE, name="p0", uid="u0")))
    doc = json.loads(stored.text or "")
    doc["services"]["llm/batch@llama2-7b"].update(patch)
    with caplog.at_level(logging.WARNING, "perllm.extender.state"):
        assert StateKeeper(MemoryStore(json.dumps(doc)), ArmStore()).restore() == 0
    assert why in caplog.text
