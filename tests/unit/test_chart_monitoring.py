"""The Helm chart's monitoring: ServiceMonitors and PodMonitor only with the Prometheus
Operator's API (or forced), scrape annotations, Prometheus URL, token and CA for every
reader, and a dashboard that only names metrics the project exports.

Needs the pinned Helm (tools/build-binaries.sh helm); without it these tests skip, saying
so (chart_render.py).
"""

from __future__ import annotations

import json
import re

from chart_render import CHART, KUBE_VERSION, Doc, find, helm, kinds, render

from perllm.labels import LABEL_SERVICE
from perllm.telemetry import names


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
