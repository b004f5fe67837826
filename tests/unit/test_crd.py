"""The LLMService CRD file and its mapping onto the contract."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from perllm.contract import Precision, Tier
from perllm.crd import CRD_PATH, GROUP, KIND, PLURAL, VERSION, InvalidService, service_spec
from perllm.profiles import default_catalogue

MANIFESTS = sorted((Path(__file__).parents[2] / "manifests").glob("*.yaml"))


def test_crd_names_match_the_code() -> None:
    crd = yaml.safe_load(CRD_PATH.read_text())
    assert crd["spec"]["group"] == GROUP
    assert crd["spec"]["names"]["kind"] == KIND
    assert crd["spec"]["names"]["plural"] == PLURAL
    assert [v["name"] for v in crd["spec"]["versions"]] == [VERSION]
    cols = [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert cols == ["Model", "Deadline", "Tier", "Attainment", "J/req", "Ready", "Age"]


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
