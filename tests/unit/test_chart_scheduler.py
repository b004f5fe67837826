"""The Helm chart's second scheduler: a configuration naming the extender Service that
the real kube-scheduler accepts, and its image following the cluster's minor version.

Needs the pinned Helm (tools/build-binaries.sh helm); the kube-scheduler check needs the
pinned Kubernetes binaries. Without them those tests skip, saying which binary is missing.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from chart_render import CHART, PROFILE_IDS, Doc, find, helm, render, scheduler_config

from perllm.devcluster.binaries import Binaries


def local_tls(docs: list[Doc], cfg: Doc, folder: Path) -> Doc:
    """kube-scheduler reads its extender TLS files at start: write the chart's client Secret
    (what the pod mounts) to `folder` and point the config there."""
    import base64

    data = find(docs, "Secret", "perllm-extender-client-tls")["data"]
    for ext in cfg.get("extenders", []):
        for key, file in (("caFile", "ca.crt"), ("certFile", "tls.crt"), ("keyFile", "tls.key")):
            if key in ext.get("tlsConfig", {}):
                (folder / file).write_bytes(base64.b64decode(data[file]))
                ext["tlsConfig"][key] = str(folder / file)
    return cfg


def test_scheduler_config_names_the_extender_service() -> None:
    docs = render("--set", "extender.weight=7,extender.port=9000", namespace="perllm-x")
    cfg = scheduler_config(docs)
    # every feasible node reaches the extender; 0 restores kube-scheduler's adaptive default
    assert cfg["profiles"] == [
        {"schedulerName": "perllm-scheduler", "percentageOfNodesToScore": 100}
    ]
    adaptive = scheduler_config(render("--set", "scheduler.percentageOfNodesToScore=0"))
    assert adaptive["profiles"] == [{"schedulerName": "perllm-scheduler"}]
    (ext,) = cfg["extenders"]
    svc = find(docs, "Service", "perllm-extender")
    assert ext["urlPrefix"] == "https://perllm-extender.perllm-x.svc:9000/scheduler"
    assert svc["spec"]["ports"][0]["port"] == 9000
    assert (ext["weight"], ext["filterVerb"], ext["prioritizeVerb"]) == (7, "filter", "prioritize")
    assert ext["nodeCacheCapable"] is True and "managedResources" not in ext
    le = cfg["leaderElection"]
    assert le == {
        "leaderElect": True,
        "resourceLock": "leases",
        "resourceName": "perllm-scheduler",
        "resourceNamespace": "perllm-x",
    }
    lease_rules = find(docs, "Role", "perllm-scheduler")["rules"]
    assert {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "resourceNames": ["perllm-scheduler"],
        "verbs": ["get", "update", "patch"],
    } in lease_rules
    roles = {
        d["roleRef"]["name"]
        for d in docs
        if d["kind"].endswith("Binding") and d["subjects"][0]["name"] == "perllm-scheduler"
    }
    assert {
        "system:kube-scheduler",
        "system:volume-scheduler",
        "extension-apiserver-authentication-reader",
        "perllm-scheduler",
    } == roles
    off = scheduler_config(render("--set", "extender.ignorable=false"))
    assert off["extenders"][0]["ignorable"] is False
    assert "extenders" not in scheduler_config(render("--set", "extender.enabled=false"))


@pytest.mark.parametrize("profile", PROFILE_IDS)
def test_kube_scheduler_accepts_the_config(profile: str, tmp_path: Path) -> None:
    """The real kube-scheduler (strict decoding, validation) loads the rendered config."""
    binary = Binaries.locate().kube_scheduler
    if not os.access(binary, os.X_OK):
        pytest.skip(f"no kube-scheduler at {binary}: tools/build-binaries.sh k8s")
    cfg = tmp_path / "config.yaml"
    docs = render(profile=profile)
    cfg.write_text(yaml.safe_dump(local_tls(docs, scheduler_config(docs), tmp_path)))
    r = subprocess.run(
        [
            str(binary),
            f"--config={cfg}",
            "--master=http://127.0.0.1:1",
            f"--write-config-to={tmp_path / 'out.yaml'}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    out = yaml.safe_load((tmp_path / "out.yaml").read_text())
    assert out["profiles"][0]["schedulerName"] == "perllm-scheduler"


@pytest.mark.parametrize(
    ("kube_version", "tag"),
    [
        (None, "v1.34.13"),  # Helm's own default: the stamped build says 1.34
        ("1.31.4", "v1.31.13"),
        ("v1.31.4+k3s1", "v1.31.13"),
        ("v1.33.1-eks-1234", "v1.33.13"),
        ("v1.29.2", "v1.29.15"),
        ("1.40.2", "v1.40.2"),  # no pin for the minor: the cluster's own version
    ],
)
def test_scheduler_image_follows_the_clusters_minor(kube_version: str | None, tag: str) -> None:
    args = ["template", "perllm", str(CHART)]
    if kube_version:
        args += ["--kube-version", kube_version]
    docs = [d for d in yaml.safe_load_all(helm(*args).stdout) if d]
    image = find(docs, "Deployment", "perllm-scheduler")["spec"]["template"]["spec"]["containers"][
        0
    ]["image"]
    assert image == f"registry.k8s.io/kube-scheduler:{tag}"
    pinned = render("--set", "scheduler.image.tag=v1.30.1")
    image = find(pinned, "Deployment", "perllm-scheduler")["spec"]["template"]["spec"][
        "containers"
    ][0]["image"]
    assert image == "registry.k8s.io/kube-scheduler:v1.30.1"


def test_pinned_patches_cover_every_supported_minor() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    pins = values["scheduler"]["image"]["tagByMinor"]
    floor = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    low = int(re.search(r">=\s*1\.(\d+)", floor).group(1))  # type: ignore[union-attr]
    minors = sorted(int(k.split(".")[1]) for k in pins)
    assert minors[0] == low and minors == list(range(low, minors[-1] + 1)), minors
    for k, v in pins.items():
        assert v.startswith(f"v{k}."), (k, v)
