"""The LLMService CRD file and its mapping onto the contract."""

from __future__ import annotations

import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from perllm.contract import (
    MAX_DEADLINE_S,
    MAX_MODEL_NAME,
    MAX_OUTPUT_TOKENS,
    MAX_PAYLOAD_BYTES,
    MAX_PER_OUTPUT_TOKEN_S,
    MAX_PROMPT_TOKENS,
    MAX_RATE_RPS,
    MAX_REPLICAS,
    MODEL_NAME,
    Precision,
    Tier,
)
from perllm.crd import (
    CRD_PATH,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    InvalidService,
    service_spec,
)
from perllm.crd_fields import (
    BACKENDS,
    DEPLOYMENT_HF_URI,
    GGUF_PRECISIONS,
    HF_FILE,
    HF_REVISION_NO_FILE,
    HF_TOKEN_KEY,
    KSERVE_HF_URI,
    LLAMACPP_RUNTIMES,
    MAX_FORMAT,
    MAX_IMAGE,
    MAX_KSERVE_NAME,
    MAX_KSERVE_TIER_NAME,
    MAX_NAME,
    MAX_RUNTIME,
    MAX_SECRET_KEY,
    MAX_SECRET_NAME,
    MAX_STORAGE_URI,
    MAX_TIER_NAME,
    MODEL_FORMAT,
    STORAGE_URI,
    VLLM_RUNTIMES,
)
from perllm.crd_resources import MAX_QUANTITY, MAX_RESOURCES, parse_quantity
from perllm.profiles import default_catalogue

MANIFESTS = sorted((Path(__file__).parents[2] / "manifests").glob("*.yaml"))


def test_crd_names_match_the_code() -> None:
    crd = yaml.safe_load(CRD_PATH.read_text())
    assert crd["spec"]["group"] == GROUP
    assert crd["spec"]["names"]["kind"] == KIND
    assert crd["spec"]["names"]["plural"] == PLURAL
    assert [v["name"] for v in crd["spec"]["versions"]] == [VERSION]
    cols = [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert cols == [
        "Model",
        "Deadline",
        "Tier",
        "Attainment",
        "J/req",
        "Ready",
        "Age",
        "TierReplicas",  # priority 1: `kubectl get -o wide` only
    ]


def _schema_enum(*path: str) -> list[str]:
    node = yaml.safe_load(CRD_PATH.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for p in path:
        node = node["items"] if p == "[]" else node["properties"][p]
    return list(node["enum"])


def test_schema_enums_are_the_contract_enums() -> None:
    assert _schema_enum("spec", "allowedTiers", "[]") == [t.value for t in Tier]
    assert _schema_enum("spec", "model", "variants", "[]", "tier") == [t.value for t in Tier]
    assert _schema_enum("spec", "model", "variants", "[]", "precision") == [
        p.value for p in Precision
    ]
    assert _schema_enum("spec", "backend") == list(BACKENDS)
    assert _spec_schema()["properties"]["spec"]["properties"]["backend"]["default"] == BACKENDS[0]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_examples_map_onto_the_contract(path: Path) -> None:
    obj = yaml.safe_load(path.read_text())
    assert obj["kind"] == KIND and obj["apiVersion"] == f"{GROUP}/{VERSION}"
    spec = service_spec(obj)
    assert spec.name == obj["metadata"]["name"]
    assert spec.model in default_catalogue().models
    for tier in spec.allowed_tiers:
        assert spec.variant_for(tier) is not None


def test_code_assistant_floor_excludes_the_4bit_edge_variant() -> None:
    obj = yaml.safe_load((Path(__file__).parents[2] / "manifests/code-assistant.yaml").read_text())
    spec = service_spec(obj)
    q4 = default_catalogue().models["llama3-8b"].quality(Precision.Q4_K_M)
    assert q4 < spec.requirements.min_quality
    edge = spec.variant_for(Tier.EDGE)
    assert edge is not None and edge.quality is not None
    assert edge.quality >= spec.requirements.min_quality


def test_a_service_that_breaks_the_contract_names_the_problem() -> None:
    obj = yaml.safe_load(MANIFESTS[0].read_text())
    obj["spec"]["allowedTiers"] = ["edge", "cloud"]
    obj["spec"]["model"]["variants"] = obj["spec"]["model"]["variants"][:1]
    obj["spec"]["model"]["variants"][0]["tier"] = "cloud"
    with pytest.raises(InvalidService, match="no variant for allowed tier"):
        service_spec(obj)


# ---- the CRD bounds every spec field (admitted-but-broken specs are rejected) ----------------


def _spec_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD_PATH.read_text())
    root: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return root


def _walk(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for key, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}[*]")


SPEC_NODES = list(_walk(_spec_schema()["properties"]["spec"], "spec"))


def _ids(nodes: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [p for p, _ in nodes]


STRINGS = [(p, n) for p, n in SPEC_NODES if n.get("type") == "string"]
NUMBERS = [(p, n) for p, n in SPEC_NODES if n.get("type") in ("number", "integer")]
ARRAYS = [(p, n) for p, n in SPEC_NODES if n.get("type") == "array"]
MAPS = [(p, n) for p, n in SPEC_NODES if "additionalProperties" in n]
INT_OR_STRING = [(p, n) for p, n in SPEC_NODES if n.get("x-kubernetes-int-or-string")]


def test_the_walk_sees_every_kind_of_field() -> None:
    assert len(STRINGS) >= 8 and len(NUMBERS) >= 10 and len(ARRAYS) == 2
    assert _ids(MAPS) == [
        "spec.model.variants[].resources.requests",
        "spec.model.variants[].resources.limits",
    ]
    assert len(INT_OR_STRING) == 2


def test_no_spec_field_is_free_form() -> None:
    """Nothing under spec escapes the schema (no preserved unknown fields, no untyped node)."""
    for path, node in SPEC_NODES:
        assert not node.get("x-kubernetes-preserve-unknown-fields"), path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), path


@pytest.mark.parametrize(("path", "node"), STRINGS, ids=_ids(STRINGS))
def test_every_string_has_a_max_length(path: str, node: dict[str, Any]) -> None:
    assert 0 < node.get("maxLength", 0) <= 2048, f"{path}: needs maxLength (at most 2048)"


@pytest.mark.parametrize(("path", "node"), NUMBERS, ids=_ids(NUMBERS))
def test_every_number_has_a_range(path: str, node: dict[str, Any]) -> None:
    assert "minimum" in node, f"{path}: needs minimum"
    assert "maximum" in node, f"{path}: needs maximum"


@pytest.mark.parametrize(("path", "node"), ARRAYS, ids=_ids(ARRAYS))
def test_every_array_has_max_items(path: str, node: dict[str, Any]) -> None:
    assert 0 < node.get("maxItems", 0) <= 16, path


@pytest.mark.parametrize(("path", "node"), MAPS, ids=_ids(MAPS))
def test_every_map_is_bounded_and_its_keys_checked(path: str, node: dict[str, Any]) -> None:
    assert node.get("maxProperties") == MAX_RESOURCES, path
    rules = " ".join(r["rule"] for r in node.get("x-kubernetes-validations", []))
    assert "self.all(k, k.size() <= 253 && k.matches(" in rules, path


@pytest.mark.parametrize(("path", "node"), INT_OR_STRING, ids=_ids(INT_OR_STRING))
def test_every_quantity_is_checked_by_cel(path: str, node: dict[str, Any]) -> None:
    assert node.get("maxLength") == MAX_QUANTITY, path
    rules = " ".join(r["rule"] for r in node.get("x-kubernetes-validations", []))
    assert "isQuantity(" in rules and "isLessThan(quantity('0'))" in rules, path


def test_every_rule_names_its_field() -> None:
    """A CEL rule's error is reported at the node it sits on (or at its fieldPath); one on an
    object must name the field in its message or fieldPath."""
    root = _spec_schema()
    nodes = [("", root), *SPEC_NODES]
    for path, node in nodes:
        for r in node.get("x-kubernetes-validations", []):
            assert "message" in r or "messageExpression" in r, (path, r["rule"])
            if node.get("type") == "object" and "additionalProperties" not in node:
                assert "fieldPath" in r, (path, r["rule"])


def test_the_name_rule_leaves_room_for_the_children() -> None:
    rules = [r["rule"] for r in _spec_schema()["x-kubernetes-validations"]]
    assert f"self.metadata.name.size() <= {MAX_NAME}" in rules
    assert MAX_NAME + len("-predictor") == 63
    # spec.tierReplicas: KServe's Service of the child <name>-cloud is <name>-cloud-predictor
    assert f"!has(self.spec.tierReplicas) || self.metadata.name.size() <= {MAX_TIER_NAME}" in rules
    assert MAX_TIER_NAME + len("-cloud-predictor") == 63


def test_the_kserve_name_rules_leave_room_for_kserves_pod_label() -> None:
    """KServe v0.15 labels an InferenceService <isvc>'s pods app: isvc.<isvc>-predictor."""
    rules = [r["rule"] for r in _spec_schema()["x-kubernetes-validations"]]
    not_kserve = "(has(self.spec.backend) && self.spec.backend == 'deployment') || "
    assert f"{not_kserve}self.metadata.name.size() <= {MAX_KSERVE_NAME}" in rules
    tiered = f"{not_kserve}!has(self.spec.tierReplicas) || self.metadata.name.size() <= "
    assert f"{tiered}{MAX_KSERVE_TIER_NAME}" in rules
    assert len(f"isvc.{'n' * MAX_KSERVE_NAME}-predictor") == 63
    assert len(f"isvc.{'n' * MAX_KSERVE_TIER_NAME}-cloud-predictor") == 63


@pytest.mark.parametrize(
    ("length", "tiers", "backend", "error"),
    [
        (MAX_KSERVE_NAME + 1, None, None, "at most 48 characters with backend kserve (KServe"),
        (MAX_KSERVE_NAME + 1, None, "kserve", "at most 48 characters with backend kserve (KSe"),
        (MAX_KSERVE_TIER_NAME + 1, {"edge": 1}, None, "at most 42 characters with backend "),
        (MAX_KSERVE_TIER_NAME + 1, {"edge": 1}, "kserve", "app: isvc.<name>-cloud-predictor"),
        (MAX_KSERVE_NAME, None, None, None),
        (MAX_NAME, None, "deployment", None),
        (MAX_KSERVE_TIER_NAME, {"edge": 1, "cloud": 1}, "kserve", None),
        (MAX_TIER_NAME, {"cloud": 1}, "deployment", None),
    ],
)
def test_a_name_too_long_for_kserves_pod_label_is_refused_under_kserve_only(
    length: int, tiers: Any, backend: str | None, error: str | None
) -> None:
    """Longer, the InferenceService was accepted but KServe's Deployment was refused (the
    pod label too long): no pod, no condition naming the field."""
    obj = _chat()
    obj["metadata"]["name"] = "n" * length
    if tiers is not None:
        obj["spec"]["tierReplicas"] = tiers
    if backend is not None:
        obj["spec"]["backend"] = backend
    if error is None:
        assert service_spec(obj).name == obj["metadata"]["name"]
    else:
        with pytest.raises(InvalidService, match=re.escape(error)):
            service_spec(obj)


def _tiered(**tier_replicas: Any) -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load((MANIFESTS[0].parent / "chat-assistant.yaml").read_text())
    obj["spec"]["tierReplicas"] = tier_replicas
    return obj


def test_tier_replicas_map_onto_the_contract() -> None:
    spec = service_spec(_tiered(edge=2, cloud=0))
    assert spec.tier_replicas == {Tier.EDGE: 2, Tier.CLOUD: 0}
    assert service_spec(yaml.safe_load(MANIFESTS[0].read_text())).tier_replicas is None


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda o: o["spec"].update(allowedTiers=["edge"]), "spec.tierReplicas: tier(s) ['cloud']"),
        (lambda o: o["spec"]["tierReplicas"].update(edge=0, cloud=0), "at least one tier"),
        (lambda o: o["spec"]["tierReplicas"].update(cloud=1001), "spec.tierReplicas.cloud"),
        (lambda o: o["spec"]["tierReplicas"].update(cloud=True), "spec.tierReplicas.cloud"),
        (lambda o: o["spec"]["tierReplicas"].update(fog=1), "spec.tierReplicas.fog"),
        (lambda o: o["spec"].update(tierReplicas=[1, 1]), "spec.tierReplicas: must be an object"),
        (lambda o: o["metadata"].update(name="n" * 48), "metadata.name: at most 47"),
    ],
)
def test_bad_tier_replicas_name_the_field(edit: Any, message: str) -> None:
    obj = _tiered(edge=1, cloud=1)
    edit(obj)
    with pytest.raises(InvalidService, match=re.escape(message)):
        service_spec(obj)


def _at(*path: str) -> dict[str, Any]:
    node = _spec_schema()["properties"]["spec"]
    for p in path:
        node = node["items"] if p == "[]" else node["properties"][p]
    return node


def test_crd_maxima_are_the_contract_and_crd_module_maxima() -> None:
    assert _at("traffic", "rateRps")["maximum"] == MAX_RATE_RPS
    assert _at("traffic", "promptTokens")["maximum"] == MAX_PROMPT_TOKENS
    assert _at("traffic", "outputTokens")["maximum"] == MAX_OUTPUT_TOKENS
    assert _at("traffic", "payloadBytes")["maximum"] == MAX_PAYLOAD_BYTES
    assert _at("requirements", "deadline", "seconds")["maximum"] == MAX_DEADLINE_S
    assert _at("requirements", "deadline", "perOutputTokenSeconds")["maximum"] == (
        MAX_PER_OUTPUT_TOKEN_S
    )
    assert _at("replicas")["maximum"] == MAX_REPLICAS
    for tier in Tier:
        assert _at("tierReplicas", tier.value)["maximum"] == MAX_REPLICAS
    assert _at("model", "name")["maxLength"] == MAX_MODEL_NAME
    assert _at("model", "format")["maxLength"] == MAX_FORMAT
    assert _at("model", "runtime")["maxLength"] == MAX_RUNTIME
    assert _at("model", "storageUri")["maxLength"] == MAX_STORAGE_URI
    v = ("model", "variants", "[]")
    assert _at(*v, "storageUri")["maxLength"] == MAX_STORAGE_URI
    assert _at(*v, "format")["maxLength"] == MAX_FORMAT
    assert _at(*v, "runtime")["maxLength"] == MAX_RUNTIME
    assert _at(*v, "image")["maxLength"] == MAX_IMAGE
    assert _at("model", "tokenSecretRef", "name")["maxLength"] == MAX_SECRET_NAME
    assert _at("model", "tokenSecretRef", "key")["maxLength"] == MAX_SECRET_KEY


def test_a_variant_has_its_own_weights_and_server() -> None:
    item = _at("model", "variants", "[]")["properties"]
    assert {"storageUri", "format", "runtime", "image"} <= set(item)
    # no model-wide default format: it would give a GGUF variant the safetensors format
    assert "default" not in _at("model", "format")


def _no_hf(spec: dict[str, Any]) -> None:
    for v in spec["model"]["variants"]:
        v.pop("storageUri")


def _model_hf(spec: dict[str, Any]) -> None:
    _no_hf(spec)
    spec["model"]["storageUri"] = "hf://org/repo"


@pytest.mark.parametrize(
    ("key", "edit", "refused"),
    [
        ("token", lambda s: None, True),  # the cloud variant's hf:// weights
        ("token", _model_hf, True),  # the model's, every variant's fallback
        ("token", lambda s: s.update(backend="kserve"), True),
        ("token", lambda s: s.update(backend="deployment"), False),  # its servers fetch
        ("token", lambda s: s.update(allowedTiers=["edge"]), False),  # https:// GGUF only
        ("token", _no_hf, False),  # no storageUri: no storage initializer
        (HF_TOKEN_KEY, lambda s: None, False),
        (None, lambda s: None, False),  # the default
    ],
)
def test_kserve_refuses_a_token_key_its_storage_initializer_never_reads(
    key: str | None, edit: Any, refused: bool
) -> None:
    """KServe v0.15's storage initializer takes a Hugging Face token only from the Secret
    key HF_TOKEN: another key and the gated download failed, nothing naming the field."""
    obj = _chat()
    ref = obj["spec"]["model"]["tokenSecretRef"]
    ref.pop("key")
    if key is not None:
        ref["key"] = key
    edit(obj["spec"])
    if refused:
        with pytest.raises(InvalidService, match=r"spec.model.tokenSecretRef.key: must be HF_T"):
            service_spec(obj)
    else:
        assert service_spec(obj).name == "chat-assistant"


def test_the_token_key_rule_is_the_crds_too() -> None:
    """The same refusal at admission (CEL, evaluated by tests/e2e/test_llmservice_crd.py),
    and the CRD's default key is the one KServe reads."""
    assert _at("model", "tokenSecretRef", "key")["default"] == HF_TOKEN_KEY
    (rule,) = [
        r
        for r in _at()["x-kubernetes-validations"]
        if r.get("fieldPath") == ".model.tokenSecretRef.key"
    ]
    assert rule["message"].startswith("spec.model.tokenSecretRef.key: must be HF_TOKEN")
    text = " ".join(rule["rule"].split())
    assert f"self.model.tokenSecretRef.key == '{HF_TOKEN_KEY}'" in text
    assert "self.backend == 'deployment'" in text and "v.tier in self.allowedTiers" in text
    assert "v.storageUri.startsWith('hf://')" in text
    assert "self.model.storageUri.startsWith('hf://')" in text


def test_the_chart_ships_the_same_crd() -> None:
    chart = CRD_PATH.parents[1] / "charts" / "perllm" / "crds" / CRD_PATH.name
    assert chart.read_text() == CRD_PATH.read_text()


# ---- the same limits for objects that did not pass admission ----------------------------------


def _chat() -> dict[str, Any]:
    return yaml.safe_load((Path(__file__).parents[2] / "manifests/chat-assistant.yaml").read_text())


R0 = ("spec", "model", "variants", 0, "resources")


def _set(obj: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    for p in path[:-1]:
        obj = obj[p]
    obj[path[-1]] = value


OUTSIDE = [
    (("metadata", "name"), "n" * 54, "metadata.name: at most 53"),
    (("metadata", "name"), "7b-chat", "metadata.name: must be a DNS-1035 label"),
    (("spec", "traffic", "rateRps"), 1e6, "spec.traffic.rateRps: "),
    (("spec", "traffic", "promptTokens"), 2**21, "spec.traffic.promptTokens: "),
    (("spec", "traffic", "outputTokens"), 10**6, "spec.traffic.outputTokens: "),
    (("spec", "traffic", "payloadBytes"), 2**31, "spec.traffic.payloadBytes: "),
    (("spec", "requirements", "deadline", "seconds"), 86401, "deadline.seconds: "),
    (("spec", "requirements", "deadline", "perOutputTokenSeconds"), 61, "perOutputTokenSeconds"),
    (("spec", "model", "name"), "m" * 254, "spec.model.name: "),
    (("spec", "model", "format"), "f" * 64, "spec.model.format: at most 63"),
    (("spec", "model", "runtime"), "r" * 300_000, "spec.model.runtime: at most 253"),
    (("spec", "model", "runtime"), "My Runtime", "spec.model.runtime: must match"),
    (("spec", "model", "storageUri"), "hf://" + "u" * 300_000, "spec.model.storageUri: at most"),
    (("spec", "model", "storageUri"), "ftp://x", "spec.model.storageUri: must match"),
    ((*R0[:-1], "storageUri"), "ftp://x", r"variants\[0\].storageUri: must match"),
    ((*R0[:-1], "runtime"), "My Runtime", r"variants\[0\].runtime: must match"),
    ((*R0[:-1], "format"), "f" * 64, r"variants\[0\].format: at most 63"),
    ((*R0[:-1], "image"), "i" * 513, r"variants\[0\].image: at most 512"),
    ((*R0[:-1], "image"), "bad image", r"variants\[0\].image: must match"),
    (("spec", "model", "tokenSecretRef"), {"key": "k"}, "tokenSecretRef: needs a name"),
    (("spec", "model", "tokenSecretRef"), {"name": "Bad_Name"}, "tokenSecretRef.name: must"),
    (("spec", "model", "tokenSecretRef"), {"name": "s", "key": "a/b"}, "tokenSecretRef.key"),
    (("spec", "replicas"), 1001, "spec.replicas: must be in 0..1000"),
    (("spec", "replicas"), 1.5, "spec.replicas: must be an integer"),
    (("spec", "backend"), "Deployment", "spec.backend: must be one of kserve, deployment, not 'De"),
    (("spec", "backend"), "deployment ", "spec.backend: must be one of"),
    (("spec", "backend"), None, "spec.backend: must be one of"),
    (("spec", "backend"), ["deployment"], "spec.backend: must be one of"),
    ((*R0, "requests", "cpu"), "banana", r"resources.requests\[cpu\]: must be a Kubernetes"),
    ((*R0, "requests", "cpu"), -4, r"resources.requests\[cpu\]: must not be negative"),
    ((*R0, "limits", "memory"), "-16Gi", r"resources.limits\[memory\]: must not be negative"),
    ((*R0, "requests", "cpu"), "1" * 65, r"resources.requests\[cpu\]: at most 64"),
    ((*R0, "requests", "cpu"), "24", r"variants\[0\].resources.requests\[cpu\]: must not exceed"),
    ((*R0, "requests", "memory"), "17Gi", r"requests\[memory\]: must not exceed"),
    ((*R0, "requests", "../../etc"), "1", "'../../etc' is not a resource name"),
    ((*R0, "limits", "gpu"), "1", "'gpu' is not a resource name"),
    ((*R0, "requests"), {f"example.com/r{i}": "1" for i in range(17)}, "at most 16 resources"),
]


@pytest.mark.parametrize(("path", "value", "match"), OUTSIDE, ids=lambda x: str(x)[:40])
def test_an_object_outside_admission_is_checked_too(
    path: tuple[Any, ...], value: Any, match: str
) -> None:
    obj = _chat()
    _set(obj, path, value)
    with pytest.raises(InvalidService, match=match):
        service_spec(obj)


CONTRACT = [
    (("spec", "requirements", "deadline", "seconds"), -1, "spec.requirements.deadline.seconds: "),
    (("spec", "requirements", "deadline", "seconds"), "5s", "spec.requirements.deadline.seconds"),
    (("spec", "requirements", "deadline", "percentile"), 0, "deadline.percentile: "),
    (("spec", "requirements", "deadline", "perOutputTokenSeconds"), -1, "perOutputTokenSeconds"),
    (("spec", "requirements", "minQuality"), 1.5, "spec.requirements.minQuality: "),
    (("spec", "requirements", "minQuality"), -0.1, "spec.requirements.minQuality: "),
    (("spec", "model", "variants", 0, "tier"), "moon", r"spec.model.variants\[0\].tier: "),
    (("spec", "model", "variants", 1, "precision"), "fp8", r"variants\[1\].precision: "),
    (("spec", "model", "variants", 0, "quality"), 2, r"spec.model.variants\[0\].quality: "),
    (("spec", "model", "variants", 1, "tier"), "edge", "spec.model.variants: at most one"),
    (("spec", "allowedTiers"), ["moon"], r"spec.allowedTiers\[0\]: "),
    (("spec", "allowedTiers"), [], "spec.allowedTiers: "),
    # (a set in the CRD: outside admission [edge, edge] was accepted)
    (("spec", "allowedTiers"), ["edge", "edge"], "spec.allowedTiers: each tier at most once"),
    (("spec", "traffic", "rateRps"), -1, "spec.traffic.rateRps: "),
    (("spec", "model", "name"), "", "spec.model.name: "),
    # A YAML `true` or a quoted number is not a number (it was read as 1.0 or 5.0).
    (("spec", "requirements", "deadline", "seconds"), True, "deadline.seconds: .*not True"),
    (("spec", "requirements", "deadline", "seconds"), "5", "deadline.seconds: .*not '5'"),
    (("spec", "requirements", "deadline", "percentile"), "99", "deadline.percentile: "),
    (("spec", "requirements", "deadline", "perOutputTokenSeconds"), True, "perOutputTokenSec"),
    (("spec", "requirements", "minQuality"), True, "spec.requirements.minQuality: "),
    (("spec", "model", "variants", 0, "quality"), True, r"spec.model.variants\[0\].quality: "),
    (("spec", "traffic", "rateRps"), "2", "spec.traffic.rateRps: "),
    (("spec", "traffic", "outputTokens"), True, "spec.traffic.outputTokens: "),
    (("spec", "traffic", "promptTokens"), "512", "spec.traffic.promptTokens: "),
    (("spec", "traffic", "payloadBytes"), False, "spec.traffic.payloadBytes: "),
]


@pytest.mark.parametrize(("path", "value", "match"), CONTRACT, ids=lambda x: str(x)[:40])
def test_a_contract_violation_names_the_crd_field(
    path: tuple[Any, ...], value: Any, match: str
) -> None:
    """The message (the operator's InvalidSpec condition and Event) names the field as the
    CRD spells it, on one line, without pydantic's boilerplate: it used to read '1
    validation error for Requirements\\nmin_quality\\n  Input should be ... For further
    information visit https://errors.pydantic.dev/...', and an unknown tier "'moon' is
    not a valid Tier", naming no field."""
    obj = _chat()
    _set(obj, path, value)
    with pytest.raises(InvalidService, match=match) as e:
        service_spec(obj)
    assert "\n" not in str(e.value) and "pydantic" not in str(e.value)


def test_a_missing_variant_tier_or_deadline_is_named() -> None:
    obj = _chat()
    del obj["spec"]["model"]["variants"][0]["tier"]
    with pytest.raises(InvalidService, match=r"spec.model.variants\[0\].tier: Field required"):
        service_spec(obj)
    obj = _chat()
    del obj["spec"]["requirements"]["deadline"]["seconds"]
    with pytest.raises(InvalidService, match=r"spec.requirements.deadline.seconds: Field required"):
        service_spec(obj)


SHAPES = [
    (("metadata",), "chat", "metadata: must be an object"),
    (("spec",), None, "spec: must be an object"),
    (("spec",), "x", "spec: must be an object"),
    (("spec", "model"), None, "spec.model: must be an object"),
    (("spec", "model"), "llama2-7b", "spec.model: must be an object"),
    (("spec", "model", "variants"), "edge", "spec.model.variants: must be a list"),
    (("spec", "model", "variants", 0), "edge", r"spec.model.variants\[0\]: must be an object"),
    (("spec", "requirements"), "fast", "spec.requirements: must be an object"),
    (("spec", "requirements", "deadline"), [5], "spec.requirements.deadline: must be an object"),
    (("spec", "traffic"), 10, "spec.traffic: must be an object"),
    (("spec", "allowedTiers"), "edge", "spec.allowedTiers: must be a list"),
]


@pytest.mark.parametrize(("path", "value", "match"), SHAPES, ids=lambda x: str(x)[:40])
def test_a_wrongly_shaped_object_is_invalid_not_a_crash(
    path: tuple[Any, ...], value: Any, match: str
) -> None:
    """Outside admission (no schema, an older CRD) any JSON can arrive: a string where an
    object belongs raised AttributeError/TypeError out of service_spec, and the extender's
    LLMService informer, which drops only InvalidService, failed its whole list on it (and
    re-listed into the same error, so no service was ever registered)."""
    obj = _chat()
    _set(obj, path, value)
    with pytest.raises(InvalidService, match=match):
        service_spec(obj)


@pytest.mark.parametrize(
    ("value", "refused"),
    [("500m", True), ("1.5", True), ("0.5", True), ("1", False), ("1e3", False), (2, False)],
)
def test_an_extended_resource_is_a_whole_number(value: str | int, refused: bool) -> None:
    """Kubernetes refuses a pod asking for a fraction of an extended resource ("must be an
    integer"): nvidia.com/gpu 500m was admitted and rendered; under KServe its Deployment
    was refused inside KServe's controller (no pod, nothing naming the field), under backend
    deployment the apply failed naming the Deployment's field, not the LLMService's."""
    obj = _chat()
    res = obj["spec"]["model"]["variants"][1]["resources"]
    res["requests"]["nvidia.com/gpu"] = res["limits"]["nvidia.com/gpu"] = value
    if refused:
        match = r"variants\[1\].resources.requests\[nvidia.com/gpu\]: an extended resource is a"
        with pytest.raises(InvalidService, match=match):
            service_spec(obj)
    else:
        assert service_spec(obj).name == "chat-assistant"
    # a native resource may be fractional
    res["requests"]["cpu"] = "500m"
    res["requests"]["nvidia.com/gpu"] = res["limits"]["nvidia.com/gpu"] = 1
    assert service_spec(obj).name == "chat-assistant"


def test_the_whole_number_rule_is_the_crds_too() -> None:
    for kind in ("requests", "limits"):
        node = _at("model", "variants", "[]", "resources", kind)
        rules = " ".join(" ".join(r["rule"].split()) for r in node["x-kubernetes-validations"])
        assert "quantity(string(self[k])).isInteger()" in rules, kind


def test_extended_resources_request_their_limit() -> None:
    obj = _chat()
    obj["spec"]["model"]["variants"][1]["resources"]["limits"]["nvidia.com/gpu"] = 2
    with pytest.raises(InvalidService, match=r"requests\[nvidia.com/gpu\]: an extended"):
        service_spec(obj)


def test_an_extended_resource_request_needs_its_limit() -> None:
    """Kubernetes refuses a pod requesting an extended resource without a limit ("Limit
    must be set for non overcommitable resources"): admitted, no pod of the service ran."""
    obj = _chat()
    del obj["spec"]["model"]["variants"][1]["resources"]["limits"]["nvidia.com/gpu"]
    with pytest.raises(InvalidService, match=r"requests\[nvidia.com/gpu\]: an extended resource"):
        service_spec(obj)
    node = _at("model", "variants", "[]", "resources")
    rules = [r["rule"] for r in node["x-kubernetes-validations"]]
    assert any("(has(self.limits) && k in self.limits)" in r for r in rules)
    del obj["spec"]["model"]["variants"][1]["resources"]["requests"]["nvidia.com/gpu"]
    obj["spec"]["model"]["variants"][1]["resources"]["limits"]["nvidia.com/gpu"] = "1"
    assert service_spec(obj)  # a limit alone is the request too (Kubernetes defaults it)


def test_a_spec_at_the_limits_maps_onto_the_contract() -> None:
    obj = _chat()
    obj["metadata"]["name"] = "n" * MAX_NAME
    obj["spec"]["backend"] = "deployment"  # KServe's pod label needs more name room
    obj["spec"]["traffic"] = {
        "rateRps": 1000,
        "promptTokens": 2**20,
        "outputTokens": 2**17,
        "payloadBytes": 2**30,
    }
    obj["spec"]["replicas"] = MAX_REPLICAS
    obj["spec"]["requirements"]["deadline"] = {"seconds": 86400, "perOutputTokenSeconds": 60}
    obj["spec"]["model"].update(runtime="kserve-vllm.v1", storageUri="s3://" + "u" * 2043)
    obj["spec"]["model"]["variants"][0]["resources"] = {
        "requests": {"cpu": 4, "memory": "15.5Gi", "hugepages-2Mi": "1Gi", "example.com/f": 1},
        "limits": {
            "cpu": "4000m",
            "memory": "16Gi",
            "example.com/f": "1",
            "ephemeral-storage": 0,
            "hugepages-2Mi": "1Gi",
        },
    }
    spec = service_spec(obj)
    assert spec.traffic.rate_rps == 1000 and spec.requirements.deadline.seconds == 86400


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", "0.5"),
        ("16Gi", str(16 * 2**30)),
        ("1e3", "1000"),
        ("1E-3", "0.001"),
        (".5", "0.5"),
        ("1.", "1"),
        ("+2k", "2000"),
        ("-4", "-4"),
        (12, "12"),
        ("0", "0"),
    ],
)
def test_parse_quantity(text: str | int, value: str) -> None:
    assert parse_quantity(text) == Decimal(value)


@pytest.mark.parametrize("text", ["banana", "500 m", "", "1Ki2", "1e", "1mi", "0x10", 1.5, True])
def test_parse_quantity_rejects(text: object) -> None:
    with pytest.raises(ValueError):
        parse_quantity(text)


def _model_uri(uri: str) -> Any:
    def edit(spec: dict[str, Any]) -> None:
        _no_hf(spec)
        spec["model"]["storageUri"] = uri

    return edit


@pytest.mark.parametrize(
    ("edit", "error"),
    [
        (lambda s: None, None),  # hf://meta-llama/Meta-Llama-3-8B-Instruct
        (lambda s: s["model"]["variants"][1].update(storageUri="hf://o/r:main"), None),
        (lambda s: s["model"]["variants"][1].update(storageUri="hf://o/r/m.gguf"), "variants[1]"),
        (lambda s: s["model"]["variants"][1].update(storageUri="hf://meta-llama"), "variants[1]"),
        (lambda s: s["model"]["variants"][1].update(storageUri="hf://o/"), "variants[1]"),
        (lambda s: s["model"]["variants"][1].update(storageUri="hf:///r"), "variants[1]"),
        (lambda s: s["model"]["variants"][1].update(storageUri="hf://o/:rev"), "variants[1]"),
        (_model_uri("hf://o/r/m.gguf"), "spec.model.storageUri"),
        (_model_uri("hf://o/r"), None),
        # not fetched by KServe: another backend, a tier not allowed, another scheme
        (  # (a file for llama.cpp: vLLM serves a whole repository)
            lambda s: (
                s["model"]["variants"][1].update(
                    storageUri="hf://o/r/m.gguf", runtime="perllm-llamacpp-cuda"
                ),
                s.update(backend="deployment"),
            ),
            None,
        ),
        (
            lambda s: (
                s["model"]["variants"][1].update(storageUri="hf://o/r/m.gguf"),
                s.update(allowedTiers=["edge"]),
            ),
            None,
        ),
        (lambda s: s["model"]["variants"][0].update(storageUri="https://h/o/r/m.gguf"), None),
    ],
)
def test_kserve_refuses_an_hf_uri_its_storage_initializer_cannot_fetch(
    edit: Any, error: str | None
) -> None:
    """KServe v0.15's storage initializer takes hf://<org>/<repo>[:<revision>] only (exactly
    one '/'): hf://org/repo/file.gguf (the deployment backend's llama.cpp form) or hf://org
    were admitted and rendered, and the predictor's init container failed, nothing naming
    the field."""
    obj = _chat()
    edit(obj["spec"])
    if error is None:
        assert service_spec(obj).name == "chat-assistant"
    else:
        with pytest.raises(InvalidService, match=re.escape(error) + r".*hf://<org>/<repo>"):
            service_spec(obj)


def test_the_kserve_hf_uri_rules_are_the_crds_too() -> None:
    """The same refusal at admission (CEL; evaluated by tests/e2e/test_llmservice_crd.py),
    with the pattern of perllm.crd_fields."""
    pattern = f".matches('^{KSERVE_HF_URI}$')"
    rules = [r for r in _at()["x-kubernetes-validations"] if pattern in r["rule"]]
    assert sorted(r["fieldPath"] for r in rules) == [".model.storageUri", ".model.variants"]
    for r in rules:
        text = " ".join(r["rule"].split())
        assert "self.backend == 'deployment'" in text and "self.allowedTiers" in text
        assert r["message"].startswith(f"spec{r['fieldPath']}")


def _qualities(edge: float | None, cloud: float | None, floor: float) -> dict[str, Any]:
    obj = _chat()
    for v, q in zip(obj["spec"]["model"]["variants"], (edge, cloud), strict=True):
        if q is not None:
            v["quality"] = q
    obj["spec"]["requirements"]["minQuality"] = floor
    return obj


@pytest.mark.parametrize(
    ("edge", "cloud", "floor", "allowed", "refused"),
    [
        (0.5, 0.6, 0.7, None, True),  # every variant below the floor
        (0.5, 0.6, 0.6, None, False),  # the cloud's meets it
        (0.5, None, 0.9, None, False),  # the cloud's is the catalogue's: not known here
        (0.5, 0.8, 0.7, ["edge"], True),  # the only allowed variant is below it
        (0.5, 0.8, 0.7, ["cloud"], False),
        (0.0, 0.0, 0.0, None, False),
    ],
)
def test_a_quality_floor_above_every_variant_is_refused(
    edge: float | None, cloud: float | None, floor: float, allowed: Any, refused: bool
) -> None:
    """The floor is hard: above every allowed variant's quality, no node passed the
    extender's filter and the pods stayed Pending, nothing naming spec.requirements.minQuality."""
    obj = _qualities(edge, cloud, floor)
    if allowed is not None:
        obj["spec"]["allowedTiers"] = allowed
    if refused:
        with pytest.raises(
            InvalidService, match=r"^LLMService chat-assistant: spec.requirements.minQuality: above"
        ):
            service_spec(obj)
    else:
        assert service_spec(obj).requirements.min_quality == floor


def test_the_quality_floor_rule_is_the_crds_too() -> None:
    (rule,) = [
        r
        for r in _at()["x-kubernetes-validations"]
        if r.get("fieldPath") == ".requirements.minQuality"
    ]
    text = " ".join(rule["rule"].split())
    assert "v.quality >= self.requirements.minQuality" in text and "self.allowedTiers" in text
    assert rule["message"].startswith("spec.requirements.minQuality: above")


@pytest.mark.parametrize(
    ("resources", "refused"),
    [
        ({"requests": {}, "limits": {}}, True),
        ({"requests": {}}, True),
        ({"limits": {}}, True),
        ({}, True),
        ({"requests": {}, "limits": {"cpu": "1"}}, False),
        ({"requests": {"memory": "1Gi"}, "limits": {}}, False),
    ],
)
def test_a_variant_needs_a_resource_entry(resources: dict[str, Any], refused: bool) -> None:
    """`resources: {requests: {}, limits: {}}` passed "a variant needs requests or limits"
    (the keys were there) and the pod ran with no resources at all."""
    obj = _chat()
    obj["spec"]["model"]["variants"][0]["resources"] = resources
    if refused:
        match = r"spec.model.variants\[0\].resources: a variant needs at least one request"
        with pytest.raises(InvalidService, match=match):
            service_spec(obj)
    else:
        assert service_spec(obj).name == "chat-assistant"


def test_the_resource_entry_rule_is_the_crds_too() -> None:
    rules = _at("model", "variants", "[]")["x-kubernetes-validations"]
    (rule,) = [r for r in rules if r["message"].startswith("resources: a variant needs")]
    text = " ".join(rule["rule"].split())
    assert "self.resources.requests.size() > 0" in text
    assert "self.resources.limits.size() > 0" in text


HP = "hugepages-2Mi"


@pytest.mark.parametrize(
    ("requests", "limits", "error"),
    [
        ({"cpu": "1", HP: "1Gi"}, {HP: "1Gi"}, None),
        ({"cpu": "1"}, {HP: "1Gi"}, None),  # the limit alone is the request too
        ({HP: "1Gi"}, {"memory": "1Gi", HP: "1Gi"}, None),
        ({"cpu": "1", HP: "512Mi"}, {HP: "1Gi"}, r"requests\[hugepages-2Mi\]: huge pages must"),
        ({"cpu": "1", HP: "1Gi"}, {}, r"requests\[hugepages-2Mi\]: huge pages need a limit"),
        ({"cpu": "1", HP: "1Gi"}, {"cpu": "1"}, r"requests\[hugepages-2Mi\]: huge pages need"),
        ({HP: "1Gi"}, {HP: "1Gi"}, r"resources: huge pages \(hugepages-<size>\) need a cpu or"),
        ({}, {"nvidia.com/gpu": 1, HP: "1Gi"}, r"resources: huge pages .* need a cpu or memory"),
        (
            {"cpu": "1"},
            {HP: "3Mi"},
            r"limits\[hugepages-2Mi\]: must be a whole number of 2Mi pages",
        ),
        ({"cpu": "1"}, {HP: "500m"}, r"limits\[hugepages-2Mi\]: must be a whole number"),
        ({"cpu": "1"}, {"hugepages-1Gi": "2Gi"}, None),
        ({"cpu": "1"}, {"hugepages-banana": "2Gi"}, r"limits\[hugepages-banana\]: not a page"),
        ({"cpu": "1"}, {"hugepages-0": "0"}, r"limits\[hugepages-0\]: not a page size"),
    ],
)
def test_huge_pages_are_not_overcommitted_and_need_cpu_or_memory(
    requests: dict[str, Any], limits: dict[str, Any], error: str | None
) -> None:
    """Kubernetes refuses a pod whose huge pages request differs from its limit (they are
    never overcommitted), that requests them without a limit, that has them without a cpu or
    memory request or limit, or whose amount is not a whole number of pages: each was
    admitted and rendered, and under KServe its Deployment was refused inside KServe's
    controller (no pod, nothing naming the field)."""
    obj = _chat()
    obj["spec"]["model"]["variants"][0]["resources"] = {"requests": requests, "limits": limits}
    if error is None:
        assert service_spec(obj).name == "chat-assistant"
    else:
        key = "" if error.startswith("resources") else "resources."
        with pytest.raises(InvalidService, match=r"spec.model.variants\[0\]." + key + error):
            service_spec(obj)


def test_the_huge_pages_rules_are_the_crds_too() -> None:
    res = _at("model", "variants", "[]", "resources")["x-kubernetes-validations"]
    text = [(" ".join(r["rule"].split()), r["message"]) for r in res]
    assert any("k.startsWith('hugepages-')" in t and "== 0" in t for t, _ in text)
    assert any(
        "k.startsWith('hugepages-') || (has(self.limits) && k in self.limits)" in t for t, _ in text
    )
    item = _at("model", "variants", "[]")["x-kubernetes-validations"]
    assert any(r["message"].startswith("resources: huge pages") for r in item)
    for kind in ("requests", "limits"):
        node = _at("model", "variants", "[]", "resources", kind)
        rules = " ".join(" ".join(r["rule"].split()) for r in node["x-kubernetes-validations"])
        assert "k.substring(10)" in rules and "asInteger() %" in rules, kind


def _deployment_uri(index: int, uri: str, **variant: Any) -> Any:
    def edit(spec: dict[str, Any]) -> None:
        spec["backend"] = "deployment"
        spec["model"]["variants"][index].update(storageUri=uri, **variant)

    return edit


def _no_gpu(spec: dict[str, Any]) -> None:
    res = spec["model"]["variants"][1]["resources"]
    res["requests"]["nvidia.com/gpu"] = res["limits"]["nvidia.com/gpu"] = 0


@pytest.mark.parametrize(
    ("edit", "error"),
    [
        # the edge variant runs llama.cpp, the cloud one vLLM
        (_deployment_uri(0, "hf://o/r-GGUF:main"), "variants[0].storageUri: spec.model.var"),
        (_deployment_uri(0, "hf://o/r-GGUF:main/m.gguf"), None),
        (_deployment_uri(0, "hf://o/r-GGUF/m.gguf"), None),
        (_deployment_uri(0, "hf://o/r-GGUF"), None),  # llama.cpp picks a file of main
        (_deployment_uri(1, "hf://o/r:main"), None),  # vLLM's --revision
        # vLLM serves a whole repository: a file part was dropped (the repository served)
        (
            _deployment_uri(1, "hf://o/r/m.gguf"),
            "variants[1].storageUri: spec.model.variants[1] runs on vLLM",
        ),
        (_deployment_uri(1, "hf://o/r:v2/sub/m.safetensors"), "variants[1] runs on vLLM"),
        (
            _deployment_uri(0, "hf://o/r-GGUF/m.gguf", runtime="perllm-vllm"),
            "variants[0] runs on vLLM",
        ),
        (_deployment_uri(1, "hf://o/r-GGUF/m.gguf", runtime="perllm-llamacpp-cuda"), None),
        (
            lambda s: (
                _deployment_uri(1, "hf://o/r:main")(s),
                s["model"]["variants"][1].pop("storageUri"),
                s["model"].update(storageUri="hf://o/r/m.gguf"),
            ),
            "spec.model.storageUri: spec.model.variants[1] runs on vLLM",
        ),
        (
            lambda s: (_deployment_uri(1, "hf://o/r/m.gguf")(s), s.update(allowedTiers=["edge"])),
            None,
        ),
        (_deployment_uri(0, "hf://o/r:main", runtime="perllm-vllm"), None),
        (_deployment_uri(1, "hf://o/r:main", runtime="perllm-llamacpp-cuda"), "variants[1]"),
        (lambda s: (_deployment_uri(1, "hf://o/r:main")(s), _no_gpu(s)), "variants[1]"),
        (
            lambda s: (
                _deployment_uri(1, "hf://o/r:main")(s),
                s["model"].update(runtime="perllm-llamacpp"),
            ),
            "variants[1]",
        ),
        (
            lambda s: (
                _deployment_uri(0, "hf://o/r:main")(s),
                s["model"]["variants"][0].pop("storageUri"),
                s["model"].update(storageUri="hf://o/r:main"),
            ),
            "spec.model.storageUri: spec.model.variants[0] runs on llama.cpp",
        ),
        (
            lambda s: (_deployment_uri(0, "hf://o/r:main")(s), s.update(allowedTiers=["cloud"])),
            None,
        ),
        (lambda s: s["model"]["variants"][0].update(storageUri="hf://o/r:main"), None),  # kserve
        # the shape backend deployment's servers read
        (_deployment_uri(1, "hf://o/r:"), "variants[1].storageUri: with backend deployment"),
        (_deployment_uri(1, "hf://o"), "variants[1].storageUri: with backend deployment"),
        (_deployment_uri(1, "hf://o/"), "variants[1].storageUri: with backend deployment"),
        (_deployment_uri(1, "hf:///r"), "variants[1].storageUri: with backend deployment"),
        (_deployment_uri(1, "hf://o:x/r"), "variants[1].storageUri: with backend deployment"),
    ],
)
def test_backend_deployment_refuses_an_hf_uri_its_server_cannot_fetch(
    edit: Any, error: str | None
) -> None:
    """Under backend deployment the model server fetches hf:// weights itself. llama.cpp's
    --hf-repo reads org/repo:<tag> as a quantisation of main, so hf://org/repo:<revision>
    was admitted and ran another file of another revision (or none); it takes a revision
    only with the file (hf://org/repo:<revision>/<file>). A malformed hf:// URI was refused
    only by the operator."""
    obj = _chat()
    edit(obj["spec"])
    if error is None:
        assert service_spec(obj).name == "chat-assistant"
    else:
        with pytest.raises(InvalidService, match=re.escape(error)):
            service_spec(obj)


def test_the_vllm_hf_file_rules_are_the_crds_too() -> None:
    pattern = f".matches('^{HF_FILE}$')"
    rules = [r for r in _at()["x-kubernetes-validations"] if pattern in r["rule"]]
    assert sorted(r["fieldPath"] for r in rules) == [".model.storageUri", ".model.variants"]
    for r in rules:
        text = " ".join(r["rule"].split())
        assert "self.backend != 'deployment'" in text and "self.allowedTiers" in text
        for name in (*LLAMACPP_RUNTIMES, *VLLM_RUNTIMES, *GGUF_PRECISIONS, "nvidia.com/gpu"):
            assert f"'{name}'" in text, name
        assert r["message"].startswith(f"spec{r['fieldPath']}: with backend deployment")
        assert "hf://<org>/<repo>[:<revision>], without a file part" in r["message"]


def test_the_deployment_hf_uri_rules_are_the_crds_too() -> None:
    pattern = f".matches('^{DEPLOYMENT_HF_URI}$')"
    rules = [r for r in _at()["x-kubernetes-validations"] if pattern in r["rule"]]
    assert sorted(r["fieldPath"] for r in rules) == [".model.storageUri", ".model.variants"]
    for r in rules:
        text = " ".join(r["rule"].split())
        assert "self.backend != 'deployment'" in text and "self.allowedTiers" in text
        assert f".matches('^{HF_REVISION_NO_FILE}$')" in text
        for name in (*LLAMACPP_RUNTIMES, *VLLM_RUNTIMES, *GGUF_PRECISIONS, "nvidia.com/gpu"):
            assert f"'{name}'" in text, name
        assert r["message"].startswith(f"spec{r['fieldPath']}: with backend deployment")


V0 = ("spec", "model", "variants", 0)


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        (("spec", "model", "storageUri"), "hf://org/repo\nrm -rf", "spec.model.storageUri: must"),
        (("spec", "model", "storageUri"), "s3://bucket/a b", "spec.model.storageUri: must"),
        (("spec", "model", "storageUri"), "gs://b/\tx", "spec.model.storageUri: must"),
        (("spec", "model", "storageUri"), "https://h/mod\u00e8le", "spec.model.storageUri: must"),
        ((*V0, "storageUri"), "https://h/m.gguf\n", r"variants\[0\].storageUri: must match"),
        ((*V0, "storageUri"), "https://h/m.gguf ", r"variants\[0\].storageUri: must match"),
        (("spec", "model", "format"), "hugging face", "spec.model.format: must match"),
        (("spec", "model", "format"), "gguf\n", "spec.model.format: must match"),
        ((*V0, "format"), "g\u00e9uf", r"variants\[0\].format: must match"),
        ((*V0, "format"), "-gguf", r"variants\[0\].format: must match"),
        (("spec", "model", "name"), "llama 3", "spec.model.name: String should match pattern"),
        (("spec", "model", "name"), "llama3\n", "spec.model.name: String should match"),
        (("spec", "model", "name"), "llama3\x00", "spec.model.name: String should match"),
        (("spec", "model", "name"), "ll\u00e4ma", "spec.model.name: String should match"),
        (("spec", "model", "name"), "--model=x", "spec.model.name: String should match"),
    ],
    ids=lambda x: repr(x)[:40],
)
def test_free_form_strings_refuse_whitespace_and_control_characters(
    path: tuple[Any, ...], value: str, match: str
) -> None:
    """storageUri (pattern `.+`), model.format and model.name took spaces, newlines and
    control characters: a URI a storage initializer or server could not fetch, a model
    format no ServingRuntime names, a model name passed on as a CLI argument (a leading
    '-' read as an option) and served as the OpenAI model name."""
    obj = _chat()
    _set(obj, path, value)
    with pytest.raises(InvalidService, match=match):
        service_spec(obj)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "model", "name"), "meta-llama/Meta-Llama-3-8B-Instruct"),
        (("spec", "model", "name"), "org/model-GGUF:Q4_K_M"),
        (("spec", "model", "name"), "Qwen2.5-7B_instruct@v1"),
        (("spec", "model", "format"), "huggingface"),
        (("spec", "model", "format"), "PyTorch_2.1"),
        (("spec", "model", "storageUri"), "https://h/o/r/resolve/main/m.gguf?download=true"),
        (("spec", "model", "storageUri"), "https://h/o/mod%C3%A8le.gguf"),
        (("spec", "model", "storageUri"), "pvc://claim/path/to/model"),
    ],
)
def test_the_names_and_uris_in_use_are_admitted(path: tuple[Any, ...], value: str) -> None:
    obj = _chat()
    _set(obj, path, value)
    assert service_spec(obj).name == "chat-assistant"


def test_the_free_form_string_patterns_are_the_crds() -> None:
    v = ("model", "variants", "[]")
    for node in (_at("model", "storageUri"), _at(*v, "storageUri")):
        assert node["pattern"] == f"^{STORAGE_URI}$"
    for node in (_at("model", "format"), _at(*v, "format")):
        assert node["pattern"] == f"^{MODEL_FORMAT}$"
    assert _at("model", "name")["pattern"] == f"^{MODEL_NAME}$"
