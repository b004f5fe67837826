"""A thin kubectl wrapper for tests: works against any KUBECONFIG (local harness, kind, k3s)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from perllm.devcluster.cluster import Cluster

T = TypeVar("T")
RETRY_ON: tuple[type[Exception], ...] = (AssertionError, KeyError, IndexError, json.JSONDecodeError)


def wait_for(
    fn: Callable[[], T | None],
    what: str,
    timeout: float = 90,
    every: float = 0.5,
    retry_on: tuple[type[Exception], ...] = RETRY_ON,
) -> T:
    """Poll `fn` until it returns something truthy; `retry_on` errors count as "not yet"
    and the last one is named when time runs out."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            v = fn()
        except retry_on as e:
            last, v = e, None
        if v:
            return v
        time.sleep(every)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what}"
        + (f" (last error: {last!r})" if last else "")
    )


def token_kubeconfig(admin_kubeconfig: Path, token: str, user: str, path: Path) -> Path:
    """A kubeconfig for the admin's cluster that authenticates with `token` only."""
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    ctx_name = admin["current-context"]
    ctx = next(c["context"] for c in admin["contexts"] if c["name"] == ctx_name)
    cluster = next(c["cluster"] for c in admin["clusters"] if c["name"] == ctx["cluster"])
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": user, "user": {"token": token}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": user}}],
                "current-context": "c",
            }
        )
    )
    path.chmod(0o600)
    return path


@dataclass
class Kube:
    kubeconfig: Path
    kubectl_path: str
    local: Cluster | None  # None: an external cluster we know only through KUBECONFIG

    def kubectl(
        self, *args: str, check: bool = True, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            [self.kubectl_path, f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        if check and r.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({r.returncode}):\n{r.stdout}{r.stderr}"
            )
        return r

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def get_or_none(self, *args: str) -> Any:
        """The object(s) as JSON, or None when kubectl fails (e.g. not found)."""
        r = self.kubectl("get", *args, "-o", "json", check=False)
        return json.loads(r.stdout) if r.returncode == 0 else None

    def service_account_kubeconfig(
        self, name: str, namespace: str, path: Path, duration: str = "2h"
    ) -> Path:
        """A kubeconfig holding only a fresh token of ServiceAccount `namespace/name`."""
        token = self.kubectl(
            "create", "token", name, "-n", namespace, f"--duration={duration}"
        ).stdout.strip()
        assert token, "kubectl create token returned nothing"
        return token_kubeconfig(Path(self.kubeconfig), token, name, path)

    def apply(self, manifest: dict[str, Any] | list[dict[str, Any]], namespace: str) -> None:
        docs = manifest if isinstance(manifest, list) else [manifest]
        self.kubectl(
            "apply",
            "-n",
            namespace,
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}),
        )
