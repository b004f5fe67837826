"""Replicas on both tiers (`spec.tierReplicas`, docs/operator.md "Replicas on both tiers"):
which children a service has, and which it may have had.

Without `spec.tierReplicas` a service has one child named after it, open until PerLLM
decides its tier. With it, one child per tier with replicas, `<name>-<tier>`, pinned to that
tier from the start and labelled `perllm.io/child-tier: <tier>` (its pods too), so that the
children, their pods and their Deployments' selectors are told apart; every pod keeps the
service's label `perllm.io/service`, which the router's discovery and the operator's pod
list select on. Pure: no API calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from perllm.contract import Tier
from perllm.crd import service_spec
from perllm.crd_fields import CHILD_SUFFIX
from perllm.labels import DOMAIN

# On a child of a tiered service and on its pods: the tier the child serves.
LABEL_CHILD_TIER = f"{DOMAIN}/child-tier"
# The ServiceAccount <name>-model of gated hf:// weights under KServe (render.model_account).
ACCOUNT_SUFFIX = "-model"

Obj = dict[str, Any]


@dataclass(frozen=True)
class Part:
    """One child: the tier its pods are pinned to (None: the service's single child,
    pinned per `pinning.target_tier`), its name and its replicas."""

    tier: str | None
    name: str
    replicas: int


def tiered(obj: Obj) -> bool:
    """True when the service asks for replicas per tier (one child per tier)."""
    return (obj.get("spec") or {}).get("tierReplicas") is not None


def single(obj: Obj) -> Part:
    """The one child of a service without `spec.tierReplicas`."""
    return Part(None, obj["metadata"]["name"], int((obj.get("spec") or {}).get("replicas", 1)))


def parts(obj: Obj) -> list[Part]:
    """The children to render, in tier order (edge, cloud); a tier with 0 replicas has none.
    Raises `InvalidService` naming the field for a spec the contract refuses."""
    tr = service_spec(obj).tier_replicas
    if tr is None:
        return [single(obj)]
    name = obj["metadata"]["name"]
    return [Part(t.value, f"{name}-{t.value}", tr[t]) for t in Tier if tr.get(t, 0) > 0]


def ref(child: Obj) -> Obj:
    """`{apiVersion, kind, name}` of a rendered or live child (as `status.child` holds it)."""
    return {
        "apiVersion": child["apiVersion"],
        "kind": child["kind"],
        "name": child["metadata"]["name"],
    }


def children_status(kids: list[Obj]) -> list[Obj]:
    """`status.children` of a tiered service: per tier, the child whose pods serve it (the
    InferenceService or Deployment, not the Service in front) and its replicas."""
    out = []
    for k in kids:
        tier = (k["metadata"].get("labels") or {}).get(LABEL_CHILD_TIER)
        if tier is None or k["kind"] == "Service":
            continue
        spec = k["spec"]
        n = spec["replicas"] if k["kind"] == "Deployment" else spec["predictor"]["minReplicas"]
        out.append({"tier": tier, **ref(k), "replicas": int(n)})
    return out


def possible(obj: Obj, kserve_version: str) -> list[Obj]:
    """A reference to every child that any mode or backend renders for this service: those
    the spec no longer renders are the ones to delete (owner references delete children
    only with their owner)."""
    name = obj["metadata"]["name"]
    names = [name] + [f"{name}-{t.value}" for t in Tier]
    return (
        [{"apiVersion": kserve_version, "kind": "InferenceService", "name": n} for n in names]
        + [{"apiVersion": "apps/v1", "kind": "Deployment", "name": n} for n in names]
        + [{"apiVersion": "v1", "kind": "Service", "name": f"{name}{CHILD_SUFFIX}"}]
        + [{"apiVersion": "v1", "kind": "ServiceAccount", "name": f"{name}{ACCOUNT_SUFFIX}"}]
    )
