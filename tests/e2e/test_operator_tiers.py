"""Replicas on both tiers (issue #13, build item 2) on a real API server: an LLMService with
`spec.tierReplicas: {edge: 1, cloud: 1}` becomes one child per tier; perllm-scheduler, with
the PerLLM extender deciding (not ignorable), binds each child's pod to a node of its own
tier; the router's discovery finds both; the extender's decisions (and a placement record
of the other tier) never re-render either child; dropping a tier deletes its child, and
leaving the mode goes back to one child. The operator runs with only its ServiceAccount's
rights (tests/e2e/operator_harness.py), so those suffice for deleting children too.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from perllm.crd import PLURAL
from perllm.devcluster.kube import Kube, wait_for
from perllm.profiles import default_catalogue
from perllm.router.discovery import backends_from

from .operator_harness import (
    Operator,
    events,
    example,
    merge_patch,
    pods_by_tier,
    reconciled,
    wait_condition,
)
from .test_extender import Extender

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600), pytest.mark.usefixtures("operator_log")]

NAME = "help-desk-both-tiers"
Obj = dict[str, Any]


def _deployment(kube: Kube, ns: str, name: str) -> Obj | None:
    out: Obj | None = kube.get_or_none("deployment", name, "-n", ns)
    return out


def test_one_child_per_tier_placed_in_its_tier_never_re_pinned(
    kube: Kube, operator: Operator, deciding_extender: Extender, namespace: str
) -> None:
    kube.apply(example(NAME, backend="deployment"), namespace)
    deps = {
        tier: wait_for(
            lambda t=tier: _deployment(kube, namespace, f"{NAME}-{t}"),  # type: ignore[misc]
            f"the {tier} Deployment",
        )
        for tier in ("edge", "cloud")
    }
    assert _deployment(kube, namespace, NAME) is None
    svc = wait_for(
        lambda: kube.get_or_none("service", f"{NAME}-predictor", "-n", namespace), "the Service"
    )
    assert svc["spec"]["selector"] == {"perllm.io/service": NAME}
    for tier, dep in deps.items():
        assert dep["metadata"]["annotations"]["perllm.io/pinned-tier"] == tier
        assert dep["spec"]["selector"]["matchLabels"]["perllm.io/child-tier"] == tier

    # Each pod is decided by the extender and bound to a node of its own tier.
    by_tier = wait_for(lambda: pods_by_tier(kube, namespace, NAME), "one bound pod per tier", 120)
    tier_of_node = {
        n["metadata"]["name"]: n["metadata"]["labels"]["perllm.io/tier"]
        for n in kube.get("nodes", "-l", "perllm.io/tier")["items"]
    }
    for tier, (pod,) in by_tier.items():
        node = pod["spec"]["nodeName"]
        assert tier_of_node[node] == tier, (pod["metadata"]["name"], node)
        assert pod["metadata"]["annotations"]["perllm.io/variant-tier"] == tier
        decision = deciding_extender.decision(f"{namespace}/{pod['metadata']['name']}")
        assert decision["chosen"] == node, decision

    # Status: the children per tier, no single child; Ready over both (KWOK runs the pods).
    obj = wait_for(lambda: reconciled(kube, namespace, NAME), "Reconciled=True")
    st = obj["status"]
    assert "child" not in st
    assert [(c["tier"], c["kind"], c["name"], c["replicas"]) for c in st["children"]] == [
        ("edge", "Deployment", f"{NAME}-edge", 1),
        ("cloud", "Deployment", f"{NAME}-cloud", 1),
    ]
    wait_condition(kube, namespace, NAME, "Ready", timeout=120)
    wait_condition(kube, namespace, NAME, "Placed", timeout=60)
    wide = kube.kubectl("get", PLURAL, NAME, "-n", namespace, "-o", "wide").stdout
    assert "TIERREPLICAS" in wide.splitlines()[0] and '"edge":1' in wide

    # The router's discovery (label perllm.io/service) finds both tiers' pods.
    pods = kube.get("pods", "-n", namespace, "-l", f"perllm.io/service={NAME}")["items"]
    nodes = {n["metadata"]["name"]: n for n in kube.get("nodes")["items"]}
    backends = backends_from(pods, nodes, default_catalogue())
    assert sorted(b.tier.value for b in backends) == ["cloud", "edge"]

    # The extender's decisions published both tiers in turn; a record of either tier (and a
    # re-placement target) must not re-render the other tier's child.
    for tier in ("edge", "cloud"):
        placement = {"tier": tier, "nodes": sorted(tier_of_node), "feasible": True}
        merge_patch(kube, namespace, NAME, {"status": {"placement": placement}}, status=True)
        time.sleep(5)  # two status ticks (2 s) with follow_tier
    for tier, dep in deps.items():
        now = _deployment(kube, namespace, f"{NAME}-{tier}")
        assert now is not None and now["metadata"]["uid"] == dep["metadata"]["uid"]
        assert now["metadata"]["generation"] == dep["metadata"]["generation"], tier
        assert now["metadata"]["annotations"]["perllm.io/pinned-tier"] == tier
    assert not events(kube, namespace, NAME, "TierChanged")
    assert pods_by_tier(kube, namespace, NAME) is not None  # no rollout either

    # Drop the edge: its Deployment (and pod) go; the cloud one stays as it was.
    merge_patch(kube, namespace, NAME, {"spec": {"tierReplicas": {"edge": None}}})
    wait_for(
        lambda: _deployment(kube, namespace, f"{NAME}-edge") is None,
        "the edge Deployment deleted",
        timeout=60,
    )
    cloud = _deployment(kube, namespace, f"{NAME}-cloud")
    assert cloud is not None and cloud["metadata"]["uid"] == deps["cloud"]["metadata"]["uid"]

    def cloud_only() -> Obj | None:
        o = reconciled(kube, namespace, NAME)
        if o is None or o["status"].get("observedGeneration") != o["metadata"]["generation"]:
            return None
        return o if [c["tier"] for c in o["status"]["children"]] == ["cloud"] else None

    obj = wait_for(cloud_only, "status.children of the cloud only")
    reconciled_msg = next(c for c in obj["status"]["conditions"] if c["type"] == "Reconciled")
    assert f"deleted Deployment {NAME}-edge" in reconciled_msg["message"]

    # Leave the mode: one child named after the service again, the tiered one deleted, the
    # Service kept.
    merge_patch(kube, namespace, NAME, {"spec": {"tierReplicas": None}})
    wait_for(lambda: _deployment(kube, namespace, NAME), "the single Deployment")
    wait_for(
        lambda: _deployment(kube, namespace, f"{NAME}-cloud") is None,
        "the cloud Deployment deleted",
        timeout=60,
    )
    obj = wait_for(
        lambda: (lambda o: o if o and o["status"].get("child") else None)(
            kube.get_or_none(PLURAL, NAME, "-n", namespace)
        ),
        "status.child again",
    )
    assert obj["status"]["child"]["name"] == NAME and "children" not in obj["status"]
    same = kube.get_or_none("service", f"{NAME}-predictor", "-n", namespace)
    assert same["metadata"]["uid"] == svc["metadata"]["uid"]
    assert operator.alive()


def test_kserve_backend_one_inference_service_per_tier(
    kube: Kube, operator: Operator, namespace: str
) -> None:
    """KServe's real CRD (strict validation) admits both children; no KServe controller
    runs, so there are no pods."""
    kube.apply(example(NAME), namespace)
    for tier in ("edge", "cloud"):
        isvc = wait_for(
            lambda t=tier: kube.get_or_none("isvc", f"{NAME}-{t}", "-n", namespace),  # type: ignore[misc]
            f"the {tier} InferenceService",
        )
        p = isvc["spec"]["predictor"]
        assert p["labels"] == {"perllm.io/service": NAME, "perllm.io/child-tier": tier}
        assert p["annotations"]["perllm.io/variant-tier"] == tier
    obj = wait_for(lambda: reconciled(kube, namespace, NAME), "Reconciled=True")
    assert [c["kind"] for c in obj["status"]["children"]] == ["InferenceService"] * 2
    assert kube.get_or_none("isvc", NAME, "-n", namespace) is None
