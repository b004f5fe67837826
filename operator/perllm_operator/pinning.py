"""Which tier and variant a child's pod template is rendered for (no API calls).

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
"""

from __future__ import annotations

from typing import Any

from perllm.contract import Tier
from perllm_operator import runtimes

OPEN = "open"  # the pin of a template not pinned to a tier yet

Obj = dict[str, Any]


def allowed_variants(obj: Obj) -> list[Obj]:
    spec = obj.get("spec", {})
    allowed = spec.get("allowedTiers", ["edge", "cloud"])
    return [v for v in spec.get("model", {}).get("variants", []) if v["tier"] in allowed]


def target_tier(obj: Obj) -> str | None:
    """The tier the pod template is pinned to; None: open (no decision yet)."""
    tiers = [v["tier"] for v in allowed_variants(obj)]
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
    return variant_for(obj, target_tier(obj))


def variant_for(obj: Obj, tier: str | None) -> Obj:
    variants = allowed_variants(obj)
    if tier is not None:
        return dict(next(v for v in variants if v["tier"] == tier))
    no_gpu = [v for v in variants if not needs_gpu(variant_resources(v))]
    cloud = [v for v in variants if v["tier"] == Tier.CLOUD.value]
    return dict((no_gpu or cloud or variants)[0])


def resolved(obj: Obj, variant: Obj) -> runtimes.Resolved:
    """The runtime, format, image and weights of `variant` (one of `obj`'s)."""
    model = obj["spec"]["model"]
    index = next(i for i, v in enumerate(model["variants"]) if v["tier"] == variant["tier"])
    return runtimes.resolve(model, variant, index)


def any_gpu(obj: Obj) -> bool:
    return any(needs_gpu(variant_resources(v)) for v in allowed_variants(obj))


def variant_resources(variant: Obj) -> Obj:
    res = variant.get("resources", {})
    return {k: dict(res[k]) for k in ("requests", "limits") if k in res}


def needs_gpu(resources: Obj) -> bool:
    return runtimes.requests_gpu(resources)


def check_variants(obj: Obj, deployment_backend: bool) -> None:
    """Every allowed variant can run, not only the one rendered now: an open template runs
    one tier's variant, and another tier's would otherwise be refused only once PerLLM
    pins the service to it (the pods then keep the wrong variant while each re-render
    fails). InvalidService names the variant's field."""
    model = obj["spec"]["model"]
    for v in allowed_variants(obj):
        run = resolved(obj, v)
        if deployment_backend:
            runtimes.server_args(run, v, model["name"], obj["metadata"]["name"])
