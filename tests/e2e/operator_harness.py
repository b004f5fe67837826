"""The LLMService operator as the e2e modules run it (test_operator_*.py): the operator as a
subprocess holding only the `perllm-operator` ServiceAccount's token (operator/rbac.yaml), the
CRDs it needs, and reads of LLMServices, their conditions, Events and pods."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from perllm.crd import CRD_PATH, PLURAL
from perllm.devcluster.kube import Kube, wait_for

from .processes import ROOT, LoggedProcess

KSERVE_CRD_SCRIPT = ROOT / "tools" / "kserve-crd.sh"
RBAC = ROOT / "operator" / "rbac.yaml"
ISVC = "inferenceservices.serving.kserve.io"


class Operator(LoggedProcess):
    """The operator as a subprocess (`python -m perllm_operator`), logs in a file."""

    def __init__(self, kubeconfig: Path, log: Path, env: dict[str, str] | None = None) -> None:
        super().__init__(log)
        self.kubeconfig = kubeconfig
        self.env = env or {}

    def start(self) -> None:
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig), PYTHONWARNINGS="ignore", **self.env)
        self.spawn([sys.executable, "-m", "perllm_operator", "--verbose"], env)


def _established(kube: Kube, crd: str, plural: str) -> None:
    kube.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
    wait_for(
        lambda: kube.kubectl("get", plural, "-A", check=False).returncode == 0,
        f"discovery of {plural}",
        timeout=30,
    )


def _install_kserve_crd(kube: Kube) -> None:
    """KServe's real InferenceService CRD of the pinned release (tools/kserve-crd.sh caches
    it outside the repo), labelled as a test fixture so that a real install is never
    replaced. Server-side apply: the CRD is too large for kubectl's last-applied annotation."""
    r = subprocess.run(
        [str(KSERVE_CRD_SCRIPT)], capture_output=True, text=True, timeout=300, check=False
    )
    assert r.returncode == 0, r.stdout + r.stderr
    crd = yaml.safe_load(Path(r.stdout.strip().splitlines()[-1]).read_text())
    crd["metadata"].setdefault("labels", {})["perllm.io/test-fixture"] = "true"
    crd.pop("status", None)
    kube.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(crd), timeout=120
    )

    def established() -> bool:
        conds = ((kube.get_or_none("crd", ISVC) or {}).get("status") or {}).get("conditions")
        return any(c["type"] == "Established" and c["status"] == "True" for c in conds or [])

    wait_for(established, "KServe's CRD established", timeout=60)


def _restricted_kubeconfig(kube: Kube, path: Path) -> Path:
    return kube.service_account_kubeconfig("perllm-operator", "perllm-system", path)


def example(name: str, **spec: Any) -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load((ROOT / "manifests" / f"{name}.yaml").read_text())
    obj["spec"].update(spec)
    return obj


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    if not obj:
        return None
    return next(
        (c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == type_),
        None,
    )


def reconciled(kube: Kube, ns: str, name: str) -> dict[str, Any] | None:
    obj = kube.get_or_none(PLURAL, name, "-n", ns)
    c = condition(obj, "Reconciled")
    return obj if c and c["status"] == "True" else None


def bound_pods(kube: Kube, ns: str, name: str) -> list[dict[str, Any]] | None:
    pods = kube.get_or_none("pods", "-n", ns, "-l", f"perllm.io/service={name}")
    items = (pods or {}).get("items", [])
    if items and all(p["spec"].get("nodeName") for p in items):
        return list(items)
    return None


def pods_by_tier(kube: Kube, ns: str, name: str) -> dict[str, list[dict[str, Any]]] | None:
    """Bound, non-terminating pods of a tiered service (`spec.tierReplicas`) by their
    child's tier, once each of edge and cloud has exactly one."""
    items = kube.get_or_none("pods", "-n", ns, "-l", f"perllm.io/service={name}")["items"]
    live = [p for p in items if not p["metadata"].get("deletionTimestamp")]
    by: dict[str, list[dict[str, Any]]] = {}
    for p in live:
        by.setdefault(p["metadata"]["labels"]["perllm.io/child-tier"], []).append(p)
    ok = sorted(by) == ["cloud", "edge"] and all(
        len(v) == 1 and v[0]["spec"].get("nodeName") for v in by.values()
    )
    return by if ok else None


def events(kube: Kube, ns: str, name: str, reason: str | None = None) -> list[dict[str, Any]]:
    """The Events on LLMService `name` (of `reason` only, if given)."""
    items = kube.get_or_none("events", "-n", ns)["items"]
    return [
        e
        for e in items
        if e["involvedObject"].get("name") == name
        and e["involvedObject"].get("kind") == "LLMService"
        and reason in (None, e["reason"])
    ]


def llmsvc_condition(kube: Kube, ns: str, name: str, type_: str) -> dict[str, Any] | None:
    """Condition `type_` of the LLMService `name` as the API server has it now."""
    return condition(kube.get_or_none(PLURAL, name, "-n", ns), type_)


def start_operator(kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    """The CRDs, the RBAC, then the operator with a restricted token (checked), fast status
    ticks and, on the local harness, its Prometheus; stopped at the end."""
    kube.kubectl("apply", "-f", str(CRD_PATH))
    existing = kube.get_or_none("crd", ISVC)
    if (
        existing is None
        or existing["metadata"].get("labels", {}).get("perllm.io/test-fixture") == "true"
    ):
        _install_kserve_crd(kube)
    _established(kube, f"{PLURAL}.perllm.io", PLURAL)
    _established(kube, ISVC, "inferenceservices")
    kube.kubectl("apply", "-f", str(RBAC))
    tmp = tmp_path_factory.mktemp("operator")
    kc = _restricted_kubeconfig(kube, tmp / "operator.kubeconfig")
    restricted = Kube(kc, kube.kubectl_path, None)
    # The token is the ServiceAccount's, with only the ClusterRole's rights.
    can = restricted.kubectl("auth", "can-i", "create", "deployments", "-n", "default", check=False)
    assert can.stdout.strip() == "yes", can.stdout + can.stderr
    cannot = restricted.kubectl("auth", "can-i", "delete", "nodes", check=False)
    assert cannot.stdout.strip() == "no", cannot.stdout + cannot.stderr
    # Re-placement evicts (never deletes) pods.
    for args, want in (
        (("create", "pods", "--subresource=eviction"), "yes"),
        (("list", "pods"), "yes"),
        (("delete", "pods"), "no"),
    ):
        r = restricted.kubectl("auth", "can-i", *args, "-n", "default", check=False)
        assert r.stdout.strip() == want, (args, r.stdout + r.stderr)
    prom = kube.local.prometheus_url if kube.local is not None else None
    # Fast ticks and a short window so that re-placement happens within the test; one
    # eviction per service per 10 minutes.
    env = {
        "PERLLM_STATUS_INTERVAL": "2",
        "PERLLM_TELEMETRY_WINDOW": "20s",
        "PERLLM_REPLACEMENT_WINDOW": "6",
        "PERLLM_REPLACEMENT_TICKS": "3",
        "PERLLM_REPLACEMENT_COOLDOWN": "600",
    }
    if prom:
        env["PERLLM_PROMETHEUS_URL"] = prom
    op = Operator(kc, tmp / "operator.log", env)
    op.start()
    try:
        yield op
    finally:
        op.stop()


def merge_patch(
    kube: Kube,
    ns: str,
    name: str,
    body: dict[str, Any],
    *,
    status: bool = False,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """`kubectl patch` of the LLMService `name` with a JSON merge patch (its status
    subresource with `status`)."""
    sub = ["--subresource=status"] if status else []
    return kube.kubectl(
        "patch", PLURAL, name, "-n", ns, *sub, "--type=merge", "-p", json.dumps(body), check=check
    )


def wait_condition(kube: Kube, ns: str, name: str, type_: str, timeout: float = 60) -> None:
    """Wait until the LLMService `name` has condition `type_` True."""
    wait_for(
        lambda: (llmsvc_condition(kube, ns, name, type_) or {}).get("status") == "True",
        f"LLMService {name} {type_}=True",
        timeout=timeout,
    )
