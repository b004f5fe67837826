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


def apply(child: Obj) -> Obj:
    """Create the child, or patch it in place when it exists. Returns the live object."""
    kind, ns, name = child["kind"], child["metadata"]["namespace"], child["metadata"]["name"]
    fm = FIELD_MANAGER
    if kind == "InferenceService":
        co = kubernetes.client.CustomObjectsApi()
        args = (render.KSERVE_GROUP, render.KSERVE_VERSION, ns, render.KSERVE_PLURAL)
        out: Obj = _create_or_patch(
            lambda: co.create_namespaced_custom_object(*args, child, field_manager=fm),
            lambda: co.patch_namespaced_custom_object(*args, name, child, field_manager=fm),
        )
        return out
    if kind == "Deployment":
        apps = kubernetes.client.AppsV1Api()
        live = _create_or_patch(
            lambda: apps.create_namespaced_deployment(ns, child, field_manager=fm),
            lambda: apps.patch_namespaced_deployment(name, ns, child, field_manager=fm),
        )
    elif kind == "Service":
        core = kubernetes.client.CoreV1Api()
        live = _create_or_patch(
            lambda: core.create_namespaced_service(ns, child, field_manager=fm),
            lambda: core.patch_namespaced_service(name, ns, child, field_manager=fm),
        )
    else:
        raise ValueError(f"unknown child kind {kind}")
    res: Obj = kubernetes.client.ApiClient().sanitize_for_serialization(live)
    return res


def read_child(ns: str, child: Obj) -> Obj | None:
    """The live child named by a `status.child` reference; None when it is gone."""
    try:
        if child["kind"] == "Deployment":
            dep = kubernetes.client.AppsV1Api().read_namespaced_deployment(child["name"], ns)
            out: Obj = kubernetes.client.ApiClient().sanitize_for_serialization(dep)
            out["kind"] = "Deployment"
            return out
        out = kubernetes.client.CustomObjectsApi().get_namespaced_custom_object(
            render.KSERVE_GROUP, render.KSERVE_VERSION, ns, render.KSERVE_PLURAL, child["name"]
        )
        return out
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def pods(ns: str, name: str) -> list[Obj]:
    """The pods of a service (label perllm.io/service), as plain dicts."""
    core = kubernetes.client.CoreV1Api()
    items = core.list_namespaced_pod(ns, label_selector=f"{labels.LABEL_SERVICE}={name}").items
    out: list[Obj] = kubernetes.client.ApiClient().sanitize_for_serialization(items)
    return out


def evict(ns: str, pod: str) -> None:
    """Evict through the Eviction API (policy/v1), so PodDisruptionBudgets are honoured."""
    body = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": pod, "namespace": ns},
    }
    kubernetes.client.CoreV1Api().create_namespaced_pod_eviction(pod, ns, body)
