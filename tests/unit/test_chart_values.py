"""The Helm chart's values schema: bad and null values refused naming the value, names,
labels, images and URLs it accepts, requests against their limits, and the checks the
templates make (extender ports, PDB percentages, serving runtimes, digests).

Needs the pinned Helm (tools/build-binaries.sh helm); without it these tests skip, saying
so (chart_render.py).
"""

from __future__ import annotations

import pytest
from chart_render import CHART, find, helm, pod_specs, render, schema_refusal

# Bad values -> a fragment of Helm's message, which names the value's path.
BAD_VALUES = [
    ("prometheus.insecureSkipVerify=yes", "at '/prometheus/insecureSkipVerify'"),
    ("prometheus.caSecret.key=../ca", "at '/prometheus/caSecret/key'"),
    ("prometheus.tokenSecret.name=Prom_Auth", "at '/prometheus/tokenSecret/name'"),
    ("extender.weight=0", "at '/extender/weight': minimum"),
    ("extender.weight=1.5", "at '/extender/weight'"),
    ("extender.ignorable=maybe", "at '/extender/ignorable': got string, want boolean"),
    ("image.repository=", "at '/image/repository': minLength"),
    # a tag or digest in the repository would render `repo:tag:appVersion`
    ("image.repository=ghcr.io/perllm/perllm:0.1.0", "at '/image/repository'"),
    ("image.repository=ghcr.io/PerLLM/perllm", "at '/image/repository'"),
    ("image.tag=0.1 .0", "at '/image/tag'"),
    (
        "scheduler.image.repository=registry.k8s.io/kube scheduler",
        "at '/scheduler/image/repository'",
    ),
    ("scheduler.image.tag=v1.31.4@sha256", "at '/scheduler/image/tag'"),
    ("scheduler.image.tagByMinor.1\\.31=latest", "at '/scheduler/image/tagByMinor/1.31'"),
    # a key that is no minor: the message names the map (a propertyNames check said "at ''")
    (
        "scheduler.image.tagByMinor.v1\\.31=v1.31.4",
        "at '/scheduler/image/tagByMinor': additional properties 'v1.31'",
    ),
    ("agent.peers[0]=cloud:9401", "at '/agent/peers/0'"),
    ("monitoring.serviceMonitor.force=yes", "at '/monitoring/serviceMonitor/force'"),
    # Go durations the Prometheus Operator's CRDs refuse (the monitors failed to apply)
    ("monitoring.serviceMonitor.interval=1.5s", "at '/monitoring/serviceMonitor/interval'"),
    ("monitoring.serviceMonitor.interval=90us", "at '/monitoring/serviceMonitor/interval'"),
    ("monitoring.serviceMonitor.interval=30s1m", "at '/monitoring/serviceMonitor/interval'"),
    ("monitoring.modelServers.ports[0]=Http", "at '/monitoring/modelServers/ports/0'"),
    ("image.pullPolicy=Sometimes", "at '/image/pullPolicy'"),
    ("extender.logLevel=loud", "at '/extender/logLevel'"),
    ("extender.wieght=3", "additional properties 'wieght' not allowed"),
    ("operator.replicas=2", "at '/operator/replicas': maximum"),
    ("router.limits.read_timeout=5", "additional properties 'read_timeout' not allowed"),
    ("router.limits.probe_path=health", "at '/router/limits/probe_path'"),
    ("router.limits.retries=9", "at '/router/limits/retries': maximum"),
    ("operator.resources.requests.cpu=lots", "at '/operator/resources/requests/cpu'"),
    ("extender.resources.request.cpu=1", "at '/extender/resources': additional properties"),
    (
        "scheduler.leaderElection.resourceName=kube-scheduler",
        "at '/scheduler/leaderElection/resourceName'",
    ),
    ("extender.httpTimeout=soon", "at '/extender/httpTimeout'"),
    ("security.runAsUser=0", "at '/security/runAsUser': minimum"),
    ("agent.raplHostPath=sys/class/powercap", "at '/agent/raplHostPath'"),
    # a hostPath volume: the host's root (or anything but its RAPL tree under /sys) is
    # never mounted into the agent
    ("agent.raplHostPath=/", "at '/agent/raplHostPath'"),
    ("agent.raplHostPath=/etc", "at '/agent/raplHostPath'"),
    ("agent.raplHostPath=/sys/../etc", "at '/agent/raplHostPath'"),
    ("agent.peers[0]=cloud=http://u:p@10.0.0.5:9401", "at '/agent/peers/0'"),
    ("prometheus.url=prom:9090", "at '/prometheus/url'"),
    ("extender.port=70000", "at '/extender/port': maximum"),
    ("global.tolerations[0].operator=Maybe", "at '/global/tolerations/0/operator'"),
    # tolerations the API server refuses (core validation)
    (
        "global.tolerations[0].key=a,global.tolerations[0].operator=Exists,"
        "global.tolerations[0].value=b",
        "at '/global/tolerations/0/value': value must be ''",
    ),
    (
        "operator.tolerations[0].key=a,operator.tolerations[0].value=b,"
        "operator.tolerations[0].tolerationSeconds=30",
        "at '/operator/tolerations/0': missing property 'effect'",
    ),
    ("agent.tolerations[0].value=b", "at '/agent/tolerations/0': missing property 'operator'"),
    # two schedulers without the Lease would both place every pod
    (
        "scheduler.replicas=2,scheduler.leaderElection.enabled=false",
        "at '/scheduler/leaderElection/enabled': value must be true",
    ),
    ("operator.statusInterval=0", "at '/operator/statusInterval': minimum"),
    ("agent.probeBytes=100000000", "at '/agent/probeBytes': maximum"),
    ("agent.probeBytes=1000", "at '/agent/probeBytes': minimum"),  # the agent's --probe-bytes
    ("twin.speed=0", "at '/twin/speed': minimum"),
    # an env value read as a number (CUDA_VISIBLE_DEVICES=0) reached the API server, which
    # refuses it; NODE_NAME is the chart's (the agent's node label); a typo was dropped
    ("agent.env[0].name=CUDA_VISIBLE_DEVICES,agent.env[0].value=0", "at '/agent/env/0/value'"),
    ("agent.env[0].name=NODE_NAME,agent.env[0].value=edge-1", "at '/agent/env/0/name'"),
    ("agent.env[0].name=A,agent.env[0].valu=b", "additional properties 'valu' not allowed"),
    # names the API server would refuse (a Role in namespace Team_A, a priority class "High")
    ("operator.namespaces[0]=Team_A", "at '/operator/namespaces/0'"),
    ("monitoring.modelServers.namespaces[0]=a.b", "at '/monitoring/modelServers/namespaces/0'"),
    ("scheduler.priorityClassName=High", "at '/scheduler/priorityClassName'"),
    ("agent.runtimeClassName=NVIDIA", "at '/agent/runtimeClassName'"),
    # its token volume is remote-<name>: a DNS label of at most 63
    ("router.services[0].remote[0].name=" + "r" * 57, "at '/router/services/0/remote/0/name'"),
    ("servingRuntimes.vllmImage=vllm openai", "at '/servingRuntimes/vllmImage'"),
    # a typo in a peer's selector would reach the API server as {} (every namespace)
    (
        "extender.networkPolicy.metricsFrom[0].namespaceSelector.matchLabel.a=b",
        "at '/extender/networkPolicy/metricsFrom/0/namespaceSelector'",
    ),
    ("extender.networkPolicy.metricsFrom[0].namespace=monitoring", "metricsFrom/0'"),
    ("operator.pdb.maxUnavailable=150%", "at '/operator/pdb/maxUnavailable'"),
    ("operator.pdb.maxUnavailable=0150%", "at '/operator/pdb/maxUnavailable'"),
    ("servingRuntimes.enable=false", "additional properties 'enable' not allowed"),
    # labels, annotations and names the API server would refuse on every object
    ("commonLabels.team=a b", "at '/commonLabels/team'"),
    ("commonLabels.bad key=x", "at '/commonLabels': additional properties 'bad key'"),
    (
        "monitoring.serviceMonitor.labels.release=-x",
        "at '/monitoring/serviceMonitor/labels/release'",
    ),
    (
        "monitoring.dashboard.labels.grafana_dashboard=" + "x" * 64,
        "dashboard/labels/grafana_dashboard'",
    ),
    ("operator.nodeSelector.zone=a b", "at '/operator/nodeSelector/zone'"),
    ("router.podAnnotations.a b=x", "at '/router/podAnnotations': additional properties 'a b'"),
    ("nameOverride=per.llm", "at '/nameOverride'"),
    # a Service name starts with a letter (DNS-1035)
    ("fullnameOverride=1perllm", "at '/fullnameOverride'"),
    ("fullnameOverride=Per_LLM", "at '/fullnameOverride'"),
    ("imagePullSecrets[0].name=Bad_Secret", "at '/imagePullSecrets/0/name'"),
    # credentials in a URL would be rendered in clear (router ConfigMap, pod env), and the
    # router refuses them at start anyway; a URL without a host or with a bad port likewise
    ("prometheus.url=http://admin:secret@prom:9090", "at '/prometheus/url'"),
    ("router.services[0].remote[0].url=https://u:p@cloud.example.com", "remote/0/url'"),
    ("router.services[0].remote[0].url=https://", "at '/router/services/0/remote/0/url'"),
    ("router.services[0].remote[0].url=https://cloud:70000", "remote/0/url'"),
    # the router refuses a hardware key its catalogue lacks at start (CrashLoopBackOff)
    ("router.services[0].remote[0].hardware=h100", "remote/0/hardware': value must be one of"),
    # the key is the mounted file's name too
    ("router.authSecret.name=tok,router.authSecret.key=..", "at '/router/authSecret/key'"),
]

GOOD_NAMES_AND_LABELS = [
    "global.tolerations[0].operator=Exists",
    "global.tolerations[0].key=a,global.tolerations[0].operator=Exists,"
    "global.tolerations[0].effect=NoExecute,global.tolerations[0].tolerationSeconds=30",
    "scheduler.replicas=1,scheduler.leaderElection.enabled=false",
    "commonLabels.app\\.example\\.com/team=team-a_1.0",
    "nameOverride=llm,fullnameOverride=edge-perllm",
    "operator.podAnnotations.example\\.com/note=any text at all",
    "monitoring.serviceMonitor.labels.release=kube-prometheus-stack",
    "monitoring.serviceMonitor.interval=1m30s",
    "agent.env[0].name=NVIDIA_VISIBLE_DEVICES,agent.env[0].value=all",
    "monitoring.serviceMonitor.interval=500ms",
]


@pytest.mark.parametrize("setting", GOOD_NAMES_AND_LABELS)
def test_valid_names_and_labels_are_accepted(setting: str) -> None:
    assert render("--set", setting)


@pytest.mark.parametrize(("setting", "fragment"), BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_bad_values_are_rejected_naming_the_value(setting: str, fragment: str) -> None:
    err = schema_refusal(setting)
    assert fragment in err, err


# `--set key=null` (or `key: null` in a values file) deletes a default: each of these
# rendered a broken object (`containerPort: null`, `--log-level=`, a PDB without a budget,
# a container without requests) or stopped on a nil pointer; the schema names the key.
NULL_VALUES = [
    ("operator.livenessPort", "at '/operator': missing property 'livenessPort'"),
    ("operator.pdb", "at '/operator': missing property 'pdb'"),
    ("operator.pdb.maxUnavailable", "at '/operator/pdb': missing property 'maxUnavailable'"),
    ("operator.resources.requests", "at '/operator/resources': missing property 'requests'"),
    ("extender.resources.requests.cpu", "at '/extender/resources/requests': missing property"),
    ("extender.prefix", "at '/extender': missing property 'prefix'"),
    ("extender.httpTimeout", "at '/extender': missing property 'httpTimeout'"),
    ("extender.logLevel", "at '/extender': missing property 'logLevel'"),
    ("scheduler.leaderElection", "at '/scheduler': missing property 'leaderElection'"),
    ("scheduler.verbosity", "at '/scheduler': missing property 'verbosity'"),
    ("agent.port", "at '/agent': missing property 'port'"),
    ("agent.raplHostPath", "at '/agent': missing property 'raplHostPath'"),
    ("twin.port", "at '/twin': missing property 'port'"),
    ("twin.scenario", "at '/twin': missing property 'scenario'"),
    ("router.port", "at '/router': missing property 'port'"),
    ("router.authSecret", "at '/router': missing property 'authSecret'"),
    ("router.discoveryInterval", "at '/router': missing property 'discoveryInterval'"),
    ("monitoring.dashboard", "at '/monitoring': missing property 'dashboard'"),
    ("monitoring.modelServers.ports", "at '/monitoring/modelServers': missing property 'ports'"),
    ("rbac", "missing property 'rbac'"),
    ("prometheus", "missing property 'prometheus'"),
    ("global", "missing property 'global'"),
]


@pytest.mark.parametrize(("key", "fragment"), NULL_VALUES, ids=[n[0] for n in NULL_VALUES])
def test_a_needed_value_set_to_null_is_rejected_naming_it(key: str, fragment: str) -> None:
    err = schema_refusal(f"{key}=null")
    assert fragment in err, err


def test_a_zero_padded_pdb_percentage_is_accepted_as_the_api_server_does() -> None:
    """Kubernetes reads "050%" as 50 % (digits then %, at most 100): so does the schema."""
    docs = render("--set", "operator.pdb.maxUnavailable=050%")
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert any(d["spec"].get("maxUnavailable") == "050%" for d in pdbs)


GOOD_IMAGES = [
    "image.repository=localhost:5000/perllm,image.tag=e2e",
    "image.repository=registry.example.com/team_a/per-llm,image.tag=v0.1.0-rc.1",
    "image.repository=10.0.0.5:5000/perllm",
    "scheduler.image.repository=my-mirror:5000/kube-scheduler,scheduler.image.tag=v1.31.4",
]


@pytest.mark.parametrize("setting", GOOD_IMAGES)
def test_image_references_the_schema_accepts(setting: str) -> None:
    assert render("--set", setting)


def test_a_tag_pinned_by_digest_renders_tag_at_digest() -> None:
    """The chart has no digest value: `tag: 0.1.0@sha256:...` (repository:tag@digest, a
    valid reference) is how an image is pinned by digest, and what the schema lets through."""
    digest = "sha256:" + "0123456789abcdef" * 4
    docs = render(
        "--set", f"image.tag=0.1.0@{digest},scheduler.image.tag=v1.31.4@{digest}"
    )  # fmt: skip
    images = {c["image"] for _, spec in pod_specs(docs) for c in spec["containers"]}
    assert f"ghcr.io/perllm/perllm:0.1.0@{digest}" in images
    assert f"registry.k8s.io/kube-scheduler:v1.31.4@{digest}" in images


def test_serving_runtime_values_the_template_documents_are_accepted() -> None:
    """servingruntimes.yaml reads servingRuntimes.enabled and .llamacppImage,
    .llamacppCudaImage, .vllmImage: the schema must let them through (a mirror for an
    air-gapped site, or KServe runtimes managed elsewhere)."""
    kserve = ("--api-versions", "serving.kserve.io/v1alpha1/ClusterServingRuntime")
    on = [d for d in render(*kserve) if d["kind"] == "ClusterServingRuntime"]
    assert len(on) == 3
    off = render(*kserve, "--set", "servingRuntimes.enabled=false")
    assert not [d for d in off if d["kind"] == "ClusterServingRuntime"]
    mirror = "registry.example.com:5000/vllm-openai:v0.8.5"
    docs = render(*kserve, "--set", f"servingRuntimes.vllmImage={mirror}")
    vllm = find(docs, "ClusterServingRuntime", "perllm-vllm")
    assert vllm["spec"]["containers"][0]["image"] == mirror


def test_extender_ports_must_differ() -> None:
    """Its decision port and its plain metrics port are two servers: one port for both
    would crash-loop the pod on bind; the chart refuses it, naming both values."""
    r = helm("template", "perllm", str(CHART), "--set", "extender.metricsPort=8888", check=False)
    assert r.returncode != 0
    assert "extender.port and extender.metricsPort must differ" in r.stderr


OVER_LIMIT = [
    ("extender", "cpu", "500m", "200m"),
    ("operator", "memory", "1Gi", "1000Mi"),
    ("scheduler", "memory", "1e4", "1k"),
    ("router", "memory", "2G", "1Gi"),
    ("agent", "cpu", "2", "1500m"),
    ("twin", "cpu", "0.6", "500m"),
]


ENABLE = "agent.enabled=true,twin.enabled=true,router.enabled=true,router.services[0].name=chat"


@pytest.mark.parametrize(("component", "key", "req", "limit"), OVER_LIMIT)
def test_a_request_over_its_limit_is_refused_naming_the_value(
    component: str, key: str, req: str, limit: str
) -> None:
    """The API server refuses a pod whose request is over its limit: the install
    succeeded with a Deployment that never made a pod. The chart refuses it, quantities
    compared by value (1Gi over 1000Mi, 1e4 over 1k)."""
    at = f"{component}.resources"
    setting = f"{at}.requests.{key}={req},{at}.limits.{key}={limit}"
    r = helm("template", "perllm", str(CHART), "--set", f"{ENABLE},{setting}", check=False)
    assert r.returncode != 0, f"{setting} was accepted"
    assert f"{at}: requests.{key} {req} is over limits.{key} {limit}" in r.stderr, r.stderr


def test_requests_up_to_their_limits_render() -> None:
    """Equal by value is no refusal (1Gi and 1024Mi, 0.5 and 500m, 1e3 and 1k)."""
    for component, key, req, limit in (
        ("operator", "memory", "1Gi", "1024Mi"),
        ("twin", "cpu", "0.5", "500m"),
        ("scheduler", "memory", "1e3", "1k"),
        ("extender", "cpu", "100m", "0.1"),
    ):
        at = f"{component}.resources"
        setting = f"{at}.requests.{key}={req},{at}.limits.{key}={limit}"
        docs = render("--set", f"{ENABLE},{setting}")
        res = [
            spec["containers"][0]["resources"]
            for name, spec in pod_specs(docs)
            if name.endswith(component) and name.startswith("perllm-")
        ]
        assert res and "limits" in res[0], setting


GOOD_URLS = [
    "agent.raplHostPath=/sys/class/powercap,agent.peers[0]=cloud=http://10.0.0.5:9401",
    "prometheus.url=http://prometheus-operated.monitoring.svc:9090",
    "prometheus.url=https://prom.example.com/prometheus",
    "router.services[0].remote[0].url=https://[fd00::1]:8443/v1",
    "router.services[0].remote[0].url=http://10.0.0.5:8080",
]


@pytest.mark.parametrize("setting", GOOD_URLS)
def test_urls_the_schema_accepts(setting: str) -> None:
    assert render("--set", setting, profile="edge-k3s-values.yaml")


def test_an_extender_weight_past_the_overflow_bound_is_refused_naming_it() -> None:
    """kube-scheduler adds score (<= 10) × weight × 10 into an int64 total and checks only
    weight > 0: a weight of 1e20 in a values file (float64) rendered as
    -9223372036854775808, which kube-scheduler refuses at start (a crashloop), and a large
    int64 one overflows the scores. At most 2^53: exact in a values file, ×100 in int64."""
    for flag, setting in (
        ("--set-json", "extender.weight=1e20"),
        ("--set", "extender.weight=9223372036854775807"),
        ("--set", "extender.weight=9007199254740993"),
    ):
        assert "at '/extender/weight': maximum" in schema_refusal(setting, flag)
    docs = render("--set-json", "extender.weight=9007199254740992")
    (cfg,) = [d for d in docs if d.get("kind") == "ConfigMap" and "config.yaml" in d["data"]]
    assert "weight: 9007199254740992\n" in cfg["data"]["config.yaml"]
