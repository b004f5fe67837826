"""Rendering of an LLMService into its children (operator/perllm_operator/render.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from perllm_operator import pinning, render, runtimes
from perllm_operator.main import run_options

from perllm.crd import InvalidService
from tests.rendered import assert_open_chat_assistant_predictor

ROOT = Path(__file__).parents[2]


def _load(name: str) -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load((ROOT / "manifests" / f"{name}.yaml").read_text())
    obj["metadata"].update(namespace="llm", uid="1234-abcd", generation=1)
    obj["spec"].setdefault("backend", "kserve")
    obj["spec"].setdefault("allowedTiers", ["edge", "cloud"])
    obj["spec"].setdefault("replicas", 1)
    return obj


def test_handlers_import() -> None:
    from perllm_operator import reconcile, registry

    assert callable(reconcile.reconcile) and callable(registry.configure)


def test_inference_service() -> None:
    obj = _load("chat-assistant")
    isvc = render.inference_service(obj)
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    meta = isvc["metadata"]
    assert meta["name"] == "chat-assistant" and meta["namespace"] == "llm"
    assert meta["annotations"] == {
        "serving.kserve.io/deploymentMode": "RawDeployment",
        "serving.kserve.io/autoscalerClass": "external",
        "perllm.io/variant-tier": "edge",
        "perllm.io/pinned-tier": "open",
    }
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "perllm.io/v1alpha1",
            "kind": "LLMService",
            "name": "chat-assistant",
            "uid": "1234-abcd",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    p = isvc["spec"]["predictor"]
    assert_open_chat_assistant_predictor(p)  # shared with the e2e test; more below
    assert p["annotations"]["perllm.io/min-quality"] == "0"
    assert p["annotations"]["perllm.io/precision"] == "q4_k_m"
    m = p["model"]
    assert m["modelFormat"] == {"name": "gguf"}
    assert m["runtime"] == "perllm-llamacpp"
    assert m["storageUri"].endswith("Meta-Llama-3-8B-Instruct-Q4_K_M.gguf")
    assert m["env"] == [
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "HF_TOKEN"}}}
    ]
    # The open template's GGUF comes over https: the default account fetches it.
    assert "serviceAccountName" not in p
    assert "nvidia.com/gpu" not in json.dumps(m["resources"])
    assert p["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    # The extender placed a pod in the cloud: pinned there, with the GPU variant.
    obj["status"] = {"placement": {"tier": "cloud", "nodes": ["cloud"]}}
    p = render.inference_service(obj)["spec"]["predictor"]
    assert p["model"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert p["annotations"]["perllm.io/precision"] == "fp16"
    assert p["model"]["modelFormat"] == {"name": "huggingface"}
    assert p["model"]["runtime"] == "perllm-vllm"
    assert p["model"]["storageUri"] == "hf://meta-llama/Meta-Llama-3-8B-Instruct"
    assert p["tolerations"][0]["key"] == "nvidia.com/gpu"
    # Gated hf:// weights: KServe's storage initializer takes the token from its account.
    assert p["serviceAccountName"] == "chat-assistant-model"


def test_edge_only_uses_edge_variant_without_gpu_toleration() -> None:
    obj = _load("chat-assistant")
    obj["spec"]["allowedTiers"] = ["edge"]
    obj["spec"]["replicas"] = 3
    obj["spec"]["model"]["runtime"] = "kserve-huggingfaceserver"
    p = render.inference_service(obj)["spec"]["predictor"]
    assert p["model"]["resources"] == {
        "requests": {"cpu": "12", "memory": "16Gi"},
        "limits": {"cpu": "12", "memory": "16Gi"},
    }
    assert "tolerations" not in p
    assert p["minReplicas"] == 3
    assert p["model"]["runtime"] == "kserve-huggingfaceserver"
    expr = p["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ][0]["matchExpressions"][0]
    assert expr["values"] == ["edge"]


def test_deployment_backend() -> None:
    obj = _load("batch-summariser")
    assert obj["spec"]["backend"] == "deployment"
    kids = render.children(obj)
    assert [k["kind"] for k in kids] == ["Deployment", "Service"]
    dep, svc = kids
    assert dep["metadata"]["name"] == "batch-summariser"
    assert svc["metadata"]["name"] == "batch-summariser-predictor"
    for k in kids:
        assert k["metadata"]["ownerReferences"][0]["controller"] is True
        assert k["metadata"]["labels"] == {"perllm.io/service": "batch-summariser"}
    assert dep["spec"]["selector"]["matchLabels"] == {"perllm.io/service": "batch-summariser"}
    tpl = dep["spec"]["template"]
    assert tpl["metadata"]["labels"] == {"perllm.io/service": "batch-summariser"}
    assert tpl["metadata"]["annotations"]["perllm.io/deadline-s"] == "120"
    ps = tpl["spec"]
    assert ps["schedulerName"] == "perllm-scheduler"
    (c,) = ps["containers"]
    assert c["name"] == "model-server" and c["image"] == runtimes.VLLM.gpu_image
    assert c["args"][:2] == ["--model", "01-ai/Yi-6B"]
    assert "env" not in c  # no tokenSecretRef: no HF_TOKEN
    assert c["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert ps["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert svc["spec"]["selector"] == {"perllm.io/service": "batch-summariser"}
    assert svc["spec"]["type"] == "ClusterIP"


def test_model_server_pods_carry_scrape_annotations_for_their_metrics_port() -> None:
    """Both backends: an annotation-driven Prometheus scrapes the model server's own
    /metrics on the port its container serves (no extra scrape job)."""
    dep = render.children(_load("batch-summariser"))[0]
    tpl = dep["spec"]["template"]
    (c,) = tpl["spec"]["containers"]
    ann = tpl["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/path"] == "/metrics"
    assert int(ann["prometheus.io/port"]) == c["ports"][0]["containerPort"]
    isvc = render.children(_load("chat-assistant"))[0]
    pred = isvc["spec"]["predictor"]
    assert pred["annotations"]["prometheus.io/scrape"] == "true"
    assert pred["annotations"]["prometheus.io/port"] == str(runtimes.LLAMACPP.metrics_port)


def test_a_variant_names_its_own_image_runtime_format_and_weights() -> None:
    obj = copy.deepcopy(_load("batch-summariser"))
    v = obj["spec"]["model"]["variants"][0]
    v.update(image="example.org/server:1", runtime="my-runtime", format="safetensors")
    v["storageUri"] = "hf://org/repo"
    c = render.deployment(obj)["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "example.org/server:1"
    assert c["args"][:2] == ["--model", "org/repo"]
    obj["spec"]["backend"] = "kserve"
    m = render.inference_service(obj)["spec"]["predictor"]["model"]
    assert m["runtime"] == "my-runtime" and m["modelFormat"] == {"name": "safetensors"}
    assert m["storageUri"] == "hf://org/repo"


def test_kserve_backend_has_one_child_and_the_account_of_gated_hf_weights() -> None:
    obj = _load("code-assistant")
    isvc, sa = render.children(obj)
    assert isvc["kind"] == "InferenceService"
    assert sa == {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": "code-assistant-model",
            "namespace": "llm",
            "labels": {"perllm.io/service": "code-assistant"},
            "ownerReferences": isvc["metadata"]["ownerReferences"],
        },
        "automountServiceAccountToken": False,
        "secrets": [{"name": "hf-token"}],
    }
    # No token, or no hf:// weights on an allowed tier: nothing to fetch with a token.
    del obj["spec"]["model"]["tokenSecretRef"]
    assert [k["kind"] for k in render.children(obj)] == ["InferenceService"]
    obj = _load("code-assistant")
    obj["spec"]["allowedTiers"] = ["edge"]  # its GGUF comes over https
    assert [k["kind"] for k in render.children(obj)] == ["InferenceService"]


def test_kserve_refuses_a_token_key_its_storage_initializer_never_reads() -> None:
    obj = _load("code-assistant")
    obj["spec"]["model"]["tokenSecretRef"]["key"] = "token"
    with pytest.raises(InvalidService, match=r"spec.model.tokenSecretRef.key: must be HF_TOKEN"):
        render.children(obj)
    obj["spec"]["backend"] = "deployment"  # its servers fetch with HF_TOKEN from any key
    assert [k["kind"] for k in render.children(obj)] == ["Deployment", "Service"]


def test_run_options() -> None:
    assert run_options() == {
        "standalone": True,
        "clusterwide": True,
        "namespaces": (),
        "liveness_endpoint": None,
    }
    opts = run_options(["a"], "http://0.0.0.0:8080/healthz")
    assert opts["namespaces"] == ("a",) and opts["clusterwide"] is False
    assert opts["liveness_endpoint"] == "http://0.0.0.0:8080/healthz"


def test_kserve_missing_sets_condition_without_crashing(monkeypatch: Any) -> None:
    import kopf
    import pytest
    from perllm_operator import kube, reconcile

    from tests.unit.test_operator_refusal import install

    warned: list[str] = []
    monkeypatch.setattr(kube, "kserve_installed", lambda: False)
    monkeypatch.setattr(kopf, "warn", lambda body, *, reason, message: warned.append(reason))
    obj = _load("chat-assistant")
    api = install(monkeypatch, obj)
    patch = kopf.Patch()
    with pytest.raises(kopf.TemporaryError, match="backend: deployment"):
        reconcile.reconcile(
            body=kopf.Body(obj),
            spec=kopf.Spec(kopf.Body(obj)),
            meta=kopf.Meta(kopf.Body(obj)),
            status=kopf.Status(kopf.Body(obj)),
            patch=patch,
            logger=None,
        )
    assert "status" not in patch  # written fresh, guarded by the resourceVersion
    conds = {c["type"]: c for c in api.obj["status"]["conditions"]}
    assert conds["Ready"]["status"] == "False" and conds["Ready"]["reason"] == "KServeMissing"
    assert conds["Placed"]["reason"] == "KServeMissing"
    assert "spec.backend: deployment" in conds["Ready"]["message"]
    assert warned == ["KServeMissing"]


def test_ready_of() -> None:
    from perllm_operator.conditions import ready_of

    dep = {
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {"replicas": 2},
        "status": {"readyReplicas": 1},
    }
    assert ready_of(dep)[0] is False
    dep["status"] = {"readyReplicas": 2}
    assert ready_of(dep)[0] is True
    isvc = {"kind": "InferenceService", "metadata": {"name": "i"}, "status": {}}
    assert ready_of(isvc)[0] is None
    isvc["status"] = {"conditions": [{"type": "Ready", "status": "True"}]}
    assert ready_of(isvc)[0] is True


def _tier_of(child: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    if child["kind"] == "Deployment":
        ps = child["spec"]["template"]["spec"]
        res = ps["containers"][0]["resources"]
    else:
        ps = child["spec"]["predictor"]
        res = ps["model"]["resources"]
    expr = ps["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ][0]["matchExpressions"][0]
    return expr["values"], res


def test_pod_requests_the_variant_of_the_tier_it_is_pinned_to() -> None:
    for backend in ("kserve", "deployment"):
        obj = _load("code-assistant")
        obj["spec"]["backend"] = backend
        variants = {v["tier"]: v["resources"] for v in obj["spec"]["model"]["variants"]}
        # No decision yet: open to both tiers with the variant both can host.
        child = render.children(obj)[0]
        tiers, res = _tier_of(child)
        assert tiers == ["edge", "cloud"] and res == variants["edge"]
        assert render.rendered_tier(child) == pinning.OPEN
        # The extender placed it on the edge: edge resources, edge-only affinity, no GPU.
        obj["status"] = {"placement": {"tier": "edge", "nodes": ["edge-0"]}}
        child = render.children(obj)[0]
        tiers, res = _tier_of(child)
        assert tiers == ["edge"] and res == variants["edge"]
        assert render.rendered_tier(child) == "edge"
        assert "nvidia.com/gpu" not in json.dumps(child)  # not even the toleration
        # Re-placement moved it back to the cloud: that wins over the older placement.
        obj["status"]["replacement"] = {"tier": {"target": "cloud"}}
        tiers, res = _tier_of(render.children(obj)[0])
        assert tiers == ["cloud"] and res == variants["cloud"]


def test_placement_outside_allowed_tiers_is_ignored() -> None:
    obj = _load("chat-assistant")
    obj["spec"]["allowedTiers"] = ["edge"]
    obj["status"] = {"placement": {"tier": "cloud"}, "replacement": {"tier": {"target": "x"}}}
    assert pinning.target_tier(obj) == "edge"
    assert _tier_of(render.inference_service(obj))[0] == ["edge"]


def test_no_variant_for_allowed_tier_names_the_fields() -> None:
    import pytest

    obj = _load("batch-summariser")
    obj["spec"]["allowedTiers"] = ["edge"]
    with pytest.raises(ValueError, match=r"spec\.allowedTiers"):
        pinning.target_tier(obj)


def test_open_template_without_a_cpu_variant_uses_the_cloud_one() -> None:
    obj = _load("code-assistant")
    for v in obj["spec"]["model"]["variants"]:
        v["resources"]["requests"]["nvidia.com/gpu"] = "1"
    assert pinning.target_tier(obj) is None
    assert pinning.chosen_variant(obj)["tier"] == "cloud"
    # a single allowed tier is pinned from the start
    obj["spec"]["allowedTiers"] = ["edge"]
    assert pinning.target_tier(obj) == "edge" and pinning.pin(obj) == "edge"


@pytest.mark.parametrize("backend", ["kserve", "deployment"])
def test_a_variant_asking_for_zero_gpus_is_a_cpu_variant(backend: str) -> None:
    """nvidia.com/gpu: 0 asks for no GPU (Kubernetes allocates none): the mere key made the
    variant a GPU one, vLLM's CUDA image (or llama.cpp's) on a pod with no GPU, with the GPU
    toleration."""
    obj = _load("chat-assistant")
    obj["spec"]["backend"] = backend
    cloud = obj["spec"]["model"]["variants"][1]
    cloud["storageUri"] = "https://h/org/repo/resolve/main/m-f16.gguf"
    for kind in ("requests", "limits"):
        cloud["resources"][kind]["nvidia.com/gpu"] = "0"
    obj["status"] = {"placement": {"tier": "cloud"}}
    kid = render.children(obj)[0]
    if backend == "kserve":
        p = kid["spec"]["predictor"]
        assert p["model"]["runtime"] == runtimes.LLAMACPP.name
    else:
        p = kid["spec"]["template"]["spec"]
        assert p["containers"][0]["image"] == runtimes.LLAMACPP.image
    assert "tolerations" not in p
    assert not pinning.any_gpu(obj)
