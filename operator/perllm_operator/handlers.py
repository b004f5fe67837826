"""kopf handlers: reconcile an `LLMService` into its children.

create / resume / update all run `reconcile`, which creates each child or patches it in
place (never delete-and-recreate), then writes `status.child`, `status.observedGeneration`
and the conditions `Placed` and `Ready`. Deletion is left to the garbage collector through
the children's controller ownerReferences: no delete handler, no timer, so kopf puts no
finalizer on LLMServices and they delete even while the operator is down. Deployment
events (pods becoming ready) update the owner's `Ready` condition.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import kopf
import kubernetes as _kubernetes
from kubernetes.client.exceptions import ApiException

from perllm import labels
from perllm.crd import GROUP, PLURAL, VERSION, InvalidService
from perllm_operator import render

FIELD_MANAGER = "perllm-operator"
RETRY_DELAY_S = 15
KSERVE_RETRY_DELAY_S = 60

Obj = dict[str, Any]
# The client's generated hints want model classes; the operator passes plain dicts.
kubernetes: Any = _kubernetes


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=labels.DOMAIN)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=labels.DOMAIN, key="last-handled-configuration")
    settings.persistence.finalizer = f"{labels.DOMAIN}/finalizer"
    settings.posting.level = 20  # logging.INFO: k8s Events for info and above
    settings.watching.server_timeout = 600
    settings.watching.client_timeout = 660
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    load_config()


def load_config() -> None:
    """In-cluster config inside a pod, else KUBECONFIG / ~/.kube/config."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(type_: str, ok: bool | None, reason: str, message: str,
              old: list[Obj] | None = None) -> Obj:
    """A status condition; `lastTransitionTime` moves only when the status changes."""
    status = "Unknown" if ok is None else ("True" if ok else "False")
    prev = next((c for c in old or [] if c.get("type") == type_), None)
    since = prev.get("lastTransitionTime") if prev and prev.get("status") == status else None
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": since or _now()}


def _kserve_installed() -> bool:
    try:
        kubernetes.client.ApiextensionsV1Api().read_custom_resource_definition(render.KSERVE_CRD)
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    return True


def _create_or_patch(create: Callable[[], Any], patch: Callable[[], Any]) -> Any:
    """Create; if the object exists already (409), patch it in place instead."""
    try:
        return create()
    except ApiException as e:
        if e.status != 409:
            raise
        return patch()


def _apply(child: Obj) -> Obj:
    """Create the child, or patch it in place when it exists. Returns the live object."""
    kind, ns, name = child["kind"], child["metadata"]["namespace"], child["metadata"]["name"]
    fm = FIELD_MANAGER
    if kind == "InferenceService":
        co = kubernetes.client.CustomObjectsApi()
        args = (render.KSERVE_GROUP, render.KSERVE_VERSION, ns, render.KSERVE_PLURAL)
        out: Obj = _create_or_patch(
            lambda: co.create_namespaced_custom_object(*args, child, field_manager=fm),
            lambda: co.patch_namespaced_custom_object(*args, name, child, field_manager=fm))
        return out
    if kind == "Deployment":
        apps = kubernetes.client.AppsV1Api()
        live = _create_or_patch(
            lambda: apps.create_namespaced_deployment(ns, child, field_manager=fm),
            lambda: apps.patch_namespaced_deployment(name, ns, child, field_manager=fm))
    elif kind == "Service":
        core = kubernetes.client.CoreV1Api()
        live = _create_or_patch(
            lambda: core.create_namespaced_service(ns, child, field_manager=fm),
            lambda: core.patch_namespaced_service(name, ns, child, field_manager=fm))
    else:
        raise ValueError(f"unknown child kind {kind}")
    res: Obj = kubernetes.client.ApiClient().sanitize_for_serialization(live)
    return res


def ready_of(child: Obj) -> tuple[bool | None, str, str]:
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
    return ok, "InferenceServiceReady" if ok else "InferenceServiceNotReady", (
        f"InferenceService {name}: {cond.get('message') or cond.get('reason') or ''}".rstrip(": "))


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def reconcile(body: kopf.Body, spec: kopf.Spec, meta: kopf.Meta, status: kopf.Status,
              patch: kopf.Patch, logger: kopf.Logger, **_: Any) -> None:
    obj: Obj = {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
                "metadata": dict(meta), "spec": dict(spec)}
    old = list(status.get("conditions") or [])
    backend = spec.get("backend", "kserve")
    try:
        kids = render.children(obj)
    except (InvalidService, ValueError) as e:
        patch.status["observedGeneration"] = meta.get("generation")
        patch.status["conditions"] = [
            condition("Placed", False, "InvalidSpec", str(e), old),
            condition("Ready", False, "InvalidSpec", str(e), old)]
        kopf.warn(body, reason="InvalidSpec", message=str(e))
        raise kopf.PermanentError(str(e)) from None
    try:
        if backend == "kserve" and not _kserve_installed():
            msg = ("KServe is not installed (no CRD inferenceservices.serving.kserve.io): "
                   "install KServe or set `spec.backend: deployment`")
            patch.status["observedGeneration"] = meta.get("generation")
            patch.status["conditions"] = [
                condition("Placed", False, "KServeMissing", msg, old),
                condition("Ready", False, "KServeMissing", msg, old)]
            kopf.warn(body, reason="KServeMissing", message=msg)
            raise kopf.TemporaryError(msg, delay=KSERVE_RETRY_DELAY_S)
        for k in kids:
            _apply(k)
    except ApiException as e:
        msg = f"API error {e.status} {e.reason} while applying children; retrying"
        patch.status["conditions"] = [condition("Placed", False, "ApiError", msg, old)] + [
            c for c in old if c.get("type") != "Placed"]
        raise kopf.TemporaryError(msg, delay=RETRY_DELAY_S) from e
    child = {"apiVersion": kids[0]["apiVersion"], "kind": kids[0]["kind"],
             "name": kids[0]["metadata"]["name"]}
    names = ", ".join(f"{k['kind']} {k['metadata']['name']}" for k in kids)
    try:
        sync_status(meta["namespace"], meta["name"], str(meta["uid"]), child,
                    placed=("ChildApplied", f"applied {names}"),
                    generation=meta.get("generation"))
    except ApiException as e:
        raise kopf.TemporaryError(f"API error {e.status} writing status", delay=5) from e
    kopf.info(body, reason="Reconciled",
              message=f"applied {names} (generation {meta.get('generation')})")
    logger.info("applied %s", names)


def _read_child(ns: str, child: Obj) -> Obj | None:
    try:
        if child["kind"] == "Deployment":
            dep = kubernetes.client.AppsV1Api().read_namespaced_deployment(child["name"], ns)
            out: Obj = kubernetes.client.ApiClient().sanitize_for_serialization(dep)
            out["kind"] = "Deployment"
            return out
        out = kubernetes.client.CustomObjectsApi().get_namespaced_custom_object(
            render.KSERVE_GROUP, render.KSERVE_VERSION, ns, render.KSERVE_PLURAL, child["name"])
        return out
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def sync_status(ns: str, name: str, uid: str, child: Obj | None = None,
                placed: tuple[str, str] | None = None, generation: int | None = None) -> bool:
    """Write the LLMService's status from a fresh read of its child: read-modify-write with
    the resourceVersion, retried on conflict, so the reconcile handler and the Deployment
    event handler never overwrite each other with stale readiness. False: no such owner."""
    co = kubernetes.client.CustomObjectsApi()
    for _attempt in range(8):
        try:
            llms: Obj = co.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        if llms["metadata"].get("uid") != uid:
            return False
        st = llms.get("status") or {}
        old = list(st.get("conditions") or [])
        ref = child or st.get("child")
        new: Obj = {}
        conds = {c.get("type"): c for c in old}
        if placed is not None:
            conds["Placed"] = condition("Placed", True, placed[0], placed[1], old)
        if ref:
            live = _read_child(ns, ref)
            if live is None:
                conds["Ready"] = condition("Ready", False, "ChildMissing",
                                           f"{ref['kind']} {ref['name']} not found", old)
            else:
                ok, reason, msg = ready_of(live)
                conds["Ready"] = condition("Ready", ok, reason, msg, old)
        new["conditions"] = [conds[t] for t in ("Placed", "Ready") if t in conds] + [
            c for c in old if c.get("type") not in ("Placed", "Ready")]
        if child is not None:
            new["child"] = child
        if generation is not None:
            new["observedGeneration"] = generation
        if all(st.get(k) == v for k, v in new.items()):
            return True
        body = {"metadata": {"resourceVersion": llms["metadata"]["resourceVersion"]},
                "status": new}
        try:
            co.patch_namespaced_custom_object_status(GROUP, VERSION, ns, PLURAL, name, body)
            return True
        except ApiException as e:
            if e.status != 409:
                raise
    raise kopf.TemporaryError(f"LLMService {ns}/{name}: status kept conflicting", delay=2)


@kopf.on.event("apps", "v1", "deployments", labels={labels.LABEL_SERVICE: kopf.PRESENT})
def deployment_event(body: kopf.Body, type: str | None, logger: kopf.Logger, **_: Any) -> None:
    """Mirror a child Deployment's readiness into its LLMService's Ready condition."""
    if type == "DELETED":
        return
    owner = next((r for r in body.metadata.get("ownerReferences") or []
                  if r.get("kind") == "LLMService" and r.get("controller")), None)
    if owner is None:
        return
    ns = str(body.metadata.namespace)
    try:
        sync_status(ns, owner["name"], owner.get("uid", ""))
    except ApiException as e:
        raise kopf.TemporaryError(f"API error {e.status} updating status", delay=5) from e
    logger.debug("LLMService %s/%s: status synced", ns, owner["name"])
