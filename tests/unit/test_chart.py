"""The Helm chart (charts/perllm): the CRD copy, lint, rendering per profile, the
workloads every profile renders (hardening, labels, names, container args, Secret volumes).
RBAC: test_chart_rbac.py; kube-scheduler: test_chart_scheduler.py; monitoring and the
dashboard: test_chart_monitoring.py; the values schema: test_chart_values.py; the router:
test_chart_router.py; extender TLS: test_chart_tls.py.

Needs the pinned Helm (tools/build-binaries.sh helm); without it these tests skip, saying
so (chart_render.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from chart_render import (
    CHART,
    KUBE_VERSION,
    PROFILE_IDS,
    ROOT,
    _grants,
    _router_values,
    _values_args,
    find,
    helm,
    kinds,
    pod_specs,
    render,
    scheduler_config,
)


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


def test_agent_liveness_is_http_and_outlasts_a_connection_flood() -> None:
    """A TCP probe passed while the agent no longer served HTTP (the kernel completes the
    handshake for a stuck accept loop); the probe asks /healthz on the metrics port, and
    its failures span more than the idle timeout that frees the 64 connection places, so
    a brief flood (which closes the probe's connection too) restarts nothing."""
    from perllm.agent.server import MAX_CONNECTIONS, _Handler

    docs = render("--set", "agent.enabled=true")
    c = find(docs, "DaemonSet", "perllm-agent")["spec"]["template"]["spec"]["containers"][0]
    probe = c["livenessProbe"]
    assert "tcpSocket" not in probe
    assert probe["httpGet"]["path"] == "/healthz"
    (port,) = [p for p in c["ports"] if p["name"] == probe["httpGet"]["port"]]
    assert f"--port={port['containerPort']}" in c["args"]
    assert MAX_CONNECTIONS == 64  # the flood the probe rides out
    window = probe["periodSeconds"] * probe["failureThreshold"]
    assert window >= 2 * _Handler.timeout, window
    assert probe["timeoutSeconds"] < probe["periodSeconds"]


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


@pytest.mark.parametrize("profile", PROFILE_IDS)
def test_helm_template_needs_no_kube_version(profile: str) -> None:
    """The Helm tools/build-binaries.sh builds is stamped like a release (Kubernetes 1.34 as
    its default), so the chart's kubeVersion floor passes without --kube-version."""
    r = helm("template", "perllm", str(CHART), *_values_args(profile))
    assert "kind: Deployment" in r.stdout
    lint = helm("lint", "--strict", str(CHART), *_values_args(profile))
    assert "0 chart(s) failed" in lint.stdout


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


def _strings_that_must_stay_strings(d: dict[str, Any]) -> list[tuple[str, Any]]:
    """(where, value) of the fields the API server decodes as strings: names, namespaces,
    labels, annotations, resourceNames, images, args, env values, Secret volumes' names and
    keys, class names, monitors' namespaces and port names."""
    out: list[tuple[str, Any]] = []
    m = d["metadata"]
    out += [("name", m["name"]), ("namespace", m.get("namespace", ""))]
    out += [(f"label {k}", v) for k, v in (m.get("labels") or {}).items()]
    out += [(f"annotation {k}", v) for k, v in (m.get("annotations") or {}).items()]
    for r in d.get("rules") or []:
        out += [("resourceName", n) for n in r.get("resourceNames") or []]
    out += [("subject namespace", s.get("namespace", "")) for s in d.get("subjects") or []]
    spec = d.get("spec") or {}
    out += [("matchNames", n) for n in (spec.get("namespaceSelector") or {}).get("matchNames", [])]
    for e in spec.get("endpoints", []) + spec.get("podMetricsEndpoints", []):
        out.append(("monitor port", e["port"]))
    selector = (spec.get("selector") or {}).get("matchLabels", {})
    out += [(f"selector {k}", v) for k, v in selector.items()]
    if d["kind"] in ("Deployment", "DaemonSet"):
        tm, ps = spec["template"]["metadata"], spec["template"]["spec"]
        out += [(f"pod label {k}", v) for k, v in (tm.get("labels") or {}).items()]
        out += [(f"pod annotation {k}", v) for k, v in (tm.get("annotations") or {}).items()]
        for f in ("runtimeClassName", "priorityClassName", "serviceAccountName"):
            if f in ps:
                out.append((f, ps[f]))
        for c in ps.get("initContainers", []) + ps["containers"]:
            out.append(("image", c["image"]))
            out += [("arg", a) for a in c.get("args", []) + c.get("command", [])]
            out += [(f"env {e['name']}", e["value"]) for e in c.get("env", []) if "value" in e]
        for v in ps.get("volumes", []):
            if "secret" in v:
                out.append(("secretName", v["secret"]["secretName"]))
                for i in v["secret"].get("items", []):
                    out += [("secret key", i["key"]), ("secret path", i["path"])]
    return out


def test_names_and_values_that_read_as_numbers_or_booleans_stay_strings() -> None:
    """Interpolated unquoted, a namespace `456`, a release `yes`, an LLMService `on` or a
    Secret key `true` rendered as a YAML number or boolean, which the API server refuses
    (`cannot unmarshal number into ... of type string`), and a twin scenario `a #b` lost
    everything after the ` #` (a YAML comment). Every such field renders as a string."""
    docs = render(
        "--set", "agent.enabled=true,twin.enabled=true,router.enabled=true,"
        "monitoring.serviceMonitor.enabled=true,monitoring.serviceMonitor.force=true,"
        "networkPolicy.enabled=true,prometheus.url=http://prom:9090",
        "--set-json", 'router.services=[{"name": "on", "namespace": "789"}]',
        "--set-json", 'monitoring.modelServers.ports=["on", "http"]',
        "--set-string", "operator.namespaces[0]=789,nameOverride=off,router.authSecret.name=123,"
        "router.authSecret.key=true,prometheus.tokenSecret.name=1,prometheus.tokenSecret.key=1,"
        "agent.runtimeClassName=123,operator.priorityClassName=yes,twin.scenario=a #b",
        namespace="456", release="yes",
    )  # fmt: skip
    odd = [
        (f"{d['kind']}/{d['metadata']['name']}", where, v)
        for d in docs
        for where, v in _strings_that_must_stay_strings(d)
        if not isinstance(v, str)
    ]
    assert not odd, odd
    twin = find(docs, "Deployment", "yes-off-twin")["spec"]["template"]["spec"]["containers"][0]
    assert "--scenario=a #b" in twin["args"]
    assert find(docs, "Role", "yes-off-router-on")["metadata"]["namespace"] == "789"


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


@pytest.mark.parametrize("release", ["1edge", "perllm.v2"])
def test_a_release_name_no_service_may_carry_fails_naming_it(release: str) -> None:
    """Helm admits release names with a leading digit or a dot; the Services named after
    them (`1edge-perllm-extender`, `perllm.v2-extender`) were refused by the API server
    mid-install. The render fails instead, naming the object and the way out."""
    r = helm("template", release, str(CHART), "--kube-version", KUBE_VERSION, check=False)
    assert r.returncode != 0
    assert "is not a DNS-1035 label" in r.stderr and "set fullnameOverride" in r.stderr, r.stderr
    docs = render("--set", "fullnameOverride=edge", release=release)
    assert find(docs, "Service", "edge-extender")


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
