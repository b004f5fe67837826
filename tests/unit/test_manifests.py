"""Every shipped LLMService manifest against the CRD's OpenAPI schema, offline, and against
PerLLM's own validation (`crd.service_spec`); the paths the docs tell users to
`kubectl apply -f` exist. The e2e tier applies the manifests to a real API server; this
keeps them from rotting where no cluster runs. CEL rules (x-kubernetes-validations) are
not evaluated here: `service_spec` checks the same limits (tests/unit/test_crd.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from perllm.crd import CRD_PATH, GROUP, KIND, VERSION, service_spec

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((ROOT / "manifests").glob("*.yaml"))
SCHEMA = yaml.safe_load(CRD_PATH.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


def schema_errors(value: Any, node: dict[str, Any], path: str = "") -> list[str]:
    """What the API server's structural-schema validation would refuse (unknown fields
    included: kubectl's strict field validation refuses them rather than pruning)."""
    at = path or "<root>"
    if "anyOf" in node and all(schema_errors(value, alt, path) for alt in node["anyOf"]):
        return [f"{at}: matches none of anyOf"]
    if node.get("x-kubernetes-int-or-string"):
        ok = isinstance(value, (int, str)) and not isinstance(value, bool)
        return [] if ok else [f"{at}: must be an integer or a string"]
    t = node.get("type")
    if t is not None:
        bad_bool = isinstance(value, bool) and t in ("integer", "number")
        if not isinstance(value, TYPES[t]) or bad_bool:
            return [f"{at}: must be {t}, not {type(value).__name__}"]
    errs: list[str] = []
    if "enum" in node and value not in node["enum"]:
        errs.append(f"{at}: {value!r} not in {node['enum']}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in node and value < node["minimum"]:
            errs.append(f"{at}: below {node['minimum']}")
        if "maximum" in node and value > node["maximum"]:
            errs.append(f"{at}: above {node['maximum']}")
        if node.get("exclusiveMinimum") is True and value <= node["minimum"]:
            errs.append(f"{at}: not above {node['minimum']}")
    if isinstance(value, str):
        if len(value) < node.get("minLength", 0) or len(value) > node.get("maxLength", 1 << 62):
            errs.append(f"{at}: length {len(value)} outside the schema's bounds")
        if "pattern" in node and not re.search(node["pattern"], value):
            errs.append(f"{at}: {value!r} does not match {node['pattern']}")
    if isinstance(value, list):
        if len(value) < node.get("minItems", 0) or len(value) > node.get("maxItems", 1 << 62):
            errs.append(f"{at}: {len(value)} items outside the schema's bounds")
        for i, item in enumerate(value):
            errs += schema_errors(item, node.get("items", {}), f"{path}[{i}]")
    if isinstance(value, dict):
        props = node.get("properties", {})
        if len(value) > node.get("maxProperties", 1 << 62):
            errs.append(f"{at}: more than {node['maxProperties']} properties")
        errs += [f"{path}.{k}: required" for k in node.get("required", []) if k not in value]
        for k, v in value.items():
            sub = f"{path}.{k}" if path else k
            if k in props:
                errs += schema_errors(v, props[k], sub)
            elif isinstance(node.get("additionalProperties"), dict):
                errs += schema_errors(v, node["additionalProperties"], sub)
            elif not node.get("x-kubernetes-preserve-unknown-fields"):
                errs.append(f"{sub}: unknown field")
    return errs


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_a_shipped_manifest_passes_the_crd_schema_and_service_spec(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path}: no object"
    for obj in docs:
        assert obj["apiVersion"] == f"{GROUP}/{VERSION}" and obj["kind"] == KIND
        # metadata is the API server's (ObjectMeta), not the CRD's: check it apart
        body = {k: v for k, v in obj.items() if k != "metadata"}
        assert schema_errors(body, SCHEMA) == [], path
        assert service_spec(obj).name == obj["metadata"]["name"]


@pytest.mark.parametrize(
    ("edit", "error"),
    [
        (lambda o: o["spec"].update(alowedTiers=["edge"]), "spec.alowedTiers: unknown field"),
        (lambda o: o["spec"].update(backend="Deployment"), "spec.backend: 'Deployment' not in"),
        (lambda o: o["spec"]["model"].pop("variants"), "spec.model.variants: required"),
        (lambda o: o["spec"].update(replicas="1"), "spec.replicas: must be integer"),
    ],
)
def test_the_schema_check_catches_what_the_api_server_refuses(edit: Any, error: str) -> None:
    obj = yaml.safe_load((ROOT / "manifests" / "chat-assistant.yaml").read_text())
    obj.pop("metadata")
    edit(obj)
    assert any(e.startswith(error) for e in schema_errors(obj, SCHEMA)), schema_errors(obj, SCHEMA)


def _applied_paths() -> list[tuple[str, str]]:
    """(doc, path) of every `kubectl ... -f PATH` in the docs and the chart's notes."""
    docs = [ROOT / "README.md", ROOT / "charts/perllm/templates/NOTES.txt"]
    docs += sorted((ROOT / "docs").glob("*.md")) + sorted(ROOT.glob("*/README.md"))
    out = []
    for doc in docs:
        for m in re.finditer(r"kubectl [^`\n]*?-f (\S+)", doc.read_text()):
            if not m.group(1).startswith(("-", "<", "$", "http")):
                out.append((doc.relative_to(ROOT).as_posix(), m.group(1).rstrip("`;,)")))
    return out


def test_every_file_the_docs_apply_exists() -> None:
    paths = _applied_paths()
    assert ("manifests/README.md", "manifests/") in paths  # the walk sees the README's command
    missing = [(doc, p) for doc, p in paths if not (ROOT / p).exists()]
    assert missing == []
