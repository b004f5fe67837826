"""The LLMService operator on a real API server (issue #4, operator part): its children's
life. A kserve-backend LLMService becomes an InferenceService the API server accepts
(project-written test CRD, no KServe controller); a deployment-backend one becomes a
Deployment + Service whose pods perllm-scheduler binds to KWOK nodes of the right tier;
editing the deadline patches the child in place; deleting the LLMService garbage-collects
the children; a SIGKILLed operator converges after restart without duplicates. The operator
runs with only its ServiceAccount's rights (tests/e2e/operator_harness.py).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from perllm.crd import PLURAL
from perllm.devcluster.kube import Kube, wait_for
from tests.rendered import assert_open_chat_assistant_predictor

from .operator_harness import (
    Operator,
    bound_pods,
    condition,
    events,
    example,
    merge_patch,
    reconciled,
    wait_condition,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600), pytest.mark.usefixtures("operator_log")]


def test_kserve_backend_creates_inference_service(
    kube: Kube, operator: Operator, namespace: str
) -> None:
    kube.apply(example("chat-assistant"), namespace)
    isvc = wait_for(
        lambda: kube.get_or_none("isvc", "chat-assistant", "-n", namespace), "the InferenceService"
    )
    meta = isvc["metadata"]
    assert meta["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert meta["annotations"]["serving.kserve.io/autoscalerClass"] == "external"
    owner = kube.get_or_none(PLURAL, "chat-assistant", "-n", namespace)
    (ref,) = meta["ownerReferences"]
    assert ref["uid"] == owner["metadata"]["uid"] and ref["controller"] is True
    # What the renderer makes of it (tests/unit/test_operator_render.py), as admitted.
    assert_open_chat_assistant_predictor(isvc["spec"]["predictor"])
    assert meta["annotations"]["perllm.io/pinned-tier"] == "open"
    obj = wait_for(lambda: reconciled(kube, namespace, "chat-assistant"), "status Reconciled=True")
    st = obj["status"]
    assert st["child"] == {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "name": "chat-assistant",
    }
    assert st["observedGeneration"] == obj["metadata"]["generation"]
    # No KServe controller runs: the InferenceService has no Ready condition.
    assert condition(obj, "Ready")["status"] == "Unknown"  # type: ignore[index]
    # No pods, no extender decision: Placed waits for the scheduler.
    assert condition(obj, "Placed")["status"] == "Unknown"  # type: ignore[index]
    # Gated hf:// weights on the cloud tier: the ServiceAccount KServe's storage initializer
    # takes the token from (applied with the operator's own RBAC), owned like the others.
    sa = kube.get_or_none("serviceaccount", "chat-assistant-model", "-n", namespace)
    assert sa is not None
    (sa_ref,) = sa["metadata"]["ownerReferences"]
    assert sa_ref["uid"] == owner["metadata"]["uid"] and sa_ref["controller"] is True
    assert sa["secrets"] == [{"name": "hf-token"}]
    assert sa["automountServiceAccountToken"] is False
    # The open template fetches the edge variant's https:// GGUF: the default account.
    assert "serviceAccountName" not in isvc["spec"]["predictor"]
    # The extender decides the cloud (status.placement): the child is re-rendered in place,
    # pinned to the cloud with the cloud variant's GPU request.
    merge_patch(
        kube,
        namespace,
        "chat-assistant",
        {"status": {"placement": {"tier": "cloud", "nodes": ["cloud"], "feasible": True}}},
        status=True,
    )

    def pinned() -> dict[str, Any] | None:
        o = kube.get_or_none("isvc", "chat-assistant", "-n", namespace)
        return o if o["metadata"]["annotations"].get("perllm.io/pinned-tier") == "cloud" else None

    isvc2 = wait_for(pinned, "the InferenceService pinned to the cloud", timeout=60)
    assert isvc2["metadata"]["uid"] == isvc["metadata"]["uid"]
    p2 = isvc2["spec"]["predictor"]
    assert p2["model"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert p2["annotations"]["perllm.io/precision"] == "fp16"
    expr2 = p2["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ][0]["matchExpressions"][0]
    assert expr2["values"] == ["cloud"]
    assert p2["serviceAccountName"] == "chat-assistant-model"  # hf:// weights, gated
    wait_for(
        lambda: events(kube, namespace, "chat-assistant", "TierChanged"),
        "TierChanged Event",
        timeout=30,
    )
    assert operator.alive()


def test_deployment_backend_pods_bound_by_perllm_scheduler(
    kube: Kube, operator: Operator, namespace: str
) -> None:
    kube.apply(example("batch-summariser"), namespace)  # cloud only, one GPU
    dep = wait_for(
        lambda: kube.get_or_none("deployment", "batch-summariser", "-n", namespace),
        "the Deployment",
    )
    tpl = dep["spec"]["template"]["spec"]
    assert tpl["schedulerName"] == "perllm-scheduler"
    assert tpl["containers"][0]["name"] == "model-server"
    svc = wait_for(
        lambda: kube.get_or_none("service", "batch-summariser-predictor", "-n", namespace),
        "the Service",
    )
    assert svc["spec"]["selector"] == {"perllm.io/service": "batch-summariser"}
    pods = wait_for(
        lambda: bound_pods(kube, namespace, "batch-summariser"), "bound pods", timeout=120
    )
    for pod in pods:
        assert pod["spec"]["schedulerName"] == "perllm-scheduler"
        node = kube.get_or_none("node", pod["spec"]["nodeName"])
        assert node["metadata"]["labels"]["perllm.io/tier"] == "cloud"
    # Events of perllm-scheduler name it as the binder.
    ev = wait_for(
        lambda: [
            e
            for e in kube.get_or_none("events", "-n", namespace)["items"]
            if e.get("reason") == "Scheduled" and "perllm-scheduler" in json.dumps(e)
        ],
        "Scheduled event",
        timeout=60,
    )
    assert ev
    # KWOK marks the pods ready; the operator mirrors that into Ready=True.
    wait_condition(kube, namespace, "batch-summariser", "Ready", timeout=120)


def test_edit_deadline_patches_child_in_place(
    kube: Kube, operator: Operator, namespace: str
) -> None:
    kube.apply(example("code-assistant"), namespace)
    kube.apply(example("batch-summariser"), namespace)
    isvc = wait_for(lambda: kube.get_or_none("isvc", "code-assistant", "-n", namespace), "isvc")
    dep = wait_for(
        lambda: kube.get_or_none("deployment", "batch-summariser", "-n", namespace), "deployment"
    )
    for name in ("code-assistant", "batch-summariser"):
        merge_patch(
            kube, namespace, name, {"spec": {"requirements": {"deadline": {"seconds": 7.5}}}}
        )

    def isvc_edited() -> Any:
        o = kube.get_or_none("isvc", "code-assistant", "-n", namespace)
        return o if o["spec"]["predictor"]["annotations"]["perllm.io/deadline-s"] == "7.5" else None

    def dep_edited() -> Any:
        o = kube.get_or_none("deployment", "batch-summariser", "-n", namespace)
        ann = o["spec"]["template"]["metadata"]["annotations"]
        return o if ann["perllm.io/deadline-s"] == "7.5" else None

    new_isvc = wait_for(isvc_edited, "edited InferenceService")
    new_dep = wait_for(dep_edited, "edited Deployment")
    assert new_isvc["metadata"]["uid"] == isvc["metadata"]["uid"]
    assert new_dep["metadata"]["uid"] == dep["metadata"]["uid"]
    obj = wait_for(
        lambda: (lambda o: o if o["status"].get("observedGeneration") == 2 else None)(
            kube.get_or_none(PLURAL, "code-assistant", "-n", namespace)
        ),
        "observedGeneration 2",
    )
    assert obj["metadata"]["generation"] == 2


def test_delete_garbage_collects_children(kube: Kube, operator: Operator, namespace: str) -> None:
    kube.apply(example("batch-summariser"), namespace)
    kube.apply(example("chat-assistant"), namespace)
    wait_for(lambda: kube.get_or_none("deployment", "batch-summariser", "-n", namespace), "deploy")
    wait_for(
        lambda: kube.get_or_none("service", "batch-summariser-predictor", "-n", namespace), "svc"
    )
    wait_for(lambda: kube.get_or_none("isvc", "chat-assistant", "-n", namespace), "isvc")
    # The status timer makes kopf put its finalizer on the object; the running operator
    # removes it on deletion.
    for name in ("batch-summariser", "chat-assistant"):
        wait_for(
            lambda n=name: (
                "perllm.io/finalizer"
                in (  # type: ignore[misc]
                    kube.get_or_none(PLURAL, n, "-n", namespace)["metadata"].get("finalizers") or []
                )
            ),
            f"the finalizer on {name}",
            timeout=30,
        )
        kube.kubectl("delete", PLURAL, name, "-n", namespace, "--wait=true", "--timeout=60s")
        assert kube.get_or_none(PLURAL, name, "-n", namespace) is None

    def gone() -> bool:
        return all(
            kube.get_or_none(kind, name, "-n", namespace) is None
            for kind, name in (
                ("deployment", "batch-summariser"),
                ("service", "batch-summariser-predictor"),
                ("isvc", "chat-assistant"),
                ("serviceaccount", "chat-assistant-model"),
            )
        )

    wait_for(gone, "garbage collection of the children", timeout=120)


def test_a_child_deleted_by_hand_is_created_again(
    kube: Kube, operator: Operator, namespace: str
) -> None:
    """`kubectl delete deployment` of a service's child: the next status tick applies it
    again (a new object), with a ChildRecreated Event; kopf alone would wait for an edit."""
    kube.apply(example("batch-summariser"), namespace)
    dep = wait_for(
        lambda: kube.get_or_none("deployment", "batch-summariser", "-n", namespace), "deployment"
    )
    wait_for(lambda: reconciled(kube, namespace, "batch-summariser"), "status Reconciled=True")
    kube.kubectl(
        "delete", "deployment", "batch-summariser", "-n", namespace, "--wait=true", "--timeout=60s"
    )

    def again() -> Any:
        o = kube.get_or_none("deployment", "batch-summariser", "-n", namespace)
        return o if o and o["metadata"]["uid"] != dep["metadata"]["uid"] else None

    new = wait_for(again, "the Deployment created again", timeout=60)
    ann = "perllm.io/deadline-s"
    assert (
        new["spec"]["template"]["metadata"]["annotations"][ann]
        == (dep["spec"]["template"]["metadata"]["annotations"][ann])
    )
    wait_for(
        lambda: events(kube, namespace, "batch-summariser", "ChildRecreated"),
        "the ChildRecreated Event",
        timeout=30,
    )


def test_sigkill_and_restart_converge_without_duplicates(
    kube: Kube, operator: Operator, namespace: str
) -> None:
    kube.apply(example("batch-summariser"), namespace)
    kube.apply(example("chat-assistant"), namespace)
    dep = wait_for(
        lambda: kube.get_or_none("deployment", "batch-summariser", "-n", namespace), "deploy"
    )
    isvc = wait_for(lambda: kube.get_or_none("isvc", "chat-assistant", "-n", namespace), "isvc")
    operator.kill()
    try:
        # While the operator is down: edit one service, create another.
        merge_patch(
            kube,
            namespace,
            "chat-assistant",
            {"spec": {"requirements": {"deadline": {"seconds": 3}}}},
        )
        kube.apply(example("code-assistant"), namespace)
        time.sleep(1)
        assert kube.get_or_none("isvc", "code-assistant", "-n", namespace) is None
    finally:
        operator.start()

    def converged() -> bool:
        o = kube.get_or_none("isvc", "chat-assistant", "-n", namespace)
        return (
            o["spec"]["predictor"]["annotations"]["perllm.io/deadline-s"] == "3"
            and kube.get_or_none("isvc", "code-assistant", "-n", namespace) is not None
        )

    wait_for(converged, "convergence after restart", timeout=120)
    time.sleep(3)  # let any stray duplicate appear
    isvcs = kube.get_or_none("isvc", "-n", namespace)["items"]
    assert sorted(i["metadata"]["name"] for i in isvcs) == ["chat-assistant", "code-assistant"]
    deps = kube.get_or_none("deployments", "-n", namespace)["items"]
    assert [d["metadata"]["name"] for d in deps] == ["batch-summariser"]
    assert deps[0]["metadata"]["uid"] == dep["metadata"]["uid"]
    svcs = kube.get_or_none("services", "-n", namespace)["items"]
    assert [s["metadata"]["name"] for s in svcs] == ["batch-summariser-predictor"]
    # The gated services' ServiceAccounts, once each (the namespace's `default` aside)
    sas = kube.get_or_none("serviceaccounts", "-n", namespace)["items"]
    owned = sorted(s["metadata"]["name"] for s in sas if s["metadata"].get("ownerReferences"))
    assert owned == ["chat-assistant-model", "code-assistant-model"]
    same = kube.get_or_none("isvc", "chat-assistant", "-n", namespace)
    assert same["metadata"]["uid"] == isvc["metadata"]["uid"]
    assert operator.alive()
