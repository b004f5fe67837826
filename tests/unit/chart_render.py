"""The Helm chart rendered for the test_chart* files: `helm` (the pinned binary, or the
test skips: tools/build-binaries.sh helm), `render` (helm template per profile), lookups in
what it rendered, and the rules of a Role as a layout-free set (`_grants`)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from perllm.devcluster.binaries import Binaries

ROOT = Path(__file__).parents[2]
CHART = ROOT / "charts" / "perllm"
PROFILES = sorted((CHART / "ci").glob("*-values.yaml"))
PROFILE_IDS = ["default"] + [p.name for p in PROFILES]
KUBE_VERSION = "1.34.10"
MONITORING = "monitoring.coreos.com/v1"

Doc = dict[str, Any]


def _helm() -> str:
    helm = Binaries.locate().helm
    if not os.access(helm, os.X_OK):
        pytest.skip(f"no Helm at {helm}: tools/build-binaries.sh helm")
    return str(helm)


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([_helm(), *args], capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{r.stdout}{r.stderr}")
    return r


def _values_args(profile: str) -> list[str]:
    return [] if profile == "default" else ["-f", str(CHART / "ci" / profile)]


def render(
    *extra: str,
    profile: str = "default",
    namespace: str = "perllm-system",
    monitoring: bool = False,
    release: str = "perllm",
) -> list[Doc]:
    args = [
        "template",
        release,
        str(CHART),
        "-n",
        namespace,
        "--kube-version",
        KUBE_VERSION,
        *_values_args(profile),
        *extra,
    ]
    if monitoring:
        args += ["--api-versions", MONITORING]
    return [d for d in yaml.safe_load_all(helm(*args).stdout) if d]


def find(docs: list[Doc], kind: str, name: str) -> Doc:
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, f"{kind}/{name}: {len(hits)} rendered"
    return hits[0]


def kinds(docs: list[Doc]) -> set[str]:
    return {d["kind"] for d in docs}


def pod_specs(docs: list[Doc]) -> list[tuple[str, Doc]]:
    return [
        (d["metadata"]["name"], d["spec"]["template"]["spec"])
        for d in docs
        if d["kind"] in ("Deployment", "DaemonSet")
    ]


def _grants(rules: list[Doc]) -> set[tuple[str, str, str, str]]:
    """Rules as the set of (group, resource, name or *, verb) they allow: layout-free."""
    return {
        (g, res, name, v)
        for r in rules
        for g in r["apiGroups"]
        for res in r["resources"]
        for name in r.get("resourceNames") or ["*"]
        for v in r["verbs"]
    }


def scheduler_config(docs: list[Doc]) -> Doc:
    cm = find(docs, "ConfigMap", "perllm-scheduler")
    cfg: Doc = yaml.safe_load(cm["data"]["config.yaml"])
    return cfg


def _router_values(tmp_path: Path, services: list[Doc]) -> str:
    f = tmp_path / "router.yaml"
    f.write_text(yaml.safe_dump({"router": {"enabled": True, "services": services}}))
    return str(f)


def schema_refusal(setting: str, flag: str = "--set") -> str:
    """Helm's error for `flag setting` (`--set`, `--set-json`), which the values schema
    must refuse."""
    r = helm(
        "template", "perllm", str(CHART), "--kube-version", KUBE_VERSION, flag, setting,
        check=False,
    )  # fmt: skip
    assert r.returncode != 0, f"{setting} was accepted"
    assert "values don't meet the specifications of the schema" in r.stderr, r.stderr
    return r.stderr
