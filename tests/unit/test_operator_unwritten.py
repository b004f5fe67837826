"""An LLMService's status write refused or unanswered where no condition can say it
(reads.unwritten, conditions.try_sync_status): a Deployment event's, and follow_tier's
after a re-apply. Said once per distinct error, as a warning and an Event on the
LLMService; the handler returns (the next event or tick writes again)."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from typing import Any

import kopf
import pytest
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException
from perllm_operator import kube, reads, reconcile, status
from test_operator_reads import DEP, NAME, _cond, _forbidden, _install, _load, _ready

Obj = dict[str, Any]
OWNER = {
    "apiVersion": "perllm.io/v1alpha1",
    "kind": "LLMService",
    "name": NAME,
    "uid": "uid-1",
    "controller": True,
}


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    reads.forget("uid-1")
    yield
    reads.forget("uid-1")


def _timeout() -> Exception:
    return urllib3.exceptions.ReadTimeoutError(
        None,  # type: ignore[arg-type]
        "/apis/perllm.io/v1alpha1",
        "Read timed out. (read timeout=60)",
    )


def _event() -> None:
    meta = {"name": NAME, "namespace": "llm", "ownerReferences": [OWNER]}
    dep = kopf.Body({"kind": "Deployment", "metadata": meta})  # type: ignore[arg-type]
    status.deployment_event(body=dep, type="MODIFIED", logger=logging.getLogger("t"))


def test_a_deployment_events_failed_write_is_said_once_per_distinct_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The LLMService unanswered: the urllib3 error escaped the handler (kopf logged a
    traceback on every Deployment event); refused (403): a TemporaryError logged on every
    event, no Event."""
    api, _fake, _ = _install(monkeypatch, _load(DEP))
    events: list[tuple[Obj, str, str]] = []
    monkeypatch.setattr(
        kopf, "warn", lambda body, *, reason, message: events.append((dict(body), reason, message))
    )
    caplog.set_level(logging.INFO, logger=reads.__name__)
    api.fail = _timeout()
    for _ in range(3):
        _event()
    assert len(events) == 1
    body, reason, msg = events[0]
    assert body["kind"] == "LLMService" and body["metadata"] == {
        "name": NAME,
        "namespace": "llm",
        "uid": "uid-1",
    }
    assert reason == "StatusFailed"
    assert msg.startswith(
        f"updating the status of LLMService {NAME}: no answer from the API server "
        "(ReadTimeoutError:"
    )
    api.fail = _forbidden()  # another error: said again, once
    for _ in range(2):
        _event()
    assert [r for _, r, _ in events] == ["StatusFailed", "StatusForbidden"]
    assert events[1][2].startswith(
        f"updating the status of LLMService {NAME}: the API server refused it (403 Forbidden)"
    )
    api.fail = None  # written again: Ready from the child, said once
    for _ in range(2):
        _event()
    assert _cond(api, "Ready")[:2] == ("True", "ReplicasReady")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:2] == [events[0][2], events[1][2]] and len(lines) == 3
    assert "written again" in lines[2] and len(events) == 2


def test_a_refused_patch_is_said_once_too(monkeypatch: pytest.MonkeyPatch) -> None:
    api, _fake, events = _install(monkeypatch, _load(DEP))

    def refuse(*a: Any, **k: Any) -> None:
        raise ApiException(status=500, reason="Internal Server Error")

    monkeypatch.setattr(api, "patch_namespaced_custom_object_status", refuse)
    for _ in range(3):
        _event()
    assert [r for r, _ in events] == ["StatusInternalServerError"]


def test_follow_tier_goes_on_when_the_status_write_after_a_re_creation_is_refused(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The Deployment deleted by hand, re-created, then the status write refused: it
    escaped follow_tier, so the timer said `Degraded` InternalError and posted an Event
    on each retry."""
    obj = _load(DEP)
    api, _fake, events = _install(monkeypatch, obj)
    applied: list[str] = []
    monkeypatch.setattr(kube, "apply", lambda child: applied.append(child["kind"]) or child)
    monkeypatch.setattr(
        kube, "read_child", lambda ns, ref: None if ref["kind"] == "Deployment" else _ready(ref)
    )
    infos: list[str] = []
    monkeypatch.setattr(kopf, "info", lambda body, *, reason, message: infos.append(reason))

    def refuse(*a: Any, **k: Any) -> None:
        raise _forbidden()

    monkeypatch.setattr(api, "patch_namespaced_custom_object_status", refuse)
    caplog.set_level(logging.INFO, logger=reads.__name__)
    for _ in range(3):  # three ticks: each re-creates (nothing recorded it), said once
        reconcile.follow_tier(kopf.Body(copy.deepcopy(obj)), obj, logging.getLogger("t"))
    assert applied.count("Deployment") == 3 and infos == ["ChildRecreated"] * 3
    assert [r for r, _ in events] == ["StatusForbidden"]
    assert events[0][1].startswith(f"updating the status of LLMService {NAME}: the API server")
    assert [r.getMessage() for r in caplog.records] == [events[0][1]]


def test_a_failed_reconciles_status_write_is_said_once_per_distinct_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The reconcile's failure path (`_write_own`) falls back to kopf's patch when its
    fresh write fails: it logged a warning on every retry, where every other status
    write says a failure once per distinct error (`reads.unwritten`)."""
    obj = _load(DEP)
    api, _fake, events = _install(monkeypatch, obj)
    caplog.set_level(logging.INFO)

    def fail() -> kopf.Patch:
        body = kopf.Body(copy.deepcopy(obj))
        patch = kopf.Patch()
        reconcile._not_reconciled(body, patch, [], "ApplyInvalid", "Deployment x: bad")
        return patch

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]

    api.fail = _timeout()
    patches = [fail() for _ in range(3)]
    assert all(p.status["conditions"][0]["reason"] == "ApplyInvalid" for p in patches)
    status_events = [r for r, _ in events if r.startswith("Status")]
    assert status_events == ["StatusFailed"]
    assert len(said()) == 1 and said()[0].startswith(
        f"updating the status of LLMService {NAME}: no answer from the API server"
    )
    api.fail = _forbidden()  # another error: said again, once
    fail(), fail()
    assert [r for r, _ in events if r.startswith("Status")] == ["StatusFailed", "StatusForbidden"]
    assert len(said()) == 2
    api.fail = None  # written again: said once
    for _ in range(2):
        assert "status" not in fail()
    assert len(said()) == 3 and "written again" in said()[2]
    assert _cond(api, "Reconciled")[:2] == ("False", "ApplyInvalid")
