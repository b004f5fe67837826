"""The Helm chart against a real API server (issue #6, chart checks).

- Every object `helm template` renders for each profile, with and without
  `networkPolicy.enabled`, passes a server-side dry-run.
- `helm install` succeeds (agent and twin on, so every template is exercised; KWOK runs the
  pods, so the Deployments and the DaemonSet roll out), and `helm uninstall` removes every
  object it made (the CRD stays, as Helm documents).
- The chart's RBAC suffices, proven with the ServiceAccounts' own tokens (TokenRequest):
  the real operator process turns an LLMService into a Deployment; the extender's token
  does every API call the extender makes (list/watch nodes, pods, LLMServices; patch
  `status.placement`; create the Placed Event; create/read/update its state ConfigMap) and
  nothing beyond; the real kube-scheduler runs with the chart's configuration under its
  token, takes its own Lease and binds a pod.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from perllm.crd import PLURAL
from perllm.devcluster.binaries import Binaries
from perllm.devcluster.kube import Kube, wait_for
from perllm.devcluster.process import free_port, terminate

from .operator_harness import merge_patch

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ROOT = Path(__file__).parents[2]
CHART = ROOT / "charts" / "perllm"
PROFILES = ["default", *sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))]
KUBE_VERSION = "1.34.10"
# Release names contain "perllm", so objects are named <release>-<component>.
RELEASE = f"perllm-e2e-{uuid.uuid4().hex[:6]}"

# The `perllm` console script of this environment.
PERLLM = str(Path(sys.executable).with_name("perllm"))


@pytest.fixture(scope="module")
def helm_bin() -> str:
    helm = Binaries.locate().helm
    if not os.access(helm, os.X_OK):
        pytest.skip(f"no Helm at {helm}: tools/build-binaries.sh helm")
    return str(helm)


def helm(
    kube: Kube, helm_bin: str, *args: str, check: bool = True, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [helm_bin, f"--kubeconfig={kube.kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and r.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{r.stdout}{r.stderr}")
    return r


@pytest.mark.parametrize("policies", [False, True], ids=["", "network-policies"])
@pytest.mark.parametrize("profile", PROFILES)
def test_rendered_objects_pass_server_dry_run(
    kube: Kube, helm_bin: str, namespace: str, profile: str, policies: bool
) -> None:
    """With `networkPolicy.enabled` too: the unit tests check its policies against a port
    of the API server's validation; here the API server itself judges them."""
    values = [] if profile == "default" else ["-f", str(CHART / "ci" / profile)]
    if policies:
        values += ["--set", "networkPolicy.enabled=true"]
    rendered = helm(
        kube,
        helm_bin,
        "template",
        RELEASE,
        str(CHART),
        "-n",
        namespace,
        "--include-crds",
        "--kube-version",
        KUBE_VERSION,
        *values,
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    assert len(docs) >= 20
    # The profiles' routers front a service in team-a (their Role lives there).
    for ns in {d["metadata"].get("namespace") for d in docs} - {namespace, None}:
        kube.kubectl("create", "namespace", ns, check=False)
    r = kube.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered, check=False)
    assert r.returncode == 0, r.stderr
    accepted = [line for line in r.stdout.splitlines() if "(server dry run)" in line]
    assert len(accepted) == len(docs), r.stdout


@dataclass
class Release:
    name: str
    namespace: str


@pytest.fixture(scope="module")
def release(kube: Kube, helm_bin: str) -> Iterator[Release]:
    ns = f"{RELEASE}-system"
    rel = Release(RELEASE, ns)
    helm(
        kube,
        helm_bin,
        "install",
        rel.name,
        str(CHART),
        "-n",
        ns,
        "--create-namespace",
        "--set",
        "agent.enabled=true,twin.enabled=true,router.enabled=true,router.services[0].name=chat",
        "--wait",  # every Deployment and the agent's DaemonSet rolled out on KWOK nodes
        "--timeout=3m",
        timeout=200,
    )
    try:
        yield rel
    finally:
        helm(kube, helm_bin, "uninstall", rel.name, "-n", ns, "--wait", check=False)
        kube.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_install_rolls_out(kube: Kube, helm_bin: str, release: Release) -> None:
    status = json.loads(
        helm(kube, helm_bin, "status", release.name, "-n", release.namespace, "-o", "json").stdout
    )
    assert status["info"]["status"] == "deployed"
    for comp in ("operator", "extender", "scheduler", "twin", "router-chat"):
        # KWOK runs the pods on its fake nodes and marks them ready.
        kube.kubectl(
            "rollout",
            "status",
            f"deployment/{release.name}-{comp}",
            "-n",
            release.namespace,
            "--timeout=120s",
            timeout=130,
        )
    ds = kube.get_or_none("daemonset", f"{release.name}-agent", "-n", release.namespace)
    assert ds["spec"]["template"]["spec"]["serviceAccountName"] == f"{release.name}-agent"
    st = ds["status"]
    assert st["desiredNumberScheduled"] >= 1, st  # one agent per schedulable node
    assert st["numberReady"] == st["desiredNumberScheduled"], st
    pdbs = kube.get_or_none("pdb", "-n", release.namespace)["items"]
    assert pdbs and all("disruptionsAllowed" in p.get("status", {}) for p in pdbs), pdbs
    crd = kube.get_or_none("crd", f"{PLURAL}.perllm.io")
    assert crd is not None


def _token_kubeconfig(kube: Kube, release: Release, component: str, path: Path) -> Kube:
    kube.service_account_kubeconfig(f"{release.name}-{component}", release.namespace, path, "1h")
    return Kube(path, kube.kubectl_path, None)


def _can(k: Kube, *args: str) -> bool:
    r = k.kubectl("auth", "can-i", *args, check=False)
    return r.stdout.strip() == "yes"


def _llmservice(name: str) -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load((ROOT / "manifests" / f"{name}.yaml").read_text())
    return obj


def test_operator_runs_under_the_charts_service_account(
    kube: Kube, release: Release, namespace: str, tmp_path: Path
) -> None:
    k = _token_kubeconfig(kube, release, "operator", tmp_path / "operator.kubeconfig")
    assert _can(k, "list", "llmservices.perllm.io", "-A")
    assert not _can(k, "delete", "nodes")
    assert not _can(k, "get", "secrets", "-n", namespace)
    log = tmp_path / "operator.log"
    env = dict(os.environ, KUBECONFIG=str(k.kubeconfig), PYTHONWARNINGS="ignore")
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "perllm_operator", "--verbose"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        kube.apply(_llmservice("batch-summariser"), namespace)
        dep = wait_for(
            lambda: kube.get_or_none("deployment", "batch-summariser", "-n", namespace),
            "the operator's Deployment child",
        )
        assert dep["metadata"]["ownerReferences"][0]["kind"] == "LLMService"
        wait_for(
            lambda: kube.get_or_none("service", "batch-summariser-predictor", "-n", namespace),
            "the operator's Service child",
        )
        assert proc.poll() is None, "the operator exited"
        text = log.read_text(errors="replace")
        denied = re.findall(r'"[A-Z]+ (\S+) HTTP/1\.1" 403', text)
        assert not denied and "Forbidden" not in text, denied or text[-3000:]
    finally:
        terminate(proc, timeout=20)
        print(f"--- operator log ---\n{log.read_text(errors='replace')[-4000:]}")


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_extender_token_does_what_the_extender_does(
    kube: Kube, release: Release, namespace: str, tmp_path: Path
) -> None:
    k = _token_kubeconfig(kube, release, "extender", tmp_path / "extender.kubeconfig")
    # Informers: list + watch of nodes, pods of every namespace, LLMServices.
    for res in ("nodes", "pods", f"{PLURAL}.perllm.io"):
        assert k.kubectl("get", res, "-A", "--request-timeout=10s", check=False).returncode == 0, (
            res
        )
        assert _can(k, "watch", res, "-A"), res
    kube.apply(_llmservice("chat-assistant"), namespace)
    svc = kube.get_or_none(PLURAL, "chat-assistant", "-n", namespace)
    # The calls the extender makes, as it makes them (kubernetes client, no prior GET).
    api = kubernetes.config.new_client_from_config(config_file=str(k.kubeconfig))  # type: ignore[no-untyped-call]
    custom = kubernetes.client.CustomObjectsApi(api)
    core = kubernetes.client.CoreV1Api(api)
    # Contract 1 (a): merge-patch status.placement.
    placement = {
        "tier": "edge",
        "nodes": ["n1"],
        "pod": "p",
        "chosen": "n1",
        "predictedTimeSeconds": 0.5,
        "predictedEnergyJ": 12.0,
        "feasible": True,
        "decidedAt": "2026-01-01T00:00:00Z",
        "explanation": {},
    }
    custom.patch_namespaced_custom_object_status(
        "perllm.io",
        "v1alpha1",
        namespace,
        PLURAL,
        "chat-assistant",
        {"status": {"placement": placement}},
        _content_type="application/merge-patch+json",
    )
    got = kube.get_or_none(PLURAL, "chat-assistant", "-n", namespace)
    assert got["status"]["placement"]["chosen"] == "n1"
    # ... but never the spec.
    r = merge_patch(
        k, namespace, "chat-assistant", {"metadata": {"labels": {"x": "y"}}}, check=False
    )
    assert r.returncode != 0 and "forbidden" in r.stderr.lower()
    # Contract 1 (b): a core/v1 Event on the LLMService.
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"chat-assistant.{uuid.uuid4().hex[:8]}", "namespace": namespace},
        "involvedObject": {
            "apiVersion": "perllm.io/v1alpha1",
            "kind": "LLMService",
            "name": "chat-assistant",
            "namespace": namespace,
            "uid": svc["metadata"]["uid"],
        },
        "reason": "Placed",
        "message": "n1 (edge): 0.5 s vs 1 s deadline, 12 J",
        "type": "Normal",
        "source": {"component": "perllm-extender"},
    }
    core.create_namespaced_event(namespace, event)  # type: ignore[arg-type]
    # Contract 2: the learned-state ConfigMap (create, read, merge-patch) in the release
    # namespace, nowhere else.
    ns = release.namespace
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "perllm-extender-state", "namespace": ns},
        "data": {"state.json": "{}"},
    }
    core.create_namespaced_config_map(ns, cm)  # type: ignore[arg-type]
    assert core.read_namespaced_config_map("perllm-extender-state", ns).data == {"state.json": "{}"}
    core.patch_namespaced_config_map(
        "perllm-extender-state", ns, {"data": {"state.json": '{"v":1}'}}
    )
    assert kube.get_or_none("configmap", "perllm-extender-state", "-n", ns)["data"] == {
        "state.json": '{"v":1}'
    }
    events = kube.get_or_none("events", "-n", namespace)["items"]
    assert any(
        e["reason"] == "Placed" and e["involvedObject"]["name"] == "chat-assistant" for e in events
    )
    assert not _can(k, "get", "configmaps/other", "-n", ns)
    assert not _can(k, "create", "configmaps", "-n", namespace)
    assert not _can(k, "delete", "configmaps/perllm-extender-state", "-n", ns)
    assert not _can(k, "create", "pods/binding", "-n", namespace)
    assert not _can(k, "update", "llmservices.perllm.io", "-n", namespace)
    kube.kubectl("delete", "configmap", "perllm-extender-state", "-n", ns)


def test_extender_process_runs_under_the_charts_service_account(
    kube: Kube, release: Release, tmp_path: Path
) -> None:
    """The real extender with the chart's token: informers start, and on shutdown it saves
    its learned state to its state ConfigMap, without a single denied call."""
    k = _token_kubeconfig(kube, release, "extender", tmp_path / "extender.kubeconfig")
    port = free_port()
    log = tmp_path / "extender.log"
    env = dict(os.environ, KUBECONFIG=str(k.kubeconfig), PYTHONWARNINGS="ignore")
    env.pop("PERLLM_PROMETHEUS_URL", None)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                PERLLM,
                "extender",
                f"--port={port}",
                f"--state-namespace={release.namespace}",
                "--kube",
                "--log-level=info",
                "--insecure-http",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(
            lambda: "Application startup complete" in log.read_text(errors="replace"),
            "the extender to start",
            timeout=60,
        )
        time.sleep(2)  # informers list and watch
        proc.terminate()
        proc.wait(timeout=30)
        cm = wait_for(
            lambda: kube.get_or_none("configmap", "perllm-extender-state", "-n", release.namespace),
            "the saved state",
            timeout=10,
        )
        assert "state.json" in cm["data"]
        text = log.read_text(errors="replace")
        assert not re.search(r"\b403\b|[Ff]orbidden", text), text[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        kube.kubectl(
            "delete", "configmap", "perllm-extender-state", "-n", release.namespace, check=False
        )
        print(f"--- extender log ---\n{log.read_text(errors='replace')[-4000:]}")


def test_router_process_runs_under_the_charts_service_account(
    kube: Kube, release: Release, tmp_path: Path
) -> None:
    """The real `perllm router` with the chart's config and its service account's token:
    it reads the LLMService's spec, lists its pods and their nodes, and goes ready when a
    model-server pod is, and writes its view into the LLMService's status; no call is
    denied, and it can read nothing else nor write anything but that status."""
    ns = release.namespace
    k = _token_kubeconfig(kube, release, "router-chat", tmp_path / "router.kubeconfig")
    assert _can(k, "list", "pods", "-n", ns) and _can(k, "get", "nodes")
    assert _can(k, "get", "llmservices.perllm.io/chat", "-n", ns)
    assert not _can(k, "get", "llmservices.perllm.io/other", "-n", ns)
    assert _can(k, "patch", "llmservices.perllm.io/chat", "--subresource=status", "-n", ns)
    assert not _can(k, "patch", "llmservices.perllm.io/chat", "-n", ns)
    assert not _can(k, "list", "pods", "-n", "default")
    assert not _can(k, "get", "secrets", "-n", ns)
    chat = _llmservice("chat-assistant")
    chat["metadata"] = {"name": "chat", "namespace": ns}
    kube.apply([chat], ns)
    cm = kube.get_or_none("configmap", f"{release.name}-router-chat", "-n", ns)
    cfg = yaml.safe_load(cm["data"]["router.yaml"])
    cfg["discovery"]["interval_s"] = cfg["discovery"]["status_interval_s"] = 1
    (tmp_path / "router.yaml").write_text(yaml.safe_dump(cfg))
    port = free_port()
    log = tmp_path / "router.log"
    env = dict(os.environ, KUBECONFIG=str(k.kubeconfig), PYTHONWARNINGS="ignore")
    node = next(
        n["metadata"]["name"]
        for n in kube.get("nodes")["items"]
        if n["metadata"].get("labels", {}).get("perllm.io/tier") == "edge"
    )
    # chat's model server as its KServe child's would be (the router keeps only the pods of
    # the LLMService's own Deployments, <isvc>-predictor: perllm.service_pods); the operator
    # is not running here
    labels = {"perllm.io/service": "chat", "app": "chat-predictor"}
    pod = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "chat-predictor"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "chat-predictor"}},
            "template": {"metadata": {"labels": labels}, "spec": {
                "nodeName": node,
                "tolerations": [{"operator": "Exists"}],
                "containers": [
                    {"name": "server", "image": "llama",
                     "ports": [{"name": "http", "containerPort": 8080}]}
                ],
            }},
        },
    }  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [PERLLM, "router", f"--config={tmp_path / 'router.yaml'}", f"--port={port}"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:

        def readyz() -> Any:
            try:
                return urllib.request.urlopen(f"{url}/readyz", timeout=2).status
            except urllib.error.HTTPError as e:
                return e.code
            except OSError:
                return None

        assert wait_for(lambda: readyz() == 503, "the router to answer", timeout=60)
        kube.apply([pod], ns)
        assert wait_for(lambda: readyz() == 200, "the router to discover the pod", timeout=60)

        def reachable() -> bool:
            obj = kube.get_or_none(PLURAL, "chat", "-n", ns) or {}
            conds = (obj.get("status") or {}).get("conditions") or []
            return any(c["type"] == "BackendsReachable" and c["status"] == "True" for c in conds)

        assert wait_for(reachable, "the router's condition in the status", timeout=30)
        text = log.read_text(errors="replace")
        assert not re.search(r"\b403\b|[Ff]orbidden", text), text[-4000:]
    finally:
        terminate(proc)
        kube.kubectl(
            "delete", "deployment", "chat-predictor", "-n", ns, "--wait=false", check=False
        )
        kube.kubectl("delete", PLURAL, "chat", "-n", ns, "--wait=false", check=False)
        print(f"--- router log ---\n{log.read_text(errors='replace')[-4000:]}")


def test_kube_scheduler_runs_with_the_charts_config_and_token(
    kube: Kube, release: Release, namespace: str, tmp_path: Path
) -> None:
    """The stock kube-scheduler, the chart's ConfigMap and the chart's ServiceAccount: it
    authenticates its endpoint (kube-system RoleBinding), holds its own Lease and binds."""
    binary = Binaries.locate().kube_scheduler
    k = _token_kubeconfig(kube, release, "scheduler", tmp_path / "scheduler.kubeconfig")
    cm = kube.get_or_none("configmap", f"{release.name}-scheduler", "-n", release.namespace)
    cfg = yaml.safe_load(cm["data"]["config.yaml"])
    assert cfg["leaderElection"]["resourceName"] == "perllm-scheduler"
    # Out of cluster: the token's kubeconfig instead of in-cluster config, and a profile name
    # of its own so that the local control plane's perllm-scheduler does not race it.
    cfg["clientConnection"] = {"kubeconfig": str(k.kubeconfig)}
    name = f"chart-e2e-{uuid.uuid4().hex[:6]}"
    cfg["profiles"] = [{"schedulerName": name}]
    cfg["extenders"][0]["ignorable"] = True  # no extender listens at the in-cluster URL
    # kube-scheduler loads its extender TLS files at start: the chart's client Secret, as
    # the pod mounts it
    secret = kube.get_or_none(
        "secret", f"{release.name}-extender-client-tls", "-n", release.namespace
    )
    tls = cfg["extenders"][0]["tlsConfig"]
    for key, file in (("caFile", "ca.crt"), ("certFile", "tls.crt"), ("keyFile", "tls.key")):
        (tmp_path / file).write_bytes(base64.b64decode(secret["data"][file]))
        tls[key] = str(tmp_path / file)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    log = tmp_path / "scheduler.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                str(binary),
                f"--config={tmp_path / 'config.yaml'}",
                f"--authentication-kubeconfig={k.kubeconfig}",
                f"--authorization-kubeconfig={k.kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--v=2",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        lease = wait_for(
            lambda: (
                (kube.get_or_none("lease", "perllm-scheduler", "-n", release.namespace) or {})
                .get("spec", {})
                .get("holderIdentity")
            ),
            "the scheduler's Lease",
            timeout=60,
        )
        assert lease
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "bound-by-chart-scheduler", "namespace": namespace},
            "spec": {
                "schedulerName": name,
                "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}],
            },
        }
        kube.kubectl("create", "-f", "-", input=json.dumps(pod))
        node = wait_for(
            lambda: kube.get_or_none("pod", "bound-by-chart-scheduler", "-n", namespace)[
                "spec"
            ].get("nodeName"),
            "the pod bound",
            timeout=60,
        )
        assert node
        assert proc.poll() is None, "kube-scheduler exited"
        text = log.read_text(errors="replace")
        assert "is forbidden" not in text, text[-4000:]
    finally:
        terminate(proc, timeout=20)
        print(f"--- kube-scheduler log ---\n{log.read_text(errors='replace')[-4000:]}")


def test_team_users_get_llmservices_through_edit_and_view(
    kube: Kube, release: Release, namespace: str
) -> None:
    """The aggregated ClusterRoles: the controller-manager folds them into the built-in
    roles, so a RoleBinding to `edit` creates LLMServices and one to `view` only reads them."""
    for role, group in (("edit", "perllm-e2e-editors"), ("view", "perllm-e2e-viewers")):
        kube.kubectl(
            "create", "rolebinding", f"chart-e2e-{role}", "-n", namespace,
            f"--clusterrole={role}", f"--group={group}",
        )  # fmt: skip

    def can(group: str, *args: str) -> bool:
        r = kube.kubectl(
            "auth", "can-i", *args, "-n", namespace, "--as=alice", f"--as-group={group}",
            check=False,
        )  # fmt: skip
        return r.stdout.strip() == "yes"

    res = f"{PLURAL}.perllm.io"
    wait_for(lambda: can("perllm-e2e-editors", "create", res), "edit to aggregate", timeout=60)
    for verb in ("create", "update", "patch", "delete", "list"):
        assert can("perllm-e2e-editors", verb, res), verb
    assert not can("perllm-e2e-editors", "patch", res, "--subresource=status")
    wait_for(lambda: can("perllm-e2e-viewers", "list", res), "view to aggregate", timeout=60)
    assert can("perllm-e2e-viewers", "get", res) and can("perllm-e2e-viewers", "watch", res)
    assert not can("perllm-e2e-viewers", "create", res)


def test_uninstall_removes_what_install_made(kube: Kube, helm_bin: str, release: Release) -> None:
    sel = f"app.kubernetes.io/instance={release.name}"
    before = kube.kubectl(
        "get", "clusterroles,clusterrolebindings", "-l", sel, "-o", "name"
    ).stdout.split()
    assert len(before) >= 6
    helm(
        kube,
        helm_bin,
        "uninstall",
        release.name,
        "-n",
        release.namespace,
        "--wait",
        "--timeout",
        "120s",
    )

    def gone() -> bool:
        left = kube.kubectl(
            "get",
            "all,configmaps,serviceaccounts,roles,rolebindings,poddisruptionbudgets",
            "-n",
            release.namespace,
            "-l",
            sel,
            "-o",
            "name",
        ).stdout.split()
        left += kube.kubectl(
            "get", "clusterroles,clusterrolebindings", "-l", sel, "-o", "name"
        ).stdout.split()
        left += kube.kubectl(
            "get", "rolebindings", "-n", "kube-system", "-l", sel, "-o", "name"
        ).stdout.split()
        assert not left, left
        return True

    wait_for(gone, "every object of the release deleted", timeout=90)
    # Helm never deletes crds/.
    assert kube.get_or_none("crd", f"{PLURAL}.perllm.io") is not None
