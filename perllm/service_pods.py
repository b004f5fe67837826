"""An `LLMService`'s children and its own pods: one rule for the operator (its status
timer, `Placed`, re-placement: `perllm_operator.tiers`) and the router's discovery
(`perllm.router.discovery`), so the two never disagree on which pods are the service's.
Pure: no API calls.

Every model-server pod carries the label `perllm.io/service: <name>`, but so does a copy
of a child made by hand under another name (a Deployment copied with its pod template):
a pod is the service's own only when its controller is a ReplicaSet of one of the
service's Deployments, told from the pod alone (`deployment_of`, `own_pods`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from perllm.contract import Tier
from perllm.crd import InvalidService, service_spec
from perllm.crd_fields import CHILD_SUFFIX
from perllm.labels import LABEL_SERVICE

# Set by the Deployment controller on each pod of a Deployment, whose ReplicaSet (the pod's
# controller) it names `<deployment>-<pod-template-hash>`.
POD_TEMPLATE_HASH = "pod-template-hash"

Obj = dict[str, Any]


@dataclass(frozen=True)
class Part:
    """One child: the tier its pods are pinned to (None: the service's single child,
    pinned per the operator's `pinning.target_tier`), its name and its replicas."""

    tier: str | None
    name: str
    replicas: int


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


def possible_names(name: str) -> list[str]:
    """Every name a child of service `name` has in any mode: `<name>`, `<name>-<tier>`."""
    return [name] + [f"{name}-{t.value}" for t in Tier]


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
        names = possible_names(name)
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
    under another name keeps the pods' labels, and its pods were counted in the operator's
    status (`Placed`, the tiers' nodes), read in its telemetry and could be evicted, and
    were routed to by the router."""
    mine = pod_deployments(obj)
    return [p for p in pods if deployment_of(p) in mine]


def by_service(pods: list[Obj]) -> dict[tuple[str, str], list[Obj]]:
    """`pods` by (namespace, `perllm.io/service` label): each service's candidates for
    `own_pods`, from one list of the labelled pods of many services."""
    out: dict[tuple[str, str], list[Obj]] = {}
    for p in pods:
        meta = p.get("metadata") or {}
        key = (
            str(meta.get("namespace", "")),
            str((meta.get("labels") or {}).get(LABEL_SERVICE, "")),
        )
        out.setdefault(key, []).append(p)
    return out
