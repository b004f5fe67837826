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

from perllm.contract import Precision
from perllm.crd import InvalidService
from perllm.crd_fields import HF_TOKEN_KEY, parse_quantity
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
    name="perllm-llamacpp",
    gpu_name="perllm-llamacpp-cuda",
    format="gguf",
    image="ghcr.io/ggml-org/llama.cpp:server-b8840",
    gpu_image="ghcr.io/ggml-org/llama.cpp:server-cuda-b8840",
    metrics_port=PORT,
)
VLLM = Runtime(
    name="perllm-vllm",
    gpu_name="perllm-vllm",
    format="huggingface",
    image="vllm/vllm-openai:v0.8.5",  # CUDA: only for variants with a GPU request
    gpu_image="vllm/vllm-openai:v0.8.5",
    metrics_port=PORT,
)
RUNTIMES = {n: r for r in (LLAMACPP, VLLM) for n in (r.name, r.gpu_name)}
GGUF_PRECISIONS = (Precision.Q4_K_M.value, Precision.Q8_0.value)
TOKEN_ENV = "HF_TOKEN"


def requests_gpu(resources: Obj) -> bool:
    """A GPU asked for: nvidia.com/gpu above 0 (a request or a limit). `nvidia.com/gpu: 0`
    gets no GPU from Kubernetes, so it is a CPU variant (it got vLLM's CUDA image)."""
    for kind in ("requests", "limits"):
        value = (resources.get(kind) or {}).get(GPU_RESOURCE)
        if value is None:
            continue
        try:
            if parse_quantity(value) > 0:
                return True
        except ValueError:  # (service_spec refuses it, naming the field)
            return True
    return False


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


def _hf_parts(uri: str, field: str) -> tuple[str, str | None]:
    """hf://org/repo[/file.gguf] -> (org/repo, file)."""
    parts = uri.removeprefix("hf://").split("/")
    if len(parts) < 2 or not all(parts[:2]):
        raise InvalidService(f"{field}: hf:// needs an org and a repository, not {uri!r}")
    rest = "/".join(parts[2:])
    return "/".join(parts[:2]), rest or None


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
            repo, file = _hf_parts(uri, field)
            return args + ["--hf-repo", repo] + (["--hf-file", file] if file else [])
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
    repo = uri.removeprefix("hf://") if res.storage_uri is None else _hf_parts(uri, field)[0]
    args = ["--model", repo, "--served-model-name", served, "--port", str(PORT)]
    if variant.get("precision") == Precision.INT4_AWQ.value:
        args += ["--quantization", "awq"]
    return args
