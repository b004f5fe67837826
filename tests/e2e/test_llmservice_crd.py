"""The LLMService CRD on a real API server (issue #4 acceptance, CRD part): it installs,
each example applies, `kubectl get` shows the printer columns, `kubectl explain` documents
the fields, and each invalid spec is rejected at admission with its field named."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from perllm.crd import CRD_PATH, PLURAL
from perllm.devcluster.kube import Kube

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ROOT = Path(__file__).parents[2]
EXAMPLES = sorted((ROOT / "manifests").glob("*.yaml"))


@pytest.fixture(scope="module")
def crd(kube: Kube) -> Kube:
    kube.kubectl("apply", "-f", str(CRD_PATH))
    kube.kubectl("wait", "--for=condition=Established", f"crd/{PLURAL}.perllm.io",
                 "--timeout=60s")
    # Discovery can lag the Established condition by a moment.
    for _ in range(30):
        if kube.kubectl("get", PLURAL, "-A", check=False).returncode == 0:
            break
        time.sleep(1)
    return kube


def test_examples_apply_and_show_printer_columns(crd: Kube, namespace: str) -> None:
    for path in EXAMPLES:
        crd.kubectl("apply", "-n", namespace, "-f", str(path))
    out = crd.kubectl("get", PLURAL, "-n", namespace).stdout
    header = out.splitlines()[0].split()
    assert header == ["NAME", "MODEL", "DEADLINE", "TIER", "ATTAINMENT", "J/REQ", "READY", "AGE"]
    for path in EXAMPLES:
        assert yaml.safe_load(path.read_text())["metadata"]["name"] in out
    # Defaults come from the schema: replicas, backend, percentile, allowed tiers.
    chat = crd.get(PLURAL, "chat-assistant", "-n", namespace)
    assert chat["spec"]["backend"] == "kserve"
    assert chat["spec"]["allowedTiers"] == ["edge", "cloud"]
    assert chat["spec"]["requirements"]["minQuality"] == 0


def test_explain_documents_the_fields(crd: Kube) -> None:
    out = crd.kubectl("explain", "llmservice.spec.requirements.deadline").stdout
    assert "perOutputTokenSeconds" in out and "Fixed part of the deadline" in out
    assert "quality floor" in crd.kubectl("explain", "llmservice.spec.requirements").stdout.lower()


def _chat() -> dict[str, Any]:
    obj = yaml.safe_load((ROOT / "manifests/chat-assistant.yaml").read_text())
    obj["metadata"]["name"] = "bad"
    return obj


def _edit(fn_src: str) -> dict[str, Any]:
    obj = copy.deepcopy(_chat())
    spec = obj["spec"]
    exec(fn_src, {}, {"obj": obj, "spec": spec})
    return obj


BAD = [
    ("negative deadline", "spec['requirements']['deadline']['seconds'] = -1",
     "spec.requirements.deadline.seconds"),
    ("zero deadline", "spec['requirements']['deadline']['seconds'] = 0",
     "spec.requirements.deadline.seconds"),
    ("unknown tier", "spec['model']['variants'][0]['tier'] = 'fog'",
     "spec.model.variants[0].tier"),
    ("unknown allowed tier", "spec['allowedTiers'] = ['edge', 'moon']", "spec.allowedTiers[1]"),
    ("quality floor above 1", "spec['requirements']['minQuality'] = 1.5",
     "spec.requirements.minQuality"),
    ("quality floor below 0", "spec['requirements']['minQuality'] = -0.1",
     "spec.requirements.minQuality"),
    ("variant quality above 1", "spec['model']['variants'][1]['quality'] = 2",
     "spec.model.variants[1].quality"),
    ("variant without resources", "spec['model']['variants'][0]['resources'] = {}",
     "spec.model.variants[0].resources"),
    ("allowed tier without a variant", "spec['model']['variants'] = spec['model']['variants'][1:]",
     "spec.model.variants"),
    ("two variants for one tier", "spec['model']['variants'][0]['tier'] = 'cloud'",
     "spec.model.variants"),
    ("unknown precision", "spec['model']['variants'][0]['precision'] = 'fp4'",
     "spec.model.variants[0].precision"),
    ("unknown backend", "spec['backend'] = 'ray'", "spec.backend"),
    ("no deadline", "del spec['requirements']['deadline']", "spec.requirements.deadline"),
    ("no model", "del spec['model']", "spec.model"),
    ("negative replicas", "spec['replicas'] = -1", "spec.replicas"),
    ("bad storage URI", "spec['model']['storageUri'] = 'ftp://x'", "spec.model.storageUri"),
]


@pytest.mark.parametrize(("case", "edit", "field"), BAD, ids=[b[0] for b in BAD])
def test_invalid_spec_is_rejected_naming_the_field(crd: Kube, namespace: str, case: str,
                                                  edit: str, field: str) -> None:
    r = crd.kubectl("apply", "-n", namespace, "--dry-run=server", "-f", "-", check=False,
                    input=json.dumps(_edit(edit)))
    assert r.returncode != 0, f"{case}: accepted"
    assert field in r.stderr, f"{case}: {r.stderr}"
