"""Pure rendering of an `LLMService` into its children (no API calls).

`backend: kserve` renders a KServe `InferenceService` (v1beta1, RawDeployment, external
autoscaler); `backend: deployment` renders a Deployment + ClusterIP Service. Children have
the LLMService's name (the Service: `<name>-predictor`, like KServe's) and a controller
ownerReference to it, so the garbage collector deletes them with it.

Which tier and variant the pod template is rendered for: pinning.py (docs/operator.md,
"Per-tier variants"); the parts every child shares: podspec.py.

With `spec.tierReplicas` (tiers.py) there is one child per tier, `<name>-<tier>`, each
pinned to its tier from the start; the extender's decisions never re-pin them.

Gated hf:// weights under KServe (`model_account`): KServe v0.15's storage initializer,
not the model server, downloads `storageUri`, and takes credentials only from the Secrets
of the predictor pod's ServiceAccount. A service with `spec.model.tokenSecretRef` and hf://
weights on an allowed tier gets one more child, the ServiceAccount `<name>-model` listing
that Secret, and each InferenceService fetching hf:// weights runs as it.
"""

from __future__ import annotations

from typing import Any

from perllm.crd_fields import hf_weights
from perllm.labels import SCHEDULER_NAME
from perllm_operator import pinning, podspec, runtimes, tiers
from perllm_operator.tiers import Part

KSERVE_GROUP = "serving.kserve.io"
KSERVE_VERSION = "v1beta1"
KSERVE_PLURAL = "inferenceservices"
KSERVE_CRD = f"{KSERVE_PLURAL}.{KSERVE_GROUP}"

Obj = dict[str, Any]


def inference_service(obj: Obj, part: Part | None = None) -> Obj:
    """The KServe InferenceService of an LLMService (of one tier's `part` when tiered)."""
    c = podspec.child_inputs(obj, part)
    spec, name, model, variant, res, run = c.spec, c.name, c.model, c.variant, c.res, c.run
    meta = podspec.metadata(obj, name, c.child_tier)
    meta["annotations"] = {
        "serving.kserve.io/deploymentMode": "RawDeployment",
        "serving.kserve.io/autoscalerClass": "external",
        **c.annotations,
    }
    m: Obj = {"modelFormat": {"name": run.format}, "runtime": run.runtime, "resources": res}
    if run.storage_uri:
        m["storageUri"] = run.storage_uri
    if env := runtimes.token_env(model):
        m["env"] = env
    m["readinessProbe"] = podspec.readiness_probe()  # merged into the runtime's container
    predictor: Obj = {
        "schedulerName": SCHEDULER_NAME,
        "minReplicas": c.replicas,
        "labels": podspec.labels(obj, c.child_tier),
        "annotations": {
            **podspec.pod_annotations(spec, variant),
            **podspec.scrape_annotations(run),
        },
        "affinity": c.affinity,
        "model": m,
    }
    if c.tolerations:
        predictor["tolerations"] = c.tolerations
    if (run.storage_uri or "").startswith("hf://") and model.get("tokenSecretRef"):
        predictor["serviceAccountName"] = model_account_name(obj)
    return {
        "apiVersion": f"{KSERVE_GROUP}/{KSERVE_VERSION}",
        "kind": "InferenceService",
        "metadata": meta,
        "spec": {"predictor": predictor},
    }


def service_name(obj: Obj) -> str:
    return f"{obj['metadata']['name']}-predictor"


def model_account_name(obj: Obj) -> str:
    return f"{obj['metadata']['name']}{tiers.ACCOUNT_SUFFIX}"


def needs_model_account(obj: Obj) -> bool:
    """Backend kserve, a token Secret and hf:// weights on some allowed tier. Decided over
    every allowed variant, not the one rendered now, so that a tier switch (which applies
    without pruning) neither leaves the account behind nor misses it."""
    spec = obj.get("spec") or {}
    return (
        spec.get("backend", "kserve") == "kserve"
        and bool((spec.get("model") or {}).get("tokenSecretRef"))
        and hf_weights(spec)
    )


def model_account(obj: Obj) -> Obj:
    """The ServiceAccount KServe's storage initializer takes the Hugging Face token from:
    KServe v0.15 reads the Secrets listed in the predictor pod's account (`secrets`), and
    from each the data key HF_TOKEN (crd.service_spec refuses another key). The operator
    never reads the Secret; no API token is mounted in the model-server pods."""
    ref = obj["spec"]["model"]["tokenSecretRef"]
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": podspec.metadata(obj, model_account_name(obj)),
        "automountServiceAccountToken": False,
        "secrets": [{"name": ref["name"]}],
    }


def deployment(obj: Obj, part: Part | None = None) -> Obj:
    """The Deployment of `backend: deployment` (same scheduling fields as the ISVC), running
    the variant's own server image and weights (one tier's `part` when tiered: its selector
    names the tier too, so that the two Deployments never select each other's pods)."""
    c = podspec.child_inputs(obj, part)
    spec, name, model, variant, res, run = c.spec, c.name, c.model, c.variant, c.res, c.run
    container: Obj = {
        "name": podspec.CONTAINER,
        "image": run.image,
        "args": runtimes.server_args(run, variant, model["name"], name),
        "ports": [{"name": "http", "containerPort": podspec.PORT}],
        "resources": res,
        "readinessProbe": podspec.readiness_probe(),
    }
    if env := runtimes.token_env(model):
        container["env"] = env
    pod_spec: Obj = {
        "schedulerName": SCHEDULER_NAME,
        "affinity": c.affinity,
        "containers": [container],
    }
    if c.tolerations:
        pod_spec["tolerations"] = c.tolerations
    meta = podspec.metadata(obj, name, c.child_tier)
    meta["annotations"] = c.annotations
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": c.replicas,
            "selector": {"matchLabels": podspec.labels(obj, c.child_tier)},
            "template": {
                "metadata": {
                    "labels": podspec.labels(obj, c.child_tier),
                    "annotations": {
                        **podspec.pod_annotations(spec, variant),
                        **podspec.scrape_annotations(run),
                    },
                },
                "spec": pod_spec,
            },
        },
    }


def service(obj: Obj) -> Obj:
    """The ClusterIP Service in front of the Deployment (`<name>-predictor`; of a tiered
    service, in front of both tiers' Deployments)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": podspec.metadata(obj, service_name(obj)),
        "spec": {
            "type": "ClusterIP",
            "selector": podspec.labels(obj),
            "ports": [{"name": "http", "port": 80, "targetPort": podspec.PORT, "protocol": "TCP"}],
        },
    }


def children(obj: Obj) -> list[Obj]:
    """Every child of the LLMService, per its backend (and its tiers, when tiered), the
    pods' children first (under KServe, the ServiceAccount of gated weights last). Raises
    InvalidService naming the field when the spec, or any allowed variant, cannot be
    rendered."""
    parts = tiers.parts(obj)
    on_deployment = obj.get("spec", {}).get("backend", "kserve") == "deployment"
    pinning.check_variants(obj, on_deployment)
    if on_deployment:
        return [deployment(obj, p) for p in parts] + [service(obj)]
    isvcs = [inference_service(obj, p) for p in parts]
    return isvcs + ([model_account(obj)] if needs_model_account(obj) else [])


def rendered_tier(child: Obj) -> str | None:
    """The pin a live child was rendered with (a tier or `OPEN`; None: rendered by an
    operator that did not pin)."""
    ann = (child.get("metadata") or {}).get("annotations") or {}
    return ann.get(podspec.ANN_PINNED_TIER)
