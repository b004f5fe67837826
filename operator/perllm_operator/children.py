"""Applying an `LLMService`'s rendered children and deleting those it no longer renders,
for `reconcile`: server-side apply of each, never over an object another owner holds
(`Conflict`), a refusal named as the field (`Failed`), and the pruning of the children of
another mode, backend or dropped tier (only those this service controls)."""

from __future__ import annotations

from typing import Any

from kubernetes.client.exceptions import ApiException

from perllm.crd import KIND
from perllm.labels import LABEL_SERVICE
from perllm_operator import failures, kube, render, tiers

Obj = dict[str, Any]

KSERVE_MISSING = (
    "KServe is not installed (no CRD inferenceservices.serving.kserve.io): "
    "install KServe or set `spec.backend: deployment`"
)


class Failed(Exception):
    """An API call was refused (applying a child, listing pods); reason and message name
    the call's object and the field."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


class Conflict(Failed):
    """A child's name is held by an object this service does not control (`holder`: its
    controller ownerReference, `{}` when it has none). `self.holder`: (kind, name) of
    that controller, None without one."""

    def __init__(self, what: str, holder: Obj, name: str) -> None:
        if not holder:
            whose = (
                f"made outside PerLLM (no controller ownerReference, no label "
                f"{LABEL_SERVICE}={name})"
            )
        else:
            whose = (
                f"controlled by {holder.get('kind')} {holder.get('name')} (uid {holder.get('uid')})"
            )
        super().__init__(
            "ChildConflict",
            f"{what} exists, {whose}, not by this LLMService: PerLLM does not take it "
            "over; delete that object or rename this service",
        )
        self.holder = (holder.get("kind"), holder.get("name")) if holder else None


def holder_of(live: Obj | None, mine: Obj) -> Obj | None:
    """Why the live object named like a child is not this service's (`mine`: the
    service's controller ownerReference, `podspec.owner_reference`): its controller
    ownerReference, `{}` when it has none; None when it is this service's: absent,
    controlled by this LLMService, by an earlier LLMService of the same name (deleted, as
    names are unique: its garbage not yet collected), or without a controller but labelled
    with the service's name (orphaned by `--cascade=orphan`). The apply never applies over
    an object that is not (one field manager applies every service's children, so another
    service's ownerReference was silently replaced), and the status reads only those that
    are (`conditions`)."""
    if live is None:
        return None
    meta = live.get("metadata") or {}
    ctrl = next((r for r in meta.get("ownerReferences") or [] if r.get("controller")), None)
    if ctrl is None:
        ours = (meta.get("labels") or {}).get(LABEL_SERVICE) == mine["name"]
        return None if ours else {}
    if ctrl.get("uid") == mine["uid"]:
        return None
    same = ctrl.get("kind") == KIND and ctrl.get("name") == mine["name"]
    return None if same and ctrl.get("apiVersion") == mine["apiVersion"] else dict(ctrl)


def apply_children(kids: list[Obj]) -> None:
    """Server-side apply of each child; a refusal becomes `Failed` naming the field (reason
    `NamespaceTerminating`: a create in a namespace being deleted), a name held by another
    owner `Conflict` (nothing applied over it). The ServiceAccount
    of gated weights goes first: a pod naming an account not yet there is refused
    (ServiceAccount admission), and KServe reads the account's Secrets as it creates the
    pod."""
    for k in sorted(kids, key=lambda k: k["kind"] != "ServiceAccount"):
        what, mine = f"{k['kind']} {k['metadata']['name']}", k["metadata"]["ownerReferences"][0]
        try:
            holder = holder_of(kube.read_child(k["metadata"]["namespace"], tiers.ref(k)), mine)
            if holder is not None:
                raise Conflict(what, holder, mine["name"])
            kube.apply(k)
        except ApiException as e:
            if k["kind"] == "InferenceService" and e.status == 404 and _kserve_gone():
                # KServe removed under a running service: the 404 alone names nothing
                raise Failed("ApplyNotFound", f"{what}: {KSERVE_MISSING}") from e
            if failures.namespace_terminating(e):  # callers stop quietly: no retry helps
                msg = failures.api_failure(e, what)[1]
                raise Failed(failures.NAMESPACE_TERMINATING, msg) from e
            raise Failed(*failures.api_failure(e, what)) from e


def _kserve_gone() -> bool:
    try:
        return not kube.kserve_installed()
    except ApiException:  # unknown: the apply's own refusal is reported
        return False


def apply_and_prune(obj: Obj, kids: list[Obj]) -> list[str]:
    """Apply the children, then delete those the spec no longer renders (after: a refused
    apply leaves the old ones serving). Unless a name is held by a child of one of those:
    KServe's Service `<name>-predictor` of the InferenceService, after a switch to backend
    deployment (refused as two controllers, for good, as the InferenceService was never
    deleted). Then they are deleted first, and a retry applies once the garbage collector
    has removed what they control."""
    try:
        apply_children(kids)
    except Conflict as c:
        if c.holder not in {(r["kind"], r["name"]) for r in _stale(obj, kids)}:
            raise
        gone = prune(obj, kids)
        if gone:
            raise Failed(
                c.reason,
                f"{c.message}; deleted {', '.join(gone)} (no longer rendered): applied "
                "once the garbage collector has removed what they control",
            ) from None
        raise
    return prune(obj, kids)


def _stale(obj: Obj, kids: list[Obj]) -> list[Obj]:
    """A reference to every child any mode or backend renders that `kids` does not hold."""
    keep = {(k["kind"], k["metadata"]["name"]) for k in kids}
    isvc = f"{render.KSERVE_GROUP}/{render.KSERVE_VERSION}"
    return [r for r in tiers.possible(obj, isvc) if (r["kind"], r["name"]) not in keep]


def prune(obj: Obj, kids: list[Obj]) -> list[str]:
    """Delete this service's children that `kids` (the rendered ones) no longer holds: a
    tier dropped from `spec.tierReplicas`, the other mode's or backend's children. Only a
    child whose controller is this LLMService (uid) is deleted, with that uid as a
    precondition. Returns "Kind name" of each deleted child."""
    ns, uid = obj["metadata"]["namespace"], obj["metadata"]["uid"]
    gone = []
    for ref in _stale(obj, kids):
        what = f"{ref['kind']} {ref['name']}"
        try:
            live = kube.read_child(ns, ref)
            if live is None or not _controlled_by(live, uid):
                continue
            kube.delete_child(ns, ref, live["metadata"]["uid"])
        except ApiException as e:
            raise Failed(*failures.api_failure(e, f"deleting {what}")) from e
        gone.append(what)
    return gone


def _controlled_by(live: Obj, uid: str) -> bool:
    refs = (live.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("controller") and r.get("uid") == uid for r in refs)
