"""The parts every child of an `LLMService` shares (no API calls): metadata and owner
reference, labels, the pod annotations the extender reads, the model server's readiness
probe and scrape annotations, the tier affinity and GPU toleration, and `ChildInputs`, what
each child kind renders from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from perllm.contract import ServiceSpec
from perllm.crd import GROUP, KIND, VERSION, service_spec
from perllm.labels import (
    ANN_DEADLINE,
    ANN_DEADLINE_PER_TOKEN,
    ANN_MIN_QUALITY,
    ANN_PERCENTILE,
    DOMAIN,
    GPU_RESOURCE,
    LABEL_SERVICE,
    LABEL_TIER,
    number_text,
)
from perllm_operator import pinning, runtimes, tiers
from perllm_operator.tiers import LABEL_CHILD_TIER, Part

CONTAINER = "model-server"
PORT = runtimes.PORT

# The tier and precision the pod template is rendered for (pods and children carry them).
ANN_VARIANT_TIER = f"{DOMAIN}/variant-tier"
ANN_PINNED_TIER = f"{DOMAIN}/pinned-tier"  # on the child: the pinned tier, or pinning.OPEN
ANN_PRECISION = f"{DOMAIN}/precision"

Obj = dict[str, Any]


def _num(x: float) -> str:
    return number_text(x)  # (what the extender reads back exactly: perllm.labels)


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
    if not (pinning.needs_gpu(resources) or open_gpu):
        return []
    return [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]


def metadata(obj: Obj, name: str, tier: str | None = None) -> Obj:
    return {
        "name": name,
        "namespace": obj["metadata"].get("namespace"),
        "labels": labels(obj, tier),
        "ownerReferences": [owner_reference(obj)],
    }


@dataclass(frozen=True)
class ChildInputs:
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
        return {
            ANN_VARIANT_TIER: str(self.variant["tier"]),
            ANN_PINNED_TIER: self.tier or pinning.OPEN,
        }


def child_inputs(obj: Obj, part: Part | None) -> ChildInputs:
    spec = service_spec(obj)
    part = part or tiers.single(obj)
    tier = part.tier if part.tier is not None else pinning.target_tier(obj)
    variant = pinning.variant_for(obj, tier)
    res = pinning.variant_resources(variant)
    return ChildInputs(
        spec=spec,
        name=part.name,
        replicas=part.replicas,
        tier=tier,
        child_tier=part.tier,
        model=obj["spec"]["model"],
        variant=variant,
        res=res,
        run=pinning.resolved(obj, variant),
        tolerations=tolerations(res, open_gpu=tier is None and pinning.any_gpu(obj)),
        open_tiers=[str(v["tier"]) for v in pinning.allowed_variants(obj)],
    )
