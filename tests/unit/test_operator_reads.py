"""A read of an LLMService's child refused or unanswered (operator/perllm_operator/reads.py):
every status write read the children for `Ready`, so a 403 (or a timeout) on the
Deployment or InferenceService failed the whole write (the timer's a TemporaryError,
with a log line only, no `Degraded`, no Event), and `follow_tier` returned in silence.
The write now goes on with `Ready` Unknown naming the read; it is said once."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
import urllib3.exceptions
import yaml
from fake_kube import FakeStatusApi
from kubernetes.client.exceptions import ApiException
from perllm_operator import conditions, kube, reads, reconcile

ROOT = Path(__file__).parents[2]
NAME = "chat-assistant"
DEP = {"apiVersion": "apps/v1", "kind": "Deployment", "name": NAME}
SVC = {"apiVersion": "v1", "kind": "Service", "name": f"{NAME}-predictor"}
ISVC = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "name": NAME}
FORBIDDEN = (
    '{"kind":"Status","reason":"Forbidden","message":"deployments.apps \\"chat-assistant\\" '
    'is forbidden: User \\"op\\" cannot get resource \\"deployments\\""}'
)
TIMER = {  # what the status timer gives sync_status
    "Placed": (True, "Placed", "tier edge on edge-1"),
    "Degraded": (False, "NoErrors", "the status timer ran without errors"),
}
OBSERVED = {"window": "5m", "at": "2026-01-01T00:00:00Z", "attainment": 0.97}

Obj = dict[str, Any]


def _load(ref: Obj) -> Obj:
    obj: Obj = yaml.safe_load((ROOT / "manifests" / f"{NAME}.yaml").read_text())
    obj["metadata"].update(namespace="llm", uid="uid-1", generation=1)
    obj["spec"]["backend"] = "kserve" if ref["kind"] == "InferenceService" else "deployment"
    rec = {"type": "Reconciled", "status": "True", "reason": "ChildApplied"}
    obj["status"] = {"child": ref, "observedGeneration": 1, "conditions": [rec]}
    return obj


def _ready(ref: Obj) -> Obj:
    owner = {"apiVersion": "perllm.io/v1alpha1", "kind": "LLMService", "name": NAME}
    meta = {"name": ref["name"], "ownerReferences": [{**owner, "controller": True, "uid": "uid-1"}]}
    return {
        "kind": ref["kind"],
        "metadata": meta,
        "spec": {"replicas": 1},
        "status": {"readyReplicas": 1},
    }


def _forbidden() -> ApiException:
    e = ApiException(status=403, reason="Forbidden")
    e.body = FORBIDDEN
    return e


class Reads:
    """kube.read_child faked: `refuse` maps a child's kind to what its read raises."""

    def __init__(self) -> None:
        self.refuse: dict[str, Exception] = {}

    def __call__(self, ns: str, ref: Obj) -> Obj:
        if ref["kind"] in self.refuse:
            raise self.refuse[ref["kind"]]
        return _ready(ref)


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    reads.forget("uid-1")
    yield
    reads.forget("uid-1")


def _install(
    mp: pytest.MonkeyPatch, obj: Obj
) -> tuple[FakeStatusApi, Reads, list[tuple[str, str]]]:
    api, fake, events = FakeStatusApi(obj), Reads(), []
    mp.setattr(kube.kubernetes.client, "CustomObjectsApi", lambda: api)
    mp.setattr(kube, "read_child", fake)
    mp.setattr(kube, "pods", lambda ns, name: [])
    mp.setattr(kube, "apply", lambda child: child)
    mp.setattr(kopf, "warn", lambda body, *, reason, message: events.append((reason, message)))
    mp.setattr(kopf, "info", lambda body, *, reason, message: None)
    return api, fake, events


def _cond(api: FakeStatusApi, t: str) -> tuple[str, str, str]:
    c = api.cond(t)
    assert c is not None, t
    return c["status"], c["reason"], c["message"]


def test_a_refused_child_read_is_ready_unknown_and_the_rest_is_written(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A 403 on the Deployment: the timer's write raised it (a TemporaryError every 10 s,
    `status.observed` and every condition left stale, `Degraded` NoErrors, no Event)."""
    api, fake, events = _install(monkeypatch, _load(DEP))
    fake.refuse["Deployment"] = _forbidden()
    caplog.set_level(logging.INFO, logger=reads.__name__)
    for _ in range(3):  # three ticks: said once
        assert conditions.sync_status(
            "llm", NAME, "uid-1", conditions=TIMER, fields={"observed": OBSERVED}
        )
    st = api.obj["status"]
    assert st["observed"] == OBSERVED and _cond(api, "Placed")[0] == "True"
    msg = (
        f"reading Deployment {NAME}: the API server refused it (403 Forbidden): "
        f'deployments.apps "{NAME}" is forbidden: User "op" cannot get resource "deployments"'
    )
    assert _cond(api, "Ready") == ("Unknown", "ReadForbidden", msg)
    assert _cond(api, "Degraded") == ("True", "ReadForbidden", msg)
    assert events == [("ReadForbidden", msg)]
    assert [r.getMessage() for r in caplog.records] == [msg]
    # a Deployment event's write (no conditions given) goes through too, Degraded kept
    assert conditions.sync_status("llm", NAME, "uid-1")
    assert _cond(api, "Degraded")[1] == "ReadForbidden" and len(events) == 1
    # readable again: Ready from the child, Degraded cleared, said once
    del fake.refuse["Deployment"]
    for _ in range(2):
        assert conditions.sync_status("llm", NAME, "uid-1", conditions=TIMER)
    assert _cond(api, "Ready")[:2] == ("True", "ReplicasReady")
    assert _cond(api, "Degraded")[:2] == ("False", "NoErrors")
    assert len(caplog.records) == 2 and "readable again" in caplog.records[1].getMessage()


def test_an_unanswered_read_names_why_and_a_new_error_is_said_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api, fake, events = _install(monkeypatch, _load(ISVC))
    fake.refuse["InferenceService"] = urllib3.exceptions.ReadTimeoutError(
        None,  # type: ignore[arg-type]
        "/apis/serving.kserve.io/v1beta1",
        "Read timed out. (read timeout=60)",
    )
    assert conditions.sync_status("llm", NAME, "uid-1", conditions=TIMER)
    status, reason, msg = _cond(api, "Ready")
    assert (status, reason) == ("Unknown", "ReadFailed")
    assert msg.startswith(
        f"reading InferenceService {NAME}: no answer from the API server (ReadTimeoutError:"
    )
    assert "Read timed out" in msg
    fake.refuse["InferenceService"] = ApiException(status=500, reason="Internal Server Error")
    assert conditions.sync_status("llm", NAME, "uid-1", conditions=TIMER)
    assert _cond(api, "Ready")[:2] == ("Unknown", "ReadInternalServerError")
    assert [r for r, _ in events] == ["ReadFailed", "ReadInternalServerError"]


def test_follow_tier_says_a_refused_read_once_and_the_next_tick_degrades(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The Deployment backend's Service unreadable: follow_tier returned in silence, so
    a Service deleted by hand was never re-created and nothing said why."""
    obj = _load(DEP)
    api, fake, events = _install(monkeypatch, obj)
    applied: list[Obj] = []
    monkeypatch.setattr(kube, "apply", lambda child: applied.append(child) or child)
    fake.refuse["Service"] = _forbidden()
    caplog.set_level(logging.INFO, logger=reads.__name__)
    for _ in range(2):
        reconcile.follow_tier(kopf.Body(copy.deepcopy(obj)), obj, logging.getLogger("t"))
    assert applied == []
    reason, msg = events[0]
    assert len(events) == 1 and reason == "ReadForbidden"
    assert msg.startswith(
        f"reading Service {NAME}-predictor: the API server refused it (403 Forbidden)"
    )
    assert [r.getMessage() for r in caplog.records] == [msg]
    # the next tick's write: Ready from the (readable) Deployment, Degraded names the Service
    assert conditions.sync_status("llm", NAME, "uid-1", conditions=TIMER)
    assert _cond(api, "Ready")[:2] == ("True", "ReplicasReady")
    assert _cond(api, "Degraded") == ("True", "ReadForbidden", msg)
    del fake.refuse["Service"]
    reconcile.follow_tier(kopf.Body(copy.deepcopy(obj)), obj, logging.getLogger("t"))
    assert conditions.sync_status("llm", NAME, "uid-1", conditions=TIMER)
    assert _cond(api, "Degraded")[:2] == ("False", "NoErrors")


def test_follow_tier_says_its_refused_read_of_the_service(monkeypatch: pytest.MonkeyPatch) -> None:
    obj = _load(DEP)
    api, _fake, events = _install(monkeypatch, obj)
    api.fail = _forbidden()
    reconcile.follow_tier(kopf.Body(copy.deepcopy(obj)), obj, logging.getLogger("t"))
    assert [r for r, _ in events] == ["ReadForbidden"]
    assert events[0][1].startswith(f"reading LLMService {NAME}: the API server refused it (403")
    api.fail = ApiException(status=404, reason="Not Found")  # deleted since: nothing to say
    reads.forget("uid-1")
    reconcile.follow_tier(kopf.Body(copy.deepcopy(obj)), obj, logging.getLogger("t"))
    assert len(events) == 1 and reads.pending("uid-1") is None
