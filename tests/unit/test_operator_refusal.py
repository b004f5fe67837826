"""The reconcile's failure paths (`_refuse`, `_not_reconciled` in operator/perllm_operator/
reconcile.py) write their conditions through `conditions.sync_status`: a fresh read and a
resourceVersion-guarded patch, so a condition another writer (the router's
`BackendsReachable`) set after kopf's copy of the object was taken survives. Only when
that write fails does kopf's patch get the list built from the handler's copy."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

import kopf
import pytest
from fake_kube import FakeStatusApi
from perllm_operator import kube, reconcile
from test_operator_reads_more import tick_status

Obj = dict[str, Any]
ROUTER = {
    "type": "BackendsReachable",
    "status": "False",
    "reason": "RemoteUnreachable",
    "message": "remote tier cloud-cluster refuses connections",
    "lastTransitionTime": "2026-12-03T14:04:58Z",
}


class RacingStatusApi(FakeStatusApi):
    """The shared fake status API, plus the router's write of its condition."""

    def router_writes(self, cond: Obj = ROUTER) -> None:
        """The router's write: its condition set, the others sent back as read."""
        old = (self.obj.get("status") or {}).get("conditions") or []
        others = [c for c in old if c["type"] != cond["type"]]
        self.write({"status": {"conditions": [*others, cond]}})


def install(mp: pytest.MonkeyPatch, obj: Obj) -> RacingStatusApi:
    """The LLMService `obj` behind a fake status API; no pods, no live children."""
    api = RacingStatusApi(obj)
    mp.setattr(kube.kubernetes.client, "CustomObjectsApi", lambda: api)
    mp.setattr(kube, "pods", lambda ns, name: [])
    mp.setattr(kube, "read_child", lambda ns, ref: None)
    return api


def _svc() -> Obj:
    ready = {"type": "Ready", "status": "True", "reason": "ReplicasReady", "message": "1/1"}
    return {
        "apiVersion": "perllm.io/v1alpha1",
        "kind": "LLMService",
        "metadata": {"name": "chat", "namespace": "llm", "uid": "uid-1", "generation": 3},
        "spec": {},
        "status": {"conditions": [ready]},
    }


def _refuse(body: kopf.Body, patch: kopf.Patch, old: list[Obj]) -> None:
    reconcile._refuse(body, kopf.Meta(body), patch, old, "InvalidSpec", "spec.x: bad")


def _not_reconciled(body: kopf.Body, patch: kopf.Patch, old: list[Obj]) -> None:
    reconcile._not_reconciled(body, patch, old, "ApplyInvalid", "Deployment chat: bad")


@pytest.fixture(autouse=True)
def _no_events(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kopf, "warn", lambda *a, **k: None)


@pytest.mark.parametrize("fail", [_refuse, _not_reconciled], ids=["refuse", "not_reconciled"])
def test_a_condition_written_after_the_handlers_copy_survives(
    monkeypatch: pytest.MonkeyPatch, fail: Callable[[kopf.Body, kopf.Patch, list[Obj]], None]
) -> None:
    svc = _svc()
    api = install(monkeypatch, svc)
    body = kopf.Body(copy.deepcopy(svc))  # kopf's copy, taken before the router's write
    old = list(body["status"]["conditions"])
    api.router_writes()
    patch = kopf.Patch()
    fail(body, patch, old)
    assert api.cond("BackendsReachable") == ROUTER
    rec = api.cond("Reconciled")
    assert rec is not None and rec["status"] == "False"
    assert "status" not in patch  # nothing of the stale copy goes into kopf's patch
    assert all("routing" not in p["status"] for p in api.patches)


@pytest.mark.parametrize("fail", [_refuse, _not_reconciled], ids=["refuse", "not_reconciled"])
def test_a_write_between_the_read_and_the_patch_is_read_again(
    monkeypatch: pytest.MonkeyPatch, fail: Callable[[kopf.Body, kopf.Patch, list[Obj]], None]
) -> None:
    svc = _svc()
    api = install(monkeypatch, svc)
    api.before_patch = api.router_writes
    body = kopf.Body(copy.deepcopy(svc))
    fail(body, kopf.Patch(), list(body["status"]["conditions"]))
    assert api.refused == 1
    assert api.cond("BackendsReachable") == ROUTER


def test_a_refused_spec_sets_the_owned_conditions_and_keeps_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    svc = _svc()
    routed = {"type": "Routed", "status": "True", "reason": "Router", "message": "x"}
    svc["status"]["conditions"].append(routed)
    api = install(monkeypatch, svc)
    body = kopf.Body(copy.deepcopy(svc))
    _refuse(body, kopf.Patch(), list(body["status"]["conditions"]))
    st = api.obj["status"]
    assert [c["type"] for c in st["conditions"]] == ["Ready", "Placed", "Reconciled", "Routed"]
    for t in ("Ready", "Placed", "Reconciled"):
        c = api.cond(t)
        assert c is not None and (c["status"], c["reason"]) == ("False", "InvalidSpec")
        assert c["message"] == "spec.x: bad"
    assert api.cond("Routed") == routed
    assert st["observedGeneration"] == 3


def test_not_reconciled_sets_reconciled_and_keeps_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    svc = _svc()
    api = install(monkeypatch, svc)
    body = kopf.Body(copy.deepcopy(svc))
    _not_reconciled(body, kopf.Patch(), list(body["status"]["conditions"]))
    rec = api.cond("Reconciled")
    assert rec is not None and (rec["status"], rec["reason"]) == ("False", "ApplyInvalid")
    assert api.cond("Ready") == svc["status"]["conditions"][0]  # no child recorded: kept
    assert "observedGeneration" not in api.obj["status"]


@pytest.mark.parametrize("fail", [_refuse, _not_reconciled], ids=["refuse", "not_reconciled"])
def test_when_the_fresh_write_fails_kopfs_patch_carries_the_handlers_copy(
    monkeypatch: pytest.MonkeyPatch, fail: Callable[[kopf.Body, kopf.Patch, list[Obj]], None]
) -> None:
    class Down:
        def get_namespaced_custom_object(self, *a: Any, **_: Any) -> Obj:
            raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(kube.kubernetes.client, "CustomObjectsApi", Down)
    svc = _svc()
    svc["status"]["conditions"].append(ROUTER)
    body = kopf.Body(copy.deepcopy(svc))
    patch = kopf.Patch()
    fail(body, patch, list(body["status"]["conditions"]))
    conds = {c["type"]: c for c in patch.status["conditions"]}
    assert conds["Reconciled"]["status"] == "False"
    assert conds["BackendsReachable"] == ROUTER  # as the handler read it
    if fail is _refuse:
        assert conds["Ready"]["reason"] == "InvalidSpec"
        assert patch.status["observedGeneration"] == 3
    else:
        assert conds["Ready"]["status"] == "True"


def test_a_refused_specs_message_is_bounded_in_the_conditions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An admitted spec can make a long refusal (a 2 KiB storageUri quoted back): the
    conditions carry it cut at failures.MAX_MESSAGE, like every other message."""
    from pathlib import Path

    import yaml
    from perllm_operator import failures

    root = Path(__file__).parents[2]
    svc: Obj = yaml.safe_load((root / "manifests" / "chat-assistant.yaml").read_text())
    svc["metadata"].update(namespace="llm", uid="uid-1", generation=2)
    svc["spec"]["backend"] = "deployment"
    svc["spec"]["model"]["variants"][1]["storageUri"] = "s3://bucket/" + "x" * 2000
    api = install(monkeypatch, svc)
    with pytest.raises(kopf.PermanentError):
        _run_reconcile(svc)
    for t in ("Ready", "Placed", "Reconciled"):
        c = api.cond(t)
        assert c is not None and c["reason"] == "InvalidSpec"
        assert len(c["message"]) <= failures.MAX_MESSAGE
        assert c["message"].startswith("spec.model.variants[1].storageUri: the deployment")


def _run_reconcile(obj: Obj) -> None:
    body = kopf.Body(copy.deepcopy(obj))
    reconcile.reconcile(
        body=body,
        spec=kopf.Spec(body),
        meta=kopf.Meta(body),
        status=kopf.Status(body),
        patch=kopf.Patch(),
        logger=logging.getLogger("test"),
    )


def _manifest(backend: str) -> Obj:
    from pathlib import Path

    import yaml

    root = Path(__file__).parents[2]
    svc: Obj = yaml.safe_load((root / "manifests" / "chat-assistant.yaml").read_text())
    svc["metadata"].update(namespace="llm", uid="uid-1", generation=1)
    svc["spec"]["backend"] = backend
    return svc


def test_the_timer_keeps_kserve_missing_in_placed(monkeypatch: pytest.MonkeyPatch) -> None:
    """KServe missing: nothing can run, so `Placed` says KServeMissing (docs, "Degraded
    modes") until a reconcile applies the children; the status timer must not turn it into
    "waiting for the scheduler" between two of the reconcile's retries."""
    monkeypatch.setattr(kube, "kserve_installed", lambda: False)
    api = install(monkeypatch, _manifest("kserve"))
    with pytest.raises(kopf.TemporaryError):
        _run_reconcile(api.obj)
    before = copy.deepcopy(api.cond("Placed"))
    assert before is not None and before["reason"] == "KServeMissing"
    tick_status(api.obj)
    assert api.cond("TelemetryStale") is not None  # the tick did write
    assert api.cond("Placed") == before
    assert (api.cond("Ready") or {}).get("reason") == "KServeMissing"


def test_a_refused_spec_stands_in_ready_until_a_reconcile_applies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An edit the reconcile refuses (InvalidSpec, no retry until the next edit) with an
    earlier generation's Deployment still running: Deployment events and the timer keep
    Ready/Placed False InvalidSpec; the fixed spec's reconcile recomputes them."""
    from perllm_operator import status

    svc = _manifest("deployment")
    svc["status"] = {
        "child": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "chat-assistant"},
        "placement": {"tier": "edge", "nodes": ["edge-1"]},
    }
    api = install(monkeypatch, svc)
    ready_dep = {
        "kind": "Deployment",
        "metadata": {
            "name": "chat-assistant",
            "ownerReferences": [{"controller": True, "uid": "uid-1"}],
        },
        "spec": {"replicas": 1},
        "status": {"readyReplicas": 1},
    }
    monkeypatch.setattr(
        kube,
        "read_child",
        lambda ns, ref: (
            ready_dep if ref["kind"] == "Deployment" and ref["name"] == "chat-assistant" else None
        ),
    )
    monkeypatch.setattr(kube, "apply", lambda child: child)
    monkeypatch.setattr(kopf, "info", lambda *a, **k: None)
    bad = copy.deepcopy(api.obj)
    bad["spec"]["model"]["variants"][1]["storageUri"] = "s3://bucket/model"
    bad["metadata"]["generation"] = 2
    api.write({"spec": bad["spec"]})
    with pytest.raises(kopf.PermanentError):
        _run_reconcile(bad)
    dep_body = kopf.Body(
        {
            "metadata": {
                "name": "chat-assistant",
                "namespace": "llm",
                "labels": {"perllm.io/service": "chat-assistant"},
                "ownerReferences": [
                    {
                        "kind": "LLMService",
                        "name": "chat-assistant",
                        "uid": "uid-1",
                        "controller": True,
                    }
                ],
            }
        }
    )
    status.deployment_event(body=dep_body, type="MODIFIED", logger=logging.getLogger("test"))
    tick_status(api.obj)
    for t in ("Ready", "Placed", "Reconciled"):
        c = api.cond(t)
        assert c is not None and (c["status"], c["reason"]) == ("False", "InvalidSpec"), c
    fixed = copy.deepcopy(api.obj)
    fixed["spec"]["model"]["variants"][1]["storageUri"] = "hf://org/model"
    api.write({"spec": fixed["spec"]})
    _run_reconcile(fixed)
    assert (api.cond("Ready") or {}).get("reason") == "ReplicasReady"
    assert (api.cond("Placed") or {}).get("reason") == "Placed"
    assert (api.cond("Reconciled") or {}).get("reason") == "ChildApplied"
