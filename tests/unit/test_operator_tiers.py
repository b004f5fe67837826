"""Replicas on both tiers (`spec.tierReplicas`): one child per tier, pinned from the start;
no tier following or tier switch; a dropped tier's child deleted; status over all children;
status writes that keep other writers' keys and conditions (operator/perllm_operator/
tiers.py, render.py, reconcile.py, conditions.py; no cluster: the API calls are fakes)."""

from __future__ import annotations

import collections
import copy
import json
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from fake_kube import FakeStatusApi, pod_of
from kubernetes.client.exceptions import ApiException
from perllm_operator import (
    children,
    conditions,
    kube,
    observe,
    pinning,
    reconcile,
    render,
    replacement,
    tiers,
)
from perllm_operator.config import Config
from perllm_operator.policy import Point, ReplacementPolicy
from perllm_operator.state import State

from perllm.crd import InvalidService, service_spec
from tests.unit.test_operator_status import FakeCluster, FakeProm

ROOT = Path(__file__).parents[2]
GPU = "nvidia.com/gpu"
EXAMPLE = "help-desk-both-tiers"
# A live child's: controlled by the LLMService of `_load` (else the apply refuses it).
OWNED: dict[str, Any] = {"ownerReferences": [{"controller": True, "uid": "uid-1"}]}


def _load(backend: str = "kserve", **tier_replicas: int) -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load((ROOT / "manifests" / f"{EXAMPLE}.yaml").read_text())
    obj["metadata"].update(namespace="llm", uid="uid-1", generation=1)
    obj["spec"]["backend"] = backend
    if tier_replicas:
        obj["spec"]["tierReplicas"] = tier_replicas
    return obj


def _affinity(pod_spec: dict[str, Any]) -> list[str]:
    terms = pod_spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    values: list[str] = terms["nodeSelectorTerms"][0]["matchExpressions"][0]["values"]
    return values


# ---- rendering ------------------------------------------------------------------------------
def test_one_inference_service_per_tier_each_pinned_to_its_variant() -> None:
    obj = _load(edge=2, cloud=1)
    obj["status"] = {"placement": {"tier": "cloud"}}  # a decision never re-pins a child
    edge, cloud = render.children(obj)
    assert [edge["metadata"]["name"], cloud["metadata"]["name"]] == [
        f"{EXAMPLE}-edge",
        f"{EXAMPLE}-cloud",
    ]
    for child, tier in ((edge, "edge"), (cloud, "cloud")):
        meta, p = child["metadata"], child["spec"]["predictor"]
        want = {"perllm.io/service": EXAMPLE, "perllm.io/child-tier": tier}
        assert meta["labels"] == want and p["labels"] == want
        assert meta["annotations"]["perllm.io/pinned-tier"] == tier
        assert meta["annotations"]["perllm.io/variant-tier"] == tier
        assert p["annotations"]["perllm.io/variant-tier"] == tier
        assert _affinity(p) == [tier]
        assert meta["ownerReferences"][0]["uid"] == "uid-1"
    pe, pc = edge["spec"]["predictor"], cloud["spec"]["predictor"]
    assert (pe["minReplicas"], pc["minReplicas"]) == (2, 1)
    assert pe["annotations"]["perllm.io/precision"] == "q4_k_m"
    assert pe["model"]["runtime"] == "perllm-llamacpp" and GPU not in json.dumps(pe)
    assert "tolerations" not in pe  # the edge child never tolerates the GPU taint
    assert pc["annotations"]["perllm.io/precision"] == "fp16"
    assert pc["model"]["runtime"] == "perllm-vllm"
    assert pc["model"]["resources"]["limits"][GPU] == "1"
    assert pc["tolerations"][0]["key"] == GPU


def test_deployment_backend_one_deployment_per_tier_behind_one_service() -> None:
    kids = render.children(_load("deployment", edge=1, cloud=3))
    assert [(k["kind"], k["metadata"]["name"]) for k in kids] == [
        ("Deployment", f"{EXAMPLE}-edge"),
        ("Deployment", f"{EXAMPLE}-cloud"),
        ("Service", f"{EXAMPLE}-predictor"),
    ]
    edge, cloud, svc = kids
    for dep, tier, n in ((edge, "edge", 1), (cloud, "cloud", 3)):
        labels = {"perllm.io/service": EXAMPLE, "perllm.io/child-tier": tier}
        # the two Deployments never select each other's pods
        assert dep["spec"]["selector"]["matchLabels"] == labels
        assert dep["spec"]["template"]["metadata"]["labels"] == labels
        assert dep["spec"]["replicas"] == n
        assert _affinity(dep["spec"]["template"]["spec"]) == [tier]
    assert edge["spec"]["template"]["spec"]["containers"][0]["image"].endswith("server-b8840")
    assert "tolerations" not in edge["spec"]["template"]["spec"]
    assert cloud["spec"]["template"]["spec"]["containers"][0]["image"].startswith("vllm/")
    # one endpoint in front of both tiers; the router's discovery selects the same label
    assert svc["spec"]["selector"] == {"perllm.io/service": EXAMPLE}


def test_a_tier_with_no_replicas_has_no_child_and_replicas_is_not_used() -> None:
    obj = _load(edge=0, cloud=2)
    obj["spec"]["replicas"] = 7
    (cloud,) = render.children(obj)
    assert cloud["metadata"]["name"] == f"{EXAMPLE}-cloud"
    assert cloud["spec"]["predictor"]["minReplicas"] == 2


def test_without_tier_replicas_one_open_child_as_before() -> None:
    obj = _load()
    del obj["spec"]["tierReplicas"]
    (isvc,) = render.children(obj)
    assert isvc["metadata"]["name"] == EXAMPLE
    assert isvc["metadata"]["labels"] == {"perllm.io/service": EXAMPLE}
    assert isvc["metadata"]["annotations"]["perllm.io/pinned-tier"] == "open"
    assert _affinity(isvc["spec"]["predictor"]) == ["edge", "cloud"]
    assert tiers.parts(obj) == [tiers.Part(None, EXAMPLE, 1)]


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda s: s.update(allowedTiers=["cloud"]), "spec.tierReplicas: tier(s) ['edge']"),
        (lambda s: s.update(tierReplicas={"edge": 0}), "at least one tier needs a replica"),
        (lambda s: s.update(tierReplicas={"cloud": -1}), "spec.tierReplicas.cloud"),
        (lambda s: s.update(tierReplicas={"moon": 1}), "spec.tierReplicas.moon"),
        (lambda s: s.update(tierReplicas="both"), "spec.tierReplicas: must be an object"),
    ],
)
def test_a_bad_tier_replicas_is_refused_naming_the_field(edit: Any, field: str) -> None:
    obj = _load()
    edit(obj["spec"])
    with pytest.raises(InvalidService) as info:
        render.children(obj)
    assert field in str(info.value)


def test_children_status_records_tier_child_and_replicas() -> None:
    kids = render.children(_load("deployment", edge=1, cloud=2))
    assert tiers.children_status(kids) == [
        {
            "tier": "edge",
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": f"{EXAMPLE}-edge",
            "replicas": 1,
        },
        {
            "tier": "cloud",
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": f"{EXAMPLE}-cloud",
            "replicas": 2,
        },
    ]
    (edge,) = tiers.children_status(render.children(_load(edge=1, cloud=0)))
    assert edge["kind"] == "InferenceService" and edge["replicas"] == 1


# ---- the extender's decision for one tier never re-pins the other ----------------------------
class _Logger:
    def info(self, *a: Any) -> None: ...
    def warning(self, *a: Any) -> None: ...


def test_follow_tier_never_re_renders_a_tiered_service(monkeypatch: pytest.MonkeyPatch) -> None:
    obj = _load(edge=1, cloud=1)
    obj["status"] = {
        "children": tiers.children_status(render.children(obj)),
        "placement": {"tier": "cloud", "nodes": ["cloud-0", "edge-0"]},
        "replacement": {"tier": {"target": "edge"}},
        "conditions": [{"type": "Reconciled", "status": "True", "reason": "ChildApplied"}],
    }
    calls: list[str] = []

    class CO:
        def get_namespaced_custom_object(self, *a: Any, **_: Any) -> dict[str, Any]:
            calls.append("get")
            return copy.deepcopy(obj)

    pinned = {"metadata": {"annotations": {"perllm.io/pinned-tier": "cloud"}, **OWNED}}
    monkeypatch.setattr(kube.kubernetes.client, "CustomObjectsApi", CO)
    monkeypatch.setattr(kube, "read_child", lambda ns, ref: pinned)
    monkeypatch.setattr(kube, "apply", lambda child: calls.append("apply"))
    reconcile.follow_tier(kopf.Body(obj), obj, _Logger())
    assert calls == ["get"]  # both children there: nothing re-rendered
    # The timer's view may be older than the switch to tiers: the fresh read decides.
    old = copy.deepcopy(obj)
    del old["spec"]["tierReplicas"]
    obj["status"]["child"] = {"apiVersion": "x", "kind": "InferenceService", "name": EXAMPLE}
    calls.clear()
    reconcile.follow_tier(kopf.Body(old), old, _Logger())
    assert calls == ["get"]


def test_a_child_deleted_by_hand_is_created_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each tier's child is re-applied once gone (kopf reconciles only on an edit, so
    `Ready` said ChildMissing for good); not while the reconcile refuses the spec."""
    obj = _load(edge=1, cloud=1)
    kids = render.children(obj)
    obj["status"] = {
        "children": tiers.children_status(kids),
        "conditions": [{"type": "Reconciled", "status": "True", "reason": "ChildApplied"}],
    }
    gone = tiers.children_status(kids)[1]["name"]
    applied: list[str] = []
    events: list[tuple[str, str]] = []
    synced: list[Any] = []

    class CO:
        def get_namespaced_custom_object(self, *a: Any, **_: Any) -> dict[str, Any]:
            return copy.deepcopy(obj)

    monkeypatch.setattr(kube.kubernetes.client, "CustomObjectsApi", CO)
    monkeypatch.setattr(
        kube, "read_child", lambda ns, ref: None if ref["name"] == gone else {"metadata": OWNED}
    )
    monkeypatch.setattr(kube, "apply", lambda child: applied.append(child["metadata"]["name"]))
    monkeypatch.setattr(reconcile, "try_sync_status", lambda *a, **k: synced.append(k))
    monkeypatch.setattr(
        kopf, "info", lambda body, *, reason, message: events.append((reason, message))
    )
    reconcile.follow_tier(kopf.Body(obj), obj, _Logger())
    assert sorted(applied) == sorted(k["metadata"]["name"] for k in kids)
    ((reason, message),) = events
    assert reason == "ChildRecreated" and gone in message
    assert synced[-1]["reconciled"][0] == "ChildApplied"
    # while the spec is refused, the reconcile's own retries (or the next edit) decide
    applied.clear()
    refused = {"type": "Reconciled", "status": "False", "reason": "KServeMissing"}
    obj["status"]["conditions"] = [refused]
    reconcile.follow_tier(kopf.Body(obj), obj, _Logger())
    assert applied == []
    # a failed re-creation (an API error) is tried again at the next tick
    obj["status"]["conditions"] = [{**refused, "reason": "Forbidden"}]
    reconcile.follow_tier(kopf.Body(obj), obj, _Logger())
    assert applied
    # a service being deleted: its children go with it (a foreground deletion removes
    # them first), none is created again by a tick that started before
    applied.clear()
    obj["status"]["conditions"] = []
    obj["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    reconcile.follow_tier(kopf.Body(obj), obj, _Logger())
    assert applied == []


def test_replacement_evicts_within_a_tier_and_never_switches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    obj = _load(edge=1, cloud=1)
    st = {"replacement": {"evictionsSinceRecovery": 5}, "placement": {"tier": "cloud"}}
    pod = {
        "metadata": {"name": f"{EXAMPLE}-cloud-x", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"nodeName": "cloud-0"},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }
    evicted: list[str] = []
    monkeypatch.setattr(kube, "evict", lambda ns, name: evicted.append(name))
    monkeypatch.setattr(kopf, "warn", lambda *a, **k: None)
    monkeypatch.setattr(kopf, "info", lambda *a, **k: None)
    pol = ReplacementPolicy(window_s=0, min_ticks=1, cooldown_s=0, escalate_after=2)
    reading = observe.ServiceReading(at=10, reachable=True, attainment=0.1)
    hist = collections.deque([Point(10, 0.1)])
    t = replacement.Tick(
        kopf.Body(obj), "llm", EXAMPLE, service_spec(obj), st, [pod], reading, hist, 10.0,
        _Logger(),  # type: ignore[arg-type]
    )  # fmt: skip
    rep = replacement.replacement(t, pol)
    assert rep["state"] == "Evicted" and "tier" not in rep
    assert evicted == [f"{EXAMPLE}-cloud-x"]


def test_the_timer_reports_placed_per_tier(monkeypatch: pytest.MonkeyPatch) -> None:
    obj = _load(edge=1, cloud=1)
    obj["status"] = {
        "children": tiers.children_status(render.children(obj)),
        "placement": {"tier": "edge", "nodes": ["edge-1"], "feasible": True},
    }
    fc = FakeCluster(obj, [_pod("edge", "edge-1"), _pod("cloud", None)])
    fc.install(monkeypatch)
    fc.tick(State(Config(), FakeProm({})))
    placed = fc.cond("Placed")
    assert (placed["status"], placed["reason"]) == ("Unknown", "WaitingForScheduler")
    assert "cloud on no node yet" in placed["message"]
    fc.pods[1]["spec"]["nodeName"] = "cloud"
    fc.tick(State(Config(), FakeProm({})))
    assert fc.cond("Placed")["status"] == "True"
    assert fc.cond("Placed")["message"].startswith("edge on edge-1; cloud on cloud;")


# ---- a tier dropped from tierReplicas, or a mode switch: its child is deleted ----------------
class FakeChildren:
    """Live children by (kind, name), read and deleted as kube.read_child/delete_child do."""

    def __init__(self, kids: list[dict[str, Any]]) -> None:
        self.live = {(k["kind"], k["metadata"]["name"]): copy.deepcopy(k) for k in kids}
        for i, k in enumerate(self.live.values()):
            k["metadata"]["uid"] = f"child-{i}"
        self.deleted: list[tuple[str, str, str]] = []

    def install(self, mp: pytest.MonkeyPatch) -> None:
        mp.setattr(kube, "read_child", lambda ns, ref: self.live.get((ref["kind"], ref["name"])))

        def delete(ns: str, ref: dict[str, Any], uid: str) -> None:
            self.deleted.append((ref["kind"], ref["name"], uid))
            del self.live[(ref["kind"], ref["name"])]

        mp.setattr(kube, "delete_child", delete)


def test_a_dropped_tier_or_mode_switch_deletes_only_this_services_stale_children(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    both = _load("deployment", edge=1, cloud=1)
    fake = FakeChildren(render.children(both))
    stranger = render.deployment(_load("deployment"))
    stranger["metadata"]["name"] = EXAMPLE  # same name, another owner: never deleted
    stranger["metadata"]["ownerReferences"][0]["uid"] = "someone-else"
    fake.live[("Deployment", EXAMPLE)] = stranger
    fake.install(monkeypatch)
    cloud_only = _load("deployment", edge=0, cloud=1)
    assert children.prune(cloud_only, render.children(cloud_only)) == [f"Deployment {EXAMPLE}-edge"]
    assert fake.deleted == [("Deployment", f"{EXAMPLE}-edge", "child-0")]
    # Back to one child: the tiered children go; the Service is kept (both modes render it).
    single = _load("deployment")
    del single["spec"]["tierReplicas"]
    fake.live.pop(("Deployment", EXAMPLE))
    assert children.prune(single, render.children(single)) == [f"Deployment {EXAMPLE}-cloud"]
    assert ("Service", f"{EXAMPLE}-predictor") in fake.live


def test_a_refused_delete_is_a_failure_naming_the_child(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeChildren(render.children(_load(edge=1, cloud=1)))
    fake.install(monkeypatch)

    def refuse(ns: str, ref: dict[str, Any], uid: str) -> None:
        raise ApiException(status=403, reason="Forbidden")

    monkeypatch.setattr(kube, "delete_child", refuse)
    obj = _load(edge=1, cloud=0)
    with pytest.raises(children.Failed) as info:
        children.prune(obj, render.children(obj))
    assert info.value.reason == "ApplyForbidden"
    assert f"deleting InferenceService {EXAMPLE}-cloud" in info.value.message


# ---- status over all children, and other writers' keys kept ----------------------------------
def _pod(tier: str, node: str | None, backend: str = "kserve") -> dict[str, Any]:
    """A pod of the tier's child (KServe's Deployment `<child>-predictor`, or the child)."""
    meta = pod_of(f"{EXAMPLE}-{tier}" + ("-predictor" if backend == "kserve" else ""))
    meta["labels"].update({"perllm.io/service": EXAMPLE, "perllm.io/child-tier": tier})
    return {"metadata": meta, "spec": {"nodeName": node} if node else {}}


def test_placed_waits_for_every_tier_then_quotes_the_latest_decision() -> None:
    tiers_ = ["edge", "cloud"]
    dec = {"tier": "cloud", "nodes": ["cloud-0", "edge-1"], "feasible": True}
    ok, reason, msg = observe.placed(
        dec, [_pod("edge", "edge-1"), _pod("cloud", None)], True, tiers_
    )
    assert (ok, reason) == (None, "WaitingForScheduler")
    assert "edge on edge-1; cloud on no node yet" in msg
    pods = [_pod("edge", "edge-1"), _pod("cloud", "cloud-0")]
    ok, reason, msg = observe.placed(None, pods, True, tiers_)
    assert (ok, reason) == (None, "NoDecisionPublished")
    ok, reason, msg = observe.placed(dec, pods, True, tiers_)
    assert (ok, reason) == (True, "Placed")
    assert msg.startswith("edge on edge-1; cloud on cloud-0; latest decision: tier cloud")
    # the extender refuses a model outside its catalogue, whichever the tier
    assert observe.placed(None, pods, False, tiers_)[1] == "ModelNotInCatalogue"


def test_ready_only_when_every_child_is() -> None:
    up = (True, "ReplicasReady", "Deployment a: 1/1 replicas ready")
    down = (False, "ReplicasNotReady", "Deployment b: 0/1 replicas ready")
    pending = (None, "Pending", "InferenceService c: no Ready condition yet")
    assert observe.all_of([up]) == up
    assert observe.all_of([up, up])[0] is True
    assert observe.all_of([up, pending])[:2] == (None, "Pending")
    ok, reason, msg = observe.all_of([pending, down, up])
    assert (ok, reason) == (False, "ReplicasNotReady") and "Deployment a" in msg


def _status_api(mp: pytest.MonkeyPatch, obj: dict[str, Any], live: dict[str, Any]) -> FakeStatusApi:
    api = FakeStatusApi(obj)
    mp.setattr(kube.kubernetes.client, "CustomObjectsApi", lambda: api)
    mp.setattr(kube, "read_child", lambda ns, ref: live.get(ref["name"]))
    pods = [_pod(t, n, "deployment") for t, n in (("edge", "edge-1"), ("cloud", "cloud-0"))]
    mp.setattr(kube, "pods", lambda ns, name: pods)
    return api


def _dep(name: str, ready: int) -> dict[str, Any]:
    return {
        "kind": "Deployment",
        "metadata": {"name": name, **OWNED},
        "spec": {"replicas": 1},
        "status": {"readyReplicas": ready},
    }


def test_status_writes_keep_routing_and_foreign_conditions(monkeypatch: pytest.MonkeyPatch) -> None:
    obj = _load("deployment", edge=1, cloud=1)
    routing = {"tiers": {"edge": {"requests": 3, "share": 0.75}}, "at": "2026-01-01T00:00:00Z"}
    foreign = {"type": "Routed", "status": "True", "reason": "Router", "message": "x"}
    obj["status"] = {
        "child": {"apiVersion": "apps/v1", "kind": "Deployment", "name": EXAMPLE},
        "routing": routing,
        "placement": {"tier": "edge", "nodes": ["cloud-0", "edge-1"]},
        "conditions": [foreign],
    }
    live = {f"{EXAMPLE}-edge": _dep(f"{EXAMPLE}-edge", 1), f"{EXAMPLE}-cloud": _dep("c", 0)}
    api = _status_api(monkeypatch, obj, live)
    kids = tiers.children_status(render.children(obj))
    assert conditions.sync_status("llm", EXAMPLE, "uid-1", children=kids, generation=1)
    st = api.obj["status"]
    assert "child" not in st and st["children"] == kids  # the single child's record goes
    assert st["routing"] == routing and st["placement"]["tier"] == "edge"
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Routed"] == foreign
    assert conds["Ready"]["status"] == "False" and "0/1" in conds["Ready"]["message"]
    assert conds["Placed"]["status"] == "True"
    # A write without children (the Deployment event, the timer) reads all of them again.
    live[f"{EXAMPLE}-cloud"] = _dep("c", 1)
    assert conditions.sync_status(
        "llm", EXAMPLE, "uid-1", conditions={"Degraded": (False, "NoErrors", "ok")}
    )
    st = api.obj["status"]
    assert {c["type"]: c for c in st["conditions"]}["Ready"]["status"] == "True"
    assert st["routing"] == routing and {c["type"] for c in st["conditions"]} >= {"Routed"}
    assert all(
        set(p["status"]) <= {"conditions", "child", "children", "observedGeneration"}
        for p in api.patches
    )


def _record(obj: dict[str, Any], tiered: bool) -> None:
    """`obj`'s status as the reconcile leaves it: its children recorded, Reconciled."""
    kids = render.children(obj)
    rec = [{"type": "Reconciled", "status": "True", "reason": "ChildApplied"}]
    if tiered:
        obj["status"] = {"children": tiers.children_status(kids), "conditions": rec}
    else:
        obj["status"] = {"child": tiers.ref(kids[0]), "conditions": rec}


def _tick(
    mp: pytest.MonkeyPatch, obj: dict[str, Any], gone: str, tier: str
) -> tuple[list[str], list[tuple[str, str]]]:
    """One status tick (`follow_tier`) of `obj`, its child `gone` deleted and every other
    one live and pinned to `tier`: the names of the children applied, the Events said."""
    applied: list[str] = []
    events: list[tuple[str, str]] = []

    class CO:
        def get_namespaced_custom_object(self, *a: Any, **_: Any) -> dict[str, Any]:
            return copy.deepcopy(obj)

    pin = {"metadata": {"annotations": {"perllm.io/pinned-tier": tier}, **OWNED}}
    mp.setattr(kube.kubernetes.client, "CustomObjectsApi", CO)
    mp.setattr(kube, "read_child", lambda ns, ref: None if ref["name"] == gone else pin)
    mp.setattr(kube, "apply", lambda child: applied.append(child["metadata"]["name"]))
    mp.setattr(reconcile, "try_sync_status", lambda *a, **k: True)
    mp.setattr(kopf, "info", lambda body, *, reason, message: events.append((reason, message)))
    reconcile.follow_tier(kopf.Body(obj), obj, _Logger())
    return applied, events


@pytest.mark.parametrize("tiered", [False, True])
def test_a_service_deleted_by_hand_is_created_again(
    monkeypatch: pytest.MonkeyPatch, tiered: bool
) -> None:
    """The Deployment backend's `<name>-predictor` Service deleted by hand: the status
    records only the Deployments, so the tick never noticed it, `Ready` stayed True and
    the endpoint was gone until the next edit of the spec."""
    obj = _load(edge=1, cloud=1) if tiered else _load()
    obj["spec"]["backend"] = "deployment"
    _record(obj, tiered)
    gone = render.service_name(obj)
    applied, events = _tick(monkeypatch, obj, gone, pinning.pin(obj))
    assert gone in applied
    assert events == [("ChildRecreated", f"re-created Service {gone} (deleted outside PerLLM)")]


@pytest.mark.parametrize("recorded", [True, False])
def test_a_tier_dropped_by_an_edit_is_not_taken_for_a_child_deleted_by_hand(
    monkeypatch: pytest.MonkeyPatch, recorded: bool
) -> None:
    """`tierReplicas.edge` removed: the reconcile prunes `<name>-edge`, then records the
    cloud child alone. A status tick in between read the old record, found the edge
    Deployment gone and said "re-created Deployment <name>-edge (deleted outside PerLLM)"
    (an Event and the Reconciled message; fresh-clone CI failed on it). Now the tick
    waits while the record is of an older generation, and names only what the spec
    still renders."""
    old = _load("deployment", edge=1, cloud=1)
    record = tiers.children_status(render.children(old))
    obj = _load("deployment", cloud=1)
    obj["metadata"]["generation"] = 2
    rec = [{"type": "Reconciled", "status": "True", "reason": "ChildApplied"}]
    obj["status"] = {"children": record, "conditions": rec}
    if recorded:  # the record is generation 1's: the edit's reconcile is under way
        obj["status"]["observedGeneration"] = 1
    edge = f"{obj['metadata']['name']}-edge"
    applied, events = _tick(monkeypatch, obj, edge, "cloud")
    assert edge not in applied and not any(edge in m for _, m in events), events


def _gated(**tier_replicas: int) -> dict[str, Any]:
    """manifests/chat-assistant.yaml: gated hf:// weights on the cloud tier, under KServe."""
    obj: dict[str, Any] = yaml.safe_load((ROOT / "manifests" / "chat-assistant.yaml").read_text())
    obj["metadata"].update(namespace="llm", uid="uid-1", generation=1)
    if tier_replicas:
        obj["spec"]["tierReplicas"] = tier_replicas
    return obj


@pytest.mark.parametrize("tiered", [False, True])
def test_the_account_of_gated_weights_deleted_by_hand_is_created_again(
    monkeypatch: pytest.MonkeyPatch, tiered: bool
) -> None:
    """Not recorded in the status, the ServiceAccount KServe fetches gated weights as was
    never noticed gone: no new pod could be created (no such account) until an edit."""
    obj = _gated(edge=1, cloud=1) if tiered else _gated()
    _record(obj, tiered)
    gone = render.model_account_name(obj)
    applied, events = _tick(monkeypatch, obj, gone, pinning.pin(obj))
    assert applied[0] == gone  # before the pods' children
    assert events == [
        ("ChildRecreated", f"re-created ServiceAccount {gone} (deleted outside PerLLM)")
    ]


def test_the_account_of_gated_weights_goes_when_no_longer_needed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Token removed or backend deployment: the ServiceAccount is deleted, if this service
    controls it; one of the same name that another owner holds is left alone."""
    obj = _gated()
    fake = FakeChildren(render.children(obj))
    fake.install(monkeypatch)
    sa = ("ServiceAccount", "chat-assistant-model")
    assert sa in fake.live and children.prune(obj, render.children(obj)) == []
    to_deployment = copy.deepcopy(obj)
    to_deployment["spec"]["backend"] = "deployment"
    kids = render.children(to_deployment)
    assert children.prune(to_deployment, kids) == [
        "InferenceService chat-assistant",
        "ServiceAccount chat-assistant-model",
    ]
    assert fake.deleted[-1] == (*sa, "child-1")
    stranger = copy.deepcopy(render.children(obj)[-1])
    stranger["metadata"]["ownerReferences"][0]["uid"] = "someone-else"
    fake.live[sa] = stranger
    no_token = copy.deepcopy(obj)
    del no_token["spec"]["model"]["tokenSecretRef"]
    assert children.prune(no_token, render.children(no_token)) == []
    assert sa in fake.live
