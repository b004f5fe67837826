"""Applying children (server-side apply), reporting what the API server refuses, and kopf's
bounded diffbase storage (operator/perllm_operator/kube.py, failures.py, storage.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from kubernetes.client.exceptions import ApiException
from perllm_operator import failures, kube, reconcile, render, storage

from tests.unit.test_operator_refusal import RacingStatusApi, install

ROOT = Path(__file__).parents[2]
GPU = "nvidia.com/gpu"


def _load(name: str, backend: str) -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load((ROOT / "manifests" / f"{name}.yaml").read_text())
    obj["metadata"].update(namespace="llm", uid="uid-1", generation=1)
    obj["spec"]["backend"] = backend
    return obj


def _pod_spec(child: dict[str, Any]) -> dict[str, Any]:
    if child["kind"] == "Deployment":
        spec: dict[str, Any] = child["spec"]["template"]["spec"]
        return spec
    p = dict(child["spec"]["predictor"])
    p["containers"] = [p.pop("model")]
    return p


class FakeApplyServer:
    """Server-side apply for a sole field manager: the live object becomes the applied
    configuration (a field it no longer names is removed). A merge patch would keep it."""

    def __init__(self) -> None:
        self.live: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[dict[str, Any]] = []

    def patch(self, *args: Any, **kw: Any) -> dict[str, Any]:
        body = args[-1]
        self.calls.append({"args": args[:-1], **kw})
        assert kw["_content_type"] == "application/apply-patch+yaml"
        assert kw["field_manager"] == "perllm-operator" and kw["force"] is True
        assert kw["field_validation"] == "Strict"
        obj = json.loads(json.dumps(body))
        obj["metadata"]["managedFields"] = [{"manager": "perllm-operator", "operation": "Apply"}]
        self.live[(body["kind"], body["metadata"]["name"])] = obj
        return obj


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> FakeApplyServer:
    srv = FakeApplyServer()
    monkeypatch.setattr(kube, "_api", lambda kind: (srv.patch, lambda o: o, ()))
    return srv


@pytest.mark.parametrize("backend", ["kserve", "deployment"])
def test_a_tier_switch_leaves_no_trace_of_the_other_tier(
    server: FakeApplyServer, backend: str
) -> None:
    obj = _load("chat-assistant", backend)
    for tier in ("cloud", "edge", "cloud"):
        obj["status"] = {"placement": {"tier": tier}}
        for k in render.children(obj):
            kube.apply(k)
        ps = _pod_spec(server.live[(render.children(obj)[0]["kind"], "chat-assistant")])
        text = json.dumps(ps)
        if tier == "edge":
            assert GPU not in text, text
            assert "tolerations" not in ps
        else:
            assert ps["containers"][0]["resources"]["limits"][GPU] == "1"
            assert ps["tolerations"] == [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}]
    # every call is one server-side apply of the whole rendered object
    assert all(c["force"] for c in server.calls)


def test_fields_of_an_earlier_update_manager_are_handed_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Children made by a create + merge-patch operator: its 'Update' entry is dropped
    (json patch of managedFields, guarded by the resourceVersion), then applied again."""
    calls: list[tuple[str, Any]] = []
    managed = [
        {"manager": "perllm-operator", "operation": "Update"},
        {"manager": "perllm-operator", "operation": "Apply"},
        {"manager": "kube-controller-manager", "operation": "Update"},
    ]

    def patch(*args: Any, **kw: Any) -> dict[str, Any]:
        calls.append((kw["_content_type"], args[-1]))
        if kw["_content_type"] == "application/json-patch+json":
            managed[:] = args[-1][1]["value"]
        return {"metadata": {"resourceVersion": "7", "managedFields": list(managed)}}

    monkeypatch.setattr(kube, "_api", lambda kind: (patch, lambda o: o, ()))
    child = render.children(_load("batch-summariser", "deployment"))[0]
    kube.apply(child)
    kinds = [c for c, _ in calls]
    assert kinds == [kube.APPLY, "application/json-patch+json", kube.APPLY]
    test, replace = calls[1][1]
    assert test == {"op": "test", "path": "/metadata/resourceVersion", "value": "7"}
    assert {"manager": "perllm-operator", "operation": "Update"} not in replace["value"]
    assert {"manager": "kube-controller-manager", "operation": "Update"} in replace["value"]


def test_reconcile_creates_the_account_of_gated_weights_first_and_prunes_it(
    monkeypatch: pytest.MonkeyPatch, server: FakeApplyServer
) -> None:
    """Under KServe, gated hf:// weights: the ServiceAccount <name>-model is applied before
    the InferenceService (a pod naming a missing account is refused), and deleted once
    the service no longer needs it (token removed here; a backend switch alike)."""
    install(monkeypatch, _load("chat-assistant", "kserve"))
    monkeypatch.setattr(kube, "kserve_installed", lambda: True)
    monkeypatch.setattr(kopf, "info", lambda *a, **k: None)
    deleted: list[tuple[str, str, str]] = []

    def read(ns: str, ref: dict[str, Any]) -> dict[str, Any] | None:
        live = server.live.get((ref["kind"], ref["name"]))
        return None if live is None else {**live, "metadata": {**live["metadata"], "uid": "u"}}

    def delete(ns: str, ref: dict[str, Any], uid: str) -> None:
        deleted.append((ref["kind"], ref["name"], uid))
        del server.live[(ref["kind"], ref["name"])]

    monkeypatch.setattr(kube, "read_child", read)
    monkeypatch.setattr(kube, "delete_child", delete)
    _reconcile(_load("chat-assistant", "kserve"))
    assert [c["args"][0] for c in server.calls] == ["chat-assistant-model", "chat-assistant"]
    sa = server.live[("ServiceAccount", "chat-assistant-model")]
    assert sa["secrets"] == [{"name": "hf-token"}]
    assert deleted == []
    obj = _load("chat-assistant", "kserve")
    del obj["spec"]["model"]["tokenSecretRef"]
    _reconcile(obj)
    assert deleted == [("ServiceAccount", "chat-assistant-model", "u")]
    assert ("InferenceService", "chat-assistant") in server.live


# ---- what the API server refuses is a condition and an Event naming the field -------------

STATUS_422 = {
    "kind": "Status",
    "status": "Failure",
    "reason": "Invalid",
    "message": 'InferenceService.serving.kserve.io "x" is invalid: ...',
    "details": {
        "causes": [
            {
                "reason": "FieldValueInvalid",
                "message": "Invalid value: 0: must be greater than or equal to 1",
                "field": "spec.predictor.model.resources.limits",
            }
        ]
    },
}


def _reconcile(obj: dict[str, Any], retry: int = 0, patch: kopf.Patch | None = None) -> kopf.Patch:
    """One reconcile call as kopf makes it; pass `patch` to read it after a raise."""
    patch = kopf.Patch() if patch is None else patch
    body = kopf.Body(obj)
    reconcile.reconcile(
        body=body,
        spec=kopf.Spec(body),
        meta=kopf.Meta(body),
        status=kopf.Status(body),
        patch=patch,
        logger=_Logger(),
        retry=retry,
    )
    return patch


class _Logger:
    def info(self, *a: Any) -> None: ...
    def warning(self, *a: Any) -> None: ...
    def exception(self, *a: Any) -> None: ...


def _api_error(status: int, body: dict[str, Any]) -> ApiException:
    e = ApiException(status=status, reason="Unprocessable Entity")
    e.body = json.dumps(body)
    return e


def _cond(api: RacingStatusApi, type_: str) -> dict[str, Any]:
    cond = api.cond(type_)
    assert cond is not None, api.obj.get("status")
    return cond


def test_a_refused_child_names_the_field_and_backs_off(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[tuple[str, str]] = []
    install(monkeypatch, _load("chat-assistant", "kserve"))
    monkeypatch.setattr(kube, "kserve_installed", lambda: True)
    monkeypatch.setattr(
        kopf, "warn", lambda body, *, reason, message: events.append((reason, message))
    )

    def refuse(child: dict[str, Any]) -> dict[str, Any]:
        if child["kind"] != "InferenceService":  # its ServiceAccount of gated weights
            return child
        raise _api_error(422, STATUS_422)

    monkeypatch.setattr(kube, "apply", refuse)
    delays = []
    for retry in range(3):
        with pytest.raises(kopf.TemporaryError) as info:
            _reconcile(_load("chat-assistant", "kserve"), retry)
        delays.append(info.value.delay)
    assert delays == [15.0, 30.0, 60.0]
    assert failures.backoff(20) == failures.MAX_DELAY_S
    reason, msg = events[-1]
    assert reason == "ApplyInvalid"
    assert "InferenceService chat-assistant" in msg
    assert "spec.predictor.model.resources.limits: Invalid value: 0" in msg
    assert "422" in msg


def test_the_refusal_is_the_reconciled_condition(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kube, "kserve_installed", lambda: True)
    monkeypatch.setattr(kopf, "warn", lambda body, *, reason, message: None)
    monkeypatch.setattr(kube, "apply", lambda c: (_ for _ in ()).throw(_api_error(422, STATUS_422)))
    api = install(monkeypatch, _load("chat-assistant", "kserve"))
    patch = kopf.Patch()
    with pytest.raises(kopf.TemporaryError):
        _reconcile(_load("chat-assistant", "kserve"), patch=patch)
    assert "status" not in patch  # written fresh, guarded by the resourceVersion
    cond = _cond(api, "Reconciled")
    assert cond["status"] == "False"
    assert cond["reason"] == "ApplyInvalid"
    assert "spec.predictor.model.resources.limits" in cond["message"]


def test_an_unexpected_exception_is_a_condition_not_a_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[str] = []
    monkeypatch.setattr(kube, "kserve_installed", lambda: True)
    monkeypatch.setattr(kopf, "warn", lambda body, *, reason, message: events.append(reason))
    monkeypatch.setattr(kube, "apply", lambda c: {}["boom"])
    api = install(monkeypatch, _load("chat-assistant", "kserve"))
    patch = kopf.Patch()
    with pytest.raises(kopf.TemporaryError) as info:
        _reconcile(_load("chat-assistant", "kserve"), retry=1, patch=patch)
    assert info.value.delay == 30.0
    cond = _cond(api, "Reconciled")
    assert cond["reason"] == "InternalError" and "KeyError" in cond["message"]
    assert events == ["InternalError"]


def test_an_unanswered_apply_is_a_condition_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An API server that did not answer the apply (urllib3's timeout) was an
    InternalError, logged with a traceback on every retry: it is no bug of the operator."""
    import urllib3.exceptions

    def no_answer(c: object) -> None:
        raise urllib3.exceptions.ReadTimeoutError(None, "/apis", "Read timed out.")  # type: ignore[arg-type]

    events: list[str] = []
    monkeypatch.setattr(kube, "kserve_installed", lambda: True)
    monkeypatch.setattr(kopf, "warn", lambda body, *, reason, message: events.append(reason))
    monkeypatch.setattr(kube, "apply", no_answer)
    api = install(monkeypatch, _load("chat-assistant", "kserve"))
    with caplog.at_level(logging.DEBUG), pytest.raises(kopf.TemporaryError):
        _reconcile(_load("chat-assistant", "kserve"), retry=1, patch=kopf.Patch())
    cond = _cond(api, "Reconciled")
    assert cond["reason"] == "ApplyFailed" and events == ["ApplyFailed"]
    assert "no answer from the API server (ReadTimeoutError" in cond["message"]
    assert not [r for r in caplog.records if r.exc_info]


def test_a_status_without_causes_still_says_what_and_is_bounded() -> None:
    reason, msg = failures.api_failure(
        _api_error(403, {"reason": "Forbidden", "message": "x" * 5000}), "Deployment d"
    )
    assert reason == "ApplyForbidden" and msg.startswith("Deployment d: the API server refused")
    assert len(msg) <= failures.MAX_MESSAGE
    reason, msg = failures.api_failure(
        ApiException(status=500, reason="Internal Server Error"), "S"
    )
    assert reason == "ApplyInternalServerError" and "S:" in msg


def test_a_model_outside_the_catalogue_is_its_own_condition() -> None:
    ok, reason, msg = failures.model_known("llama3-8b")
    assert ok and reason == "ModelInCatalogue"
    ok, reason, msg = failures.model_known("my-finetune")
    assert not ok and reason == "ModelNotInCatalogue"
    assert "spec.model.name 'my-finetune'" in msg and "llama3-8b" in msg
    from perllm_operator import observe

    placed = observe.placed(None, [{"spec": {"nodeName": "edge-1"}}], model_known=False)
    assert placed[0] is False and placed[1] == "ModelNotInCatalogue"
    assert "extender not running" not in placed[2]


# ---- kopf's diffbase: a hash, bounded whatever the spec ---------------------------------


def _body(spec: dict[str, Any], ann: dict[str, str] | None = None) -> kopf.Body:
    return kopf.Body(
        {
            "apiVersion": "perllm.io/v1alpha1",
            "kind": "LLMService",
            "metadata": {"name": "x", "namespace": "n", "annotations": dict(ann or {})},
            "spec": spec,
        }
    )


def test_the_diffbase_is_a_bounded_hash() -> None:
    st = storage.HashDiffBaseStorage()
    big = {"model": {"name": "m" * 200_000}}
    legacy = {"perllm.io/last-handled-configuration": json.dumps({"spec": big})}
    body = _body(big, legacy)
    assert st.fetch(body=body) is None  # never handled: kopf's creation
    patch = kopf.Patch()
    st.store(body=body, patch=patch, essence=st.build(body=body))
    ann = patch["metadata"]["annotations"]
    stored = ann["perllm.io/last-handled-hash"]
    assert stored.startswith("sha256:") and len(stored) == len("sha256:") + 64
    assert ann["perllm.io/last-handled-configuration"] is None  # the old full copy goes
    same = _body(big, {"perllm.io/last-handled-hash": stored})
    assert st.fetch(body=same) == st.build(body=same)  # unchanged: no diff
    edited = _body({"model": {"name": "other"}}, {"perllm.io/last-handled-hash": stored})
    assert st.fetch(body=edited) == {}  # changed: kopf runs the update handlers
