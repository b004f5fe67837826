"""The LLMService's status conditions and the one status write all handlers go through."""

from __future__ import annotations

from typing import Any, cast

import kopf
from kubernetes.client.exceptions import ApiException

from perllm.crd import GROUP, PLURAL, VERSION
from perllm.crd import condition as condition  # re-exported (reconcile, tests)
from perllm_operator import children, kube, observe, podspec, reads, tiers

CONDITION_ORDER = (
    "Ready",
    "Placed",
    "DeadlineMet",
    "TelemetryStale",
    "Reconciled",
    "ModelKnown",
    "Degraded",
)

# `Reconciled` reasons of a reconcile that could apply nothing of the spec
# (reconcile._refuse): until a reconcile applies the children, `Ready` and `Placed` say
# the same, whoever writes the status next (the timer, a Deployment event).
REFUSALS = ("InvalidSpec", "KServeMissing")

Obj = dict[str, Any]


def refused(reconciled: Obj | None) -> bool:
    """Whether a `Reconciled` condition is a refusal of the whole spec (`REFUSALS`)."""
    rec = reconciled or {}
    return rec.get("status") == "False" and rec.get("reason") in REFUSALS


def ready_of(child: Obj) -> observe.Cond:
    """(ready, reason, message) of a live child (Deployment or InferenceService)."""
    kind, name = child.get("kind"), child["metadata"]["name"]
    status = child.get("status") or {}
    if kind == "Deployment":
        want = (child.get("spec") or {}).get("replicas", 1)
        have = status.get("readyReplicas") or 0
        if have >= want:
            return True, "ReplicasReady", f"Deployment {name}: {have}/{want} replicas ready"
        return False, "ReplicasNotReady", f"Deployment {name}: {have}/{want} replicas ready"
    cond = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    if cond is None:
        return None, "Pending", f"InferenceService {name}: no Ready condition yet"
    ok = cond.get("status") == "True"
    detail = cond.get("message") or cond.get("reason") or ""
    return (
        ok,
        "InferenceServiceReady" if ok else "InferenceServiceNotReady",
        f"InferenceService {name}: {detail}".rstrip(": "),
    )


def _ready(ns: str, ref: Obj, llms: Obj) -> observe.Cond:
    """`Ready` of the recorded child `ref` of the service `llms`: an object another owner
    holds under its name is not the service's child (read as ready, someone else's
    Deployment made the service Ready). A read refused or unanswered is Unknown naming it
    (`reads`), where it failed the whole status write with a log line only."""
    uid = str(llms["metadata"].get("uid", ""))
    try:
        live = kube.read_child(ns, ref)
    except reads.ERRORS as e:
        return reads.failed(uid, ref, e, kopf.Body(cast(kopf.RawBody, llms)))
    reads.succeeded(uid, ref)
    mine = podspec.owner_reference(llms)
    what = f"{ref['kind']} {ref['name']}"
    if live is None:
        return False, "ChildMissing", f"{what} not found"
    holder = children.holder_of(live, mine)
    if holder is not None:
        return False, "ChildConflict", children.Conflict(what, holder, mine["name"]).message
    return ready_of(live)


def _placed(
    ns: str, llms: Obj, refs: list[Obj], tiered: bool, conds: dict[str, Obj]
) -> observe.Cond:
    """`Placed` from `status.placement` and, where needed (a tiered service, no decision
    yet), the service's pods. The list refused or unanswered is Unknown naming it
    (`reads`), where it failed the whole status write with a log line only."""
    name, st = llms["metadata"]["name"], llms.get("status") or {}
    pods: list[Obj] = []
    if tiered or not st.get("placement"):
        uid, ref = str(llms["metadata"].get("uid", "")), reads.pods_ref(name)
        try:
            pods = kube.pods(ns, name)
        except reads.ERRORS as e:
            return reads.failed(uid, ref, e, kopf.Body(cast(kopf.RawBody, llms)))
        reads.succeeded(uid, ref)
    # not a hand-made copy's, which has the label; nor a terminating one (as the timer)
    pods = [p for p in tiers.own_pods(llms, pods) if not p["metadata"].get("deletionTimestamp")]
    known = (conds.get("ModelKnown") or {}).get("status") != "False"
    names = [str(r["tier"]) for r in refs] if tiered else None
    return observe.placed(st.get("placement"), pods, known, names)


def _merged(
    ns: str,
    llms: Obj,
    refs: list[Obj],
    tiered: bool,
    reconciled: tuple[str, str] | None,
    conditions: dict[str, observe.Cond],
) -> list[Obj]:
    """The new condition list: the given ones, `Placed` from `status.placement` unless
    given (of a tiered service: and from each tier's pods; `_placed`), `Ready` from the
    live children (all of them; one held by another owner is not ready; one unreadable is
    Unknown) unless given, the rest kept: conditions of other types, other writers' included.
    While `Reconciled` is a refusal (`REFUSALS`), `Ready` and `Placed` repeat it. A given
    `Degraded` False (the timer's) is True while a read of a child fails (`reads`)."""
    st = llms.get("status") or {}
    old = list(st.get("conditions") or [])
    conds = {c.get("type"): c for c in old}
    if reconciled is not None:
        conds["Reconciled"] = condition("Reconciled", True, *reconciled, old)
    for type_, (ok, reason, msg) in conditions.items():
        conds[type_] = condition(type_, ok, reason, msg, old)
    rec = conds.get("Reconciled") or {}
    uid, name = str(llms["metadata"].get("uid", "")), str(llms["metadata"]["name"])
    if refused(rec):
        # No child is read while the spec is refused (here, `follow_tier`): a failed read
        # recorded before held the timer's `Degraded` True, naming a read nobody makes.
        reads.keep(uid, [{"kind": "LLMService", "name": name}, reads.pods_ref(name)])
        for type_ in ("Ready", "Placed"):
            conds[type_] = condition(type_, False, rec["reason"], rec.get("message", ""), old)
    elif "Placed" not in conditions:
        conds["Placed"] = condition("Placed", *_placed(ns, llms, refs, tiered, conds), old)
    if refs and "Ready" not in conditions and not refused(rec):
        ready = observe.all_of([_ready(ns, r, llms) for r in refs])
        conds["Ready"] = condition("Ready", *ready, old)
    unread = reads.pending(uid)
    given = conditions.get("Degraded")
    if unread is not None and given is not None and given[0] is False:
        # the timer's "ran without errors": not while a read of a child fails
        conds["Degraded"] = condition("Degraded", True, *unread, old)
    return [conds[t] for t in CONDITION_ORDER if t in conds] + [
        c for t, c in conds.items() if t not in CONDITION_ORDER
    ]


def sync_status(
    ns: str,
    name: str,
    uid: str,
    child: Obj | None = None,
    reconciled: tuple[str, str] | None = None,
    generation: int | None = None,
    conditions: dict[str, observe.Cond] | None = None,
    fields: Obj | None = None,
    children: list[Obj] | None = None,
) -> bool:
    """Write the LLMService's status from a fresh read of its children: read-modify-write
    with the resourceVersion, retried on conflict, so the reconcile handler, the Deployment
    event handler and the status timer never overwrite each other with stale data.
    `conditions`/`fields` are extra conditions and status fields to set. `child` (one
    child) or `children` (a tiered service's, `status.children`) records the children,
    removing the other key. `Placed` is recomputed from `status.placement` (the extender's)
    on every write. A merge patch of the keys written only: keys of other writers
    (`status.placement`, `status.routing`, ...) and their conditions are never touched.
    False: no such owner."""
    co = kube.kubernetes.client.CustomObjectsApi()
    for _attempt in range(8):
        try:
            llms: Obj = co.get_namespaced_custom_object(
                GROUP, VERSION, ns, PLURAL, name, _request_timeout=kube.REQUEST_TIMEOUT_S
            )
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        if llms["metadata"].get("uid") != uid:
            return False
        st = llms.get("status") or {}
        given = child is not None or children is not None
        # the children to read: the given ones, else the recorded ones
        one, many = (child, children) if given else (st.get("child"), st.get("children"))
        refs, tiered = ([one], False) if one else (list(many or []), many is not None)
        conds = _merged(ns, llms, refs, tiered, reconciled, conditions or {})
        new: Obj = {"conditions": conds}
        new.update(fields or {})
        if given:  # one record per mode: a mode switch removes the other mode's key
            new["child"], new["children"] = child, children
        if generation is not None:
            new["observedGeneration"] = generation
        if all(st.get(k) == v for k, v in new.items()):
            reads.written(uid, name)  # a failed write said before: said recovered, once
            return True
        body = {"metadata": {"resourceVersion": llms["metadata"]["resourceVersion"]}, "status": new}
        try:
            co.patch_namespaced_custom_object_status(
                GROUP, VERSION, ns, PLURAL, name, body, _request_timeout=kube.REQUEST_TIMEOUT_S
            )
            reads.written(uid, name)
            return True
        except ApiException as e:
            if e.status != 409:
                raise
    raise kopf.TemporaryError(f"LLMService {ns}/{name}: status kept conflicting", delay=2)


def try_sync_status(llms: kopf.Body, ns: str, name: str, uid: str, **kw: Any) -> bool:
    """`sync_status` where nothing else can say a failed write (a Deployment event's,
    `follow_tier`'s after a re-apply): refused or unanswered, it is a warning and an Event
    on `llms` once per distinct error (`reads.unwritten`), where it escaped the handler
    (logged on every try, or the timer's `InternalError` with an Event each retry); the
    next event or tick writes again. False: not written."""
    try:
        return sync_status(ns, name, uid, **kw)
    except reads.ERRORS as e:
        reads.unwritten(uid, name, e, llms)
        return False
