"""The `LLMService` CRD's checks of the fields that only Kubernetes reads (children's
names, model format/runtime/storageUri/image, token Secret, replicas, backend; a variant's
resources through `perllm.crd_resources`), for an object that may not have passed
admission: their limits, the same as the CRD's, and `check_kubernetes_fields`. The
contract's own fields are `perllm.crd`'s `service_spec`."""

from __future__ import annotations

import re
from typing import Any

from perllm.contract import MAX_REPLICAS, Precision, Tier
from perllm.crd_resources import check_resources, requests_gpu


class InvalidService(ValueError):
    """An LLMService that does not map onto the contract; the message names the field."""


# Limits of the Kubernetes-only fields, the same as the CRD's (tests/unit/test_crd.py checks
# that they agree); the contract's own numbers are bounded in perllm.contract.
CHILD_SUFFIX = "-predictor"  # the Service of both backends, the Deployment of KServe's
MAX_NAME = 63 - len(CHILD_SUFFIX)  # a Service name is a DNS-1035 label of <= 63 characters
# With spec.tierReplicas the children are <name>-<tier> (KServe: Service <name>-<tier>-predictor)
MAX_TIER_NAME = 63 - max(len(f"-{t.value}{CHILD_SUFFIX}") for t in Tier)
# KServe v0.15's RawDeployment labels (and selects) the predictor pods of an
# InferenceService <isvc> with app: isvc.<isvc>-predictor (constants.GetRawServiceLabel), a
# label value of at most 63 characters: longer, KServe's Deployment is refused, no pod runs.
KSERVE_APP_LABEL = "isvc.{}" + CHILD_SUFFIX
MAX_KSERVE_NAME = 63 - len(KSERVE_APP_LABEL.format(""))
MAX_KSERVE_TIER_NAME = MAX_KSERVE_NAME - max(len(f"-{t.value}") for t in Tier)
MAX_FORMAT = 63
MAX_RUNTIME = 253
MAX_STORAGE_URI = 2048
MAX_IMAGE = 512
MAX_SECRET_NAME = 253
MAX_SECRET_KEY = 253
# spec.model.tokenSecretRef.key's default (the CRD's): the one key KServe v0.15's storage
# initializer reads a Hugging Face token from (pkg/credentials/hf HFTokenKey), so that one
# Secret serves both backends.
HF_TOKEN_KEY = "HF_TOKEN"
BACKENDS = ("kserve", "deployment")  # spec.backend, the first the default

DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_RUNTIME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
# A URI and a model format are printable ASCII without spaces or control characters (a
# URI's other characters percent-encoded): a newline or a space in them was admitted and
# failed in the storage initializer or the server, or matched no ServingRuntime's format.
STORAGE_URI = r"(hf|s3|gs|pvc|https?)://[!-~]+"
MODEL_FORMAT = r"[A-Za-z0-9][-A-Za-z0-9._]*"
_STORAGE_URI = re.compile(STORAGE_URI)
_FORMAT = re.compile(MODEL_FORMAT)
_IMAGE = re.compile(r"[a-zA-Z0-9][-a-zA-Z0-9._/:@]*")
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]+")
# What KServe v0.15's storage initializer accepts of an hf:// storageUri (exactly one '/', a
# repository name before an optional :revision); the CRD's CEL rules use the same pattern.
KSERVE_HF_URI = r"hf://[^/]+/[^/:][^/]*"
_KSERVE_HF_URI = re.compile(KSERVE_HF_URI)
# What backend deployment's servers fetch of one (hf://<org>/<repo>[:<revision>][/<file>]),
# and a revision of a whole repository, which its llama.cpp cannot fetch (--hf-repo reads
# org/repo:<tag> as a quantisation of main); the CRD's CEL rules use the same patterns.
DEPLOYMENT_HF_URI = r"hf://[^/:]+/[^/:]+(:[^/:]+)?(/.+)?"
HF_REVISION_NO_FILE = r"hf://[^/]+/[^/]+:[^/]+"
# An hf:// URI with a file part, which vLLM cannot serve: its --model is a repository (its
# pinned v0.8.5 takes one GGUF file only as a local path, with --tokenizer).
HF_FILE = r"hf://[^/]+/[^/]+/.+"
_DEPLOYMENT_HF_URI = re.compile(DEPLOYMENT_HF_URI)
_HF_REVISION_NO_FILE = re.compile(HF_REVISION_NO_FILE)
_HF_FILE = re.compile(HF_FILE)
# Which server runs a variant (perllm_operator.runtimes.resolve; a test checks they agree):
# the ServingRuntime it (else the model) names, if one of these, else llama.cpp for a GGUF
# precision or a variant without a GPU request, vLLM otherwise.
LLAMACPP_RUNTIMES = ("perllm-llamacpp", "perllm-llamacpp-cuda")
VLLM_RUNTIMES = ("perllm-vllm",)
GGUF_PRECISIONS = (Precision.Q4_K_M.value, Precision.Q8_0.value)


def llamacpp_serves(model: dict[str, Any], variant: dict[str, Any]) -> bool:
    """The variant runs on llama.cpp's server (else vLLM's)."""
    runtime = variant.get("runtime") or model.get("runtime")
    if runtime in LLAMACPP_RUNTIMES:
        return True
    if runtime in VLLM_RUNTIMES:
        return False
    resources = variant.get("resources")
    gpu = requests_gpu(resources) if isinstance(resources, dict) else False
    return variant.get("precision") in GGUF_PRECISIONS or not gpu


def hf_parts(uri: str) -> tuple[str, str | None, str | None] | None:
    """hf://<org>/<repo>[:<revision>][/<file>] -> (org/repo, revision, file); None for
    another shape."""
    if not _DEPLOYMENT_HF_URI.fullmatch(uri):
        return None
    org, _, rest = uri.removeprefix("hf://").partition("/")
    repo_rev, _, file = rest.partition("/")
    repo, _, rev = repo_rev.partition(":")
    return f"{org}/{repo}", rev or None, file or None


def field_object(field: str, value: Any) -> dict[str, Any]:
    """`value` if it is a JSON object; outside admission a field can hold anything."""
    if not isinstance(value, dict):
        raise InvalidService(f"{field}: must be an object")
    return value


def field_list(field: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidService(f"{field}: must be a list")
    return value


def _check_string(field: str, value: Any, max_len: int, pattern: re.Pattern[str]) -> None:
    if not isinstance(value, str):
        raise InvalidService(f"{field}: must be a string")
    if len(value) > max_len:
        raise InvalidService(f"{field}: at most {max_len} characters, not {len(value)}")
    if not pattern.fullmatch(value):
        raise InvalidService(f"{field}: must match {pattern.pattern}")


_WEIGHTS = (
    ("format", MAX_FORMAT, _FORMAT),
    ("runtime", MAX_RUNTIME, _RUNTIME),
    ("storageUri", MAX_STORAGE_URI, _STORAGE_URI),
    ("image", MAX_IMAGE, _IMAGE),
)


def _check_weights(field: str, node: dict[str, Any]) -> None:
    """format, runtime, storageUri (and a variant's image) of the model or a variant."""
    for key, max_len, pattern in _WEIGHTS:
        if key in node and (key != "image" or field != "spec.model"):
            _check_string(f"{field}.{key}", node[key], max_len, pattern)


def _check_tier_replicas(name: str, tr: Any) -> None:
    """spec.tierReplicas' shape and the name room its children need (which tiers it may
    name is the contract's `tier_replicas` check)."""
    if tr is None:
        return
    if not isinstance(tr, dict):
        raise InvalidService("spec.tierReplicas: must be an object such as {edge: 1, cloud: 1}")
    for tier, n in tr.items():
        if tier not in {t.value for t in Tier}:
            raise InvalidService(f"spec.tierReplicas.{tier}: not a tier (edge or cloud)")
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_REPLICAS:
            raise InvalidService(
                f"spec.tierReplicas.{tier}: must be an integer in 0..{MAX_REPLICAS}, not {n!r}"
            )
    if len(name) > MAX_TIER_NAME:
        raise InvalidService(
            f"metadata.name: at most {MAX_TIER_NAME} characters with spec.tierReplicas (the "
            f"child Service <name>-cloud{CHILD_SUFFIX} must be a DNS-1035 label of at most 63)"
        )


def _check_kserve_name(name: str, tiered: bool) -> None:
    """The name room KServe's pod label `app: isvc.<child>-predictor` needs (the child is
    <name>, or <name>-<tier> with spec.tierReplicas)."""
    most, child = (MAX_KSERVE_TIER_NAME, "<name>-cloud") if tiered else (MAX_KSERVE_NAME, "<name>")
    if len(name) > most:
        tier = " and spec.tierReplicas" if tiered else ""
        raise InvalidService(
            f"metadata.name: at most {most} characters with backend kserve{tier} (KServe "
            f"labels the pods app: {KSERVE_APP_LABEL.format(child)}, a label value of at "
            "most 63; backend deployment allows more)"
        )


def _allowed_weights(spec: dict[str, Any]) -> list[tuple[int, dict[str, Any], str, str]]:
    """(index, variant, field, storageUri) of each variant of an allowed tier that has
    weights: its own storageUri, else the model's (the fallback)."""
    model = spec.get("model")
    model = model if isinstance(model, dict) else {}
    variants = model.get("variants")
    allowed = spec.get("allowedTiers", ["edge", "cloud"])
    out = []
    for i, v in enumerate(variants if isinstance(variants, list) else []):
        if not isinstance(v, dict) or (isinstance(allowed, list) and v.get("tier") not in allowed):
            continue
        field, uri = f"spec.model.variants[{i}].storageUri", v.get("storageUri")
        if not uri:
            field, uri = "spec.model.storageUri", model.get("storageUri")
        if isinstance(uri, str) and uri:
            out.append((i, v, field, uri))
    return out


def allowed_weights(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, storageUri) of each variant of an allowed tier that has weights: its own
    storageUri, else the model's (the fallback)."""
    return [(field, uri) for _, _, field, uri in _allowed_weights(spec)]


def hf_weights(spec: dict[str, Any]) -> bool:
    """Some variant of an allowed tier fetches hf:// weights (its own storageUri, else the
    model's): under backend kserve, KServe's storage initializer downloads them."""
    return any(uri.startswith("hf://") for _, uri in allowed_weights(spec))


def _check_kserve_hf_uris(spec: dict[str, Any]) -> None:
    """KServe v0.15's storage initializer (Storage._download_hf) takes exactly
    hf://<org>/<repo>[:<revision>]: another shape (hf://org/repo/file.gguf, the deployment
    backend's llama.cpp form) failed in the predictor's init container, nothing naming the
    field."""
    for field, uri in allowed_weights(spec):
        if uri.startswith("hf://") and not _KSERVE_HF_URI.fullmatch(uri):
            raise InvalidService(
                f"{field}: with backend kserve an hf:// URI must be hf://<org>/<repo>[:<revision>] "
                f"(KServe's storage initializer downloads the whole repository; no file path), "
                f"not {uri[:200]!r}; backend deployment's llama.cpp takes hf://<org>/<repo>/<file>"
            )


def _check_deployment_hf_uris(spec: dict[str, Any]) -> None:
    """Under backend deployment the server fetches hf:// weights itself: llama.cpp
    (--hf-repo, --hf-file; a revision only as the file's URL) and vLLM (--model,
    --revision) take hf://<org>/<repo>[:<revision>][/<file>]. llama.cpp's --hf-repo reads
    org/repo:<tag> as a quantisation of main, so a revision of a whole repository ran
    another file of another revision (or none), nothing naming the field. vLLM's --model
    is a repository: the file part of hf://<org>/<repo>/<file> was dropped and vLLM served
    the whole repository (other weights than the file named, or none it can load)."""
    model = spec.get("model")
    model = model if isinstance(model, dict) else {}
    for i, v, field, uri in _allowed_weights(spec):
        if not uri.startswith("hf://"):
            continue
        if not _DEPLOYMENT_HF_URI.fullmatch(uri):
            raise InvalidService(
                f"{field}: with backend deployment an hf:// URI must be "
                f"hf://<org>/<repo>[:<revision>][/<file>], not {uri[:200]!r}"
            )
        if _HF_REVISION_NO_FILE.fullmatch(uri) and llamacpp_serves(model, v):
            raise InvalidService(
                f"{field}: spec.model.variants[{i}] runs on llama.cpp (backend deployment), "
                "which fetches a revision only with its file, "
                f"hf://<org>/<repo>:<revision>/<file>.gguf, not {uri[:200]!r} (its --hf-repo "
                "reads ':<tag>' as a quantisation of the main branch)"
            )
        if _HF_FILE.fullmatch(uri) and not llamacpp_serves(model, v):
            raise InvalidService(
                f"{field}: spec.model.variants[{i}] runs on vLLM (backend deployment), which "
                "serves a whole repository (--model <org>/<repo>; a GGUF file only from a "
                f"local path): give the repository, hf://<org>/<repo>[:<revision>], not "
                f"{uri[:200]!r}, or run a GGUF file on a llama.cpp runtime (perllm-llamacpp, "
                "perllm-llamacpp-cuda)"
            )


def _check_kserve_token(spec: dict[str, Any]) -> None:
    """KServe v0.15's storage initializer takes a Hugging Face token only from the data key
    HF_TOKEN of a Secret of the predictor's ServiceAccount: any other key and gated hf://
    weights would fail to download with nothing naming the field."""
    ref = (spec.get("model") or {}).get("tokenSecretRef")
    if not isinstance(ref, dict) or not hf_weights(spec):
        return
    key = ref.get("key", HF_TOKEN_KEY)
    if key != HF_TOKEN_KEY:
        raise InvalidService(
            f"spec.model.tokenSecretRef.key: must be {HF_TOKEN_KEY} with backend kserve and "
            f"hf:// weights, not {key!r} (KServe's storage initializer reads the token only "
            f"from the Secret key {HF_TOKEN_KEY}; backend deployment takes any key)"
        )


def check_kubernetes_fields(obj: dict[str, Any]) -> None:
    """The CRD's checks of the fields that only Kubernetes reads (the name of the children,
    model format/runtime/storageUri, replicas, backend, resources), for an object that may not have
    passed admission; InvalidService names the field."""
    meta = field_object("metadata", obj.get("metadata", {}))
    spec = field_object("spec", obj.get("spec", {}))
    name = meta.get("name", "")
    if not isinstance(name, str) or len(name) > MAX_NAME:
        raise InvalidService(
            f"metadata.name: at most {MAX_NAME} characters (the child Service "
            f"<name>{CHILD_SUFFIX} must be a DNS-1035 label of at most 63)"
        )
    if not DNS1035.fullmatch(name):
        raise InvalidService(
            "metadata.name: must be a DNS-1035 label (lower-case letters, digits and '-', "
            f"starting with a letter) as the child Service <name>{CHILD_SUFFIX} needs"
        )
    model = field_object("spec.model", spec.get("model", {}))
    _check_weights("spec.model", model)
    ref = model.get("tokenSecretRef")
    if ref is not None:
        if not isinstance(ref, dict) or "name" not in ref:
            raise InvalidService("spec.model.tokenSecretRef: needs a name")
        _check_string("spec.model.tokenSecretRef.name", ref["name"], MAX_SECRET_NAME, _RUNTIME)
        if "key" in ref:
            _check_string("spec.model.tokenSecretRef.key", ref["key"], MAX_SECRET_KEY, _SECRET_KEY)
    replicas = spec.get("replicas", 1)
    if isinstance(replicas, bool) or not isinstance(replicas, int):
        raise InvalidService("spec.replicas: must be an integer")
    if not 0 <= replicas <= MAX_REPLICAS:
        raise InvalidService(f"spec.replicas: must be in 0..{MAX_REPLICAS}, not {replicas}")
    _check_tier_replicas(name, spec.get("tierReplicas"))
    # Anything but "deployment" rendered KServe children: a "Deployment" made an
    # InferenceService (KServeMissing on a cluster without KServe), naming no field.
    backend = spec.get("backend", BACKENDS[0])
    if not (isinstance(backend, str) and backend in BACKENDS):
        raise InvalidService(f"spec.backend: must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend == "kserve":
        _check_kserve_name(name, spec.get("tierReplicas") is not None)
        _check_kserve_token(spec)
        _check_kserve_hf_uris(spec)
    variants = model.get("variants", [])
    if isinstance(variants, list):
        for i, v in enumerate(variants):
            if isinstance(v, dict):
                _check_weights(f"spec.model.variants[{i}]", v)
            if isinstance(v, dict) and "resources" in v:
                try:
                    check_resources(f"spec.model.variants[{i}].resources", v["resources"])
                except ValueError as e:
                    raise InvalidService(str(e)) from None
    if backend == "deployment":  # (after the variants' fields, which it reads)
        _check_deployment_hf_uris(spec)
