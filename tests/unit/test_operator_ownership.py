"""Whose object a child's name holds (operator/perllm_operator/reconcile.py): a name held
by another owner (another LLMService's child, an object made by hand) is refused with a
condition naming the holder, never taken over; this service's own objects (an earlier
LLMService of the same name, children orphaned by a delete with --cascade=orphan) are; a
switch to backend deployment waits for KServe's Service `<name>-predictor` to go with the
InferenceService. No cluster: the API is a fake server-side apply."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from kubernetes.client.exceptions import ApiException
from perllm_operator import children, conditions, kube, reconcile, render, tiers

from tests.unit.test_operator_apply import _reconcile
from tests.unit.test_operator_refusal import RacingStatusApi, install

ROOT = Path(__file__).parents[2]
NAME = "help-desk-both-tiers"
Obj = dict[str, Any]


def _load(backend: str = "kserve", **tier_replicas: int) -> Obj:
    obj: Obj = yaml.safe_load((ROOT / "manifests" / f"{NAME}.yaml").read_text())
    obj["metadata"].update(namespace="llm", uid="uid-1", generation=1)
    obj["spec"]["backend"] = backend
    obj["spec"].pop("tierReplicas", None)
    if tier_replicas:
        obj["spec"]["tierReplicas"] = tier_replicas
    return obj


def _controller(kind: str, name: str, uid: str) -> Obj:
    api = "perllm.io/v1alpha1" if kind == "LLMService" else "serving.kserve.io/v1beta1"
    return {"apiVersion": api, "kind": kind, "name": name, "uid": uid, "controller": True}


class Cluster:
    """Server-side apply as the API server does it for the objects in `live`: the applying
    manager's fields replace its earlier ones (so its ownerReference of another LLMService
    is silently replaced), another manager's ownerReferences are kept (a list keyed by uid),
    and an object with two controllers is refused (422, as metadata validation does).
    Deleting an object deletes what it controls (the garbage collector, at `collect`)."""

    def __init__(self) -> None:
        self.live: dict[tuple[str, str], Obj] = {}
        self.applied: list[str] = []

    def put(self, obj: Obj, manager: str) -> None:
        obj = copy.deepcopy(obj)
        md = obj["metadata"]
        md.setdefault("uid", f"{obj['kind']}/{md['name']}")
        md["managedFields"] = [{"manager": manager, "operation": "Update"}]
        self.live[(obj["kind"], md["name"])] = obj

    def patch(self, *args: Any, **kw: Any) -> Obj:
        body = json.loads(json.dumps(args[-1]))
        key = (body["kind"], body["metadata"]["name"])
        old = self.live.get(key)
        refs = {r["uid"]: r for r in body["metadata"].get("ownerReferences") or []}
        if old is not None:
            managers = {m["manager"] for m in old["metadata"].get("managedFields") or []}
            if kube.FIELD_MANAGER not in managers:  # another manager's entries stay
                for r in old["metadata"].get("ownerReferences") or []:
                    refs.setdefault(r["uid"], r)
            body["metadata"]["uid"] = old["metadata"]["uid"]
        if sum(1 for r in refs.values() if r.get("controller")) > 1:
            e = ApiException(status=422, reason="Unprocessable Entity")
            cause = {
                "field": "metadata.ownerReferences",
                "message": "Only one reference can have Controller set to true",
            }
            e.body = json.dumps({"reason": "Invalid", "details": {"causes": [cause]}})
            raise e
        body["metadata"]["ownerReferences"] = list(refs.values())
        self.put(body, kube.FIELD_MANAGER)
        self.live[key]["metadata"]["managedFields"] = [
            {"manager": kube.FIELD_MANAGER, "operation": "Apply"}
        ]
        self.applied.append(f"{key[0]} {key[1]}")
        return copy.deepcopy(self.live[key])

    def read(self, ns: str, ref: Obj) -> Obj | None:
        return copy.deepcopy(self.live.get((ref["kind"], ref["name"])))

    def delete(self, ns: str, ref: Obj, uid: str) -> None:
        live = self.live.get((ref["kind"], ref["name"]))
        if live is not None and live["metadata"]["uid"] == uid:
            del self.live[(ref["kind"], ref["name"])]

    def collect(self) -> None:
        """The garbage collector: objects whose controller is gone go."""
        uids = {o["metadata"]["uid"] for o in self.live.values()}
        for key, o in list(self.live.items()):
            ctrl = [r for r in o["metadata"].get("ownerReferences") or [] if r.get("controller")]
            if ctrl and ctrl[0]["uid"] not in uids and ctrl[0]["kind"] != "LLMService":
                del self.live[key]

    def owner(self, kind: str, name: str) -> str:
        refs = self.live[(kind, name)]["metadata"].get("ownerReferences") or []
        return next(r["uid"] for r in refs if r.get("controller"))


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Cluster:
    c = Cluster()
    monkeypatch.setattr(kube, "_api", lambda kind: (c.patch, lambda o: o, ()))
    monkeypatch.setattr(kube, "kserve_installed", lambda: True)
    monkeypatch.setattr(kopf, "info", lambda *a, **k: None)
    monkeypatch.setattr(kopf, "warn", lambda *a, **k: None)
    return c


def _install(mp: pytest.MonkeyPatch, c: Cluster, obj: Obj) -> RacingStatusApi:
    api = install(mp, obj)
    mp.setattr(kube, "read_child", c.read)
    mp.setattr(kube, "delete_child", c.delete)
    return api


def _cond(api: RacingStatusApi, type_: str) -> Obj:
    cond = api.cond(type_)
    assert cond is not None, api.obj.get("status")
    return cond


def _stranger(kind: str) -> tuple[Obj, str, str]:
    """An object named like the tiered service's edge child: (object, manager, holder)."""
    if kind == "service":  # LLMService <name>-edge, untiered: its child is <name>-edge too
        other = _load()
        other["metadata"].update(name=f"{NAME}-edge", uid="uid-9")
        return render.children(other)[0], kube.FIELD_MANAGER, f"LLMService {NAME}-edge"
    made = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": f"{NAME}-edge", "namespace": "llm"},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}}}},
    }
    return made, "kubectl-client-side-apply", "made outside PerLLM"


@pytest.mark.parametrize("kind", ["service", "by-hand"])
def test_a_name_held_by_another_owner_is_refused_not_taken_over(
    monkeypatch: pytest.MonkeyPatch, cluster: Cluster, kind: str
) -> None:
    """LLMService x with tierReplicas has a child x-edge; so has an LLMService x-edge without.
    The operator's apply (one field manager for every service) replaced the other
    service's ownerReference: the child silently changed hands, and each service's
    reconcile took it back from the other. An object made by hand was overwritten."""
    stranger, manager, holder = _stranger(kind)
    cluster.put(stranger, manager)
    before = copy.deepcopy(cluster.live[("InferenceService", f"{NAME}-edge")])
    obj = _load(edge=1, cloud=1)
    api = _install(monkeypatch, cluster, obj)
    with pytest.raises(kopf.TemporaryError):
        _reconcile(obj)
    assert cluster.live[("InferenceService", f"{NAME}-edge")] == before
    cond = _cond(api, "Reconciled")
    assert (cond["status"], cond["reason"]) == ("False", "ChildConflict")
    assert f"InferenceService {NAME}-edge exists" in cond["message"]
    assert holder in cond["message"]


@pytest.mark.parametrize("how", ["orphaned", "earlier-service"])
def test_this_services_own_objects_are_taken_over(
    monkeypatch: pytest.MonkeyPatch, cluster: Cluster, how: str
) -> None:
    """Orphaned children (`kubectl delete --cascade=orphan`: no ownerReference, the
    service's label) and those of an earlier LLMService of the same name (deleted, its
    garbage not yet collected) are this service's: applied over, not refused."""
    obj = _load()
    child = render.children(obj)[0]
    if how == "orphaned":
        del child["metadata"]["ownerReferences"]
    else:
        child["metadata"]["ownerReferences"] = [_controller("LLMService", NAME, "uid-0")]
    cluster.put(child, kube.FIELD_MANAGER if how != "orphaned" else "kubectl")
    api = _install(monkeypatch, cluster, obj)
    _reconcile(obj)
    assert cluster.owner("InferenceService", NAME) == "uid-1"
    assert _cond(api, "Reconciled")["status"] == "True"


def test_a_switch_to_backend_deployment_waits_for_kserves_service(
    monkeypatch: pytest.MonkeyPatch, cluster: Cluster
) -> None:
    """KServe's RawDeployment names its Service <isvc>-predictor, as the Deployment
    backend's own: the apply of the switch was refused (two controllers) before the
    InferenceService was deleted, so every retry was refused again, for good."""
    kserve = _load()
    (isvc,) = render.children(kserve)
    cluster.put(isvc, kube.FIELD_MANAGER)
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": f"{NAME}-predictor",
            "namespace": "llm",
            "ownerReferences": [_controller("InferenceService", NAME, f"InferenceService/{NAME}")],
        },
        "spec": {"selector": {"app": f"isvc.{NAME}-predictor"}},
    }
    cluster.put(svc, "manager")  # KServe's controller
    obj = _load("deployment")
    api = _install(monkeypatch, cluster, obj)
    with pytest.raises(kopf.TemporaryError):
        _reconcile(obj)
    assert ("InferenceService", NAME) not in cluster.live
    cond = _cond(api, "Reconciled")
    assert cond["reason"] == "ChildConflict", cond
    assert f"Service {NAME}-predictor exists" in cond["message"]
    assert f"deleted InferenceService {NAME}" in cond["message"]
    cluster.collect()  # KServe's Service goes with its InferenceService
    _reconcile(obj, retry=1)
    assert cluster.owner("Service", f"{NAME}-predictor") == "uid-1"
    assert cluster.owner("Deployment", NAME) == "uid-1"
    assert _cond(api, "Reconciled")["status"] == "True"


class _Logger:
    def info(self, *a: Any) -> None: ...
    def warning(self, *a: Any) -> None: ...


def test_a_recorded_childs_name_taken_by_another_object_is_a_condition(
    monkeypatch: pytest.MonkeyPatch, cluster: Cluster
) -> None:
    """The child deleted by hand and an object of the same name made since: the status
    tick found it present, and `Ready` quoted that object's readiness as the service's,
    with nothing saying the service had no child of its own."""
    obj = _load("deployment")
    kids = render.children(obj)
    for k in kids:
        cluster.put(k, kube.FIELD_MANAGER)
    rec = [{"type": "Reconciled", "status": "True", "reason": "ChildApplied"}]
    obj["status"] = {"child": tiers.ref(kids[0]), "observedGeneration": 1, "conditions": rec}
    made = copy.deepcopy(kids[0])
    del made["metadata"]["ownerReferences"], made["metadata"]["labels"]
    made["status"] = {"readyReplicas": made["spec"]["replicas"]}
    cluster.put(made, "kubectl-create")  # ... by hand, after the child was deleted
    before = copy.deepcopy(cluster.live[("Deployment", NAME)])
    api = _install(monkeypatch, cluster, obj)
    reconcile.follow_tier(kopf.Body(obj), obj, _Logger())
    assert cluster.live[("Deployment", NAME)] == before
    cond = _cond(api, "Reconciled")
    assert (cond["status"], cond["reason"]) == ("False", "ChildConflict")
    assert (
        f"re-applying Deployment {NAME}: Deployment {NAME} exists, made outside"
        in (cond["message"])
    )
    ready = _cond(api, "Ready")  # the object's replicas are ready, but it is not the child
    assert (ready["status"], ready["reason"]) == ("False", "ChildConflict"), ready


def _ready_isvc(obj: Obj) -> Obj:
    ready = {"type": "Ready", "status": "True", "message": "serving"}
    return {**obj, "status": {"conditions": [ready]}}


@pytest.mark.parametrize("kind", ["service", "by-hand"])
def test_ready_reads_only_the_services_own_children(
    monkeypatch: pytest.MonkeyPatch, cluster: Cluster, kind: str
) -> None:
    """A recorded child's name held by another owner: `Reconciled` said ChildConflict, but
    every status write (the timer's, a Deployment event's) read that object as the
    service's child, so the service was Ready from another service's (or a hand-made)
    InferenceService. It counts as not ready, `Ready` naming the conflict."""
    obj = _load(edge=1, cloud=1)
    kids = render.children(obj)
    for k in kids:
        cluster.put(_ready_isvc(k), kube.FIELD_MANAGER)
    stranger, manager, holder = _stranger(kind)
    cluster.put(_ready_isvc(stranger), manager)  # ... after the service's edge child went
    rec = [{"type": "Reconciled", "status": "True", "reason": "ChildApplied"}]
    obj["status"] = {"children": tiers.children_status(kids), "conditions": rec}
    api = _install(monkeypatch, cluster, obj)
    assert conditions.sync_status("llm", NAME, "uid-1")
    cond = _cond(api, "Ready")
    assert (cond["status"], cond["reason"]) == ("False", "ChildConflict"), cond
    assert f"InferenceService {NAME}-edge exists" in cond["message"]
    assert holder in cond["message"]
    assert f"InferenceService {NAME}-cloud: serving" in cond["message"]  # its own: read


def test_kserve_removed_at_runtime_is_named_and_tried_again(
    monkeypatch: pytest.MonkeyPatch, cluster: Cluster
) -> None:
    """KServe's CRD deleted under a running service: its InferenceService goes with it and
    each tick's re-creation is refused 404. `Reconciled` said only "the server could not
    find the requested resource"; it names KServe now, and the next tick tries again (not
    a refusal of the spec, which would stop the ticks for good: no edit comes)."""
    obj = _load()
    kids = render.children(obj)
    rec = [{"type": "Reconciled", "status": "True", "reason": "ChildApplied"}]
    obj["status"] = {"child": tiers.ref(kids[0]), "observedGeneration": 1, "conditions": rec}
    api = _install(monkeypatch, cluster, obj)

    def gone(*a: Any, **k: Any) -> Obj:
        e = ApiException(status=404, reason="Not Found")
        e.body = json.dumps({"reason": "NotFound", "message": "the server could not find it"})
        raise e

    monkeypatch.setattr(kube, "_api", lambda kind: (gone, lambda o: o, ()))
    monkeypatch.setattr(kube, "kserve_installed", lambda: False)
    reconcile.follow_tier(kopf.Body(obj), obj, _Logger())
    cond = _cond(api, "Reconciled")
    assert cond["status"] == "False" and cond["reason"] == "ApplyNotFound"
    assert f"InferenceService {NAME}: {children.KSERVE_MISSING}" in cond["message"]
    assert not reconcile._refused(api.obj["status"])


def _refused_create(how: str) -> ApiException:
    """A create refused as the API server's NamespaceLifecycle admission refuses it (the
    cause's type is `reason` in the JSON), or by RBAC."""
    e = ApiException(status=403, reason="Forbidden")
    msg = f'deployments.apps "{NAME}" is forbidden: '
    body: Obj = {"kind": "Status", "status": "Failure", "reason": "Forbidden", "code": 403}
    if how == "rbac":
        body["message"] = msg + 'User "x" cannot create resource "deployments"'
    else:
        body["message"] = (
            msg + "unable to create new content in namespace llm because it is being terminated"
        )
        cause = {
            "reason": "NamespaceTerminating",
            "message": "namespace llm is being terminated",
            "field": "metadata.namespace",
        }
        if how == "cause":
            body["details"] = {
                "name": NAME,
                "group": "apps",
                "kind": "deployments",
                "causes": [cause],
            }
    e.body = json.dumps(body)
    return e


class _Said:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def info(self, msg: str, *a: Any) -> None:
        self.lines.append(("info", msg % a))

    def warning(self, msg: str, *a: Any) -> None:
        self.lines.append(("warning", msg % a))


@pytest.mark.parametrize("how", ["cause", "message", "rbac"])
def test_a_namespace_being_deleted_stops_the_re_creation_quietly(
    monkeypatch: pytest.MonkeyPatch, cluster: Cluster, how: str
) -> None:
    """The namespace deleted, its children gone before the LLMService: each status tick
    tried to create them again, refused 403 ("unable to create new content in namespace
    llm because it is being terminated"), a warning and an Event every tick until the
    service went too. Now one info line and `Reconciled` False `NamespaceTerminating`,
    then no more tries; any other 403 is still a retry each tick, and a warning and an
    Event the first time (each tick's were, every 30 s for as long as it lasted)."""
    obj = _load("deployment")
    kids = render.children(obj)
    rec = [{"type": "Reconciled", "status": "True", "reason": "ChildApplied"}]
    obj["status"] = {"child": tiers.ref(kids[0]), "observedGeneration": 1, "conditions": rec}
    api = _install(monkeypatch, cluster, obj)
    tries, events, said = [], [], _Said()

    def refuse(*a: Any, **k: Any) -> Obj:
        tries.append(a[-1]["metadata"]["name"])
        raise _refused_create(how)

    monkeypatch.setattr(kube, "_api", lambda kind: (refuse, lambda o: o, ()))
    monkeypatch.setattr(kopf, "warn", lambda *a, **k: events.append(k["reason"]))
    for _tick in range(3):
        reconcile.follow_tier(kopf.Body(obj), obj, said)
    cond = _cond(api, "Reconciled")
    if how == "rbac":
        assert cond["reason"] == "ApplyForbidden" and len(tries) == 3 and len(events) == 1
        assert [lvl for lvl, _ in said.lines] == ["warning"]
        return
    assert (cond["status"], cond["reason"]) == ("False", "NamespaceTerminating"), cond
    assert "namespace llm" in cond["message"] and "being terminated" in cond["message"]
    assert len(tries) == 1 and not events  # the first tick's create, then none
    assert [lvl for lvl, _ in said.lines] == ["info"]
    assert _cond(api, "Ready")["reason"] == "ChildMissing"
    # An edit's reconcile meanwhile: the same condition, no Event, no retry (kopf's
    # TemporaryError would have come back with an Event every 15 s, 30 s, ...).
    _reconcile(obj)
    assert _cond(api, "Reconciled")["reason"] == "NamespaceTerminating" and not events
