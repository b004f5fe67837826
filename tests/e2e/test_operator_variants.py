"""The LLMService operator on a real API server: tier switches, what the API server refuses,
the catalogue (tests/e2e/operator_harness.py runs the operator)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from perllm.crd import PLURAL
from perllm.devcluster.kube import Kube, wait_for

from .operator_harness import (
    Operator,
    condition,
    events,
    example,
    merge_patch,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600), pytest.mark.usefixtures("operator_log")]


# ---- tier switches, what the API server refuses, the catalogue -------------------------------
def _pod_template(kube: Kube, ns: str, name: str, backend: str) -> tuple[dict[str, Any], str]:
    """(pod-level spec with `containers`, pinned tier) of the live child."""
    if backend == "deployment":
        o = kube.get_or_none("deployment", name, "-n", ns)
        return o["spec"]["template"]["spec"], o["metadata"]["annotations"]["perllm.io/pinned-tier"]
    o = kube.get_or_none("isvc", name, "-n", ns)
    p = dict(o["spec"]["predictor"])
    p["containers"] = [p.pop("model")]
    return p, o["metadata"]["annotations"]["perllm.io/pinned-tier"]


def _place(kube: Kube, ns: str, name: str, tier: str) -> None:
    """Publish a decision as the extender does (status.placement)."""
    body = {"status": {"placement": {"tier": tier, "nodes": [f"{tier}-1"], "feasible": True}}}
    merge_patch(kube, ns, name, body, status=True)


@pytest.mark.parametrize("backend", ["kserve", "deployment"])
def test_a_tier_switch_leaves_no_trace_of_the_other_tier(
    kube: Kube, operator: Operator, namespace: str, backend: str
) -> None:
    """cloud -> edge -> cloud: server-side apply removes the GPU request and toleration on
    the edge and puts them back on the cloud, in place (same child uid)."""
    kind = "deployment" if backend == "deployment" else "isvc"
    kube.apply(example("chat-assistant", backend=backend), namespace)
    first = wait_for(lambda: kube.get_or_none(kind, "chat-assistant", "-n", namespace), "child")
    for tier in ("cloud", "edge", "cloud"):
        _place(kube, namespace, "chat-assistant", tier)
        wait_for(
            lambda t=tier: _pod_template(kube, namespace, "chat-assistant", backend)[1] == t,
            f"the child pinned to {tier}",
            timeout=60,
        )
        ps, _ = _pod_template(kube, namespace, "chat-assistant", backend)
        (c,) = ps["containers"]
        if tier == "edge":
            assert "nvidia.com/gpu" not in json.dumps(ps), ps
            assert "tolerations" not in ps, ps
        else:
            assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
            assert c["resources"]["requests"]["nvidia.com/gpu"] == "1"
            assert ps["tolerations"] == [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ]
        if backend == "deployment":
            want = "llama.cpp:server-b" if tier == "edge" else "vllm/vllm-openai:v"
            assert want in c["image"], c["image"]
        else:
            assert c["runtime"] == ("perllm-llamacpp" if tier == "edge" else "perllm-vllm")
            assert c["modelFormat"]["name"] == ("gguf" if tier == "edge" else "huggingface")
            # the cloud's gated hf:// weights are fetched as the service's account; the
            # edge's https:// GGUF as the default one (applied: the field is removed)
            want_sa = "chat-assistant-model" if tier == "cloud" else None
            assert ps.get("serviceAccountName") == want_sa, ps
    live = kube.get_or_none(kind, "chat-assistant", "-n", namespace, "--show-managed-fields")
    assert live["metadata"]["uid"] == first["metadata"]["uid"]
    managers = {m["manager"]: m["operation"] for m in live["metadata"]["managedFields"]}
    assert managers.get("perllm-operator") == "Apply"
    assert operator.alive()


def test_a_typo_in_a_rendered_field_fails_server_side_dry_run(
    kube: Kube, operator: Operator, namespace: str
) -> None:
    """KServe's real schema: a rendered InferenceService passes a strict server-side dry
    run; one with a misspelt field is refused, and the operator's message names it."""
    from kubernetes.client.exceptions import ApiException
    from perllm_operator import failures, render
    from perllm_operator import kube as op_kube

    obj = example("chat-assistant")
    obj["metadata"].update(namespace=namespace, uid="00000000-0000-0000-0000-000000000001")
    obj["status"] = {"placement": {"tier": "cloud"}}
    good = render.inference_service(obj)
    args = ("apply", "--server-side", "--dry-run=server", "--validate=strict", "-f", "-")
    r = kube.kubectl(*args, input=json.dumps(good), check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    bad = json.loads(json.dumps(good))
    bad["spec"]["predictor"]["model"]["storageURI"] = bad["spec"]["predictor"]["model"].pop(
        "storageUri"
    )
    r = kube.kubectl(*args, input=json.dumps(bad), check=False)
    assert r.returncode != 0 and "storageURI" in r.stderr, r.stdout + r.stderr
    # The operator's own apply (Strict) is refused the same way, naming the field.
    op_kube.kubernetes.config.load_kube_config(config_file=str(kube.kubeconfig))
    with pytest.raises(ApiException) as info:
        op_kube.apply(bad)
    reason, msg = failures.api_failure(info.value, "InferenceService chat-assistant")
    assert reason.startswith("Apply") and "storageURI" in msg, msg
    assert kube.get_or_none("isvc", "chat-assistant", "-n", namespace) is None


def test_a_model_outside_the_catalogue_is_its_own_condition(
    kube: Kube, operator: Operator, namespace: str
) -> None:
    obj = example("chat-assistant")
    obj["spec"]["model"]["name"] = "my-finetune"
    kube.apply(obj, namespace)
    o = wait_for(
        lambda: (lambda x: x if condition(x, "ModelKnown") else None)(
            kube.get_or_none(PLURAL, "chat-assistant", "-n", namespace)
        ),
        "condition ModelKnown",
        timeout=60,
    )
    c = condition(o, "ModelKnown")
    assert c["status"] == "False" and c["reason"] == "ModelNotInCatalogue", c  # type: ignore[index]
    assert "spec.model.name 'my-finetune'" in c["message"]  # type: ignore[index]
    placed = condition(o, "Placed")
    assert placed and placed["reason"] == "ModelNotInCatalogue", placed
    wait_for(
        lambda: events(kube, namespace, "chat-assistant", "ModelNotInCatalogue"),
        "ModelNotInCatalogue Event",
        timeout=30,
    )
