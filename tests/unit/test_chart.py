"""The Helm chart (charts/perllm): lint, rendering per profile, schema rejections, RBAC that
matches the components' own rbac.yaml, a scheduler configuration the real kube-scheduler
accepts, and a dashboard that only names metrics the project exports.

Needs the pinned Helm (tools/build-binaries.sh helm); the kube-scheduler check needs the
pinned Kubernetes binaries. Without them those tests skip, saying which binary is missing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from perllm.devcluster.binaries import Binaries
from perllm.labels import LABEL_SERVICE
from perllm.telemetry import names

ROOT = Path(__file__).parents[2]
CHART = ROOT / "charts" / "perllm"
PROFILES = sorted((CHART / "ci").glob("*-values.yaml"))
PROFILE_IDS = ["default"] + [p.name for p in PROFILES]
KUBE_VERSION = "1.34.10"
MONITORING = "monitoring.coreos.com/v1"

Doc = dict[str, Any]


def _helm() -> str:
    helm = Binaries.locate().helm
    if not os.access(helm, os.X_OK):
        pytest.skip(f"no Helm at {helm}: tools/build-binaries.sh helm")
    return str(helm)


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([_helm(), *args], capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{r.stdout}{r.stderr}")
    return r


def _values_args(profile: str) -> list[str]:
    return [] if profile == "default" else ["-f", str(CHART / "ci" / profile)]


def render(
    *extra: str,
    profile: str = "default",
    namespace: str = "perllm-system",
    monitoring: bool = False,
) -> list[Doc]:
    args = [
        "template",
        "perllm",
        str(CHART),
        "-n",
        namespace,
        "--kube-version",
        KUBE_VERSION,
        *_values_args(profile),
        *extra,
    ]
    if monitoring:
        args += ["--api-versions", MONITORING]
    return [d for d in yaml.safe_load_all(helm(*args).stdout) if d]


def find(docs: list[Doc], kind: str, name: str) -> Doc:
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, f"{kind}/{name}: {len(hits)} rendered"
    return hits[0]


def kinds(docs: list[Doc]) -> set[str]:
    return {d["kind"] for d in docs}


def pod_specs(docs: list[Doc]) -> list[tuple[str, Doc]]:
    return [
        (d["metadata"]["name"], d["spec"]["template"]["spec"])
        for d in docs
        if d["kind"] in ("Deployment", "DaemonSet")
    ]


def test_chart_crd_is_the_repository_crd() -> None:
    """Helm needs its own copy in crds/; it must never drift from crds/."""
    ours = (CHART / "crds" / "llmservices.perllm.io.yaml").read_bytes()
    assert ours == (ROOT / "crds" / "llmservices.perllm.io.yaml").read_bytes(), (
        "charts/perllm/crds/ differs from crds/: cp crds/llmservices.perllm.io.yaml "
        "charts/perllm/crds/"
    )


@pytest.mark.parametrize("profile", PROFILE_IDS)
def test_lint_strict(profile: str) -> None:
    r = helm("lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION, *_values_args(profile))
    assert "0 chart(s) failed" in r.stdout


@pytest.mark.parametrize("profile", PROFILE_IDS)
def test_profile_renders_hardened_workloads(profile: str) -> None:
    docs = render(profile=profile)
    assert {
        "Deployment",
        "ServiceAccount",
        "ClusterRole",
        "Role",
        "Service",
        "PodDisruptionBudget",
        "ConfigMap",
    } <= kinds(docs)
    deployments = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
    assert {"perllm-operator", "perllm-extender", "perllm-scheduler"} <= deployments
    for d in docs:
        if d["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert d["metadata"].get("namespace"), f"{d['kind']}/{d['metadata']['name']}"
    for name, spec in pod_specs(docs):
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0, name
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["serviceAccountName"] == name, name
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
            assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
            assert c["image"] and ":" in c["image"], name
            assert c.get("livenessProbe"), name
    for pdb in (d for d in docs if d["kind"] == "PodDisruptionBudget"):
        dep = find(docs, "Deployment", pdb["metadata"]["name"])
        assert pdb["spec"]["selector"] == dep["spec"]["selector"]


def test_profiles_differ_as_documented() -> None:
    edge = render(profile="edge-k3s-values.yaml", monitoring=True)
    cloud = render(profile="cloud-values.yaml", monitoring=True)
    agent = find(edge, "DaemonSet", "perllm-agent")["spec"]["template"]["spec"]
    assert {
        "key": "perllm.io/tier",
        "operator": "Equal",
        "value": "edge",
        "effect": "NoSchedule",
    } in agent["tolerations"]
    # Cloud: the agent is the probe target and RAPL source; the DCGM exporter covers GPUs.
    cloud_agent = find(cloud, "DaemonSet", "perllm-agent")["spec"]["template"]
    assert "--no-nvml" in cloud_agent["spec"]["containers"][0]["args"]
    assert "--no-nvml" not in agent["containers"][0]["args"]
    assert "ServiceMonitor" in kinds(cloud) and "ServiceMonitor" not in kinds(edge)
    # The agent is scraped on both: a PodMonitor in the cloud, annotations at the edge.
    assert find(cloud, "PodMonitor", "perllm-agent")
    assert "prometheus.io/scrape" not in cloud_agent["metadata"].get("annotations", {})
    edge_agent = find(edge, "DaemonSet", "perllm-agent")["spec"]["template"]["metadata"]
    assert edge_agent["annotations"]["prometheus.io/scrape"] == "true"
    assert edge_agent["annotations"]["prometheus.io/port"] == "9401"
    assert find(cloud, "Deployment", "perllm-scheduler")["spec"]["replicas"] == 2
    e_cfg, c_cfg = scheduler_config(edge), scheduler_config(cloud)
    assert e_cfg["extenders"][0]["ignorable"] is True
    assert c_cfg["extenders"][0]["ignorable"] is False


def test_operator_rbac_equals_operator_rbac_yaml() -> None:
    want = next(
        d
        for d in yaml.safe_load_all((ROOT / "operator" / "rbac.yaml").read_text())
        if d and d["kind"] == "ClusterRole"
    )
    docs = render()
    assert find(docs, "ClusterRole", "perllm-operator")["rules"] == want["rules"]
    binding = find(docs, "ClusterRoleBinding", "perllm-operator")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "perllm-operator", "namespace": "perllm-system"}
    ]


def test_operator_watching_named_namespaces_gets_roles_there_only() -> None:
    cluster_wide = find(render(), "ClusterRole", "perllm-operator")["rules"]
    docs = render("--set", "operator.namespaces={team-a,team-b}")
    roles = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "perllm-operator"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    bindings = [
        d for d in docs if d["kind"] == "RoleBinding" and d["metadata"]["name"] == "perllm-operator"
    ]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    assert all(b["roleRef"]["kind"] == "Role" for b in bindings)
    narrow = find(docs, "ClusterRole", "perllm-operator")["rules"]
    # Together the Roles and the narrowed ClusterRole grant what the cluster-wide one does,
    # and the ClusterRole keeps only cluster-scoped resources.
    assert _grants(roles[0]["rules"]) | _grants(narrow) == _grants(cluster_wide)
    assert {res for _, res, _, _ in _grants(narrow)} == {"customresourcedefinitions", "namespaces"}


def test_operator_rules_grant_no_verb_it_never_uses() -> None:
    grants = _grants(find(render(), "ClusterRole", "perllm-operator")["rules"])
    # delete: only the children a spec no longer renders (never pods: those are evicted)
    deletes = {g[1] for g in grants if g[3] in ("delete", "deletecollection")}
    assert deletes == {"inferenceservices", "deployments", "services", "serviceaccounts"}
    # the ServiceAccount of gated weights lists a Secret by name: no verb on secrets at all
    assert not {g for g in grants if g[1] == "secrets"}
    assert not {g for g in grants if g[3] == "deletecollection"}
    assert not {g for g in grants if g[3] == "update" and g[1] != "llmservices/finalizers"}
    # Events: kopf posts core v1 Events, POST only (kopf/_cogs/clients/events.py): no
    # events.k8s.io, no patch.
    assert {g for g in grants if g[1] == "events"} == {("", "events", "*", "create")}


def _grants(rules: list[Doc]) -> set[tuple[str, str, str, str]]:
    """Rules as the set of (group, resource, name or *, verb) they allow: layout-free."""
    return {
        (g, res, name, v)
        for r in rules
        for g in r["apiGroups"]
        for res in r["resources"]
        for name in r.get("resourceNames") or ["*"]
        for v in r["verbs"]
    }


def test_extender_rbac_equals_extender_rbac_yaml() -> None:
    path = ROOT / "extender" / "rbac.yaml"
    assert path.exists(), "extender/rbac.yaml (the extender's least-privilege rules) is missing"
    theirs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    docs = render()
    for kind in ("ClusterRole", "Role"):
        want = [r for d in theirs if d["kind"] == kind for r in d["rules"]]
        got = [
            r
            for d in docs
            if d["kind"] == kind and d["metadata"]["name"] == "perllm-extender"
            for r in d["rules"]
        ]
        assert _grants(got) == _grants(want), f"{kind} rules differ from extender/rbac.yaml"


def test_extender_rbac_covers_the_contracts() -> None:
    docs = render(namespace="edge-a")
    cr = find(docs, "ClusterRole", "perllm-extender")["rules"]

    def grants(
        rules: list[Doc], group: str, resource: str, verb: str, name: str | None = None
    ) -> bool:
        return any(
            group in r["apiGroups"]
            and resource in r["resources"]
            and verb in r["verbs"]
            and (not r.get("resourceNames") or name in r["resourceNames"])
            for r in rules
        )

    for res in ("nodes", "pods"):
        assert grants(cr, "", res, "list") and grants(cr, "", res, "watch")
    assert grants(cr, "", "nodes", "get")  # a node missing from the scheduler's cache
    assert grants(cr, "perllm.io", "llmservices", "list")
    assert grants(cr, "perllm.io", "llmservices", "watch")
    assert not grants(cr, "perllm.io", "llmservices", "get")  # the informer never gets one
    assert grants(cr, "perllm.io", "llmservices/status", "patch")
    assert not grants(cr, "perllm.io", "llmservices", "patch")  # status only
    assert grants(cr, "", "events", "create")
    role = find(docs, "Role", "perllm-extender")
    assert role["metadata"]["namespace"] == "edge-a"
    for verb in ("get", "patch"):
        assert grants(role["rules"], "", "configmaps", verb, "perllm-extender-state")
        assert not grants(role["rules"], "", "configmaps", verb, "another")
    assert grants(role["rules"], "", "configmaps", "create")
    env = find(docs, "Deployment", "perllm-extender")["spec"]["template"]["spec"]["containers"][0][
        "env"
    ]
    assert {"name": "PERLLM_STATE_NAMESPACE", "value": "edge-a"} in env


def scheduler_config(docs: list[Doc]) -> Doc:
    cm = find(docs, "ConfigMap", "perllm-scheduler")
    cfg: Doc = yaml.safe_load(cm["data"]["config.yaml"])
    return cfg


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


def test_agent_daemonset_reads_powercap_and_its_node_name() -> None:
    assert "DaemonSet" not in kinds(render())  # optional, off by default
    docs = render("--set", "agent.enabled=true,agent.peers[0]=http://cloud-agent:9401")
    spec = find(docs, "DaemonSet", "perllm-agent")["spec"]["template"]["spec"]
    (vol,) = [v for v in spec["volumes"] if "hostPath" in v]
    assert vol["hostPath"]["path"] == "/sys/devices/virtual/powercap"
    c = spec["containers"][0]
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == vol["name"]]
    assert mount["readOnly"] is True
    assert f"--rapl-root={mount['mountPath']}" in c["args"]
    assert "--peer=http://cloud-agent:9401" in c["args"]
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in c[
        "env"
    ]
    assert spec["automountServiceAccountToken"] is False  # no API access at all


def test_one_extender_at_a_time_across_an_upgrade() -> None:
    """A rolling update ran the new extender beside the old one: it restored the state
    ConfigMap, the old one saved its last learning on shutdown, and the new one's next
    periodic save overwrote that (docs/extender.md, "One writer of the learned state")."""
    for profile in PROFILE_IDS:
        dep = find(render(profile=profile), "Deployment", "perllm-extender")
        assert dep["spec"]["strategy"] == {"type": "Recreate"}, profile


def test_twin_is_optional() -> None:
    assert not any(d["metadata"]["name"] == "perllm-twin" for d in render())
    docs = render("--set", "twin.enabled=true,twin.speed=10")
    args = find(docs, "Deployment", "perllm-twin")["spec"]["template"]["spec"]["containers"][0][
        "args"
    ]
    assert args[:2] == ["twin", "--scenario=paper-llama2-7b"] and "--speed=10" in args
    assert find(docs, "Service", "perllm-twin")["spec"]["ports"][0]["port"] == 9402
    # it lists nodes, pods and LLMServices periodically (perllm/twin/kube.py), nothing else
    assert _grants(find(docs, "ClusterRole", "perllm-twin")["rules"]) == {
        ("", "nodes", "*", "list"),
        ("", "pods", "*", "list"),
        ("perllm.io", "llmservices", "*", "list"),
    }


def test_monitors_only_with_the_prometheus_operator_api_or_forced() -> None:
    on = ("--set", "monitoring.serviceMonitor.enabled=true,agent.enabled=true")
    assert not {"ServiceMonitor", "PodMonitor"} & kinds(render(*on))
    assert {"ServiceMonitor", "PodMonitor"} <= kinds(render(*on, monitoring=True))
    assert not {"ServiceMonitor", "PodMonitor"} & kinds(render(monitoring=True))  # switch off
    # GitOps (`helm template | kubectl apply`): no cluster, so no capability; forced on.
    forced = render(*on, "--set", "monitoring.serviceMonitor.force=true")
    assert {"ServiceMonitor", "PodMonitor"} <= kinds(forced)
    assert not {"ServiceMonitor", "PodMonitor"} & kinds(
        render("--set", "monitoring.serviceMonitor.force=true")  # force alone renders nothing
    )


def test_service_monitors_scrape_a_plain_http_metrics_port() -> None:
    """Each ServiceMonitor names a port of its Service; the extender's is the plain
    metrics port (its main port is HTTPS for kube-scheduler only, with client
    certificates), the one its NetworkPolicy opens to the monitoring namespace."""
    docs = render(
        "--set",
        "monitoring.serviceMonitor.enabled=true,twin.enabled=true,router.enabled=true,"
        "router.services[0].name=chat",
        monitoring=True,
    )
    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert {m["metadata"]["name"] for m in monitors} == {
        "perllm-extender",
        "perllm-twin",
        "perllm-router",
    }
    services = [d for d in docs if d["kind"] == "Service"]
    for m in monitors:
        sel = m["spec"]["selector"]["matchLabels"]
        hits = [s for s in services if sel.items() <= s["metadata"]["labels"].items()]
        assert hits, m["metadata"]["name"]
        for e in m["spec"]["endpoints"]:
            for svc in hits:
                names = {p["name"] for p in svc["spec"]["ports"]}
                assert e["port"] in names, (m["metadata"]["name"], e["port"], names)
    ext = find(docs, "ServiceMonitor", "perllm-extender")["spec"]["endpoints"]
    assert [e["port"] for e in ext] == ["metrics"]
    np = find(docs, "NetworkPolicy", "perllm-extender")["spec"]["ingress"]
    svc = find(docs, "Service", "perllm-extender")["spec"]["ports"]
    metrics_port = next(p["port"] for p in svc if p["name"] == "metrics")
    assert any(
        {"port": metrics_port, "protocol": "TCP"} in rule["ports"]
        and any("namespaceSelector" in peer for peer in rule["from"])
        for rule in np
    )


def test_model_server_pod_monitor_selects_the_operators_pods() -> None:
    on = ("--set", "monitoring.serviceMonitor.enabled=true")
    pm = find(render(*on, monitoring=True), "PodMonitor", "perllm-model-servers")
    assert pm["spec"]["selector"] == {
        "matchExpressions": [{"key": LABEL_SERVICE, "operator": "Exists"}]
    }
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    ports = {e["port"] for e in pm["spec"]["podMetricsEndpoints"]}
    assert ports == {"http", "http1"}
    relabel = pm["spec"]["podMetricsEndpoints"][0]["relabelings"]
    source = "__meta_kubernetes_pod_label_" + re.sub(r"[^A-Za-z0-9_]", "_", LABEL_SERVICE)
    assert {"sourceLabels": [source], "targetLabel": "perllm_service"} in relabel
    some = render(
        *on, "--set", "monitoring.modelServers.namespaces={team-a,team-b}", monitoring=True
    )
    pm = find(some, "PodMonitor", "perllm-model-servers")
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    off = render(*on, "--set", "monitoring.modelServers.enabled=false", monitoring=True)
    assert not any(d["metadata"]["name"] == "perllm-model-servers" for d in off)


def test_scrape_annotations_on_agent_extender_twin() -> None:
    docs = render("--set", "agent.enabled=true,twin.enabled=true,extender.podAnnotations.a=b")
    for comp, port in (("agent", "9401"), ("extender", "8889"), ("twin", "9402")):
        kind = "DaemonSet" if comp == "agent" else "Deployment"
        ann = find(docs, kind, f"perllm-{comp}")["spec"]["template"]["metadata"]["annotations"]
        assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == port, comp
        assert ann["prometheus.io/path"] == "/metrics"
    ext = find(docs, "Deployment", "perllm-extender")["spec"]["template"]["metadata"]
    assert ext["annotations"]["a"] == "b"
    off = render("--set", "monitoring.scrapeAnnotations=false")
    ext = find(off, "Deployment", "perllm-extender")["spec"]["template"]["metadata"]
    assert "annotations" not in ext


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


@pytest.mark.parametrize("profile", PROFILE_IDS)
def test_helm_template_needs_no_kube_version(profile: str) -> None:
    """The Helm tools/build-binaries.sh builds is stamped like a release (Kubernetes 1.34 as
    its default), so the chart's kubeVersion floor passes without --kube-version."""
    r = helm("template", "perllm", str(CHART), *_values_args(profile))
    assert "kind: Deployment" in r.stdout
    lint = helm("lint", "--strict", str(CHART), *_values_args(profile))
    assert "0 chart(s) failed" in lint.stdout


def test_users_get_llmservices_through_the_default_roles() -> None:
    docs = render()
    view = find(docs, "ClusterRole", "perllm-llmservices-view")
    edit = find(docs, "ClusterRole", "perllm-llmservices-edit")
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    vg, eg = _grants(view["rules"]), _grants(edit["rules"])
    assert ("perllm.io", "llmservices", "*", "list") in vg
    assert not any(v in ("create", "patch", "update", "delete") for *_, v in vg)
    for verb in ("create", "update", "patch", "delete"):
        assert ("perllm.io", "llmservices", "*", verb) in eg
    assert not any(res == "llmservices/status" for _, res, _, _ in eg)  # status: controllers'
    off = render("--set", "rbac.aggregateToDefaultRoles=false")
    assert not any("llmservices-" in d["metadata"]["name"] for d in off)


def test_prometheus_url_reaches_operator_and_extender() -> None:
    docs = render("--set", "prometheus.url=http://prom.monitoring.svc:9090")
    for name in ("perllm-operator", "perllm-extender"):
        env = find(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]["env"]
        assert {"name": "PERLLM_PROMETHEUS_URL", "value": "http://prom.monitoring.svc:9090"} in env


def test_a_prometheus_token_secret_is_mounted_and_named_to_every_prometheus_reader() -> None:
    # prometheus.tokenSecret: a Prometheus behind authentication, its token as a file (never
    # in env values, args or ConfigMaps), for operator, extender and routers alike.
    docs = render(
        "--set", "prometheus.url=http://prom:9090",
        "--set", "prometheus.tokenSecret.name=prom-auth",
        "--set", "prometheus.tokenSecret.key=bearer",
        "--set", "router.enabled=true",
        "--set", "router.services[0].name=chat",
    )  # fmt: skip
    path = "/var/run/secrets/perllm/prometheus/bearer"
    for name in ("perllm-operator", "perllm-extender", "perllm-router-chat"):
        pod = find(docs, "Deployment", name)["spec"]["template"]["spec"]
        (vol,) = [v for v in pod["volumes"] if v["name"] == "prometheus-token"]
        assert vol["secret"]["secretName"] == "prom-auth"
        assert vol["secret"]["items"] == [{"key": "bearer", "path": "bearer"}]
        mounts = pod["containers"][0]["volumeMounts"]
        assert {"name": "prometheus-token", "mountPath": path.rsplit("/", 1)[0],
                "readOnly": True} in mounts  # fmt: skip
        if name != "perllm-router-chat":
            env = pod["containers"][0]["env"]
            assert {"name": "PERLLM_PROMETHEUS_TOKEN_FILE", "value": path} in env
    cm = find(docs, "ConfigMap", "perllm-router-chat")
    assert f"prometheus_token_file: {path}" in str(cm["data"])
    # without a token secret (the default), nothing is mounted
    for d in render("--set", "prometheus.url=http://prom:9090"):
        assert "prometheus-token" not in str(d) and "PROMETHEUS_TOKEN" not in str(d)


def test_a_prometheus_ca_secret_or_skipping_verification_reaches_every_prometheus_reader() -> None:
    common = ("--set", "prometheus.url=https://prom:9090", "--set", "router.enabled=true",
              "--set", "router.services[0].name=chat")  # fmt: skip
    docs = render(*common, "--set", "prometheus.caSecret.name=prom-ca")
    path = "/var/run/secrets/perllm/prometheus-ca/ca.crt"
    for name in ("perllm-operator", "perllm-extender", "perllm-router-chat"):
        pod = find(docs, "Deployment", name)["spec"]["template"]["spec"]
        (vol,) = [v for v in pod["volumes"] if v["name"] == "prometheus-ca"]
        assert vol["secret"]["secretName"] == "prom-ca"
        assert vol["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
        mounts = pod["containers"][0]["volumeMounts"]
        assert {"name": "prometheus-ca", "mountPath": path.rsplit("/", 1)[0],
                "readOnly": True} in mounts  # fmt: skip
        assert "prometheus-token" not in str(pod)
        if name != "perllm-router-chat":
            env = pod["containers"][0]["env"]
            assert {"name": "PERLLM_PROMETHEUS_CA_FILE", "value": path} in env
            assert "INSECURE" not in str(env)
    cm = str(find(docs, "ConfigMap", "perllm-router-chat")["data"])
    assert f"prometheus_ca_file: {path}" in cm and "insecure" not in cm
    docs = render(*common, "--set", "prometheus.insecureSkipVerify=true")
    for name in ("perllm-operator", "perllm-extender"):
        env = find(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]["env"]
        assert {"name": "PERLLM_PROMETHEUS_INSECURE_SKIP_VERIFY", "value": "true"} in env
    cm = str(find(docs, "ConfigMap", "perllm-router-chat")["data"])
    assert "prometheus_insecure_skip_verify: true" in cm
    # verification is on by default: nothing said, nothing mounted
    for d in render(*common):
        assert "prometheus-ca" not in str(d) and "INSECURE" not in str(d)
    r = helm(
        "template", "perllm", str(CHART), "--kube-version", KUBE_VERSION, *common,
        "--set", "prometheus.caSecret.name=prom-ca", "--set", "prometheus.insecureSkipVerify=true",
        check=False,
    )  # fmt: skip
    assert r.returncode != 0 and "exclude each other" in r.stderr


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
]


@pytest.mark.parametrize("setting", GOOD_NAMES_AND_LABELS)
def test_valid_names_and_labels_are_accepted(setting: str) -> None:
    assert render("--set", setting)


def schema_refusal(setting: str) -> str:
    """Helm's error for `--set setting`, which the values schema must refuse."""
    r = helm(
        "template", "perllm", str(CHART), "--kube-version", KUBE_VERSION, "--set", setting,
        check=False,
    )  # fmt: skip
    assert r.returncode != 0, f"{setting} was accepted"
    assert "values don't meet the specifications of the schema" in r.stderr, r.stderr
    return r.stderr


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


def test_every_object_carries_the_chart_labels() -> None:
    """commonLabels and app.kubernetes.io/* reach every object the chart renders (the
    cert-manager Certificates had none), whatever is enabled."""
    docs = render(
        "--set",
        "agent.enabled=true,twin.enabled=true,router.enabled=true,router.services[0].name=chat,"
        "extender.tls.certManager.enabled=true,commonLabels.team=llm,"
        "monitoring.serviceMonitor.enabled=true,monitoring.serviceMonitor.force=true",
        "--api-versions",
        "serving.kserve.io/v1alpha1/ClusterServingRuntime",
    )
    assert "Certificate" in kinds(docs) and "ClusterServingRuntime" in kinds(docs)
    for d in docs:
        labels = d["metadata"].get("labels") or {}
        what = f"{d['kind']}/{d['metadata']['name']}"
        assert labels.get("team") == "llm", what
        assert labels.get("app.kubernetes.io/managed-by") == "Helm", what


def test_names_over_63_characters_fail_instead_of_colliding() -> None:
    """Cut to 63, a long release's perllm-llmservices-view and -edit (or two routers) got
    one name, and the second object replaced the first; the chart refuses, naming it."""
    long = "a-release-name-of-fifty-characters-for-this-test-x"
    r = helm("template", long, str(CHART), "--kube-version", KUBE_VERSION, check=False)
    assert r.returncode != 0
    assert f'object name "{long}-perllm-scheduler" is 67 characters' in r.stderr, r.stderr
    assert "shorten the release name or set fullnameOverride" in r.stderr
    docs = render("--set", "fullnameOverride=edge")
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)) and ("ClusterRole", "edge-llmservices-edit") in names


def _router_values(tmp_path: Path, services: list[Doc]) -> str:
    f = tmp_path / "router.yaml"
    f.write_text(yaml.safe_dump({"router": {"enabled": True, "services": services}}))
    return str(f)


def test_a_router_service_or_remote_tier_listed_twice_fails(tmp_path: Path) -> None:
    """Routers are <release>-router-<name> in the release namespace: the same name in two
    namespaces rendered every object twice (the second replaced the first), and a remote
    tier twice rendered a Deployment with two volumes of one name."""
    twice = _router_values(tmp_path, [{"name": "chat"}, {"name": "chat", "namespace": "team-b"}])
    r = helm("template", "perllm", str(CHART), "-n", "team-a", "-f", twice, check=False)
    assert r.returncode != 0
    assert 'router.services: "chat" is listed twice (namespaces team-a and team-b)' in r.stderr
    remote = {
        "name": "cloud",
        "url": "https://cloud.example.com",
        "tier": "cloud",
        "hardware": "a100-80gb-sxm",
        "link": {"bandwidth_mbps": 100, "rtt_ms": 40},
    }
    two = _router_values(tmp_path, [{"name": "chat", "remote": [remote, remote]}])
    r = helm("template", "perllm", str(CHART), "-f", two, check=False)
    assert r.returncode != 0
    assert 'router.services[chat].remote: "cloud" is listed twice' in r.stderr, r.stderr
    ok = _router_values(tmp_path, [{"name": "chat"}, {"name": "code", "namespace": "team-b"}])
    docs = render("-f", ok)
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"} >= {
        "perllm-router-chat",
        "perllm-router-code",
    }


def _dashboard() -> Doc:
    d: Doc = json.loads((CHART / "dashboards" / "perllm.json").read_text())
    return d


def _exprs(dash: Doc) -> list[str]:
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def _extender_metric_names() -> set[str]:
    from perllm_extender.metrics import Metrics
    from prometheus_client.metrics import MetricWrapperBase

    out: set[str] = set()
    for m in vars(Metrics()).values():
        if isinstance(m, MetricWrapperBase):
            base = m._name  # the exposed family name
            out |= {base, f"{base}_total", f"{base}_bucket", f"{base}_sum", f"{base}_count"}
    return out


# Series from kube-state-metrics, which the by-tier panels join on (docs/helm.md).
KSM = {"kube_pod_info", "kube_node_labels"}
PROMQL_WORDS = {
    "sum",
    "by",
    "rate",
    "max",
    "min",
    "or",
    "on",
    "group_left",
    "label_replace",
    "histogram_quantile",
    "le",
    "namespace",
    "service",
    "policy",
    "tier",
    "node",
    "pod",
    "verb",
    "Hostname",
    "hostname",
    "increase",
    "and",
    "model_name",
}
# Series only `perllm twin` serves: allowed only in panels marked "Twin only".
TWIN_ONLY = ("perllm_service_", "perllm_counterfactual_")


def test_dashboard_names_only_exported_metrics() -> None:
    dash = _dashboard()
    ours = {v for k, v in vars(names).items() if k.isupper() and isinstance(v, str)}
    known = ours | {f"{m}_{s}" for m in ours for s in ("bucket", "sum", "count")}
    known |= _extender_metric_names() | KSM
    used: set[str] = set()
    for expr in _exprs(dash):
        body = re.sub(r'"[^"]*"', '""', expr)  # drop label values and regexes
        body = re.sub(r"\{[^}]*\}", "", body)  # drop selectors
        body = re.sub(r"\[[^]]*\]", "", body)  # drop ranges
        for tok in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", body):
            if tok not in PROMQL_WORDS and not tok.startswith("label_perllm"):
                used.add(tok)
    assert used, "no metric found in the dashboard"
    assert used <= known, f"unknown metrics in the dashboard: {sorted(used - known)}"
    # What the brief asks the dashboard to show.
    text = " ".join(_exprs(dash))
    for metric in (
        names.SERVICE_DEADLINE_MET,
        names.COUNTERFACTUAL_DEADLINE_MET,
        names.SERVICE_ENERGY_J,
        names.COUNTERFACTUAL_ENERGY_J,
        names.PATH_BANDWIDTH_BPS,
        names.DCGM_POWER_W,
        "perllm_extender_decision_seconds_bucket",
    ):
        assert metric in text, metric
    # The counterfactuals (cloud-only, edge-only, ...) are the twin's `policy` label.
    assert any("by (policy)" in e for e in _exprs(dash))
    assert any("by (tier)" in e for e in _exprs(dash))
    assert any("by (namespace, service)" in e for e in _exprs(dash))


def test_dashboard_headline_panels_chart_real_cluster_series() -> None:
    """A real cluster has DCGM, vLLM, agent and extender series; the twin's per-service and
    counterfactual series appear only in panels marked "Twin only", after the headline."""
    panels = [p for p in _dashboard()["panels"] if p["type"] != "row"]
    twin = [p for p in panels if p["title"].startswith("Twin only")]
    head = [p for p in panels if p not in twin]
    assert twin and head
    for p in twin:
        assert "twin" in p.get("description", "").lower(), p["title"]
        assert any(t in e for e in (x["expr"] for x in p["targets"]) for t in TWIN_ONLY)
    head_exprs = [t["expr"] for p in head for t in p["targets"]]
    for e in head_exprs:
        assert not any(t in e for t in TWIN_ONLY), e
    text = " ".join(head_exprs)
    for metric in (
        names.DCGM_POWER_W,
        f"{names.VLLM_E2E_LATENCY}_bucket",
        names.VLLM_RUNNING,
        names.CPU_POWER_W,
        names.PATH_BANDWIDTH_BPS,
        "perllm_extender_decision_seconds_bucket",
        "perllm_extender_decisions_total",
    ):
        assert metric in text, metric
    # Headline first: every twin panel sits below every headline panel.
    assert min(p["gridPos"]["y"] for p in twin) >= max(p["gridPos"]["y"] for p in head) + 1
    var = next(v for v in _dashboard()["templating"]["list"] if v["name"] == "namespace")
    assert not any(t in var["query"]["query"] for t in TWIN_ONLY)


def test_dashboard_configmap_carries_the_json() -> None:
    cm = find(render(), "ConfigMap", "perllm-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["perllm.json"]) == _dashboard()
    assert "perllm-dashboard" not in {
        d["metadata"]["name"] for d in render("--set", "monitoring.dashboard.enabled=false")
    }


def test_container_args_parse_with_the_perllm_cli() -> None:
    """Every flag and env var the chart passes is one the `perllm` sub-command declares, with
    a valid value (click parses without running the command)."""
    import typer

    from perllm.cli import app

    commands: dict[str, Any] = getattr(typer.main.get_command(app), "commands", {})
    docs = render(
        "--set",
        "agent.enabled=true,twin.enabled=true,operator.verbose=true,operator.statusInterval=30,"
        "operator.namespaces[0]=team-a,extender.learnInterval=15,extender.maxNodes=20000,"
        "agent.probeInterval=60,"
        "agent.probeBytes=1000000,agent.peers[0]=http://cloud:9401,twin.speed=10,"
        "prometheus.url=http://prom:9090,router.enabled=true,router.services[0].name=chat",
    )
    seen = set()
    for name, spec in pod_specs(docs):
        c = spec["containers"][0]
        if not c["image"].startswith("ghcr.io/perllm/perllm:"):
            continue  # the stock kube-scheduler
        sub, *rest = c["args"]
        cmd = commands.get(sub)
        if cmd is None:
            pytest.fail(f"{name}: `perllm {sub}` is not a command of this tree")
        ctx = cmd.make_context(sub, list(rest))  # raises on an unknown flag or a bad value
        assert ctx.params, name
        envvars = {p.envvar for p in cmd.params if isinstance(p.envvar, str)}
        for e in c.get("env", []):
            assert e["name"] in envvars, f"{name}: {e['name']} is read by no option of {sub}"
        seen.add(sub)
    assert seen == {"operator", "extender", "agent", "twin", "router"}


def test_secret_volumes_holding_credentials_are_not_readable_by_others(tmp_path: Path) -> None:
    """Every Secret volume with a token or a key is mode 0440 (the pod's user and fsGroup);
    only CA certificates (public) may be world-readable. The router's client-auth and
    remote-tier tokens were mounted with the API's default 0644."""
    remote = {"name": "cloud", "url": "https://cloud.example.com", "tier": "cloud",
              "hardware": "a100-80gb-sxm", "link": {"bandwidth_mbps": 100, "rtt_ms": 40},
              "tokenSecret": {"name": "cloud-tok", "key": "token"},
              "caSecret": {"name": "cloud-ca", "key": "ca.crt"}}  # fmt: skip
    values = _router_values(tmp_path, [{"name": "chat", "remote": [remote]}])
    docs = render(
        "-f", values, "--set", "router.authSecret.name=router-tok",
        "--set", "prometheus.url=https://prom:9090", "--set", "prometheus.tokenSecret.name=pt",
        "--set", "prometheus.caSecret.name=pca", "--set", "agent.enabled=true",
        "--set", "twin.enabled=true",
    )  # fmt: skip
    seen = set()
    for name, spec in pod_specs(docs):
        for v in spec.get("volumes", []):
            if "secret" not in v:
                continue
            sec = v["secret"]
            mode = sec.get("defaultMode", 0o644)  # (the API server's default)
            seen.add(v["name"])
            public = bool(sec.get("items")) and all(
                i["path"].endswith(".crt") for i in sec["items"]
            )
            assert mode & 0o333 == 0, (name, v["name"], oct(mode))  # nobody writes
            if not public:
                assert mode & 0o007 == 0, (name, v["name"], oct(mode))
    assert {"auth", "remote-cloud", "ca-cloud", "prometheus-token", "tls"} <= seen, seen


def test_router_per_service_config_secrets_and_least_privilege() -> None:
    """The edge profile's router: its config is one `perllm router` accepts, every token
    file it names is a mounted Secret key, and it may read only its service's pods and
    spec (in that namespace) and nodes, and patch only that service's status."""
    from perllm.router.config import parse_config

    docs = render(profile="edge-k3s-values.yaml")
    name = "perllm-router-chat"
    cfg = parse_config(yaml.safe_load(find(docs, "ConfigMap", name)["data"]["router.yaml"]))
    assert cfg.discovery is not None and cfg.discovery.service == "team-a/chat"
    assert cfg.service is None and cfg.shed is True  # the spec is read from the LLMService
    (remote,) = cfg.backends
    assert remote.tier.value == "cloud" and remote.token_file
    dep = find(docs, "Deployment", name)
    spec = dep["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    mount, file = remote.token_file.rsplit("/", 1)
    secret = volumes[mounts[mount]]["secret"]
    assert secret["secretName"] == "perllm-cloud-router"
    assert secret["items"] == [{"key": "token", "path": file}]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert "perllm.io/service" not in labels  # not a model server to discovery or monitors
    assert spec["serviceAccountName"] == name
    assert spec["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/healthz"
    role = find(docs, "Role", name)
    assert role["metadata"]["namespace"] == "team-a"
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
        {
            "apiGroups": ["perllm.io"],
            "resources": ["llmservices"],
            "resourceNames": ["chat"],
            "verbs": ["get"],
        },
        {
            "apiGroups": ["perllm.io"],
            "resources": ["llmservices/status"],
            "resourceNames": ["chat"],
            "verbs": ["patch"],
        },
    ]
    assert find(docs, "ClusterRole", "perllm-router")["rules"] == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}
    ]
    crb = find(docs, "ClusterRoleBinding", "perllm-router")
    assert crb["subjects"] == [
        {"kind": "ServiceAccount", "name": name, "namespace": "perllm-system"}
    ]
    svc = find(docs, "Service", name)
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    # The cloud side asks its clients (the edge router) for the token.
    cloud = render(profile="cloud-values.yaml")
    ccfg = parse_config(yaml.safe_load(find(cloud, "ConfigMap", name)["data"]["router.yaml"]))
    assert ccfg.auth is not None and ccfg.backends == []
    # A remote tier named after an edge node takes that node's measured bandwidth.
    probed = render("--set", "router.services[0].remote[0].node=edge-1",
                    profile="edge-k3s-values.yaml")  # fmt: skip
    pcfg = parse_config(yaml.safe_load(find(probed, "ConfigMap", name)["data"]["router.yaml"]))
    assert pcfg.backends[0].node == "edge-1" and remote.node is None


def test_router_limits_from_values_chart_wide_and_per_service() -> None:
    """`router.limits` reaches every service's router config, a service's own `limits`
    win key by key, and the result is a config `perllm router` accepts; none rendered
    keeps the router's defaults."""
    from perllm.router.config import Limits, parse_config

    name = "perllm-router-chat"

    def limits(*extra: str) -> Limits:
        docs = render(*extra, profile="edge-k3s-values.yaml")
        raw = yaml.safe_load(find(docs, "ConfigMap", name)["data"]["router.yaml"])
        return parse_config(raw).limits

    assert limits() == Limits()
    got = limits(
        "--set", "router.limits.read_timeout_s=30", "--set", "router.limits.eject_max_s=60",
        "--set", "router.limits.probe_path=/health",
        "--set", "router.services[0].limits.read_timeout_s=10",
    )  # fmt: skip
    assert (got.read_timeout_s, got.eject_max_s, got.probe_path) == (10.0, 60.0, "/health")
    assert got.probe and got.eject_s == Limits().eject_s
    assert limits("--set", "router.limits.probe=false").probe is False


def test_router_remote_hardware_is_the_routers_catalogue() -> None:
    """A remote tier's hardware is checked against the router's catalogue when it starts
    (discovery mode: the default catalogue); the chart offers exactly those keys."""
    from perllm.profiles import default_catalogue

    schema = json.loads((CHART / "values.schema.json").read_text())
    remote = schema["properties"]["router"]["properties"]["services"]["items"]["properties"]
    hardware = remote["remote"]["items"]["properties"]["hardware"]
    assert hardware["enum"] == sorted(default_catalogue().hardware)


def test_router_remote_link_schema_is_the_contracts() -> None:
    """A remote tier's `link` becomes a contract `Link` when the router starts: the chart
    refuses the bandwidths and RTTs it would (below 1 kbit/s, above 10 Tbit/s, …)."""
    from perllm.contract import Link

    schema = json.loads((CHART / "values.schema.json").read_text())
    remote = schema["properties"]["router"]["properties"]["services"]["items"]["properties"]
    link = remote["remote"]["items"]["properties"]["link"]["properties"]
    ours = Link.model_json_schema()["properties"]
    for k in link:
        assert link[k] == {f: v for f, v in ours[k].items() if f not in ("default", "title")}


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


def test_router_limits_schema_is_the_routers_own() -> None:
    """The chart's `routerLimits` is written by hand (Helm reads JSON Schema only): every
    key, type and bound must be `perllm router`'s (`Limits`), so that the chart rejects
    what the router would, and nothing it accepts."""
    from perllm.router.config import Limits

    chart = json.loads((CHART / "values.schema.json").read_text())["definitions"]["routerLimits"]
    ours = {
        k: {f: v for f, v in p.items() if f not in ("default", "title")}
        for k, p in Limits.model_json_schema()["properties"].items()
    }
    assert chart["properties"] == ours
    assert chart["additionalProperties"] is False


def test_a_remote_tiers_ca_secret_is_mounted_as_its_ca_file(tmp_path: Path) -> None:
    """A private remote cluster's CA (a Secret key) becomes its backend's `ca_file`, which
    the router verifies that side's https certificate against; an http url with one fails."""
    from perllm.router.config import parse_config

    remote = {
        "name": "cloud", "url": "https://cloud.example.com", "tier": "cloud",
        "hardware": "a100-80gb-sxm", "link": {"bandwidth_mbps": 100, "rtt_ms": 40},
        "tokenSecret": {"name": "cloud-token"}, "caSecret": {"name": "cloud-ca"},
    }  # fmt: skip
    values = _router_values(tmp_path, [{"name": "chat", "remote": [remote]}])
    docs = render("-f", values)
    name = "perllm-router-chat"
    cfg = parse_config(yaml.safe_load(find(docs, "ConfigMap", name)["data"]["router.yaml"]))
    (b,) = cfg.backends
    assert b.ca_file == "/var/run/secrets/perllm-router/remote-ca/cloud/ca.crt"
    spec = find(docs, "Deployment", name)["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    for path, secret_name, key in ((b.ca_file, "cloud-ca", "ca.crt"),
                                   (b.token_file, "cloud-token", "token")):  # fmt: skip
        assert path is not None
        mount, file = path.rsplit("/", 1)
        secret = volumes[mounts[mount]]["secret"]
        assert secret["secretName"] == secret_name
        assert secret["items"] == [{"key": key, "path": file}]
    plain = _router_values(
        tmp_path, [{"name": "chat", "remote": [{**remote, "url": "http://cloud.example.com"}]}]
    )
    r = helm("template", "perllm", str(CHART), "-f", plain, check=False)
    assert r.returncode != 0 and "remote[cloud].caSecret: its url is not https" in r.stderr
