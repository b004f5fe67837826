"""Every shipped LLMService manifest against the CRD's OpenAPI schema, offline
(tests/schema.py), and against PerLLM's own validation (`crd.service_spec`); the paths the
docs tell users to `kubectl apply -f` exist. The e2e tier applies the manifests to a real
API server; this keeps them from rotting where no cluster runs. CEL rules
(x-kubernetes-validations) are not evaluated here: `service_spec` checks the same limits
(tests/unit/test_crd.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from perllm.crd import CRD_PATH, GROUP, KIND, VERSION, service_spec
from tests.schema import object_errors, schema_errors

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((ROOT / "manifests").glob("*.yaml"))
SCHEMA = yaml.safe_load(CRD_PATH.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_a_shipped_manifest_passes_the_crd_schema_and_service_spec(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path}: no object"
    for obj in docs:
        assert obj["apiVersion"] == f"{GROUP}/{VERSION}" and obj["kind"] == KIND
        assert object_errors(obj, SCHEMA) == [], path
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
