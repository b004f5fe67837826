"""Pure rendering of an `LLMService` into its children (no API calls).

`backend: kserve` renders a KServe `InferenceService` (v1beta1, RawDeployment, external
autoscaler); `backend: deployment` renders a Deployment + ClusterIP Service. Children have
the LLMService's name (the Service: `<name>-predictor`, like KServe's) and a controller
ownerReference to it, so the garbage collector deletes them with it.

Per-tier resources (docs/operator.md, "Per-tier variants"): a pod's resources and weights
cannot change after it is bound, so once PerLLM has decided a tier the pod template is
*pinned* to it: that tier's variant (resources, precision, GPU toleration) and a required
node affinity to that tier only, so a pod always requests the resources of the variant of
the tier it runs on. The decision is `status.replacement.tier.target` (re-placement moved
the service because evictions within a tier did not restore the deadline), else
`status.placement.tier` (the extender's latest decision), when either names an allowed
tier; a service with one allowed tier is pinned to it. Before any decision the template
is *open*: affinity to every allowed tier, the variant every tier can host (one without a
GPU request when there is one), and the GPU toleration when any allowed variant needs it,
so that the extender chooses among the nodes of all tiers; the status timer then pins the
template to the tier it chose (a rollout onto that tier's variant).

With `spec.tierReplicas` (tiers.py) there is one child per tier, `<name>-<tier>`, each
pinned to its tier from the start; the extender's decisions never re-pin them.

Gated hf:// weights under KServe (`model_account`): KServe v0.15's storage initializer,
not the model server, downloads `storageUri`, and takes credentials only from the Secrets
of the predictor pod's ServiceAccount. A service with `spec.model.tokenSecretRef` and hf://
weights on an allowed tier gets one more child, the ServiceAccount `<name>-model` listing
that Secret, and each InferenceService fetching hf:// weights runs as it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from perllm.contract import ServiceSpec, Tier
from perllm.crd import GROUP, KIND, VERSION, service_spec
from perllm.crd_fields import hf_weights
from perllm.labels import (
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
from perllm_operator import runtimes, tiers
from perllm_operator.tiers import LABEL_CHILD_TIER, Part

CONTAINER = "model-server"
PORT = runtimes.PORT

KSERVE_GROUP = "serving.kserve.io"
KSERVE_VERSION = "v1beta1"
KSERVE_PLURAL = "inferenceservices"
KSERVE_CRD = f"{KSERVE_PLURAL}.{KSERVE_GROUP}"
# The tier and precision the pod template is rendered for (pods and children carry them).
ANN_VARIANT_TIER = f"{DOMAIN}/variant-tier"
ANN_PINNED_TIER = f"{DOMAIN}/pinned-tier"  # on the child: the pinned tier, or OPEN
OPEN = "open"
ANN_PRECISION = f"{DOMAIN}/precision"

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


def _allowed_variants(obj: Obj) -> list[Obj]:
    spec = obj.get("spec", {})
    allowed = spec.get("allowedTiers", ["edge", "cloud"])
    return [v for v in spec.get("model", {}).get("variants", []) if v["tier"] in allowed]


def target_tier(obj: Obj) -> str | None:
    """The tier the pod template is pinned to; None: open (no decision yet)."""
    tiers = [v["tier"] for v in _allowed_variants(obj)]
    if not tiers:
        raise ValueError(
            f"LLMService {obj['metadata']['name']}: spec.model.variants has no "
            "variant of a tier in spec.allowedTiers"
        )
    status = obj.get("status") or {}
    for cand in (
        ((status.get("replacement") or {}).get("tier") or {}).get("target"),
        (status.get("placement") or {}).get("tier"),
    ):
        if cand in tiers:
            return str(cand)
    return tiers[0] if len(tiers) == 1 else None


def pin(obj: Obj) -> str:
    """`target_tier` as written on the child (`OPEN` while undecided)."""
    return target_tier(obj) or OPEN


def chosen_variant(obj: Obj) -> Obj:
    """The variant whose resources the pod template carries: the pinned tier's; while
    open, one every allowed tier can host (no GPU request if possible, else the cloud's)."""
    return _variant(obj, target_tier(obj))


def _variant(obj: Obj, tier: str | None) -> Obj:
    variants = _allowed_variants(obj)
    if tier is not None:
        return dict(next(v for v in variants if v["tier"] == tier))
    no_gpu = [v for v in variants if not _needs_gpu(_resources(v))]
    cloud = [v for v in variants if v["tier"] == Tier.CLOUD.value]
    return dict((no_gpu or cloud or variants)[0])


def resolved(obj: Obj, variant: Obj) -> runtimes.Resolved:
    """The runtime, format, image and weights of `variant` (one of `obj`'s)."""
    model = obj["spec"]["model"]
    index = next(i for i, v in enumerate(model["variants"]) if v["tier"] == variant["tier"])
    return runtimes.resolve(model, variant, index)


def _any_gpu(obj: Obj) -> bool:
    return any(_needs_gpu(_resources(v)) for v in _allowed_variants(obj))


def _resources(variant: Obj) -> Obj:
    res = variant.get("resources", {})
    return {k: dict(res[k]) for k in ("requests", "limits") if k in res}


def _needs_gpu(resources: Obj) -> bool:
    return any(GPU_RESOURCE in resources.get(k, {}) for k in ("requests", "limits"))


def labels(obj: Obj, tier: str | None = None) -> dict[str, str]:
    """The service's label; a tiered service's child (and its pods) also names its tier."""
    out = {LABEL_SERVICE: obj["metadata"]["name"]}
    if tier is not None:
        out[LABEL_CHILD_TIER] = tier
    return out


def pod_annotations(spec: ServiceSpec, variant: Obj | None = None) -> dict[str, str]:
    dl = spec.requirements.deadline
    out = {
        ANN_DEADLINE: _num(dl.seconds),
        ANN_DEADLINE_PER_TOKEN: _num(dl.per_output_token_s),
        ANN_PERCENTILE: _num(dl.percentile),
        ANN_MIN_QUALITY: _num(spec.requirements.min_quality),
    }
    if variant is not None:
        out[ANN_VARIANT_TIER] = str(variant["tier"])
        out[ANN_PRECISION] = str(variant["precision"])
    return out


def scrape_annotations(run: runtimes.Resolved) -> dict[str, str]:
    """prometheus.io/* on a model-server pod: an annotation-driven Prometheus (the community
    chart's kubernetes-pods job) scrapes the server's own /metrics with no extra job; the
    chart's PodMonitor covers the Prometheus Operator."""
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(run.server.metrics_port),
        "prometheus.io/path": "/metrics",
    }


def readiness_probe() -> Obj:
    """Ready once the model server answers /health with 200 (both servers serve it on
    PORT): llama.cpp's answers 503 while it loads the weights, vLLM's only once its engine
    is up. Without it (Deployment) or with KServe's default TCP probe on the port, a pod
    still fetching or loading its weights was Ready: routed to, and counted by `Ready`."""
    return {"httpGet": {"path": "/health", "port": PORT}, "periodSeconds": 10}


def affinity(tiers: list[str]) -> Obj:
    """Required node affinity to `tiers` (the pinned tier: one entry)."""
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": LABEL_TIER, "operator": "In", "values": list(tiers)}
                        ]
                    }
                ]
            }
        }
    }


def tolerations(resources: Obj, open_gpu: bool = False) -> list[Obj]:
    """The GPU toleration when the pod requests a GPU, or (`open_gpu`) when the open
    template must be able to land on a tier whose variant needs one."""
    if not (_needs_gpu(resources) or open_gpu):
        return []
    return [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]


def _metadata(obj: Obj, name: str, tier: str | None = None) -> Obj:
    return {
        "name": name,
        "namespace": obj["metadata"].get("namespace"),
        "labels": labels(obj, tier),
        "ownerReferences": [owner_reference(obj)],
    }


@dataclass(frozen=True)
class _ChildInputs:
    """What every child kind renders from: the service, the child's name and replicas, the
    tier it is pinned to (None: open) and the one it labels (tiered services only), the
    variant its pods run, that variant's resources and runtime, and the tolerations the pod
    template needs."""

    spec: ServiceSpec
    name: str
    replicas: int
    tier: str | None
    child_tier: str | None
    model: Obj
    variant: Obj
    res: Obj
    run: runtimes.Resolved
    tolerations: list[Obj]
    open_tiers: list[str]  # every allowed tier: the affinity while open

    @property
    def affinity(self) -> Obj:
        """Required node affinity to the pinned tier, or to every allowed tier while open."""
        return affinity([self.tier] if self.tier is not None else self.open_tiers)

    @property
    def annotations(self) -> dict[str, str]:
        """The child's own: its variant's tier and its pin."""
        return {ANN_VARIANT_TIER: str(self.variant["tier"]), ANN_PINNED_TIER: self.tier or OPEN}


def _child_inputs(obj: Obj, part: Part | None) -> _ChildInputs:
    spec = service_spec(obj)
    part = part or tiers.single(obj)
    tier = part.tier if part.tier is not None else target_tier(obj)
    variant = _variant(obj, tier)
    res = _resources(variant)
    return _ChildInputs(
        spec=spec,
        name=part.name,
        replicas=part.replicas,
        tier=tier,
        child_tier=part.tier,
        model=obj["spec"]["model"],
        variant=variant,
        res=res,
        run=resolved(obj, variant),
        tolerations=tolerations(res, open_gpu=tier is None and _any_gpu(obj)),
        open_tiers=[str(v["tier"]) for v in _allowed_variants(obj)],
    )


def inference_service(obj: Obj, part: Part | None = None) -> Obj:
    """The KServe InferenceService of an LLMService (of one tier's `part` when tiered)."""
    c = _child_inputs(obj, part)
    spec, name, model, variant, res, run = c.spec, c.name, c.model, c.variant, c.res, c.run
    meta = _metadata(obj, name, c.child_tier)
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
    m["readinessProbe"] = readiness_probe()  # merged into the runtime's container
    predictor: Obj = {
        "schedulerName": SCHEDULER_NAME,
        "minReplicas": c.replicas,
        "labels": labels(obj, c.child_tier),
        "annotations": {**pod_annotations(spec, variant), **scrape_annotations(run)},
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
        "metadata": _metadata(obj, model_account_name(obj)),
        "automountServiceAccountToken": False,
        "secrets": [{"name": ref["name"]}],
    }


def deployment(obj: Obj, part: Part | None = None) -> Obj:
    """The Deployment of `backend: deployment` (same scheduling fields as the ISVC), running
    the variant's own server image and weights (one tier's `part` when tiered: its selector
    names the tier too, so that the two Deployments never select each other's pods)."""
    c = _child_inputs(obj, part)
    spec, name, model, variant, res, run = c.spec, c.name, c.model, c.variant, c.res, c.run
    container: Obj = {
        "name": CONTAINER,
        "image": run.image,
        "args": runtimes.server_args(run, variant, model["name"], name),
        "ports": [{"name": "http", "containerPort": PORT}],
        "resources": res,
        "readinessProbe": readiness_probe(),
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
    meta = _metadata(obj, name, c.child_tier)
    meta["annotations"] = c.annotations
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": c.replicas,
            "selector": {"matchLabels": labels(obj, c.child_tier)},
            "template": {
                "metadata": {
                    "labels": labels(obj, c.child_tier),
                    "annotations": {**pod_annotations(spec, variant), **scrape_annotations(run)},
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
        "metadata": _metadata(obj, service_name(obj)),
        "spec": {
            "type": "ClusterIP",
            "selector": labels(obj),
            "ports": [{"name": "http", "port": 80, "targetPort": PORT, "protocol": "TCP"}],
        },
    }


def check_variants(obj: Obj, deployment_backend: bool) -> None:
    """Every allowed variant can run, not only the one rendered now: an open template runs
    one tier's variant, and another tier's would otherwise be refused only once PerLLM
    pins the service to it (the pods then keep the wrong variant while each re-render
    fails). InvalidService names the variant's field."""
    model = obj["spec"]["model"]
    for v in _allowed_variants(obj):
        run = resolved(obj, v)
        if deployment_backend:
            runtimes.server_args(run, v, model["name"], obj["metadata"]["name"])


def children(obj: Obj) -> list[Obj]:
    """Every child of the LLMService, per its backend (and its tiers, when tiered), the
    pods' children first (under KServe, the ServiceAccount of gated weights last). Raises
    InvalidService naming the field when the spec, or any allowed variant, cannot be
    rendered."""
    parts = tiers.parts(obj)
    on_deployment = obj.get("spec", {}).get("backend", "kserve") == "deployment"
    check_variants(obj, on_deployment)
    if on_deployment:
        return [deployment(obj, p) for p in parts] + [service(obj)]
    isvcs = [inference_service(obj, p) for p in parts]
    return isvcs + ([model_account(obj)] if needs_model_account(obj) else [])


def rendered_tier(child: Obj) -> str | None:
    """The pin a live child was rendered with (a tier or `OPEN`; None: rendered by an
    operator that did not pin)."""
    ann = (child.get("metadata") or {}).get("annotations") or {}
    return ann.get(ANN_PINNED_TIER)
