"""Replicas on both tiers (`spec.tierReplicas`, docs/operator.md "Replicas on both tiers"):
which children a service has, and which it may have had.

Without `spec.tierReplicas` a service has one child named after it, open until PerLLM
decides its tier. With it, one child per tier with replicas, `<name>-<tier>`, pinned to that
tier from the start and labelled `perllm.io/child-tier: <tier>` (its pods too), so that the
children, their pods and their Deployments' selectors are told apart; every pod keeps the
service's label `perllm.io/service`, which the router's discovery and the operator's pod
list select on, each keeping only the pods the children made (`perllm.service_pods`, the
one rule both use). Pure: no API calls.
"""

from __future__ import annotations

from typing import Any

from perllm.crd_fields import CHILD_SUFFIX
from perllm.labels import DOMAIN

# The children and the service's own pods: the one rule the router's discovery uses too
# (re-exported: the operator's modules call them as tiers.*).
from perllm.service_pods import Part as Part
from perllm.service_pods import own_pods as own_pods
from perllm.service_pods import parts as parts
from perllm.service_pods import possible_names
from perllm.service_pods import single as single

# On a child of a tiered service and on its pods: the tier the child serves.
LABEL_CHILD_TIER = f"{DOMAIN}/child-tier"
# The ServiceAccount <name>-model of gated hf:// weights under KServe (render.model_account).
ACCOUNT_SUFFIX = "-model"

Obj = dict[str, Any]


def tiered(obj: Obj) -> bool:
    """True when the service asks for replicas per tier (one child per tier)."""
    return (obj.get("spec") or {}).get("tierReplicas") is not None


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
    names = possible_names(name)
    return (
        [{"apiVersion": kserve_version, "kind": "InferenceService", "name": n} for n in names]
        + [{"apiVersion": "apps/v1", "kind": "Deployment", "name": n} for n in names]
        + [{"apiVersion": "v1", "kind": "Service", "name": f"{name}{CHILD_SUFFIX}"}]
        + [{"apiVersion": "v1", "kind": "ServiceAccount", "name": f"{name}{ACCOUNT_SUFFIX}"}]
    )
