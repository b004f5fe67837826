"""CI: the release and kind workflows, tools/kind-e2e.sh and the image build file.

Static checks on the YAML and the script (no runner, no container engine here), plus the
script's --no-engine mode for real (binaries, chart lint, helm template of each profile):
that needs the pinned Helm, and skips, saying so, without it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from perllm.devcluster.binaries import Binaries

ROOT = Path(__file__).parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
SCRIPT = ROOT / "tools" / "kind-e2e.sh"
CONTAINERFILE = ROOT / "images" / "Containerfile"
PROFILES = sorted(p.name for p in (ROOT / "charts" / "perllm" / "ci").glob("*-values.yaml"))

Doc = dict[str, Any]


def workflow(name: str) -> Doc:
    doc: Doc = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the key `on` as True.
    if True in doc:
        doc["on"] = doc.pop(True)
    return doc


def steps(job: Doc) -> list[Doc]:
    out: list[Doc] = job["steps"]
    return out


def runs(job: Doc) -> str:
    return "\n".join(s.get("run", "") for s in steps(job))


def uses(job: Doc, action: str) -> list[Doc]:
    return [s for s in steps(job) if s.get("uses", "").split("@")[0] == action]


def test_e2e_kind_workflow_builds_everything_and_installs_each_profile() -> None:
    wf = workflow("e2e-kind.yaml")
    assert {"push", "pull_request"} <= set(wf["on"])
    assert list(wf["jobs"]) == ["e2e-kind"]
    job = wf["jobs"]["e2e-kind"]
    text = runs(job)
    # Every binary the e2e tier uses: the local control plane (k8s, etcd), KWOK's nodes,
    # Helm (test_chart), Prometheus (telemetry tests), llama-server (test_llamacpp) and
    # Prometheus with Kubernetes discovery (test_chart_scrape).
    m = re.search(r'kind-e2e\.sh --components "([^"]+)" binaries', text)
    assert m, text
    assert set(m.group(1).split()) == {
        "k8s",
        "etcd",
        "kwok",
        "helm",
        "prometheus",
        "llamacpp",
        "promsd",
    }
    build = uses(job, "docker/build-push-action")
    assert build and build[0]["with"]["file"] == "images/Containerfile"
    assert build[0]["with"]["load"] is True and build[0]["with"]["push"] is False
    assert uses(job, "helm/kind-action")
    order = [
        "kind-e2e.sh --components",
        "kind-e2e.sh lint template",
        "kind-e2e.sh load",
        "kind-e2e.sh profiles",
        "kind-e2e.sh e2e",
    ]
    at = [text.index(s) for s in order]
    assert at == sorted(at), "steps out of order"
    names = [s.get("name", s.get("uses", "")) for s in steps(job)]
    assert names.index("Build the image") < names.index("Load the image into kind")
    assert job["env"]["IMAGE_REPO"].startswith("ghcr.io/")


def test_release_workflow_pushes_image_and_chart_on_tags() -> None:
    wf = workflow("release.yaml")
    assert wf["on"] == {"push": {"tags": ["v*"]}}
    assert wf["permissions"]["packages"] == "write"
    image, chart = wf["jobs"]["image"], wf["jobs"]["chart"]
    assert chart["needs"] == "image"  # no chart without its image
    (build,) = uses(image, "docker/build-push-action")
    w = build["with"]
    assert w["push"] is True and w["file"] == "images/Containerfile"
    assert set(w["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    assert uses(image, "docker/setup-buildx-action") and uses(image, "docker/setup-qemu-action")
    (meta,) = uses(image, "docker/metadata-action")
    assert meta["with"]["images"].endswith("/perllm")
    assert "ghcr.io" in wf["env"]["REGISTRY"]
    login = uses(image, "docker/login-action")
    assert login and login[0]["with"]["registry"] == "${{ env.REGISTRY }}"
    text = runs(chart)
    assert "helm package charts/perllm" in text
    assert re.search(r'helm push \S+ "oci://\$REGISTRY/\$OWNER/charts"', text), text
    assert "helm registry login" in text
    assert "GITHUB_REPOSITORY_OWNER,," in runs(image)  # registry paths are lower-case


def test_chart_and_docs_point_at_the_released_image() -> None:
    values = yaml.safe_load((ROOT / "charts" / "perllm" / "values.yaml").read_text())
    assert values["image"]["repository"] == "ghcr.io/perllm/perllm"
    # The release's sed rewrites exactly that line.
    line = "  repository: ghcr.io/perllm/perllm"
    assert line in (ROOT / "charts" / "perllm" / "values.yaml").read_text().splitlines()
    for doc in ("docs/helm.md", "images/README.md", "charts/perllm/README.md"):
        text = (ROOT / doc).read_text()
        assert "ghcr.io/" in text and "perllm" in text, doc


def test_containerfile_is_small_non_root_and_multi_stage() -> None:
    text = CONTAINERFILE.read_text()
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(froms) == 2 and all("slim" in f for f in froms)
    runtime = text.split("\nFROM ")[-1]
    (user,) = re.findall(r"^USER (\S+)", runtime, re.M)
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit(), user  # numeric: runAsNonRoot
    assert "pip install" not in runtime and "apt-get install" not in runtime
    assert "pip uninstall" in runtime  # the base image's installer removed
    assert "COPY --from=build /opt/perllm" in runtime
    assert "pip install --only-binary=:all:" in text  # from pyproject.toml, no compiler
    values = yaml.safe_load((ROOT / "charts" / "perllm" / "values.yaml").read_text())
    assert values["security"]["runAsUser"] == int(uid)


def test_kind_script_parses_and_has_every_step() -> None:
    bash = shutil.which("bash")
    assert bash
    r = subprocess.run([bash, "-n", str(SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert os.access(SCRIPT, os.X_OK)
    text = SCRIPT.read_text()
    for step in ("binaries", "lint", "template", "image", "cluster", "load", "profiles", "e2e"):
        assert re.search(rf"^step_{step}\(\) \{{", text, re.M), step
    assert "kind load docker-image" in text
    assert "tools/build-binaries.sh" in text
    if shutil.which("shellcheck"):
        r = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout


def test_kind_script_refuses_engine_steps_in_no_engine_mode() -> None:
    r = subprocess.run(
        [str(SCRIPT), "--no-engine", "image"], capture_output=True, text=True, timeout=30
    )
    assert r.returncode != 0 and "needs a container engine" in r.stderr
    r = subprocess.run([str(SCRIPT), "nonsense"], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "unknown step" in r.stderr


def test_kind_script_no_engine_mode_runs() -> None:
    helm = Binaries.locate().helm
    if not os.access(helm, os.X_OK):
        pytest.skip(f"no Helm at {helm}: tools/build-binaries.sh helm (the script's lint needs it)")
    # Only Helm here: the other binaries' builds take long cold and are the workflow's job.
    r = subprocess.run(
        [str(SCRIPT), "--no-engine", "--components", "helm"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    err = r.stderr
    assert "== binaries" in err and "== lint" in err and "== template" in err
    for profile in ["default", *PROFILES]:
        assert f"helm lint --strict ({profile})" in err, profile
        assert re.search(rf"helm template \({re.escape(profile)}\): \d+ objects", err), profile
    assert "0 chart(s) failed" in r.stdout
    assert "done: binaries lint template" in err
