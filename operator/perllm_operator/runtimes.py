"""What a variant runs: its model server (runtime), weights format, image and weights.

The one place where the model servers' images are pinned, with their ports. Defaults
follow the variant: weights for a CPU (no GPU request: q4_k_m, q8_0, or fp16 as GGUF F16)
run as GGUF on llama.cpp's server; weights for a GPU (fp16, int4_awq) run as safetensors
(KServe format `huggingface`) on vLLM. Each variant may override `storageUri`, `format`,
`runtime` and `image`; the model-level fields are the fallback for a variant without its
own. `spec.model.tokenSecretRef` puts a Secret's key into the server's `HF_TOKEN`
(a `secretKeyRef`: the operator never reads the value); under KServe, hf:// weights are
fetched by KServe's storage initializer instead, through the ServiceAccount that
render.model_account makes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from perllm.contract import Precision
from perllm.crd import InvalidService
from perllm.crd_fields import GGUF_PRECISIONS, HF_TOKEN_KEY, LLAMACPP_RUNTIMES, VLLM_RUNTIMES
from perllm.crd_fields import hf_parts as _parse_hf
from perllm.crd_resources import requests_gpu as requests_gpu
from perllm.labels import GPU_RESOURCE

Obj = dict[str, Any]

PORT = 8080  # both servers serve the OpenAI API and /metrics on it


@dataclass(frozen=True)
class Runtime:
    name: str  # the KServe ClusterServingRuntime (charts/perllm/templates/servingruntimes.yaml)
    gpu_name: str  # the one running `gpu_image`
    format: str  # KServe modelFormat.name
    image: str  # for a CPU pod
    gpu_image: str  # for a pod with a GPU request
    metrics_port: int


LLAMACPP = Runtime(
    name=LLAMACPP_RUNTIMES[0],
    gpu_name=LLAMACPP_RUNTIMES[1],
    format="gguf",
    image="ghcr.io/ggml-org/llama.cpp:server-b8840",
    gpu_image="ghcr.io/ggml-org/llama.cpp:server-cuda-b8840",
    metrics_port=PORT,
)
VLLM = Runtime(
    name=VLLM_RUNTIMES[0],
    gpu_name=VLLM_RUNTIMES[0],
    format="huggingface",
    image="vllm/vllm-openai:v0.8.5",  # CUDA: only for variants with a GPU request
    gpu_image="vllm/vllm-openai:v0.8.5",
    metrics_port=PORT,
)
RUNTIMES = {n: r for r in (LLAMACPP, VLLM) for n in (r.name, r.gpu_name)}
TOKEN_ENV = "HF_TOKEN"
HF_URL = "https://huggingface.co"  # where llama.cpp's --model-url fetches a file at a revision


def needs_gpu(variant: Obj) -> bool:
    return requests_gpu(variant.get("resources") or {})


@dataclass(frozen=True)
class Resolved:
    """A variant's runtime, format, image and weights after defaults."""

    runtime: str
    format: str
    image: str
    storage_uri: str | None
    server: Runtime  # whose arguments the Deployment backend renders
    field: str  # spec.model.variants[i]


def default_runtime(variant: Obj, field: str) -> Runtime:
    """llama.cpp for GGUF quantisations and any variant without a GPU; vLLM otherwise."""
    precision = str(variant.get("precision"))
    if precision in GGUF_PRECISIONS or not needs_gpu(variant):
        if precision == Precision.INT4_AWQ.value:
            raise InvalidService(
                f"{field}.precision: int4_awq runs on vLLM and needs a GPU request "
                f"({GPU_RESOURCE}) in {field}.resources"
            )
        return LLAMACPP
    return VLLM


def resolve(model: Obj, variant: Obj, index: int) -> Resolved:
    field = f"spec.model.variants[{index}]"
    server = default_runtime(variant, field)
    gpu = needs_gpu(variant)
    default = server.gpu_name if gpu else server.name
    runtime = str(variant.get("runtime") or model.get("runtime") or default)
    server = RUNTIMES.get(runtime, server)
    image = variant.get("image") or (server.gpu_image if gpu else server.image)
    uri = variant.get("storageUri") or model.get("storageUri")
    return Resolved(
        runtime=runtime,
        format=str(variant.get("format") or model.get("format") or server.format),
        image=str(image),
        storage_uri=str(uri) if uri else None,
        server=server,
        field=field,
    )


def token_env(model: Obj) -> list[Obj]:
    """`HF_TOKEN` from `spec.model.tokenSecretRef`, by reference only."""
    ref = model.get("tokenSecretRef")
    if not ref:
        return []
    sel = {"name": ref["name"], "key": ref.get("key", HF_TOKEN_KEY)}
    return [{"name": TOKEN_ENV, "valueFrom": {"secretKeyRef": sel}}]


def _hf_parts(uri: str, field: str) -> tuple[str, str | None, str | None]:
    """hf://org/repo[:revision][/file.gguf] -> (org/repo, revision, file)."""
    parts = _parse_hf(uri)
    if parts is None:  # (service_spec refuses it first, naming the field)
        raise InvalidService(
            f"{field}: with backend deployment an hf:// URI must be "
            f"hf://<org>/<repo>[:<revision>][/<file>], not {uri!r}"
        )
    return parts


def server_args(res: Resolved, variant: Obj, model_name: str, served: str) -> list[str]:
    """The Deployment backend's container arguments (it has no storage initializer, so it
    fetches hf:// (and, for llama.cpp, http(s)://) weights itself)."""
    # Without a storageUri the model name is the Hugging Face repository (as for vLLM).
    uri = res.storage_uri or f"hf://{model_name}"
    # the field the URI came from: the variant's own, else the model's (the fallback)
    field = f"{res.field}.storageUri" if variant.get("storageUri") else "spec.model.storageUri"
    if res.server is LLAMACPP:
        args = ["--host", "0.0.0.0", "--port", str(PORT), "--metrics", "--alias", served]
        if res.storage_uri is None:
            return [*args, "--hf-repo", model_name]
        if uri.startswith("hf://"):
            repo, rev, file = _hf_parts(uri, field)
            if rev is None:
                return args + ["--hf-repo", repo] + (["--hf-file", file] if file else [])
            if file is None:  # (service_spec refuses it first)
                raise InvalidService(
                    f"{field}: llama.cpp fetches a revision only with its file, "
                    f"hf://<org>/<repo>:<revision>/<file>.gguf, not {uri!r}"
                )
            # --hf-repo reads org/repo:<tag> as a quantisation and fetches from main
            url = f"{HF_URL}/{repo}/resolve/{quote(rev, safe='')}/{quote(file)}"
            return [*args, "--model-url", url]
        if uri.startswith(("http://", "https://")):
            return [*args, "--model-url", uri]
        raise InvalidService(
            f"{field}: the deployment backend's llama.cpp server fetches hf:// or http(s):// "
            f"GGUF weights, not {uri}; use backend kserve (storage initializer) for others"
        )
    if not uri.startswith("hf://"):
        raise InvalidService(
            f"{field}: the deployment backend's vLLM fetches hf:// weights, not {uri}; "
            "use backend kserve (storage initializer) for s3/gs/pvc/http"
        )
    if res.storage_uri is None:
        repo, rev = uri.removeprefix("hf://"), None
    else:
        repo, rev, file = _hf_parts(uri, field)
        if file is not None:  # (service_spec refuses it first)
            raise InvalidService(
                f"{field}: vLLM serves a whole repository, hf://<org>/<repo>[:<revision>], "
                f"not the file of {uri!r}; run a GGUF file on a llama.cpp runtime"
            )
    args = ["--model", repo]
    if rev is not None:  # (the tokenizer's too, so that both come from that revision)
        args += ["--revision", rev, "--tokenizer-revision", rev]
    args += ["--served-model-name", served, "--port", str(PORT)]
    if variant.get("precision") == Precision.INT4_AWQ.value:
        args += ["--quantization", "awq"]
    return args
