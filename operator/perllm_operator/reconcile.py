"""Reconcile an `LLMService` into its children: render them, create or patch each in
place (never delete-and-recreate), delete those the spec no longer renders (a tier dropped
from `spec.tierReplicas`, a switch between modes or backends), write `status.child` (or
`status.children`), `status.observedGeneration` and the conditions `Reconciled`, `Placed`,
`Ready`; re-render them when their tier pin is no longer the target. Deleting the service
is left to the garbage collector through the children's controller ownerReferences."""

from __future__ import annotations

from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from perllm.crd import GROUP, PLURAL, VERSION, InvalidService
from perllm_operator import failures, kube, observe, pinning, podspec, reads, render, tiers
from perllm_operator.children import (
    KSERVE_MISSING,
    Failed,
    apply_and_prune,
    apply_children,
    holder_of,
)
from perllm_operator.conditions import condition, refused, sync_status, try_sync_status
from perllm_operator.state import state_of

RETRY_DELAY_S = 15
KSERVE_RETRY_DELAY_S = 60

Obj = dict[str, Any]


def _refuse(
    body: kopf.Body, meta: kopf.Meta, patch: kopf.Patch, old: list[Obj], reason: str, msg: str
) -> None:
    """Nothing can be applied: every condition the reconcile owns says why, as an Event too;
    the other conditions (the timer's, the router's, ...) are kept. The message is bounded
    (a refusal may quote a field of up to 2 KiB back)."""
    msg = failures.bounded(msg)
    owned: dict[str, observe.Cond] = {
        t: (False, reason, msg) for t in ("Ready", "Placed", "Reconciled")
    }
    _write_own(body, patch, old, owned, meta.get("generation"))
    kopf.warn(body, reason=reason, message=msg)


def _write_own(
    body: kopf.Body,
    patch: kopf.Patch,
    old: list[Obj],
    owned: dict[str, observe.Cond],
    generation: int | None = None,
) -> None:
    """Set the conditions `owned` (and `observedGeneration`) on a failure path, keeping the
    others. Through `sync_status`: a fresh read and a resourceVersion-guarded patch, so a
    condition another writer (the router's `BackendsReachable`) set after kopf's copy
    `old` of the object was taken is kept, not reverted or dropped. Only when that write
    fails (the API server unreachable, RBAC, conflicts all along; a warning and an Event
    once per distinct error, `reads.unwritten`) does the list built from the handler's copy
    `old` go into kopf's patch instead: a merge patch replaces a list
    whole, so that fallback may revert a condition written since `old` was read, until
    its writer writes again (the router: when its counts or its condition change)."""
    m = body.get("metadata") or {}
    ns, name, uid = str(m.get("namespace")), str(m.get("name")), str(m.get("uid"))
    try:
        sync_status(ns, name, uid, generation=generation, conditions=owned)
        return
    except Exception as e:  # the fresh write failed: the stale copy is better than nothing;
        # said once per distinct error (it was a warning on every retry), recovery once
        reads.unwritten(uid, name, e, body)
    if generation is not None:
        patch.status["observedGeneration"] = generation
    patch.status["conditions"] = [condition(t, *c, old) for t, c in owned.items()] + [
        c for c in old if c.get("type") not in owned
    ]


def reconcile(
    body: kopf.Body,
    spec: kopf.Spec,
    meta: kopf.Meta,
    status: kopf.Status,
    patch: kopf.Patch,
    logger: kopf.Logger,
    retry: int = 0,
    **_: Any,
) -> None:
    """create / resume / update: apply the children, then write the status. Every failure
    is a condition and an Event naming the field, then a retry with a growing delay (a spec
    the renderer refuses waits for the next edit; a create refused in a namespace being
    deleted is the condition only, not retried)."""
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
        raise kopf.PermanentError(failures.bounded(str(e))) from None
    try:
        if spec.get("backend", "kserve") == "kserve" and not kube.kserve_installed():
            _refuse(body, meta, patch, old, "KServeMissing", KSERVE_MISSING)
            raise kopf.TemporaryError(KSERVE_MISSING, delay=KSERVE_RETRY_DELAY_S)
        gone = apply_and_prune(obj, kids)
        _applied(body, meta, obj, kids, gone, logger)
    except (kopf.TemporaryError, kopf.PermanentError):
        raise
    except Failed as f:
        if f.reason == failures.NAMESPACE_TERMINATING:  # no retry can create anything there
            _write_own(body, patch, old, {"Reconciled": (False, f.reason, f.message)})
            logger.info("%s: the namespace is being deleted; not retrying", f.message)
            return
        _not_reconciled(body, patch, old, f.reason, f.message)
        raise kopf.TemporaryError(f.message, delay=failures.backoff(retry)) from None
    except ApiException as e:  # reading the KServe CRD
        reason, msg = failures.api_failure(e, f"CRD {render.KSERVE_CRD}")
        _not_reconciled(body, patch, old, reason, msg)
        raise kopf.TemporaryError(msg, delay=failures.backoff(retry)) from None
    except reads.ERRORS as e:  # no answer from the API server (urllib3): no bug of ours,
        # so no traceback (it was an InternalError with one, on every retry)
        reason, msg = (
            "ApplyFailed",
            failures.bounded(
                f"applying the children of {meta['name']} or writing its status: no answer from "
                f"the API server ({type(e).__name__}: {e})"
            ),
        )
        _not_reconciled(body, patch, old, reason, msg)
        raise kopf.TemporaryError(msg, delay=failures.backoff(retry)) from None
    except Exception as e:  # reported as a condition, never a crash loop
        reason, msg = failures.internal_failure(e, "reconcile")
        logger.exception("reconcile failed")
        _not_reconciled(body, patch, old, reason, msg)
        raise kopf.TemporaryError(msg, delay=failures.backoff(retry)) from None


def _not_reconciled(
    body: kopf.Body, patch: kopf.Patch, old: list[Obj], reason: str, msg: str
) -> None:
    _write_own(body, patch, old, {"Reconciled": (False, reason, msg)})
    kopf.warn(body, reason=reason, message=msg)


def _applied(
    body: kopf.Body,
    meta: kopf.Meta,
    obj: Obj,
    kids: list[Obj],
    gone: list[str],
    logger: kopf.Logger,
) -> None:
    """The children are applied: record which ones are the service's, and say so."""
    names = ", ".join(f"{k['kind']} {k['metadata']['name']}" for k in kids)
    if tiers.tiered(obj):
        children = tiers.children_status(kids)
        child = None
        how = "tiers " + ", ".join(f"{c['tier']}={c['replicas']}" for c in children)
    else:
        children, child, how = None, tiers.ref(kids[0]), f"tier {pinning.pin(obj)}"
    if gone:
        names += "; deleted " + ", ".join(gone)
    known = failures.model_known(str(obj["spec"]["model"]["name"]))
    try:
        sync_status(
            meta["namespace"],
            meta["name"],
            str(meta["uid"]),
            child,
            reconciled=("ChildApplied", f"applied {names} ({how})"),
            generation=meta.get("generation"),
            conditions={"ModelKnown": known},
            children=children,
        )
    except ApiException as e:
        raise Failed(*failures.api_failure(e, f"status of LLMService {meta['name']}")) from e
    if not known[0]:
        kopf.warn(body, reason=known[1], message=known[2])
    kopf.info(
        body, reason="Reconciled", message=f"applied {names} (generation {meta.get('generation')})"
    )
    logger.info("applied %s", names)


def follow_tier(body: kopf.Body, obj: Obj, logger: kopf.Logger) -> None:
    """Keep the children what the spec and the placement say, each status tick:

    - a child deleted outside PerLLM (by hand, a namespace clean-up script; the
      Deployment backend's Service and KServe's ServiceAccount included) is applied
      again (not while the reconcile refuses the whole spec, nor once the service is
      being deleted, nor after a create was refused as the namespace is being deleted:
      `Reconciled` False `NamespaceTerminating`, said once, no Event): else `Ready` would
      say `ChildMissing` for good, since kopf reconciles only on an edit;
    - an untiered service's children are re-rendered when their pin is no longer the
      target: the extender's first decision pins an open template, re-placement switches
      tier, or allowedTiers was edited. A tiered service's children are pinned from the
      start: nothing follows (the extender's decision for one tier's pod must not re-pin
      the other's child).

    A refusal is the `Reconciled` condition and an Event; the next tick tries again. A
    read refused or unanswered (the service's, a child's) is logged and an Event once per
    distinct error (`reads`), said by the next tick's `Degraded`; nothing is applied."""
    ns, name, uid = obj["metadata"]["namespace"], obj["metadata"]["name"], obj["metadata"]["uid"]
    co = kube.kubernetes.client.CustomObjectsApi()
    me = {"kind": "LLMService", "name": name}
    try:
        fresh: Obj = co.get_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, name, _request_timeout=kube.REQUEST_TIMEOUT_S
        )
    except reads.ERRORS as e:
        if not (isinstance(e, ApiException) and e.status == 404):  # 404: deleted since
            reads.failed(str(uid), me, e, body)
        return
    reads.succeeded(str(uid), me)
    st = dict(fresh.get("status") or {})
    refs: list[Obj] = [st["child"]] if st.get("child") else list(st.get("children") or [])
    if fresh["metadata"].get("uid") != uid or not refs or _refused(st):
        return
    if fresh["metadata"].get("deletionTimestamp"):  # its children are going with it (GC)
        return
    if _reconciled(st).get("reason") == failures.NAMESPACE_TERMINATING:
        return  # the namespace is being deleted, the service with it: nothing is created
    seen, gen = st.get("observedGeneration"), fresh["metadata"].get("generation")
    if seen is not None and gen is not None and seen != gen:
        # An edit's reconcile is under way: it applies and prunes, then records the new
        # children. Read now, the recorded ones include those it just pruned (a tier
        # dropped), which this tick took for deleted by hand.
        return
    if (fresh.get("spec") or {}).get("backend") == "deployment":
        # The Service in front is a child too, though the status records only the pods'
        # Deployments: deleted by hand, the service's endpoint was gone for good.
        svc = {"apiVersion": "v1", "kind": "Service", "name": render.service_name(fresh)}
        refs = [*refs, svc]
    elif render.needs_model_account(fresh):
        # Nor does it record the ServiceAccount of gated weights: deleted by hand, KServe's
        # pods could not be created (no such account) or fetch the weights.
        sa = {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "name": render.model_account_name(fresh),
        }
        refs = [*refs, sa]
    # a child no longer recorded is not read again (the pods are listed by the writes)
    reads.keep(str(uid), [me, reads.pods_ref(name), *refs])
    lives: list[Obj | None] = []
    for r in refs:
        try:
            lives.append(kube.read_child(ns, r))
        except reads.ERRORS as e:
            reads.failed(str(uid), r, e, body)
            return
        reads.succeeded(str(uid), r)
    try:  # (only what the spec still renders is re-created, and said)
        kids = render.children(fresh)
    except (InvalidService, ValueError):  # (the reconcile refuses it, and says why)
        return
    wanted = {(k["kind"], k["metadata"]["name"]): k for k in kids}
    missing, taken, mine = [], [], podspec.owner_reference(fresh)
    for r, live in zip(refs, lives, strict=True):
        kid = wanted.get((r["kind"], r["name"]))
        if kid is not None and not live:
            missing.append(f"{r['kind']} {r['name']}")
        elif kid is not None and holder_of(live, mine) is not None:
            taken.append(f"{r['kind']} {r['name']}")
    if missing:
        gone = ", ".join(missing)
        what = f"re-created {gone} (deleted outside PerLLM)"
        if _reapply(body, kids, ns, name, str(uid), f"re-creating {gone}", what, logger, st):
            kopf.info(body, reason="ChildRecreated", message=what)
        return
    if taken:
        # Deleted and its name taken by another object since: the apply refuses it
        # (`ChildConflict`), where nothing said the service had no child of its own.
        held = ", ".join(taken)
        doing, done = f"re-applying {held}", f"re-applied {held}"
        _reapply(body, kids, ns, name, str(uid), doing, done, logger, st)
        return
    if tiers.tiered(fresh):
        return
    live = lives[0]
    try:
        want = pinning.pin(fresh)
    except ValueError:
        return
    if live is None or render.rendered_tier(live) == want:
        return
    doing, done = f"re-rendering for tier {want}", f"re-rendered for tier {want}"
    if _reapply(body, kids, ns, name, str(uid), doing, done, logger, st):
        kopf.info(
            body,
            reason="TierChanged",
            message=f"pod template re-rendered for tier {want} (was {render.rendered_tier(live)})",
        )


def _refused(st: Obj) -> bool:
    """The reconcile refused the whole spec (an invalid spec, KServe missing): its own
    retries, or the next edit, apply the children; a failed apply of this timer's is
    tried again at the next tick."""
    return refused(_reconciled(st))


def _reconciled(st: Obj) -> Obj:
    return next((c for c in st.get("conditions") or [] if c.get("type") == "Reconciled"), {})


def _reapply(
    body: kopf.Body,
    kids: list[Obj],
    ns: str,
    name: str,
    uid: str,
    doing: str,
    done: str,
    logger: kopf.Logger,
    st: Obj,
) -> bool:
    """Apply the children `kids` (what the fresh spec renders); `Reconciled` says `done`,
    or `doing: why` it was refused: a warning and an Event unless `Reconciled` in the
    fresh status `st` says it already (the next tick tries again; each one's refusal was
    a warning and a Warning Event every 30 s for as long as it lasted). The status write
    refused or unanswered is said once per distinct error (`try_sync_status`), where it
    escaped to the timer as `InternalError`, an Event on each retry: True still means
    applied."""
    try:
        apply_children(kids)
    except (Failed, InvalidService, ValueError) as e:
        reason = e.reason if isinstance(e, Failed) else "InvalidSpec"
        msg = failures.bounded(f"{doing}: {e}")
        was = _reconciled(st)
        said = (was.get("status"), was.get("reason"), was.get("message")) == ("False", reason, msg)
        if reason == failures.NAMESPACE_TERMINATING:
            # Said once: the next ticks see the condition and stop (`follow_tier`), where
            # each one's create was refused with a warning and an Event until the service
            # went with its namespace.
            logger.info("%s: the namespace is being deleted; not re-creating", msg)
        elif not said:
            logger.warning("%s", msg)
            kopf.warn(body, reason=reason, message=msg)
        try_sync_status(body, ns, name, uid, conditions={"Reconciled": (False, reason, msg)})
        return False
    try_sync_status(body, ns, name, uid, reconciled=("ChildApplied", done))
    return True


def forget(meta: kopf.Meta, memo: kopf.Memo, **_: Any) -> None:
    """Drop the service's observation history and failed reads (optional: adds no
    finalizer of its own)."""
    state_of(memo).history.pop(str(meta.get("uid")), None)
    reads.forget(str(meta.get("uid")))
