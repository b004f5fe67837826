"""The Kubernetes API calls of the handlers (creating, patching and reading children, pods,
evictions), kept apart so that the handlers' logic can be tested with fakes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import kubernetes as _kubernetes
from kubernetes.client.exceptions import ApiException

from perllm import labels
from perllm_operator import render

FIELD_MANAGER = "perllm-operator"
# Every call's limit. The API server ends any request but a watch after 60 s (its
# --request-timeout), so a longer wait is a dead connection (a stalled load balancer, a
# partition): without a limit it held the handler's thread, and with a timer's the
# LLMService's deletion (kopf's finalizer waits for the tick), for good.
REQUEST_TIMEOUT_S = 60.0

Obj = dict[str, Any]
# The client's generated hints want model classes; the operator passes plain dicts.
kubernetes: Any = _kubernetes


def load_config() -> None:
    """In-cluster config inside a pod, else KUBECONFIG / ~/.kube/config."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()


def kserve_installed() -> bool:
    try:
        kubernetes.client.ApiextensionsV1Api().read_custom_resource_definition(
            render.KSERVE_CRD, _request_timeout=REQUEST_TIMEOUT_S
        )
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    return True


APPLY = "application/apply-patch+yaml"


def apply(child: Obj) -> Obj:
    """Server-side apply of the child with field manager `perllm-operator` (force: the
    operator owns every field it renders), so the live object holds exactly the rendered
    fields: one the renderer no longer produces (a GPU request, a toleration after a tier
    switch) is removed, which a merge patch never does. Creates the child when missing.
    Returns the live object."""
    live = _ssa(child)
    if _update_owned(live):
        # Made by an operator that created and merge-patched: those fields belong to an
        # "Update" entry of the same manager and would survive every apply. Drop that
        # entry (its fields stay, owned by the apply entry) and apply again.
        _drop_update_ownership(child, live)
        live = _ssa(child)
    return live


def _api(kind: str) -> tuple[Callable[..., Any], Callable[..., Any], tuple[Any, ...]]:
    """(patch, serialise, leading args) for a child kind."""
    if kind == "InferenceService":
        co = kubernetes.client.CustomObjectsApi()
        args = (render.KSERVE_GROUP, render.KSERVE_VERSION)
        return co.patch_namespaced_custom_object, lambda o: o, args
    san = kubernetes.client.ApiClient().sanitize_for_serialization
    if kind == "Deployment":
        return kubernetes.client.AppsV1Api().patch_namespaced_deployment, san, ()
    if kind == "Service":
        return kubernetes.client.CoreV1Api().patch_namespaced_service, san, ()
    if kind == "ServiceAccount":
        return kubernetes.client.CoreV1Api().patch_namespaced_service_account, san, ()
    raise ValueError(f"unknown child kind {kind}")


def _ssa(child: Obj) -> Obj:
    kind, ns, name = child["kind"], child["metadata"]["namespace"], child["metadata"]["name"]
    patch, serialise, lead = _api(kind)
    args = (*lead, ns, render.KSERVE_PLURAL, name) if lead else (name, ns)
    # Strict: a rendered field the API's schema does not know is refused (422 naming it),
    # never silently pruned.
    live = patch(
        *args,
        child,
        field_manager=FIELD_MANAGER,
        force=True,
        field_validation="Strict",
        _content_type=APPLY,
        _request_timeout=REQUEST_TIMEOUT_S,
    )
    out: Obj = serialise(live)
    return out


def _update_owned(live: Obj) -> bool:
    return any(
        m.get("manager") == FIELD_MANAGER and m.get("operation") == "Update"
        for m in (live.get("metadata") or {}).get("managedFields") or []
    )


def _drop_update_ownership(child: Obj, live: Obj) -> None:
    keep = [
        m
        for m in live["metadata"]["managedFields"]
        if not (m.get("manager") == FIELD_MANAGER and m.get("operation") == "Update")
    ]
    kind, ns, name = child["kind"], child["metadata"]["namespace"], child["metadata"]["name"]
    patch, _, lead = _api(kind)
    args = (*lead, ns, render.KSERVE_PLURAL, name) if lead else (name, ns)
    body = [
        {
            "op": "test",
            "path": "/metadata/resourceVersion",
            "value": live["metadata"]["resourceVersion"],
        },
        {"op": "replace", "path": "/metadata/managedFields", "value": keep},
    ]
    patch(
        *args,
        body,
        _content_type="application/json-patch+json",
        _request_timeout=REQUEST_TIMEOUT_S,
    )


def read_child(ns: str, child: Obj) -> Obj | None:
    """The live child named by a `status.child` reference; None when it is gone."""
    try:
        if child["kind"] in ("Deployment", "Service", "ServiceAccount"):
            core = kubernetes.client.CoreV1Api()
            read = {
                "Deployment": kubernetes.client.AppsV1Api().read_namespaced_deployment,
                "Service": core.read_namespaced_service,
                "ServiceAccount": core.read_namespaced_service_account,
            }[child["kind"]]
            out: Obj = kubernetes.client.ApiClient().sanitize_for_serialization(
                read(child["name"], ns, _request_timeout=REQUEST_TIMEOUT_S)
            )
            out["kind"] = child["kind"]
            return out
        out = kubernetes.client.CustomObjectsApi().get_namespaced_custom_object(
            render.KSERVE_GROUP,
            render.KSERVE_VERSION,
            ns,
            render.KSERVE_PLURAL,
            child["name"],
            _request_timeout=REQUEST_TIMEOUT_S,
        )
        return out
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def delete_child(ns: str, child: Obj, uid: str) -> None:
    """Delete the child named by a reference, only if it is still the object `uid` (not one
    made again under the same name since); its pods go with it (background propagation).
    Gone already: nothing to do."""
    opts = {"propagationPolicy": "Background", "preconditions": {"uid": uid}}
    name, kw = child["name"], {"body": opts, "_request_timeout": REQUEST_TIMEOUT_S}
    try:
        if child["kind"] == "Deployment":
            kubernetes.client.AppsV1Api().delete_namespaced_deployment(name, ns, **kw)
        elif child["kind"] == "Service":
            kubernetes.client.CoreV1Api().delete_namespaced_service(name, ns, **kw)
        elif child["kind"] == "ServiceAccount":
            kubernetes.client.CoreV1Api().delete_namespaced_service_account(name, ns, **kw)
        else:
            args = (render.KSERVE_GROUP, render.KSERVE_VERSION, ns, render.KSERVE_PLURAL, name)
            kubernetes.client.CustomObjectsApi().delete_namespaced_custom_object(*args, **kw)
    except ApiException as e:
        if e.status != 404:
            raise


def pods(ns: str, name: str) -> list[Obj]:
    """Every pod labelled perllm.io/service=<name>, as plain dicts (a hand-made copy of a
    child has the label too: `tiers.own_pods` keeps the children's)."""
    core = kubernetes.client.CoreV1Api()
    items = core.list_namespaced_pod(
        ns, label_selector=f"{labels.LABEL_SERVICE}={name}", _request_timeout=REQUEST_TIMEOUT_S
    ).items
    out: list[Obj] = kubernetes.client.ApiClient().sanitize_for_serialization(items)
    return out


def evict(ns: str, pod: str) -> None:
    """Evict through the Eviction API (policy/v1), so PodDisruptionBudgets are honoured."""
    body = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": pod, "namespace": ns},
    }
    kubernetes.client.CoreV1Api().create_namespaced_pod_eviction(
        pod, ns, body, _request_timeout=REQUEST_TIMEOUT_S
    )
