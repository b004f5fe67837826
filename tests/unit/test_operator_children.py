"""What the operator creates is what the real APIs accept and what the rest of PerLLM reads:
every child (InferenceService, the ServiceAccount of gated hf:// weights under KServe,
Deployment, Service) of a representative set of LLMServices (every shipped manifest, open
and pinned, replicas per tier, both backends, GPU and CPU variants, gated weights, each
runtime, the longest names) against KServe v0.15.2's CRD schema (tests/schema.py) or the
Kubernetes client's models, the KServe fields
docs/operator.md and INTERFACES.md name, what the extender and the router read from the
pods, and ownership (garbage collection) and name/label validity."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient
from perllm_extender.services import ServiceRegistry
from perllm_operator import pinning, podspec, render, runtimes

from perllm.crd import GROUP, KIND, VERSION, InvalidService, service_spec
from perllm.crd_fields import (
    HF_TOKEN_KEY,
    MAX_KSERVE_NAME,
    MAX_KSERVE_TIER_NAME,
    MAX_NAME,
    MAX_TIER_NAME,
)
from perllm.labels import (
    ANN_DEADLINE,
    ANN_DEADLINE_PER_TOKEN,
    ANN_MIN_QUALITY,
    ANN_PERCENTILE,
    GPU_RESOURCE,
    LABEL_SERVICE,
    LABEL_TIER,
    SCHEDULER_NAME,
)
from perllm.router.discovery import _port
from tests.schema import kserve_schema, object_errors

ROOT = Path(__file__).parents[2]
MANIFESTS = sorted((ROOT / "manifests").glob("*.yaml"))
Obj = dict[str, Any]
API = ApiClient()
MODELS = {
    "Deployment": "V1Deployment",
    "Service": "V1Service",
    "ServiceAccount": "V1ServiceAccount",
}

# Kubernetes' own validation (k8s.io/apimachinery/pkg/util/validation)
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_QUALIFIED_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")


def _manifest(name: str) -> Obj:
    obj: Obj = yaml.safe_load((ROOT / "manifests" / f"{name}.yaml").read_text())
    obj["metadata"].update(namespace="llm", uid="uid-1", generation=1)
    return obj


def _edit(name: str, fn: Callable[[Obj], None]) -> Obj:
    obj = _manifest(name)
    fn(obj)
    return obj


def _variant(obj: Obj, tier: str) -> Obj:
    return next(v for v in obj["spec"]["model"]["variants"] if v["tier"] == tier)


def _cases() -> dict[str, Obj]:
    """LLMServices by case id (each rendered with both backends where it can run)."""
    out: dict[str, Obj] = {}
    for path in MANIFESTS:
        obj = _manifest(path.stem)
        out[f"{path.stem}-open"] = obj
        for tier in obj["spec"].get("allowedTiers", ["edge", "cloud"]):
            pinned = copy.deepcopy(obj)
            pinned["status"] = {"placement": {"tier": tier}}
            out[f"{path.stem}-{tier}"] = pinned

    def tiered(o: Obj) -> None:
        o["spec"]["tierReplicas"] = {"edge": 2, "cloud": 3}

    def one_tier_of_two(o: Obj) -> None:
        o["spec"]["tierReplicas"] = {"edge": 0, "cloud": 2}

    def gguf_on_gpu(o: Obj) -> None:  # GGUF with a GPU request: llama.cpp's CUDA runtime
        cloud = _variant(o, "cloud")
        # one file over https: KServe's storage initializer takes no hf://org/repo/file
        uri = "https://huggingface.co/org/repo-GGUF/resolve/main/model-Q8_0.gguf"
        cloud.update(precision="q8_0", storageUri=uri)
        o["status"] = {"placement": {"tier": "cloud"}}

    def awq(o: Obj) -> None:
        _variant(o, "cloud").update(precision="int4_awq", storageUri="hf://org/model-AWQ")
        o["status"] = {"placement": {"tier": "cloud"}}

    def overrides(o: Obj) -> None:  # every per-variant override, and the model-level fallback
        o["spec"]["model"].update(format="gguf", runtime="perllm-llamacpp")
        _variant(o, "edge").update(image="example.com/llama:1", format="gguf")
        _variant(o, "cloud").update(runtime="perllm-vllm", format="huggingface")

    def no_uri(o: Obj) -> None:
        for v in o["spec"]["model"]["variants"]:
            v.pop("storageUri")

    def token_default_key(o: Obj) -> None:
        o["spec"]["model"]["tokenSecretRef"] = {"name": "hf-token"}

    def model_level_hf(o: Obj) -> None:  # the model's storageUri, the variants' fallback
        for v in o["spec"]["model"]["variants"]:
            v.pop("storageUri")
        o["spec"]["model"]["storageUri"] = "hf://org/model-GGUF"

    def zero_replicas(o: Obj) -> None:
        o["spec"]["replicas"] = 0

    def longest(o: Obj) -> None:  # backend kserve: KServe's pod label needs more room
        o["metadata"]["name"] = "n" * MAX_KSERVE_NAME

    def longest_tiered(o: Obj) -> None:
        o["metadata"]["name"] = "t" * MAX_KSERVE_TIER_NAME
        tiered(o)

    def longest_deployment(o: Obj) -> None:
        o["metadata"]["name"] = "d" * MAX_NAME
        o["spec"]["backend"] = "deployment"

    def longest_tiered_deployment(o: Obj) -> None:
        o["metadata"]["name"] = "e" * MAX_TIER_NAME
        o["spec"]["backend"] = "deployment"
        tiered(o)

    edits = (tiered, one_tier_of_two, gguf_on_gpu, awq, overrides, no_uri, token_default_key)
    for fn in (*edits, model_level_hf):
        out[f"chat-assistant-{fn.__name__.replace('_', '-')}"] = _edit("chat-assistant", fn)
    out["batch-summariser-zero-replicas"] = _edit("batch-summariser", zero_replicas)
    out["chat-assistant-longest-name"] = _edit("chat-assistant", longest)
    out["help-desk-longest-name"] = _edit("help-desk-both-tiers", longest_tiered)
    out["chat-assistant-longest-deployment"] = _edit("chat-assistant", longest_deployment)
    out["help-desk-longest-deployment"] = _edit("help-desk-both-tiers", longest_tiered_deployment)
    return out


CASES = _cases()
# s3:// weights only under KServe (its storage initializer): the deployment backend refuses them
CASES["chat-assistant-s3"] = _edit(
    "chat-assistant",
    lambda o: [v.update(storageUri="s3://bucket/m") for v in o["spec"]["model"]["variants"]],
)
KSERVE_ONLY = {"chat-assistant-s3"}
DEPLOYMENT_ONLY = {"chat-assistant-longest-deployment", "help-desk-longest-deployment"}


def _render(case: str, backend: str) -> list[Obj]:
    obj = copy.deepcopy(CASES[case])
    obj["spec"]["backend"] = backend
    return render.children(obj)


def _all() -> list[tuple[str, str]]:
    return [
        (case, backend)
        for case in CASES
        for backend in ("kserve", "deployment")
        if case not in (KSERVE_ONLY if backend == "deployment" else DEPLOYMENT_ONLY)
    ]


ALL = _all()


def _roundtrip(obj: Obj, model: str) -> Obj:
    """`obj` through the Kubernetes client's model `model` and back: a field the model does
    not have (a misspelling) is dropped, so the result differs from `obj`."""
    out: Obj = API.sanitize_for_serialization(API.deserialize(json.dumps(obj), model, None))
    return out


def _pod_template(child: Obj) -> tuple[Obj, Obj]:
    """(pod metadata, pod spec) the child's pods get: the Deployment's template, or what
    KServe's RawDeployment makes of the predictor (labels, annotations and the inlined
    PodSpec fields reach the pod; `model` becomes its container)."""
    if child["kind"] == "Deployment":
        t = child["spec"]["template"]
        return t["metadata"], t["spec"]
    p = child["spec"]["predictor"]
    meta = {"labels": p.get("labels", {}), "annotations": p.get("annotations", {})}
    spec = {k: v for k, v in p.items() if k not in ("labels", "annotations", "model")}
    spec.pop("minReplicas", None)
    return meta, {**spec, "containers": [{"name": "kserve-container", **p["model"]}]}


def _workloads(children: list[Obj]) -> list[Obj]:
    """The children that make pods (not the Service in front, nor the ServiceAccount)."""
    return [c for c in children if c["kind"] in ("InferenceService", "Deployment")]


def _container(child: Obj) -> Obj:
    c: Obj = _pod_template(child)[1]["containers"][0]
    return c


# 1. What the real APIs accept ---------------------------------------------------------


@pytest.mark.parametrize(("case", "backend"), [a for a in ALL if a[1] == "kserve"])
def test_inference_services_pass_kserves_crd_schema(case: str, backend: str) -> None:
    schema = kserve_schema()
    if schema is None:
        pytest.skip("KServe's CRD is not cached: run tools/kserve-crd.sh")
    children = _render(case, backend)
    kinds = [c["kind"] for c in children]
    assert kinds == ["InferenceService"] * len(_workloads(children)) + ["ServiceAccount"] * (
        len(children) - len(_workloads(children))
    )
    for child in children:
        if child["kind"] == "ServiceAccount":
            assert _roundtrip(child, MODELS["ServiceAccount"]) == child
            continue
        assert object_errors(child, schema) == [], child["metadata"]["name"]
        assert _roundtrip(child["metadata"], "V1ObjectMeta") == child["metadata"]


@pytest.mark.parametrize(("case", "backend"), [a for a in ALL if a[1] == "deployment"])
def test_deployments_and_services_survive_the_kubernetes_models(case: str, backend: str) -> None:
    children = _render(case, backend)
    assert sorted(c["kind"] for c in children) == ["Deployment"] * (len(children) - 1) + ["Service"]
    for child in children:
        assert _roundtrip(child, MODELS[child["kind"]]) == child, child["metadata"]["name"]


def test_the_checks_catch_a_misspelt_field() -> None:
    """The guards above are not vacuous: a typo, a wrong type, a duplicate env var."""
    dep, svc = _render("chat-assistant-open", "deployment")
    dep["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    assert _roundtrip(dep, "V1Deployment") != dep
    svc["spec"]["selectr"] = {}
    assert _roundtrip(svc, "V1Service") != svc
    schema = kserve_schema()
    if schema is None:
        pytest.skip("KServe's CRD is not cached: run tools/kserve-crd.sh")
    isvc, sa = _render("chat-assistant-open", "kserve")
    sa["automountServiceAccountTokn"] = False
    assert _roundtrip(sa, "V1ServiceAccount") != sa
    m = isvc["spec"]["predictor"]["model"]
    m["env"] = [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]
    isvc["spec"]["predictor"]["minReplicas"] = "1"
    assert sorted(object_errors(isvc, schema)) == [
        "spec.predictor.minReplicas: must be integer, not str",
        "spec.predictor.model.env: duplicate entry ('A',)",
    ]


@pytest.mark.parametrize(("case", "backend"), [a for a in ALL if a[1] == "deployment"])
def test_deployment_selectors_match_their_pods(case: str, backend: str) -> None:
    """The API server refuses a Deployment whose selector does not match its template; the
    Service must select every model-server pod of the service (both tiers') and no other."""
    children = _render(case, backend)
    svc = next(c for c in children if c["kind"] == "Service")
    for dep in _workloads(children):
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert svc["spec"]["selector"].items() <= labels.items()
    if len(_workloads(children)) > 1:  # tiered: no Deployment selects the other's pods
        a, b = _workloads(children)
        a_pods = a["spec"]["template"]["metadata"]["labels"]
        assert not b["spec"]["selector"]["matchLabels"].items() <= a_pods.items()


# 2. The fields docs/operator.md and INTERFACES.md name ------------------------------


@pytest.mark.parametrize(("case", "backend"), [a for a in ALL if a[1] == "kserve"])
def test_inference_services_carry_the_documented_kserve_fields(case: str, backend: str) -> None:
    obj = CASES[case]
    for child in _workloads(_render(case, backend)):
        assert child["apiVersion"] == "serving.kserve.io/v1beta1"
        ann = child["metadata"]["annotations"]
        assert ann["serving.kserve.io/deploymentMode"] == "RawDeployment"
        assert ann["serving.kserve.io/autoscalerClass"] == "external"
        p = child["spec"]["predictor"]
        assert isinstance(p["minReplicas"], int)
        assert set(p["model"]) <= {
            *("modelFormat", "runtime", "storageUri", "resources", "env", "readinessProbe")
        }
        assert set(p["model"]["modelFormat"]) == {"name"}
        assert p["model"]["runtime"] in runtimes.RUNTIMES or "runtime" in json.dumps(obj)
        # GPU/CPU requests are the container's (model.resources), not the pod-level ones
        assert "resources" not in p
        tier = ann[podspec.ANN_VARIANT_TIER]
        assert p["model"]["resources"] == _variant(obj, tier)["resources"]


@pytest.mark.parametrize(("case", "backend"), ALL)
def test_pods_are_placed_as_documented(case: str, backend: str) -> None:
    """schedulerName for the extender, a required node affinity on the tier label (no
    nodeSelector), and the GPU toleration exactly when a pod may land on a GPU tier; a GPU
    is in the container's limits, requested exactly (Kubernetes refuses an extended
    resource request without an equal limit)."""
    obj = CASES[case]
    for child in _workloads(_render(case, backend)):
        _, spec = _pod_template(child)
        assert spec["schedulerName"] == SCHEDULER_NAME
        assert "nodeSelector" not in spec
        terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        (expr,) = terms["nodeSelectorTerms"][0]["matchExpressions"]
        pin = child["metadata"]["annotations"][podspec.ANN_PINNED_TIER]
        assert expr["key"] == LABEL_TIER and expr["operator"] == "In"
        assert expr["values"] == ([pin] if pin != pinning.OPEN else ["edge", "cloud"])
        res = _container(child)["resources"]
        gpu = GPU_RESOURCE in json.dumps(res)
        any_gpu = GPU_RESOURCE in json.dumps(obj["spec"]["model"]["variants"])
        tolerations = spec.get("tolerations", [])
        assert bool(tolerations) == (gpu or (pin == pinning.OPEN and any_gpu))
        for t in tolerations:
            assert t == {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
        if gpu:
            assert res["limits"][GPU_RESOURCE] == res["requests"][GPU_RESOURCE]


@pytest.mark.parametrize(("case", "backend"), [a for a in ALL if a[1] == "deployment"])
def test_deployment_pods_serve_on_the_documented_port(case: str, backend: str) -> None:
    """The container's port is `http` 8080 (the router's discovery picks the port named
    http), the Service's port 80 targets it."""
    children = _render(case, backend)
    svc = next(c for c in children if c["kind"] == "Service")
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": runtimes.PORT, "protocol": "TCP"}
    ]
    for child in _workloads(children):
        c = _container(child)
        assert c["ports"] == [{"name": "http", "containerPort": runtimes.PORT}]
        assert _port({"spec": _pod_template(child)[1]}, 8000) == runtimes.PORT


@pytest.mark.parametrize(("case", "backend"), ALL)
def test_pods_are_ready_only_once_the_model_server_answers(case: str, backend: str) -> None:
    """Pods are Ready (the router's discovery routes to them, the service's Ready condition
    counts them) once the server's /health answers 200 on its port: llama.cpp's answers 503
    while it loads the weights, and without a probe (Deployment) or with KServe's default TCP
    probe a pod still downloading or loading them was Ready."""
    for child in _workloads(_render(case, backend)):
        probe = _container(child).get("readinessProbe")
        assert probe is not None, child["metadata"]["name"]
        assert probe["httpGet"] == {"path": "/health", "port": runtimes.PORT}
        assert _roundtrip(probe, "V1Probe") == probe


@pytest.mark.parametrize(("case", "backend"), ALL)
def test_the_extender_recognises_the_pods_and_reads_their_requirements(
    case: str, backend: str
) -> None:
    """A pod made from each child is PerLLM's to the extender (the service label and
    schedulerName) and carries the service's requirements as the extender reads them, with
    no LLMService registered (the annotations alone) and with it."""
    obj = CASES[case]
    want = service_spec(obj).requirements
    for child in _workloads(_render(case, backend)):
        meta, spec = _pod_template(child)
        pod = {"metadata": {**meta, "name": "p", "namespace": "llm"}, "spec": spec}
        assert meta["labels"][LABEL_SERVICE] == obj["metadata"]["name"]
        for k in (ANN_DEADLINE, ANN_DEADLINE_PER_TOKEN, ANN_PERCENTILE, ANN_MIN_QUALITY):
            assert k in meta["annotations"]
        assert meta["annotations"]["prometheus.io/port"] == str(runtimes.PORT)
        alone = ServiceRegistry().resolve(pod, "llama3-8b")
        assert alone is not None and alone.requirements == want
        reg = ServiceRegistry()
        reg.add_llmservice(obj)
        known = reg.resolve(pod, "x")
        assert known is not None and known.requirements == want


@pytest.mark.parametrize(("case", "backend"), ALL)
def test_gated_weights_are_passed_by_reference(case: str, backend: str) -> None:
    obj = CASES[case]
    ref = obj["spec"]["model"].get("tokenSecretRef")
    for child in _workloads(_render(case, backend)):
        env = _container(child).get("env")
        if ref is None:
            assert env is None
        else:
            sel = {"name": ref["name"], "key": ref.get("key", HF_TOKEN_KEY)}
            assert env == [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": sel}}]


@pytest.mark.parametrize(("case", "backend"), ALL)
def test_kserve_fetches_gated_hf_weights_as_the_services_account(case: str, backend: str) -> None:
    """KServe v0.15's storage initializer, which downloads storageUri, takes a token only
    from the Secrets of the predictor pod's ServiceAccount (data key HF_TOKEN): a gated
    hf:// InferenceService runs as `<name>-model`, which lists the token's Secret and
    mounts no API token. The deployment backend's servers fetch with HF_TOKEN themselves."""
    obj = CASES[case]
    ref = obj["spec"]["model"].get("tokenSecretRef")
    children = _render(case, backend)
    accounts = [c for c in children if c["kind"] == "ServiceAccount"]
    name = f"{obj['metadata']['name']}-model"
    hf_uris = [
        v.get("storageUri") or obj["spec"]["model"].get("storageUri") or ""
        for v in obj["spec"]["model"]["variants"]
    ]
    if backend == "deployment" or ref is None or not any(u.startswith("hf://") for u in hf_uris):
        assert accounts == []
        assert "serviceAccountName" not in json.dumps(children)
        return
    (sa,) = accounts
    assert sa["metadata"]["name"] == name
    assert sa["automountServiceAccountToken"] is False
    assert sa["secrets"] == [{"name": ref["name"]}]
    assert ref.get("key", HF_TOKEN_KEY) == HF_TOKEN_KEY
    for isvc in _workloads(children):
        p = isvc["spec"]["predictor"]
        hf = p["model"].get("storageUri", "").startswith("hf://")
        assert p.get("serviceAccountName") == (name if hf else None), isvc["metadata"]["name"]


# 3. Ownership and names -------------------------------------------------------------


def _labels_and_annotations(child: Obj) -> list[dict[str, str]]:
    out = [child["metadata"].get("labels") or {}, child["metadata"].get("annotations") or {}]
    if child["kind"] in ("InferenceService", "Deployment"):
        meta, _ = _pod_template(child)
        out += [meta.get("labels") or {}, meta.get("annotations") or {}]
    if child["kind"] == "Deployment":
        out.append(child["spec"]["selector"]["matchLabels"])
    if child["kind"] == "Service":
        out.append(child["spec"]["selector"])
    return out


def _key_ok(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    return (
        (not prefix or (len(prefix) <= 253 and bool(_DNS1123_SUBDOMAIN.fullmatch(prefix))))
        and len(name) <= 63
        and bool(_QUALIFIED_NAME.fullmatch(name))
    )


@pytest.mark.parametrize(("case", "backend"), ALL)
def test_children_are_owned_by_the_service_and_validly_named(case: str, backend: str) -> None:
    """A controller ownerReference with blockOwnerDeletion (the garbage collector deletes
    the children with the service, foreground deletion waits for them); names, label keys
    and values as Kubernetes validates them, at the longest names the CRD admits."""
    obj = CASES[case]
    name = obj["metadata"]["name"]
    for child in _render(case, backend):
        meta = child["metadata"]
        assert meta["namespace"] == "llm"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": name,
                "uid": "uid-1",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert meta["name"].startswith(name)
        # a Service name (and KServe's <isvc>-predictor) is a DNS-1035 label
        assert len(meta["name"]) <= 63 and _DNS1123_LABEL.fullmatch(meta["name"])
        if child["kind"] == "InferenceService":
            assert len(meta["name"] + "-predictor") <= 63
        for m in _labels_and_annotations(child):
            for k, v in m.items():
                assert _key_ok(k), k
                assert isinstance(v, str), (k, v)
        labels = [child["metadata"].get("labels") or {}]
        if child["kind"] in ("InferenceService", "Deployment"):
            labels.append(_pod_template(child)[0]["labels"])
        if child["kind"] == "InferenceService":
            # KServe v0.15's RawDeployment labels the pods (and selects them by)
            # app: isvc.<isvc>-predictor (constants.GetRawServiceLabel)
            labels.append({"app": f"isvc.{meta['name']}-predictor"})
        for m in labels:
            for k, v in m.items():
                assert len(v) <= 63 and _LABEL_VALUE.fullmatch(v), (k, v)


def test_the_children_of_two_services_never_share_a_name() -> None:
    """Children are named <name>[-<tier>][-predictor]: no truncation, so two services'
    children differ as their names do (the CRD bounds the name instead, docs/operator.md)."""
    names: dict[str, str] = {}
    for case, backend in ALL:
        for child in _render(case, backend):
            key = f"{child['kind']}/{child['metadata']['name']}"
            owner = CASES[case]["metadata"]["name"]
            assert names.setdefault(key, owner) == owner, key


@pytest.mark.parametrize(
    ("case", "length"),
    [("chat-assistant-open", MAX_KSERVE_NAME + 1), ("help-desk-both-tiers-open", 43)],
)
def test_kserve_children_whose_pod_label_would_be_too_long_are_refused(
    case: str, length: int
) -> None:
    """Rendered, KServe's Deployment would carry app: isvc.<child>-predictor of over 63
    characters and be refused: no pod, and nothing naming the field."""
    obj = copy.deepcopy(CASES[case])
    obj["metadata"]["name"] = "n" * length
    with pytest.raises(InvalidService, match=r"metadata.name: at most \d+ characters with backend"):
        render.children(obj)
    obj["spec"]["backend"] = "deployment"
    assert render.children(obj)
