"""More of reads.py: the service's pod list refused or unanswered in a status write
(`Placed`) and in the status timer, and failed reads forgotten while the spec is
refused, and a failure the status already says not posted again after an operator
restart."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from typing import Any

import kopf
import pytest
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException
from perllm_operator import conditions, kube, reads, reconcile, status
from perllm_operator.config import Config
from perllm_operator.state import State, memo_of
from test_operator_reads import DEP, NAME, TIMER, _cond, _forbidden, _install, _load

from perllm.telemetry.prom import Prometheus

Obj = dict[str, Any]
LIST_MSG = (
    f"listing pods labelled perllm.io/service={NAME}: the API server refused it "
    f'(403 Forbidden): deployments.apps "{NAME}" is forbidden: User "op" cannot get '
    'resource "deployments"'
)


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    reads.forget("uid-1")
    yield
    reads.forget("uid-1")


def _refuse_pods(mp: pytest.MonkeyPatch, e: Exception | None) -> list[int]:
    calls: list[int] = []

    def pods(ns: str, name: str) -> list[Obj]:
        calls.append(1)
        if e is not None:
            raise e
        return []

    mp.setattr(kube, "pods", pods)
    return calls


def test_a_refused_pod_list_is_placed_unknown_and_the_rest_is_written(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A Deployment event's write (no `Placed` given, no placement yet) lists the pods: a
    403 there failed the whole write (a TemporaryError with a log line only), `Ready`
    left stale."""
    api, _fake, events = _install(monkeypatch, _load(DEP))
    calls = _refuse_pods(monkeypatch, _forbidden())
    caplog.set_level(logging.INFO, logger=reads.__name__)
    for _ in range(3):
        assert conditions.sync_status("llm", NAME, "uid-1")
    assert calls and _cond(api, "Ready")[:2] == ("True", "ReplicasReady")
    assert _cond(api, "Placed") == ("Unknown", "ListForbidden", LIST_MSG)
    assert events == [("ListForbidden", LIST_MSG)]
    assert [r.getMessage() for r in caplog.records] == [LIST_MSG]
    _refuse_pods(monkeypatch, None)  # listed again: Placed recomputed, said once
    assert conditions.sync_status("llm", NAME, "uid-1")
    assert _cond(api, "Placed")[:2] == ("Unknown", "WaitingForScheduler")
    assert "readable again" in caplog.records[-1].getMessage() and len(caplog.records) == 2
    assert reads.pending("uid-1") is None


def test_an_unanswered_pod_list_is_placed_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    api, _fake, events = _install(monkeypatch, _load(DEP))
    _refuse_pods(monkeypatch, urllib3.exceptions.MaxRetryError(None, "/api/v1/pods"))  # type: ignore[arg-type]
    assert conditions.sync_status("llm", NAME, "uid-1")
    st, reason, msg = _cond(api, "Placed")
    assert (st, reason) == ("Unknown", "ListFailed")
    assert msg.startswith(
        f"listing pods labelled perllm.io/service={NAME}: no answer from the API server "
        "(MaxRetryError:"
    )
    assert [r for r, _ in events] == ["ListFailed"]


def tick_status(obj: Obj) -> None:
    """The status timer's handler, once, on a copy of `obj` (also test_operator_refusal's)."""
    b = kopf.Body(copy.deepcopy(obj))
    state = State(Config(), Prometheus("http://prom.invalid"))
    status.status_tick(
        body=b,
        spec=kopf.Spec(b),
        meta=kopf.Meta(b),
        status=kopf.Status(b),
        logger=logging.getLogger("t"),
        memo=memo_of(state),
    )


def test_the_timers_refused_pod_list_is_written_as_degraded_and_said_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The timer's list refused: its failure write (`Degraded` only) listed the pods
    again, was refused the same way, and was never written (only the Event said it); each
    retry posted the Event again."""
    api, _fake, events = _install(monkeypatch, _load(DEP))
    monkeypatch.setattr(reconcile, "follow_tier", lambda body, obj, logger: None)
    _refuse_pods(monkeypatch, _forbidden())
    for _ in range(2):
        with pytest.raises(kopf.TemporaryError):
            tick_status(api.obj)
    assert _cond(api, "Degraded") == ("True", "ListForbidden", LIST_MSG)
    assert _cond(api, "Placed") == ("Unknown", "ListForbidden", LIST_MSG)
    assert events == [("ListForbidden", LIST_MSG)]
    _refuse_pods(monkeypatch, None)
    tick_status(api.obj)
    assert _cond(api, "Degraded")[:2] == ("False", "NoErrors")
    assert _cond(api, "Placed")[:2] == ("Unknown", "WaitingForScheduler")


def test_follow_tier_keeps_a_failed_pod_list(monkeypatch: pytest.MonkeyPatch) -> None:
    """follow_tier forgets the failed reads of what it no longer reads: not the pod list,
    which it never reads (forgotten, it was said again at the next write)."""
    obj = _load(DEP)
    _api, _fake, events = _install(monkeypatch, obj)
    _refuse_pods(monkeypatch, _forbidden())
    assert conditions.sync_status("llm", NAME, "uid-1")
    reconcile.follow_tier(kopf.Body(copy.deepcopy(obj)), obj, logging.getLogger("t"))
    assert conditions.sync_status("llm", NAME, "uid-1")
    assert [r for r, _ in events] == ["ListForbidden"]


def test_a_refused_spec_forgets_the_failed_reads_of_its_children(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While the reconcile refuses the spec no child is read, so a read failure recorded
    before kept the timer's `Degraded` True, naming a read nobody makes, until it
    succeeded again."""
    api, fake, _events = _install(monkeypatch, _load(DEP))
    fake.refuse["Deployment"] = _forbidden()
    assert conditions.sync_status("llm", NAME, "uid-1", conditions=TIMER)
    assert _cond(api, "Degraded")[:2] == ("True", "ReadForbidden")
    refusal = ("KServeMissing", "KServe is not installed")
    conditions.sync_status("llm", NAME, "uid-1", conditions={"Reconciled": (False, *refusal)})
    assert conditions.sync_status("llm", NAME, "uid-1", conditions=TIMER)
    assert _cond(api, "Ready") == ("False", *refusal)
    assert _cond(api, "Degraded")[:2] == ("False", "NoErrors")
    assert reads.pending("uid-1") is None


def test_the_timer_clears_its_degraded_while_the_spec_is_invalid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An invalid spec: the timer returned before writing anything, so the `Degraded` it
    wrote last (a failed read, an eviction) stood for as long as the spec was invalid."""
    obj = _load(DEP)
    api, fake, _events = _install(monkeypatch, obj)
    fake.refuse["Deployment"] = _forbidden()
    assert conditions.sync_status("llm", NAME, "uid-1", conditions=TIMER)
    assert _cond(api, "Degraded")[:2] == ("True", "ReadForbidden")
    api.obj["spec"]["allowedTiers"] = ["moon"]  # the contract refuses it
    refusal = ("InvalidSpec", "spec.allowedTiers[0]: not a tier")
    conditions.sync_status("llm", NAME, "uid-1", conditions={"Reconciled": (False, *refusal)})
    tick_status(api.obj)
    assert _cond(api, "Degraded")[:2] == ("False", "NoErrors")
    assert _cond(api, "Ready") == ("False", *refusal)


def test_after_a_restart_a_failure_the_status_says_is_not_posted_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The memory of failed reads is the process's: after an operator restart a read
    still refused was posted as a Warning Event once more, though `Ready` and `Degraded`
    already said it word for word."""
    _api, fake, events = _install(monkeypatch, _load(DEP))
    fake.refuse["Deployment"] = _forbidden()
    assert conditions.sync_status("llm", NAME, "uid-1", conditions=TIMER)
    assert len(events) == 1
    reads.forget("uid-1")  # what a restart forgets
    caplog.clear()
    assert conditions.sync_status("llm", NAME, "uid-1", conditions=TIMER)
    assert len(events) == 1  # the status says it already
    assert len(caplog.records) == 1  # the new process's log says it once
    assert reads.pending("uid-1") is not None
    # a different error is said
    fake.refuse["Deployment"] = ApiException(status=500, reason="Internal Server Error")
    assert conditions.sync_status("llm", NAME, "uid-1", conditions=TIMER)
    assert [r for r, _ in events] == ["ReadForbidden", "ReadInternalServerError"]


def test_after_a_restart_a_pod_list_the_status_says_is_not_posted_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _api, _fake, events = _install(monkeypatch, _load(DEP))
    _refuse_pods(monkeypatch, _forbidden())
    assert conditions.sync_status("llm", NAME, "uid-1")
    reads.forget("uid-1")
    assert conditions.sync_status("llm", NAME, "uid-1")
    assert events == [("ListForbidden", LIST_MSG)]
