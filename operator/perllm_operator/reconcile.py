"""Reconcile an `LLMService` into its children: render them, create or patch each in
place (never delete-and-recreate), write `status.child`, `status.observedGeneration` and
the conditions `Reconciled`, `Placed`, `Ready`; re-render them when their tier pin is no
longer the target. Deletion is left to the garbage collector through the children's
controller ownerReferences."""

from __future__ import annotations

from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from perllm.crd import GROUP, PLURAL, VERSION, InvalidService
from perllm_operator import kube, render
from perllm_operator.conditions import condition, sync_status
from perllm_operator.state import state_of

RETRY_DELAY_S = 15
KSERVE_RETRY_DELAY_S = 60
KSERVE_MISSING = (
    "KServe is not installed (no CRD inferenceservices.serving.kserve.io): "
    "install KServe or set `spec.backend: deployment`"
)

Obj = dict[str, Any]


def _refuse(
    body: kopf.Body, meta: kopf.Meta, patch: kopf.Patch, old: list[Obj], reason: str, msg: str
) -> None:
    """Nothing can be applied: every condition the reconcile owns says why, as an Event too."""
    patch.status["observedGeneration"] = meta.get("generation")
    patch.status["conditions"] = [
        condition(t, False, reason, msg, old) for t in ("Ready", "Placed", "Reconciled")
    ]
    kopf.warn(body, reason=reason, message=msg)


def reconcile(
    body: kopf.Body,
    spec: kopf.Spec,
    meta: kopf.Meta,
    status: kopf.Status,
    patch: kopf.Patch,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """create / resume / update: apply the children, then write the status."""
    obj: Obj = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": dict(meta),
        "spec": dict(spec),
        "status": dict(status),
    }
    old = list(status.get("conditions") or [])
    try:
        kids = render.children(obj)
    except (InvalidService, ValueError) as e:
        _refuse(body, meta, patch, old, "InvalidSpec", str(e))
        raise kopf.PermanentError(str(e)) from None
    try:
        if spec.get("backend", "kserve") == "kserve" and not kube.kserve_installed():
            _refuse(body, meta, patch, old, "KServeMissing", KSERVE_MISSING)
            raise kopf.TemporaryError(KSERVE_MISSING, delay=KSERVE_RETRY_DELAY_S)
        for k in kids:
            kube.apply(k)
    except ApiException as e:
        msg = f"API error {e.status} {e.reason} while applying children; retrying"
        patch.status["conditions"] = [condition("Reconciled", False, "ApiError", msg, old)] + [
            c for c in old if c.get("type") != "Reconciled"
        ]
        raise kopf.TemporaryError(msg, delay=RETRY_DELAY_S) from e
    _applied(body, meta, obj, kids, logger)


def _applied(
    body: kopf.Body, meta: kopf.Meta, obj: Obj, kids: list[Obj], logger: kopf.Logger
) -> None:
    """The children are applied: record which one is the service's, and say so."""
    child = {
        "apiVersion": kids[0]["apiVersion"],
        "kind": kids[0]["kind"],
        "name": kids[0]["metadata"]["name"],
    }
    names = ", ".join(f"{k['kind']} {k['metadata']['name']}" for k in kids)
    try:
        sync_status(
            meta["namespace"],
            meta["name"],
            str(meta["uid"]),
            child,
            reconciled=("ChildApplied", f"applied {names} (tier {render.pin(obj)})"),
            generation=meta.get("generation"),
        )
    except ApiException as e:
        raise kopf.TemporaryError(f"API error {e.status} writing status", delay=5) from e
    kopf.info(
        body, reason="Reconciled", message=f"applied {names} (generation {meta.get('generation')})"
    )
    logger.info("applied %s", names)


def follow_tier(body: kopf.Body, obj: Obj, logger: kopf.Logger) -> None:
    """Re-render the children when their pin is no longer the target: the extender's
    first decision pins an open template, re-placement switches tier, or allowedTiers
    was edited."""
    ns, name, uid = obj["metadata"]["namespace"], obj["metadata"]["name"], obj["metadata"]["uid"]
    co = kube.kubernetes.client.CustomObjectsApi()
    try:
        fresh: Obj = co.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    except ApiException:
        return
    if fresh["metadata"].get("uid") != uid or not (fresh.get("status") or {}).get("child"):
        return
    st = dict(fresh.get("status") or {})
    try:
        want = render.pin(fresh)
        live = kube.read_child(ns, st["child"])
    except (ValueError, ApiException):
        return
    if live is None or render.rendered_tier(live) == want:
        return
    try:
        for k in render.children(fresh):
            kube.apply(k)
    except (ApiException, InvalidService, ValueError) as e:
        logger.warning("re-rendering for tier %s failed: %s", want, e)
        return
    kopf.info(
        body,
        reason="TierChanged",
        message=f"pod template re-rendered for tier {want} (was {render.rendered_tier(live)})",
    )


def forget(meta: kopf.Meta, memo: kopf.Memo, **_: Any) -> None:
    """Drop the service's observation history (optional: adds no finalizer of its own)."""
    state_of(memo).history.pop(str(meta.get("uid")), None)
