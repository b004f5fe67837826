"""The LLMService operator on a real API server (issue #4, operator part).

The operator runs as a subprocess with a kubeconfig holding only a token of the
`perllm-operator` ServiceAccount (operator/rbac.yaml), which proves the RBAC suffices.
Checks: a kserve-backend LLMService becomes an InferenceService the API server accepts
(project-written test CRD, no KServe controller); a deployment-backend one becomes a
Deployment + Service whose pods perllm-scheduler binds to KWOK nodes of the right tier;
editing the deadline patches the child in place; deleting the LLMService garbage-collects
the children; a SIGKILLed operator converges after restart without duplicates. The status
timer runs against the harness' Prometheus: a static exporter serves vLLM latency
histograms for a service's pods, one of them too slow, and the operator evicts exactly
that pod (Eviction API) and the ReplicaSet replaces it; `kubectl describe` shows the
conditions and the Events, including a `Placed` Event published as the extender does.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from perllm.crd import CRD_PATH, PLURAL
from perllm.devcluster.exporter import TextExporter
from perllm.devcluster.kube import Kube, wait_for
from perllm.devcluster.process import terminate
from perllm.telemetry import names

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ROOT = Path(__file__).parents[2]
KSERVE_CRD_SCRIPT = ROOT / "tools" / "kserve-crd.sh"
RBAC = ROOT / "operator" / "rbac.yaml"
ISVC = "inferenceservices.serving.kserve.io"

T = TypeVar("T")


class Operator:
    """The operator as a subprocess (`python -m perllm_operator`), logs in a file."""

    def __init__(self, kubeconfig: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.kubeconfig, self.log = kubeconfig, log
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig), PYTHONWARNINGS="ignore", **self.env)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "perllm_operator", "--verbose"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            terminate(self.proc, timeout=20)
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, n: int = 80) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(line for line in lines[-n:] if "InsecureRequestWarning" not in line)


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


@pytest.fixture(scope="module")
def operator(kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
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


@pytest.fixture(autouse=True)
def _operator_log(operator: Operator) -> Iterator[None]:
    yield
    # Captured output: pytest shows it only for a failing test.
    print(f"--- operator log ({operator.log}) ---\n{operator.tail()}")


def _example(name: str, **spec: Any) -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load((ROOT / "manifests" / f"{name}.yaml").read_text())
    obj["spec"].update(spec)
    return obj


def _condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    if not obj:
        return None
    return next(
        (c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == type_),
        None,
    )


def _reconciled(kube: Kube, ns: str, name: str) -> dict[str, Any] | None:
    obj = kube.get_or_none(PLURAL, name, "-n", ns)
    c = _condition(obj, "Reconciled")
    return obj if c and c["status"] == "True" else None


def test_kserve_backend_creates_inference_service(
    kube: Kube, operator: Operator, namespace: str
) -> None:
    kube.apply(_example("chat-assistant"), namespace)
    isvc = wait_for(
        lambda: kube.get_or_none("isvc", "chat-assistant", "-n", namespace), "the InferenceService"
    )
    meta = isvc["metadata"]
    assert meta["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert meta["annotations"]["serving.kserve.io/autoscalerClass"] == "external"
    owner = kube.get_or_none(PLURAL, "chat-assistant", "-n", namespace)
    (ref,) = meta["ownerReferences"]
    assert ref["uid"] == owner["metadata"]["uid"] and ref["controller"] is True
    p = isvc["spec"]["predictor"]
    assert p["schedulerName"] == "perllm-scheduler"
    assert p["minReplicas"] == 1
    assert p["labels"] == {"perllm.io/service": "chat-assistant"}
    assert p["annotations"]["perllm.io/deadline-s"] == "1"
    assert p["annotations"]["perllm.io/deadline-per-token-s"] == "0.15"
    expr = p["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ][0]["matchExpressions"][0]
    # No tier decided yet: open to both tiers, with the variant both can host (CPU-only
    # edge weights) and the GPU toleration so that the cloud node stays a candidate.
    assert expr == {"key": "perllm.io/tier", "operator": "In", "values": ["edge", "cloud"]}
    assert meta["annotations"]["perllm.io/pinned-tier"] == "open"
    assert p["annotations"]["perllm.io/variant-tier"] == "edge"
    # the open template runs the edge variant: GGUF weights on llama.cpp
    assert p["model"]["modelFormat"]["name"] == "gguf"
    assert p["model"]["runtime"] == "perllm-llamacpp"
    assert p["model"]["storageUri"].endswith("Q4_K_M.gguf")
    assert "nvidia.com/gpu" not in json.dumps(p["model"]["resources"])
    assert p["tolerations"][0]["key"] == "nvidia.com/gpu"
    obj = wait_for(lambda: _reconciled(kube, namespace, "chat-assistant"), "status Reconciled=True")
    st = obj["status"]
    assert st["child"] == {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "name": "chat-assistant",
    }
    assert st["observedGeneration"] == obj["metadata"]["generation"]
    # No KServe controller runs: the InferenceService has no Ready condition.
    assert _condition(obj, "Ready")["status"] == "Unknown"  # type: ignore[index]
    # No pods, no extender decision: Placed waits for the scheduler.
    assert _condition(obj, "Placed")["status"] == "Unknown"  # type: ignore[index]
    # The extender decides the cloud (status.placement): the child is re-rendered in place,
    # pinned to the cloud with the cloud variant's GPU request.
    kube.kubectl(
        "patch",
        PLURAL,
        "chat-assistant",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(
            {"status": {"placement": {"tier": "cloud", "nodes": ["cloud"], "feasible": True}}}
        ),
    )

    def pinned() -> dict[str, Any] | None:
        o = kube.get_or_none("isvc", "chat-assistant", "-n", namespace)
        return o if o["metadata"]["annotations"].get("perllm.io/pinned-tier") == "cloud" else None

    isvc2 = wait_for(pinned, "the InferenceService pinned to the cloud", timeout=60)
    assert isvc2["metadata"]["uid"] == isvc["metadata"]["uid"]
    p2 = isvc2["spec"]["predictor"]
    assert p2["model"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert p2["annotations"]["perllm.io/precision"] == "fp16"
    expr2 = p2["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ][0]["matchExpressions"][0]
    assert expr2["values"] == ["cloud"]
    wait_for(
        lambda: [
            e for e in _events(kube, namespace, "chat-assistant") if e["reason"] == "TierChanged"
        ],
        "TierChanged Event",
        timeout=30,
    )
    assert operator.alive()


def _bound_pods(kube: Kube, ns: str, name: str) -> list[dict[str, Any]] | None:
    pods = kube.get_or_none("pods", "-n", ns, "-l", f"perllm.io/service={name}")
    items = (pods or {}).get("items", [])
    if items and all(p["spec"].get("nodeName") for p in items):
        return list(items)
    return None


def test_deployment_backend_pods_bound_by_perllm_scheduler(
    kube: Kube, operator: Operator, namespace: str
) -> None:
    kube.apply(_example("batch-summariser"), namespace)  # cloud only, one GPU
    dep = wait_for(
        lambda: kube.get_or_none("deployment", "batch-summariser", "-n", namespace),
        "the Deployment",
    )
    tpl = dep["spec"]["template"]["spec"]
    assert tpl["schedulerName"] == "perllm-scheduler"
    assert tpl["containers"][0]["name"] == "model-server"
    svc = wait_for(
        lambda: kube.get_or_none("service", "batch-summariser-predictor", "-n", namespace),
        "the Service",
    )
    assert svc["spec"]["selector"] == {"perllm.io/service": "batch-summariser"}
    pods = wait_for(
        lambda: _bound_pods(kube, namespace, "batch-summariser"), "bound pods", timeout=120
    )
    for pod in pods:
        assert pod["spec"]["schedulerName"] == "perllm-scheduler"
        node = kube.get_or_none("node", pod["spec"]["nodeName"])
        assert node["metadata"]["labels"]["perllm.io/tier"] == "cloud"
    # Events of perllm-scheduler name it as the binder.
    ev = wait_for(
        lambda: [
            e
            for e in kube.get_or_none("events", "-n", namespace)["items"]
            if e.get("reason") == "Scheduled" and "perllm-scheduler" in json.dumps(e)
        ],
        "Scheduled event",
        timeout=60,
    )
    assert ev
    # KWOK marks the pods ready; the operator mirrors that into Ready=True.
    wait_for(
        lambda: (
            (
                _condition(kube.get_or_none(PLURAL, "batch-summariser", "-n", namespace), "Ready")
                or {}
            ).get("status")
            == "True"
        ),
        "LLMService Ready=True",
        timeout=120,
    )


def test_edit_deadline_patches_child_in_place(
    kube: Kube, operator: Operator, namespace: str
) -> None:
    kube.apply(_example("code-assistant"), namespace)
    kube.apply(_example("batch-summariser"), namespace)
    isvc = wait_for(lambda: kube.get_or_none("isvc", "code-assistant", "-n", namespace), "isvc")
    dep = wait_for(
        lambda: kube.get_or_none("deployment", "batch-summariser", "-n", namespace), "deployment"
    )
    for name in ("code-assistant", "batch-summariser"):
        kube.kubectl(
            "patch",
            PLURAL,
            name,
            "-n",
            namespace,
            "--type=merge",
            "-p",
            json.dumps({"spec": {"requirements": {"deadline": {"seconds": 7.5}}}}),
        )

    def isvc_edited() -> Any:
        o = kube.get_or_none("isvc", "code-assistant", "-n", namespace)
        return o if o["spec"]["predictor"]["annotations"]["perllm.io/deadline-s"] == "7.5" else None

    def dep_edited() -> Any:
        o = kube.get_or_none("deployment", "batch-summariser", "-n", namespace)
        ann = o["spec"]["template"]["metadata"]["annotations"]
        return o if ann["perllm.io/deadline-s"] == "7.5" else None

    new_isvc = wait_for(isvc_edited, "edited InferenceService")
    new_dep = wait_for(dep_edited, "edited Deployment")
    assert new_isvc["metadata"]["uid"] == isvc["metadata"]["uid"]
    assert new_dep["metadata"]["uid"] == dep["metadata"]["uid"]
    obj = wait_for(
        lambda: (lambda o: o if o["status"].get("observedGeneration") == 2 else None)(
            kube.get_or_none(PLURAL, "code-assistant", "-n", namespace)
        ),
        "observedGeneration 2",
    )
    assert obj["metadata"]["generation"] == 2


def test_delete_garbage_collects_children(kube: Kube, operator: Operator, namespace: str) -> None:
    kube.apply(_example("batch-summariser"), namespace)
    kube.apply(_example("chat-assistant"), namespace)
    wait_for(lambda: kube.get_or_none("deployment", "batch-summariser", "-n", namespace), "deploy")
    wait_for(
        lambda: kube.get_or_none("service", "batch-summariser-predictor", "-n", namespace), "svc"
    )
    wait_for(lambda: kube.get_or_none("isvc", "chat-assistant", "-n", namespace), "isvc")
    # The status timer makes kopf put its finalizer on the object; the running operator
    # removes it on deletion.
    for name in ("batch-summariser", "chat-assistant"):
        wait_for(
            lambda n=name: (
                "perllm.io/finalizer"
                in (  # type: ignore[misc]
                    kube.get_or_none(PLURAL, n, "-n", namespace)["metadata"].get("finalizers") or []
                )
            ),
            f"the finalizer on {name}",
            timeout=30,
        )
        kube.kubectl("delete", PLURAL, name, "-n", namespace, "--wait=true", "--timeout=60s")
        assert kube.get_or_none(PLURAL, name, "-n", namespace) is None

    def gone() -> bool:
        return all(
            kube.get_or_none(kind, name, "-n", namespace) is None
            for kind, name in (
                ("deployment", "batch-summariser"),
                ("service", "batch-summariser-predictor"),
                ("isvc", "chat-assistant"),
            )
        )

    wait_for(gone, "garbage collection of the children", timeout=120)


def test_sigkill_and_restart_converge_without_duplicates(
    kube: Kube, operator: Operator, namespace: str
) -> None:
    kube.apply(_example("batch-summariser"), namespace)
    kube.apply(_example("chat-assistant"), namespace)
    dep = wait_for(
        lambda: kube.get_or_none("deployment", "batch-summariser", "-n", namespace), "deploy"
    )
    isvc = wait_for(lambda: kube.get_or_none("isvc", "chat-assistant", "-n", namespace), "isvc")
    operator.kill()
    try:
        # While the operator is down: edit one service, create another.
        kube.kubectl(
            "patch",
            PLURAL,
            "chat-assistant",
            "-n",
            namespace,
            "--type=merge",
            "-p",
            json.dumps({"spec": {"requirements": {"deadline": {"seconds": 3}}}}),
        )
        kube.apply(_example("code-assistant"), namespace)
        time.sleep(1)
        assert kube.get_or_none("isvc", "code-assistant", "-n", namespace) is None
    finally:
        operator.start()

    def converged() -> bool:
        o = kube.get_or_none("isvc", "chat-assistant", "-n", namespace)
        return (
            o["spec"]["predictor"]["annotations"]["perllm.io/deadline-s"] == "3"
            and kube.get_or_none("isvc", "code-assistant", "-n", namespace) is not None
        )

    wait_for(converged, "convergence after restart", timeout=120)
    time.sleep(3)  # let any stray duplicate appear
    isvcs = kube.get_or_none("isvc", "-n", namespace)["items"]
    assert sorted(i["metadata"]["name"] for i in isvcs) == ["chat-assistant", "code-assistant"]
    deps = kube.get_or_none("deployments", "-n", namespace)["items"]
    assert [d["metadata"]["name"] for d in deps] == ["batch-summariser"]
    assert deps[0]["metadata"]["uid"] == dep["metadata"]["uid"]
    svcs = kube.get_or_none("services", "-n", namespace)["items"]
    assert [s["metadata"]["name"] for s in svcs] == ["batch-summariser-predictor"]
    same = kube.get_or_none("isvc", "chat-assistant", "-n", namespace)
    assert same["metadata"]["uid"] == isvc["metadata"]["uid"]
    assert operator.alive()


# ---- tier switches, what the API server refuses, the catalogue -------------------------------
def _pod_template(kube: Kube, ns: str, name: str, backend: str) -> tuple[dict[str, Any], str]:
    """(pod-level spec with `containers`, pinned tier) of the live child."""
    if backend == "deployment":
        o = kube.get_or_none("deployment", name, "-n", ns)
        return o["spec"]["template"]["spec"], o["metadata"]["annotations"]["perllm.io/pinned-tier"]
    o = kube.get_or_none("isvc", name, "-n", ns)
    p = dict(o["spec"]["predictor"])
    p["containers"] = [p.pop("model")]
    return p, o["metadata"]["annotations"]["perllm.io/pinned-tier"]


def _place(kube: Kube, ns: str, name: str, tier: str) -> None:
    """Publish a decision as the extender does (status.placement)."""
    body = {"status": {"placement": {"tier": tier, "nodes": [f"{tier}-1"], "feasible": True}}}
    kube.kubectl(
        "patch", PLURAL, name, "-n", ns, "--subresource=status", "--type=merge",
        "-p", json.dumps(body),
    )  # fmt: skip


@pytest.mark.parametrize("backend", ["kserve", "deployment"])
def test_a_tier_switch_leaves_no_trace_of_the_other_tier(
    kube: Kube, operator: Operator, namespace: str, backend: str
) -> None:
    """cloud -> edge -> cloud: server-side apply removes the GPU request and toleration on
    the edge and puts them back on the cloud, in place (same child uid)."""
    kind = "deployment" if backend == "deployment" else "isvc"
    kube.apply(_example("chat-assistant", backend=backend), namespace)
    first = wait_for(lambda: kube.get_or_none(kind, "chat-assistant", "-n", namespace), "child")
    for tier in ("cloud", "edge", "cloud"):
        _place(kube, namespace, "chat-assistant", tier)
        wait_for(
            lambda t=tier: _pod_template(kube, namespace, "chat-assistant", backend)[1] == t,
            f"the child pinned to {tier}",
            timeout=60,
        )
        ps, _ = _pod_template(kube, namespace, "chat-assistant", backend)
        (c,) = ps["containers"]
        if tier == "edge":
            assert "nvidia.com/gpu" not in json.dumps(ps), ps
            assert "tolerations" not in ps, ps
        else:
            assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
            assert c["resources"]["requests"]["nvidia.com/gpu"] == "1"
            assert ps["tolerations"] == [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ]
        if backend == "deployment":
            want = "llama.cpp:server-b" if tier == "edge" else "vllm/vllm-openai:v"
            assert want in c["image"], c["image"]
        else:
            assert c["runtime"] == ("perllm-llamacpp" if tier == "edge" else "perllm-vllm")
            assert c["modelFormat"]["name"] == ("gguf" if tier == "edge" else "huggingface")
    live = kube.get_or_none(kind, "chat-assistant", "-n", namespace, "--show-managed-fields")
    assert live["metadata"]["uid"] == first["metadata"]["uid"]
    managers = {m["manager"]: m["operation"] for m in live["metadata"]["managedFields"]}
    assert managers.get("perllm-operator") == "Apply"
    assert operator.alive()


def test_a_typo_in_a_rendered_field_fails_server_side_dry_run(
    kube: Kube, operator: Operator, namespace: str
) -> None:
    """KServe's real schema: a rendered InferenceService passes a strict server-side dry
    run; one with a misspelt field is refused, and the operator's message names it."""
    from kubernetes.client.exceptions import ApiException
    from perllm_operator import failures, render
    from perllm_operator import kube as op_kube

    obj = _example("chat-assistant")
    obj["metadata"].update(namespace=namespace, uid="00000000-0000-0000-0000-000000000001")
    obj["status"] = {"placement": {"tier": "cloud"}}
    good = render.inference_service(obj)
    args = ("apply", "--server-side", "--dry-run=server", "--validate=strict", "-f", "-")
    r = kube.kubectl(*args, input=json.dumps(good), check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    bad = json.loads(json.dumps(good))
    bad["spec"]["predictor"]["model"]["storageURI"] = bad["spec"]["predictor"]["model"].pop(
        "storageUri"
    )
    r = kube.kubectl(*args, input=json.dumps(bad), check=False)
    assert r.returncode != 0 and "storageURI" in r.stderr, r.stdout + r.stderr
    # The operator's own apply (Strict) is refused the same way, naming the field.
    op_kube.kubernetes.config.load_kube_config(config_file=str(kube.kubeconfig))
    with pytest.raises(ApiException) as info:
        op_kube.apply(bad)
    reason, msg = failures.api_failure(info.value, "InferenceService chat-assistant")
    assert reason.startswith("Apply") and "storageURI" in msg, msg
    assert kube.get_or_none("isvc", "chat-assistant", "-n", namespace) is None


def test_a_model_outside_the_catalogue_is_its_own_condition(
    kube: Kube, operator: Operator, namespace: str
) -> None:
    obj = _example("chat-assistant")
    obj["spec"]["model"]["name"] = "my-finetune"
    kube.apply(obj, namespace)
    o = wait_for(
        lambda: (lambda x: x if _condition(x, "ModelKnown") else None)(
            kube.get_or_none(PLURAL, "chat-assistant", "-n", namespace)
        ),
        "condition ModelKnown",
        timeout=60,
    )
    c = _condition(o, "ModelKnown")
    assert c["status"] == "False" and c["reason"] == "ModelNotInCatalogue", c  # type: ignore[index]
    assert "spec.model.name 'my-finetune'" in c["message"]  # type: ignore[index]
    placed = _condition(o, "Placed")
    assert placed and placed["reason"] == "ModelNotInCatalogue", placed
    wait_for(
        lambda: [
            e
            for e in _events(kube, namespace, "chat-assistant")
            if e["reason"] == "ModelNotInCatalogue"
        ],
        "ModelNotInCatalogue Event",
        timeout=30,
    )


# ---- status timer, re-placement, describe ---------------------------------------------------
class LatencyExporter(TextExporter):
    """A static exporter of vLLM's e2e latency histogram (names.VLLM_E2E_LATENCY) with the
    `namespace`, `pod`, `model_name` labels: each registered pod serves `rps` requests per
    second, all taking `latency_s`. Counters grow with wall time, so `rate()` sees them."""

    def __init__(self) -> None:
        self.pods: dict[tuple[str, str], tuple[float, float]] = {}
        self.t0 = time.monotonic()
        super().__init__()

    def serve(self, namespace: str, pod: str, latency_s: float, rps: float = 5.0) -> None:
        self.pods[(namespace, pod)] = (latency_s, rps)

    def render(self) -> str:
        m = names.VLLM_E2E_LATENCY
        lines = [f"# TYPE {m} histogram"]
        elapsed = time.monotonic() - self.t0
        for (ns, pod), (lat, rps) in sorted(self.pods.items()):
            n = int(rps * elapsed)
            lab = f'namespace="{ns}",pod="{pod}",model_name="m"'
            for b in names.VLLM_LATENCY_BUCKETS:
                lines.append(f'{m}_bucket{{{lab},le="{names.fmt_le(b)}"}} {n if lat <= b else 0}')
            lines.append(f'{m}_bucket{{{lab},le="+Inf"}} {n}')
            lines.append(f"{m}_sum{{{lab}}} {n * lat}")
            lines.append(f"{m}_count{{{lab}}} {n}")
        return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def exporter(kube: Kube) -> Iterator[LatencyExporter]:
    if kube.local is None or kube.local.prometheus_url is None:
        pytest.skip("needs the local harness' Prometheus (set_scrape_configs)")
    ex = LatencyExporter()
    kube.local.set_scrape_configs([ex.scrape_config("vllm-e2e")])
    try:
        yield ex
    finally:
        kube.local.set_scrape_configs([])
        ex.close()


def _edge_service(name: str, replicas: int) -> dict[str, Any]:
    """A small edge-only service on the deployment backend (pods land on KWOK edge nodes);
    deadline 2 s for 10 output tokens (2.0 + 0 × 10), 95 % of requests."""
    return {
        "apiVersion": "perllm.io/v1alpha1",
        "kind": "LLMService",
        "metadata": {"name": name},
        "spec": {
            "model": {
                "name": "llama2-7b",
                "variants": [
                    {
                        "tier": "edge",
                        "precision": "q4_k_m",
                        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
                    }
                ],
            },
            "requirements": {"deadline": {"seconds": 2.0, "percentile": 95}},
            "traffic": {"rateRps": 5, "promptTokens": 100, "outputTokens": 10},
            "allowedTiers": ["edge"],
            "replicas": replicas,
            "backend": "deployment",
        },
    }


def _ready_pods(kube: Kube, ns: str, name: str, n: int) -> list[dict[str, Any]] | None:
    pods = [
        p
        for p in (_bound_pods(kube, ns, name) or [])
        if not p["metadata"].get("deletionTimestamp")
        and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p.get("status", {}).get("conditions", [])
        )
    ]
    return pods if len(pods) == n else None


def _events(kube: Kube, ns: str, name: str) -> list[dict[str, Any]]:
    items = kube.get_or_none("events", "-n", ns)["items"]
    return [
        e
        for e in items
        if e["involvedObject"].get("name") == name
        and e["involvedObject"].get("kind") == "LLMService"
    ]


def test_slow_pod_is_evicted_and_replaced(
    kube: Kube, operator: Operator, exporter: LatencyExporter, namespace: str
) -> None:
    name = "slow-edge"
    kube.apply(_edge_service(name, replicas=2), namespace)
    pods = wait_for(lambda: _ready_pods(kube, namespace, name, 2), "2 ready pods", timeout=120)
    slow, fast = sorted(p["metadata"]["name"] for p in pods)
    slow_node = next(p["spec"]["nodeName"] for p in pods if p["metadata"]["name"] == slow)
    exporter.serve(namespace, slow, latency_s=12.0)  # far past the 2 s deadline
    exporter.serve(namespace, fast, latency_s=0.5)
    # Telemetry reaches the status: attainment 50 % (half the requests are slow) < 95 %.
    obj = wait_for(
        lambda: (
            lambda o: (
                o
                if (o.get("status", {}).get("observed") or {}).get("attainment") is not None
                else None
            )
        )(kube.get_or_none(PLURAL, name, "-n", namespace)),
        "status.observed.attainment",
        timeout=60,
    )
    obs = obj["status"]["observed"]
    assert 0.3 <= obs["attainment"] <= 0.7, obs
    assert obs["window"] == "20s" and obs["requestsPerSecond"] > 0
    assert obs["latencyP95Seconds"] > 2.0
    # Exactly the slow pod is evicted (the fast one stays), and a replacement comes up.
    wait_for(
        lambda: kube.get_or_none("pod", slow, "-n", namespace) is None,
        "eviction of the slow pod",
        timeout=90,
    )
    now = wait_for(lambda: _ready_pods(kube, namespace, name, 2), "replacement pod", timeout=120)
    live = sorted(p["metadata"]["name"] for p in now)
    assert fast in live and slow not in live
    evs = wait_for(
        lambda: (
            lambda e: e if {"ReplacementTriggered", "Evicted"} <= {x["reason"] for x in e} else None
        )(_events(kube, namespace, name)),
        "Events",
        timeout=30,
    )
    trig = next(e for e in evs if e["reason"] == "ReplacementTriggered")
    assert slow in trig["message"] and slow_node in trig["message"] and "95%" in trig["message"]
    ev = next(e for e in evs if e["reason"] == "Evicted")
    assert slow in ev["message"] and slow_node in ev["message"]
    st = kube.get_or_none(PLURAL, name, "-n", namespace)["status"]
    assert st["replacement"]["lastEvictedPod"] == slow and st["replacement"]["evictions"] == 1
    assert _condition(kube.get_or_none(PLURAL, name, "-n", namespace), "DeadlineMet") is not None
    # The evicted pod's series no longer count: the service recovers to 100 %.
    wait_for(
        lambda: (
            (_condition(kube.get_or_none(PLURAL, name, "-n", namespace), "DeadlineMet") or {}).get(
                "status"
            )
            == "True"
        ),
        "DeadlineMet=True",
        timeout=60,
    )
    assert operator.alive()


def test_describe_shows_conditions_and_events(
    kube: Kube, operator: Operator, exporter: LatencyExporter, namespace: str
) -> None:
    name = "described"
    kube.apply(_edge_service(name, replicas=1), namespace)
    (pod,) = wait_for(lambda: _ready_pods(kube, namespace, name, 1), "a ready pod", timeout=120)
    node = pod["spec"]["nodeName"]
    exporter.serve(namespace, pod["metadata"]["name"], latency_s=0.5)
    # Publish a decision exactly as the extender does: status.placement and a
    # `Placed` Event from component perllm-extender.
    obj = kube.get_or_none(PLURAL, name, "-n", namespace)
    placement = {
        "tier": "edge",
        "nodes": [node],
        "pod": pod["metadata"]["name"],
        "chosen": node,
        "predictedTimeSeconds": 1.2,
        "predictedEnergyJ": 35.0,
        "feasible": True,
        "decidedAt": "2026-01-01T00:00:00Z",
        "explanation": {"candidates": []},
    }
    kube.kubectl(
        "patch",
        PLURAL,
        name,
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"placement": placement}}),
    )
    kube.kubectl(
        "create",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": f"{name}.placed", "namespace": namespace},
                "involvedObject": {
                    "apiVersion": "perllm.io/v1alpha1",
                    "kind": "LLMService",
                    "name": name,
                    "namespace": namespace,
                    "uid": obj["metadata"]["uid"],
                },
                "reason": "Placed",
                "type": "Normal",
                "source": {"component": "perllm-extender"},
                "message": f"node {node} (tier edge): predicted 1.2 s vs deadline 2 s, 35 J",
                "firstTimestamp": "2026-01-01T00:00:00Z",
                "lastTimestamp": "2026-01-01T00:00:00Z",
                "count": 1,
            }
        ),
    )

    def described() -> str | None:
        out = kube.kubectl("describe", PLURAL, name, "-n", namespace).stdout
        want = (
            "DeadlineMet",
            "TelemetryStale",
            "Placed",
            "Ready",
            "Reconciled",
            f"tier edge on {node}",
            "perllm-extender",
            "Reconciled",
        )
        return out if all(w in out for w in want) and "attainment 100.0%" in out else None

    out = wait_for(described, "describe with conditions and Events", timeout=60)
    assert "Events:" in out and "Placed" in out.split("Events:")[1]
    cond = _condition(kube.get_or_none(PLURAL, name, "-n", namespace), "Placed")
    assert cond is not None and cond["status"] == "True" and node in cond["message"]
    stale = _condition(kube.get_or_none(PLURAL, name, "-n", namespace), "TelemetryStale")
    assert stale is not None and stale["status"] == "False"


def test_prometheus_unreachable_marks_status_stale_and_placement_continues(
    kube: Kube, operator: Operator, namespace: str, tmp_path: Path
) -> None:
    # The same operator identity, but pointed at a Prometheus that refuses connections.
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{dead.getsockname()[1]}"
    dead.close()  # nothing listens there now
    alt = Operator(
        operator.kubeconfig,
        tmp_path / "operator-no-prom.log",
        dict(operator.env, PERLLM_PROMETHEUS_URL=url),
    )
    operator.stop()
    try:
        alt.start()
        name = "no-telemetry"
        kube.apply(_edge_service(name, replicas=1), namespace)
        # Placement continues: the pod is bound by perllm-scheduler and becomes ready.
        wait_for(lambda: _ready_pods(kube, namespace, name, 1), "a ready pod", timeout=120)

        def stale() -> dict[str, Any] | None:
            c = _condition(kube.get_or_none(PLURAL, name, "-n", namespace), "TelemetryStale")
            return c if c and c["status"] == "True" else None

        cond = wait_for(stale, "TelemetryStale=True", timeout=60)
        assert cond["reason"] == "PrometheusUnreachable", cond
        assert "placement continues" in cond["message"] and url in cond["message"]
        met = _condition(kube.get_or_none(PLURAL, name, "-n", namespace), "DeadlineMet")
        assert met is not None and met["status"] == "Unknown" and met["reason"] == "TelemetryStale"
        # The first tick may write before the reconcile records its child: wait for Ready.
        wait_for(
            lambda: (
                (_condition(kube.get_or_none(PLURAL, name, "-n", namespace), "Ready") or {}).get(
                    "status"
                )
                == "True"
            ),
            "Ready=True",
            timeout=60,
        )
        assert alt.alive()
    finally:
        alt.stop()
        operator.start()
