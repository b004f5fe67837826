"""Pure rendering of an `LLMService` into its children (no API calls).

`backend: kserve` renders a KServe `InferenceService` (v1beta1, RawDeployment, external
autoscaler); `backend: deployment` renders a Deployment + ClusterIP Service. Children have
the LLMService's name (the Service: `<name>-predictor`, like KServe's) and a controller
ownerReference to it, so the garbage collector deletes them with it.

Resources: the pod template carries the resources of one variant, the cloud variant when
the cloud tier is allowed, else the first allowed one. The node affinity admits every
allowed tier; the PerLLM extender picks the tier at scheduling time, and re-rendering the
resources for the tier actually chosen is later work (issue #4, second part).
"""

from __future__ import annotations

import os
from typing import Any

from perllm.contract import ServiceSpec, Tier
from perllm.crd import GROUP, KIND, VERSION, service_spec
from perllm.labels import (  # noqa: F401 - re-exported names
    ANN_DEADLINE,
    ANN_DEADLINE_PER_TOKEN,
    ANN_MIN_QUALITY,
    ANN_PERCENTILE,
    DOMAIN,
    GPU_RESOURCE,
    LABEL_SERVICE,
    LABEL_TIER,
    SCHEDULER_NAME,
)

CONTAINER = "model-server"
DEFAULT_IMAGE = "vllm/vllm-openai:latest"
IMAGE_ENV = "PERLLM_MODEL_SERVER_IMAGE"
PORT = 8080

KSERVE_GROUP = "serving.kserve.io"
KSERVE_VERSION = "v1beta1"
KSERVE_PLURAL = "inferenceservices"
KSERVE_CRD = f"{KSERVE_PLURAL}.{KSERVE_GROUP}"

Obj = dict[str, Any]


def _num(x: float) -> str:
    return f"{x:g}"


def owner_reference(obj: Obj) -> Obj:
    meta = obj["metadata"]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def chosen_variant(obj: Obj) -> Obj:
    """The variant whose resources the pod template carries: cloud if allowed, else the
    first variant of an allowed tier."""
    spec = obj.get("spec", {})
    allowed = spec.get("allowedTiers", ["edge", "cloud"])
    variants = [v for v in spec.get("model", {}).get("variants", []) if v["tier"] in allowed]
    if not variants:
        raise ValueError(f"LLMService {obj['metadata']['name']}: no variant of an allowed tier")
    cloud = [v for v in variants if v["tier"] == Tier.CLOUD.value]
    return dict((cloud or variants)[0])


def _resources(variant: Obj) -> Obj:
    res = variant.get("resources", {})
    return {k: dict(res[k]) for k in ("requests", "limits") if k in res}


def _needs_gpu(resources: Obj) -> bool:
    return any(GPU_RESOURCE in resources.get(k, {}) for k in ("requests", "limits"))


def labels(obj: Obj) -> dict[str, str]:
    return {LABEL_SERVICE: obj["metadata"]["name"]}


def pod_annotations(spec: ServiceSpec) -> dict[str, str]:
    dl = spec.requirements.deadline
    return {
        ANN_DEADLINE: _num(dl.seconds),
        ANN_DEADLINE_PER_TOKEN: _num(dl.per_output_token_s),
        ANN_PERCENTILE: _num(dl.percentile),
        ANN_MIN_QUALITY: _num(spec.requirements.min_quality),
    }


def affinity(spec: ServiceSpec) -> Obj:
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{
            "key": LABEL_TIER, "operator": "In",
            "values": [t.value for t in spec.allowed_tiers]}]}]}}}


def tolerations(resources: Obj) -> list[Obj]:
    if not _needs_gpu(resources):
        return []
    return [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]


def _metadata(obj: Obj, name: str) -> Obj:
    return {
        "name": name,
        "namespace": obj["metadata"].get("namespace"),
        "labels": labels(obj),
        "ownerReferences": [owner_reference(obj)],
    }


def inference_service(obj: Obj) -> Obj:
    """The KServe InferenceService of an LLMService (INTERFACES.md §2.5)."""
    spec = service_spec(obj)
    name = obj["metadata"]["name"]
    model = obj["spec"]["model"]
    res = _resources(chosen_variant(obj))
    meta = _metadata(obj, name)
    meta["annotations"] = {
        "serving.kserve.io/deploymentMode": "RawDeployment",
        "serving.kserve.io/autoscalerClass": "external",
    }
    m: Obj = {
        "modelFormat": {"name": model.get("format", "huggingface")},
        "args": [f"--model_name={name}"],
        "resources": res,
    }
    if model.get("runtime"):
        m["runtime"] = model["runtime"]
    if model.get("storageUri"):
        m["storageUri"] = model["storageUri"]
    predictor: Obj = {
        "schedulerName": SCHEDULER_NAME,
        "minReplicas": int(obj["spec"].get("replicas", 1)),
        "labels": labels(obj),
        "annotations": pod_annotations(spec),
        "affinity": affinity(spec),
        "model": m,
    }
    if tol := tolerations(res):
        predictor["tolerations"] = tol
    return {
        "apiVersion": f"{KSERVE_GROUP}/{KSERVE_VERSION}",
        "kind": "InferenceService",
        "metadata": meta,
        "spec": {"predictor": predictor},
    }


def service_name(obj: Obj) -> str:
    return f"{obj['metadata']['name']}-predictor"


def deployment(obj: Obj, image: str | None = None) -> Obj:
    """The Deployment of `backend: deployment` (same scheduling fields as the ISVC)."""
    spec = service_spec(obj)
    name = obj["metadata"]["name"]
    model = obj["spec"]["model"]
    res = _resources(chosen_variant(obj))
    image = image or os.environ.get(IMAGE_ENV, DEFAULT_IMAGE)
    container: Obj = {
        "name": CONTAINER,
        "image": image,
        "args": ["--model", model.get("storageUri", model["name"]).removeprefix("hf://"),
                 "--served-model-name", name, "--port", str(PORT)],
        "ports": [{"name": "http", "containerPort": PORT}],
        "resources": res,
    }
    pod_spec: Obj = {
        "schedulerName": SCHEDULER_NAME,
        "affinity": affinity(spec),
        "containers": [container],
    }
    if tol := tolerations(res):
        pod_spec["tolerations"] = tol
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(obj, name),
        "spec": {
            "replicas": int(obj["spec"].get("replicas", 1)),
            "selector": {"matchLabels": labels(obj)},
            "template": {
                "metadata": {"labels": labels(obj), "annotations": pod_annotations(spec)},
                "spec": pod_spec,
            },
        },
    }


def service(obj: Obj) -> Obj:
    """The ClusterIP Service in front of the Deployment (`<name>-predictor`)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(obj, service_name(obj)),
        "spec": {
            "type": "ClusterIP",
            "selector": labels(obj),
            "ports": [{"name": "http", "port": 80, "targetPort": PORT, "protocol": "TCP"}],
        },
    }


def children(obj: Obj) -> list[Obj]:
    """Every child of the LLMService, per its backend."""
    if obj.get("spec", {}).get("backend", "kserve") == "deployment":
        return [deployment(obj), service(obj)]
    return [inference_service(obj)]
