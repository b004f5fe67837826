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
from perllm.crd import InvalidService, service_spec
from perllm.crd_fields import CHILD_SUFFIX
from perllm.labels import DOMAIN

# On a child of a tiered service and on its pods: the tier the child serves.
LABEL_CHILD_TIER = f"{DOMAIN}/child-tier"
# The ServiceAccount <name>-model of gated hf:// weights under KServe (render.model_account).
ACCOUNT_SUFFIX = "-model"
# Set by the Deployment controller on each pod of a Deployment, whose ReplicaSet (the pod's
# controller) it names `<deployment>-<pod-template-hash>`.
POD_TEMPLATE_HASH = "pod-template-hash"

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


def pod_deployments(obj: Obj) -> set[str]:
    """The Deployments whose pods are the service's: with `backend: deployment` its
    children (`<name>`, or `<name>-<tier>` per tier); with `backend: kserve` those KServe
    v0.15's RawDeployment makes of its InferenceServices, `<isvc>-predictor`
    (`<isvc>-predictor-default` where a Service of that pre-v0.9 name exists). A spec the
    contract refuses: every child name of either form."""
    name = obj["metadata"]["name"]
    try:
        names = [p.name for p in parts(obj)]
    except (InvalidService, ValueError):
        names = [name] + [f"{name}-{t.value}" for t in Tier]
    if (obj.get("spec") or {}).get("backend", "kserve") == "deployment":
        return set(names)
    return {f"{n}{CHILD_SUFFIX}{s}" for n in names for s in ("", "-default")}


def deployment_of(pod: Obj) -> str | None:
    """The Deployment a pod belongs to, by name, read from the pod alone (no API call): its
    controller ownerReference is a ReplicaSet `<deployment>-<hash>` and the pod carries
    the label `pod-template-hash: <hash>`. None for any other pod (a bare pod, a
    StatefulSet's, a hand-made ReplicaSet's without that label)."""
    meta = pod.get("metadata") or {}
    h = (meta.get("labels") or {}).get(POD_TEMPLATE_HASH)
    ctrl = next((r for r in meta.get("ownerReferences") or [] if r.get("controller")), None)
    if not h or ctrl is None or ctrl.get("kind") != "ReplicaSet":
        return None
    if ctrl.get("apiVersion") != "apps/v1":
        return None
    rs = str(ctrl.get("name") or "")
    return rs[: -len(h) - 1] if rs.endswith(f"-{h}") and len(rs) > len(h) + 1 else None


def own_pods(obj: Obj, pods: list[Obj]) -> list[Obj]:
    """The pods of `pods` (those labelled `perllm.io/service: <name>`) that the service's
    children made (`pod_deployments`, `deployment_of`): a copy of a child made by hand
    under another name keeps the pods' labels, and its pods were counted in the status
    (`Placed`, the tiers' nodes), read in its telemetry and could be evicted."""
    mine = pod_deployments(obj)
    return [p for p in pods if deployment_of(p) in mine]
