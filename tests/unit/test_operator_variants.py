"""Each variant runs what it says: its runtime, weights format, image and weights, for every
example manifest, tier and backend (operator/perllm_operator/runtimes.py, render.py)."""

from __future__ import annotations

import copy
import itertools
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from perllm_operator import pinning, render, runtimes

from perllm.contract import Precision
from perllm.crd import InvalidService, service_spec
from perllm.crd_fields import llamacpp_serves
from perllm.devcluster.binaries import cache_dir
from tests.schema import kserve_schema, object_errors

ROOT = Path(__file__).parents[2]
MANIFESTS = sorted((ROOT / "manifests").glob("*.yaml"))
GPU = "nvidia.com/gpu"
CUDA_IMAGES = {runtimes.VLLM.image, runtimes.VLLM.gpu_image, runtimes.LLAMACPP.gpu_image}


def _cases() -> list[tuple[str, str, str]]:
    out = []
    for path in MANIFESTS:
        obj = yaml.safe_load(path.read_text())
        tiers = obj["spec"].get("allowedTiers", ["edge", "cloud"])
        for tier in tiers:
            for backend in ("kserve", "deployment"):
                out.append((path.stem, tier, backend))
    return out


def _pinned(name: str, tier: str, backend: str) -> tuple[dict[str, Any], dict[str, Any]]:
    obj: dict[str, Any] = yaml.safe_load((ROOT / "manifests" / f"{name}.yaml").read_text())
    obj["metadata"].update(namespace="llm", uid="u", generation=1)
    obj["spec"]["backend"] = backend
    obj["status"] = {"placement": {"tier": tier}}
    variant = next(v for v in obj["spec"]["model"]["variants"] if v["tier"] == tier)
    return obj, variant


def _child_of(obj: dict[str, Any], tier: str) -> dict[str, Any]:
    """The child whose pods run `tier`'s variant (the only one, or a tiered service's)."""
    return next(
        c
        for c in render.children(obj)
        if (c["metadata"].get("annotations") or {}).get("perllm.io/variant-tier") == tier
    )


@pytest.mark.parametrize(("name", "tier", "backend"), _cases())
def test_every_example_runs_the_weights_and_server_of_its_variant(
    name: str, tier: str, backend: str
) -> None:
    obj, variant = _pinned(name, tier, backend)
    child = _child_of(obj, tier)
    gpu = GPU in json.dumps(variant["resources"])
    want = runtimes.VLLM if gpu else runtimes.LLAMACPP
    want_name = want.gpu_name if gpu else want.name
    assert variant.get("storageUri"), f"{name}: variant {tier} needs its own storageUri"
    if backend == "kserve":
        p = child["spec"]["predictor"]
        m = p["model"]
        assert m["runtime"] == want_name
        assert m["modelFormat"] == {"name": want.format}
        assert m["storageUri"] == variant["storageUri"]
        resources, tolerations = m["resources"], p.get("tolerations", [])
        annotations = p["annotations"]
    else:
        ps = child["spec"]["template"]["spec"]
        (c,) = ps["containers"]
        assert c["image"] == (want.gpu_image if gpu else want.image)
        # the server fetches this variant's weights
        uri = variant["storageUri"]
        ref = uri if uri.startswith("https://") else uri.removeprefix("hf://")
        assert ref in c["args"]
        resources, tolerations = c["resources"], ps.get("tolerations", [])
        annotations = child["spec"]["template"]["metadata"]["annotations"]
        if not gpu:
            assert c["image"] not in CUDA_IMAGES
    assert annotations["perllm.io/precision"] == variant["precision"]
    if tier == "edge" and not gpu:
        assert GPU not in json.dumps(resources)
        assert not tolerations
    if variant["precision"] in ("q4_k_m", "q8_0"):
        assert want is runtimes.LLAMACPP
        assert variant["storageUri"].endswith(".gguf")


def test_gated_weights_get_the_token_by_reference_only() -> None:
    obj, _ = _pinned("chat-assistant", "cloud", "deployment")
    obj["spec"]["model"]["tokenSecretRef"] = {"name": "hf", "key": "tok"}
    text = json.dumps(render.children(obj))
    c = render.deployment(obj)["spec"]["template"]["spec"]["containers"][0]
    assert c["env"] == [
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "tok"}}}
    ]
    assert 'value"' not in json.dumps(c["env"])  # never a literal value
    assert text.count("HF_TOKEN") == 1
    obj["spec"]["model"]["tokenSecretRef"] = {"name": "hf"}
    env = render.deployment(obj)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env[0]["valueFrom"]["secretKeyRef"]["key"] == "HF_TOKEN"  # the CRD's default


def test_int4_awq_needs_a_gpu_and_runs_vllm_with_awq() -> None:
    obj, variant = _pinned("batch-summariser", "cloud", "deployment")
    variant["precision"] = "int4_awq"
    c = render.deployment(obj)["spec"]["template"]["spec"]["containers"][0]
    assert c["args"][-2:] == ["--quantization", "awq"]
    cpu = copy.deepcopy(obj)
    cpu["spec"]["model"]["variants"][0]["resources"] = {"requests": {"cpu": "4"}}
    with pytest.raises(InvalidService, match=r"variants\[0\].precision: int4_awq"):
        render.children(cpu)


def test_the_deployment_backend_refuses_weights_it_cannot_fetch() -> None:
    obj, variant = _pinned("chat-assistant", "edge", "deployment")
    variant["storageUri"] = "s3://bucket/model.gguf"
    with pytest.raises(
        InvalidService, match=r"spec.model.variants\[0\].storageUri: the deployment"
    ):
        render.children(obj)
    obj["spec"]["backend"] = "kserve"  # KServe's storage initializer fetches s3
    assert render.children(obj)[0]["spec"]["predictor"]["model"]["storageUri"].startswith("s3")


def test_the_deployment_backend_names_the_model_level_uri_it_cannot_fetch() -> None:
    """A variant without its own storageUri runs the model's: the refusal named the
    variant's storageUri, a field the user never wrote."""
    obj, variant = _pinned("chat-assistant", "edge", "deployment")
    del variant["storageUri"]
    obj["spec"]["model"]["storageUri"] = "s3://bucket/model.gguf"
    with pytest.raises(InvalidService, match=r"spec.model.storageUri: the deployment backend"):
        render.children(obj)


def test_without_a_storage_uri_the_model_name_is_the_repository() -> None:
    obj, variant = _pinned("chat-assistant", "edge", "deployment")
    del variant["storageUri"]
    obj["spec"]["model"]["name"] = "org/model-GGUF"
    c = render.deployment(obj)["spec"]["template"]["spec"]["containers"][0]
    assert c["args"][-2:] == ["--hf-repo", "org/model-GGUF"]
    obj, variant = _pinned("batch-summariser", "cloud", "deployment")
    del variant["storageUri"]
    c = render.deployment(obj)["spec"]["template"]["spec"]["containers"][0]
    assert c["args"][:2] == ["--model", "yi-6b"]


def test_hf_gguf_file_for_llama_cpp() -> None:
    obj, variant = _pinned("chat-assistant", "edge", "deployment")
    variant["storageUri"] = "hf://org/repo-GGUF/model-Q4_K_M.gguf"
    c = render.deployment(obj)["spec"]["template"]["spec"]["containers"][0]
    i = c["args"].index("--hf-repo")
    assert c["args"][i : i + 4] == ["--hf-repo", "org/repo-GGUF", "--hf-file", "model-Q4_K_M.gguf"]
    assert "--metrics" in c["args"] and c["image"] == runtimes.LLAMACPP.image


@pytest.mark.parametrize("uri", ["hf://org/repo/model.gguf", "hf://org/repo:v2/sub/x.safetensors"])
def test_vllm_refuses_an_hf_file_it_would_drop(uri: str) -> None:
    """vLLM's --model is a repository: the file part of hf://org/repo/<file> was dropped
    and vLLM served the whole repository (other weights than those named, or none it can
    load; v0.8.5 takes a GGUF file only from a local path)."""
    obj, variant = _pinned("chat-assistant", "cloud", "deployment")
    variant["storageUri"] = uri
    match = r"spec.model.variants\[1\].storageUri: spec.model.variants\[1\] runs on vLLM"
    with pytest.raises(InvalidService, match=match):
        service_spec(obj)
    with pytest.raises(InvalidService, match=r"variants\[1\].storageUri: .*whole repository"):
        render.children(obj)
    res = runtimes.resolve(obj["spec"]["model"], variant, 1)  # (past the checks, too)
    with pytest.raises(InvalidService, match="vLLM serves a whole repository"):
        runtimes.server_args(res, variant, "m", "chat-assistant")
    variant["runtime"] = "perllm-llamacpp-cuda"  # a GGUF file on llama.cpp: fine
    assert "--hf-file" in _args(obj) or "--model-url" in _args(obj)


def _args(obj: dict[str, Any]) -> list[str]:
    args: list[str] = render.deployment(obj)["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


def test_an_hf_revision_reaches_vllm_as_its_revision() -> None:
    """hf://org/repo:rev under backend deployment gave vLLM --model org/repo:rev, no such
    repository: the revision is vLLM's --revision (and its tokenizer's)."""
    obj, variant = _pinned("batch-summariser", "cloud", "deployment")
    variant["storageUri"] = "hf://01-ai/Yi-6B:0a1b2c3"
    args = _args(obj)
    assert args[:2] == ["--model", "01-ai/Yi-6B"]
    i = args.index("--revision")
    assert args[i : i + 4] == ["--revision", "0a1b2c3", "--tokenizer-revision", "0a1b2c3"]
    variant["storageUri"] = "hf://01-ai/Yi-6B"  # none: the repository's main
    assert "--revision" not in _args(obj) and _args(obj)[:2] == ["--model", "01-ai/Yi-6B"]


def test_an_hf_revision_reaches_llama_cpp_as_the_files_url() -> None:
    """llama.cpp read hf://org/repo:rev/file's repository 'org/repo:rev' verbatim (and
    fetched .../resolve/main/...): with a revision it fetches the file's URL at it."""
    obj, variant = _pinned("chat-assistant", "edge", "deployment")
    variant["storageUri"] = "hf://org/repo-GGUF:v2/sub/model-Q4_K_M.gguf"
    args = _args(obj)
    i = args.index("--model-url")
    url = "https://huggingface.co/org/repo-GGUF/resolve/v2/sub/model-Q4_K_M.gguf"
    assert args[i : i + 2] == ["--model-url", url]
    assert "--hf-repo" not in args and "--alias" in args


@pytest.mark.parametrize(
    ("where", "uri", "match"),
    [
        ("variant", "hf://org/repo-GGUF:v2", r"spec.model.variants\[0\].storageUri: .*llama.cpp"),
        ("model", "hf://org/repo-GGUF:v2", r"spec.model.storageUri: .*llama.cpp"),
        ("variant", "hf://org/repo:", r"spec.model.variants\[0\].storageUri: with backend dep"),
        ("variant", "hf://org", r"spec.model.variants\[0\].storageUri: with backend deployment"),
        ("model", "hf://org/", r"spec.model.storageUri: with backend deployment"),
    ],
)
def test_llama_cpp_refuses_a_revision_it_cannot_fetch(where: str, uri: str, match: str) -> None:
    """llama.cpp's --hf-repo reads org/repo:<tag> as a quantisation of main, so a revision
    of a whole repository was silently another file of another revision (or none)."""
    obj, variant = _pinned("chat-assistant", "edge", "deployment")
    if where == "model":
        del variant["storageUri"]
        obj["spec"]["model"]["storageUri"] = uri
    else:
        variant["storageUri"] = uri
    with pytest.raises(InvalidService, match=match):
        render.children(obj)
    with pytest.raises(
        InvalidService, match=match.replace("spec.", "LLMService chat-assistant: spec.", 1)
    ):
        service_spec(obj)


def test_the_crds_checks_know_which_server_runs_a_variant() -> None:
    """crd_fields.llamacpp_serves (service_spec's and, as CEL, admission's view of which
    server fetches a variant's weights) is runtimes.resolve's choice."""
    seen = set()
    for precision, gpu, runtime, fallback in itertools.product(
        [p.value for p in Precision],
        [None, 0, 1, "1", "0"],
        [None, "perllm-llamacpp", "perllm-llamacpp-cuda", "perllm-vllm", "my-runtime"],
        [None, "perllm-llamacpp", "perllm-vllm"],
    ):
        res = {"requests": {"cpu": "1"}} if gpu is None else {"limits": {GPU: gpu}}
        variant: dict[str, Any] = {"tier": "cloud", "precision": precision, "resources": res}
        if runtime:
            variant["runtime"] = runtime
        model: dict[str, Any] = {"name": "m", "variants": [variant]}
        if fallback:
            model["runtime"] = fallback
        try:
            server = runtimes.resolve(model, variant, 0).server
        except InvalidService:  # int4_awq without a GPU
            continue
        assert (server is runtimes.LLAMACPP) == llamacpp_serves(model, variant), variant
        seen.add(server.name)
    assert seen == {runtimes.LLAMACPP.name, runtimes.VLLM.name}


def test_chart_serving_runtimes_use_the_pinned_images() -> None:
    text = (ROOT / "charts/perllm/templates/servingruntimes.yaml").read_text()
    for rt in (runtimes.LLAMACPP, runtimes.VLLM):
        for name, image in ((rt.name, rt.image), (rt.gpu_name, rt.gpu_image)):
            assert f'"{name}"' in text or f"name: {name}\n" in text
            assert f'default "{image}"' in text
        assert f"- name: {rt.format}" in text


@cache
def _kserve_sdk() -> Any | None:
    """The generated models of KServe's Python SDK of the pinned release (extracted by
    tools/kserve-crd.sh from the same module as the CRD), if fetched. Loaded as the
    `kserve` namespace's `models` only: the package's own __init__ starts by importing
    its model server (fastapi, cloudevents, ...), which the operator does not need."""
    import importlib
    import sys
    import types

    found = sorted(cache_dir().glob("kserve-*/sdk/kserve/models/__init__.py"))
    if not found:
        return None
    if "kserve" not in sys.modules:
        pkg = types.ModuleType("kserve")
        pkg.__path__ = [str(found[-1].parents[1])]
        sys.modules["kserve"] = pkg
    return importlib.import_module("kserve.models")


def _sdk_unknown_paths(obj: Any, type_name: str, sdk: Any, path: str) -> list[str]:
    """Keys of `obj` that the SDK's model `type_name` (KServe's, else the Kubernetes
    client's) has no attribute for, recursively. The SDK's own deserializer drops unknown
    keys silently, so this walks its `attribute_map`s and `openapi_types` instead."""
    import re

    import kubernetes.client.models as k8s

    if obj is None:
        return []
    if m := re.fullmatch(r"list\[(.+)\]", type_name):
        return [
            p for i, x in enumerate(obj) for p in _sdk_unknown_paths(x, m[1], sdk, f"{path}[{i}]")
        ]
    if m := re.fullmatch(r"dict\(str, (.+)\)", type_name):
        return [p for k, x in obj.items() for p in _sdk_unknown_paths(x, m[1], sdk, f"{path}.{k}")]
    klass = getattr(sdk, type_name, None) or getattr(k8s, type_name, None)
    if klass is None:
        return []  # str, int, bool, object, datetime
    by_key = {v: k for k, v in klass.attribute_map.items()}
    out = []
    for key, value in obj.items():
        attr = by_key.get(key)
        if attr is None:
            out.append(f"{path}.{key}")
        else:
            out += _sdk_unknown_paths(value, klass.openapi_types[attr], sdk, f"{path}.{key}")
    return out


KSERVE_CASES = [c for c in _cases() if c[2] == "kserve"]


def _rendered_isvc(name: str, tier: str, backend: str) -> dict[str, Any]:
    """The example's InferenceService pinned to `tier`, with a token Secret (every field)."""
    obj, _ = _pinned(name, tier, backend)
    obj["spec"]["model"]["tokenSecretRef"] = {"name": "hf"}
    return _child_of(obj, tier)


@pytest.mark.parametrize(("name", "tier", "backend"), KSERVE_CASES)
def test_rendered_inference_services_fit_kserves_sdk_models(
    name: str, tier: str, backend: str
) -> None:
    """Every rendered field is an attribute of KServe's SDK models of the pinned release
    (V1beta1InferenceService down to the Kubernetes client's V1 types); a typo is not."""
    sdk = _kserve_sdk()
    if sdk is None:
        pytest.skip("KServe's SDK models are not cached: run tools/kserve-crd.sh")
    isvc = _rendered_isvc(name, tier, backend)
    assert _sdk_unknown_paths(isvc, "V1beta1InferenceService", sdk, "") == []
    isvc["spec"]["predictor"]["model"]["storageURI"] = "hf://typo"
    isvc["spec"]["predictor"]["tolerations"] = [{"key": "k", "efect": "NoSchedule"}]
    assert sorted(_sdk_unknown_paths(isvc, "V1beta1InferenceService", sdk, "")) == [
        ".spec.predictor.model.storageURI",
        ".spec.predictor.tolerations[0].efect",
    ]


@pytest.mark.parametrize(("name", "tier", "backend"), KSERVE_CASES)
def test_rendered_inference_services_fit_kserves_schema(name: str, tier: str, backend: str) -> None:
    """Every rendered field exists in KServe's real schema and fits it (types, required,
    enums, patterns: tests/schema.py; tools/kserve-crd.sh; the e2e tests check the same
    against the API server with a strict dry run)."""
    schema = kserve_schema()
    if schema is None:
        pytest.skip("KServe's CRD is not cached: run tools/kserve-crd.sh")
    isvc = _rendered_isvc(name, tier, backend)
    assert object_errors(isvc, schema) == []
    isvc["spec"]["predictor"]["model"]["storageURI"] = "hf://typo"
    assert object_errors(isvc, schema) == ["spec.predictor.model.storageURI: unknown field"]


@pytest.mark.parametrize(
    ("backend", "edit", "match"),
    [
        (
            "kserve",
            {"precision": "int4_awq", "resources": {"requests": {"cpu": "4"}}},
            r"spec.model.variants\[1\].precision: int4_awq",
        ),
        ("deployment", {"storageUri": "s3://bucket/model"}, r"spec.model.variants\[1\].storageUri"),
    ],
    ids=["awq-without-gpu", "deployment-s3"],
)
def test_a_variant_is_checked_before_its_tier_is_decided(
    backend: str, edit: dict[str, Any], match: str
) -> None:
    """The open template runs the edge variant; a cloud variant that cannot run is refused
    at once, naming its field, not only when the extender first picks the cloud (then the
    pod would keep running the edge variant on a cloud node while every re-render fails)."""
    obj, _ = _pinned("chat-assistant", "edge", backend)
    obj["status"] = {}  # no decision yet: open
    obj["spec"]["model"]["variants"][1].update(edit)
    assert pinning.pin(obj) == pinning.OPEN
    with pytest.raises(InvalidService, match=match):
        render.children(obj)
    obj["spec"]["allowedTiers"] = ["edge"]  # a variant of a tier the service may not use
    assert render.children(obj)
