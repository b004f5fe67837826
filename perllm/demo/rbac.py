"""The ServiceAccounts and least-privilege roles the operator and the extender run under.

From the Helm chart when `charts/perllm` exists (rendered with `helm template`, only the
RBAC kinds applied), else from `operator/rbac.yaml` and `extender/rbac.yaml`. Each process
then gets a kubeconfig holding only its ServiceAccount's token, so the demo exercises the
same permissions a real install grants.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from perllm.demo.config import REPO_ROOT
from perllm.devcluster.binaries import versions

CHART = REPO_ROOT / "charts" / "perllm"
RBAC_FILES = {
    "operator": REPO_ROOT / "operator" / "rbac.yaml",
    "extender": REPO_ROOT / "extender" / "rbac.yaml",
}
RBAC_KINDS = {
    "Namespace",
    "ServiceAccount",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
}


@dataclass(frozen=True)
class Rbac:
    source: str  # where the objects came from, for the log line
    docs: list[dict[str, Any]]
    warning: str | None = None  # why the chart was not used although it exists

    def account(self, component: str) -> tuple[str, str] | None:
        """(namespace, name) of the ServiceAccount for `component` (operator/extender)."""
        for d in self.docs:
            meta = d.get("metadata") or {}
            if d.get("kind") == "ServiceAccount" and component in str(meta.get("name", "")):
                return str(meta.get("namespace") or ""), str(meta["name"])
        return None


def _yaml_docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if isinstance(d, dict) and d.get("kind")]


def load_rbac(helm: Path | None, namespace: str, watched: Sequence[str] = ()) -> Rbac:
    """The RBAC objects, from the chart if it and Helm are there, else from the files.
    `watched`: the namespaces the operator runs with (`--namespace`), rendered as the
    chart's `operator.namespaces` (Roles there, and the namespaces list/watch kopf needs
    in that mode); none: cluster-wide. The files hold the cluster-wide role only: under
    it an operator with `--namespace` logs kopf's warning that it cannot list namespaces,
    and watches the named ones all the same."""
    warning = None
    if CHART.is_dir() and helm is not None and helm.exists():
        sets = ["--set", f"operator.namespaces={{{','.join(watched)}}}"] if watched else []
        r = subprocess.run(
            # the pinned Kubernetes version: helm's offline default (v1.20) fails kubeVersion
            [
                str(helm),
                "template",
                "perllm",
                str(CHART),
                "--namespace",
                namespace,
                "--kube-version",
                versions()["K8S_VERSION"],
                *sets,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        docs = (
            [d for d in _yaml_docs(r.stdout) if d["kind"] in RBAC_KINDS]
            if r.returncode == 0
            else []
        )
        for d in docs:  # helm template leaves namespaced objects' namespace to the install
            if d["kind"] in {"ServiceAccount", "Role", "RoleBinding"}:
                d.setdefault("metadata", {}).setdefault("namespace", namespace)
        if docs:
            return Rbac(f"chart {CHART.relative_to(REPO_ROOT)}", docs)
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("Error")]
        why = (errors or r.stderr.strip().splitlines()[-1:]) if r.returncode else ["no RBAC"]
        warning = f"helm template {CHART.relative_to(REPO_ROOT)}: {' '.join(why)}"
    docs, used = [], []
    for path in RBAC_FILES.values():
        if path.is_file():
            docs += [d for d in _yaml_docs(path.read_text()) if d["kind"] in RBAC_KINDS]
            used.append(str(path.relative_to(REPO_ROOT)))
    return Rbac(" + ".join(used) or "nothing", docs, warning)
