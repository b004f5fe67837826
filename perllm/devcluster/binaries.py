"""Where the pinned binaries live: ${XDG_CACHE_HOME:-~/.cache}/perllm/bin/<name>-<version>/."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

VERSIONS_FILE = Path(__file__).with_name("versions.env")
BUILD_SCRIPT = "tools/build-binaries.sh"


class BinariesMissing(RuntimeError):
    """A cached binary is absent: building is the build script's job, not the harness's."""


def versions() -> dict[str, str]:
    """KEY=VALUE pairs of versions.env (shared with the build script)."""
    out: dict[str, str] = {}
    for line in VERSIONS_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def cache_dir() -> Path:
    if override := os.environ.get("PERLLM_BIN_CACHE"):
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "perllm" / "bin"


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    kwok: Path
    helm: Path
    prometheus: Path | None

    @classmethod
    def locate(cls) -> Binaries:
        v, c = versions(), cache_dir()
        k8s = c / f"k8s-{v['K8S_VERSION']}"
        prom = shutil.which("prometheus")
        return cls(
            etcd=c / f"etcd-{v['ETCD_VERSION']}" / "etcd",
            kube_apiserver=k8s / "kube-apiserver",
            kube_controller_manager=k8s / "kube-controller-manager",
            kube_scheduler=k8s / "kube-scheduler",
            kubectl=k8s / "kubectl",
            kwok=c / f"kwok-{v['KWOK_VERSION']}" / "kwok",
            helm=c / f"helm-{v['HELM_VERSION']}" / "helm",
            prometheus=Path(prom) if prom else None,
        )

    def require(
        self, *, prometheus: bool = True, helm: bool = False, etcd: bool = True
    ) -> Binaries:
        """Raise `BinariesMissing` naming every absent binary and the command that builds it.

        `etcd=False`: attaching to an existing cluster needs only the k8s binary and KWOK.
        """
        # (binary, the build script's component that makes it)
        needed = [
            (self.kube_apiserver, "k8s"),
            (self.kube_controller_manager, "k8s"),
            (self.kube_scheduler, "k8s"),
            (self.kubectl, "k8s"),
            (self.kwok, "kwok"),
        ]
        if etcd:
            needed.insert(0, (self.etcd, "etcd"))
        if helm:
            needed.append((self.helm, "helm"))
        absent = [(str(p), c) for p, c in needed if not os.access(p, os.X_OK)]
        if prometheus and self.prometheus is None:
            absent.append(("prometheus (not on PATH)", "prometheus"))
        if absent:
            # only what is missing: the script with no argument also builds llama.cpp and a
            # second Prometheus, minutes more that the control plane does not need
            parts = " ".join(dict.fromkeys(c for _, c in absent))
            raise BinariesMissing(
                "local control plane binaries missing:\n  "
                + "\n  ".join(p for p, _ in absent)
                + f"\nbuild them with: {BUILD_SCRIPT} {parts}  (from the repository root; "
                "cached, the first build takes 10-15 min on 2 cores)"
            )
        return self


def llama_server_path() -> Path:
    """The pinned llama.cpp server (`tools/build-binaries.sh llamacpp`): built from the
    llama.cpp sources vendored in the llama-cpp-python sdist of version LLAMACPP_VERSION."""
    return cache_dir() / f"llama-server-{versions()['LLAMACPP_VERSION']}" / "llama-server"


def prometheus_sd_path() -> Path:
    """Prometheus with Kubernetes service discovery (`tools/build-binaries.sh promsd`),
    for tests that discover pods the way an in-cluster Prometheus does."""
    return cache_dir() / f"prometheus-{versions()['PROMETHEUS_SD_VERSION']}" / "prometheus"
