"""The chart's NetworkPolicies (docs/helm.md, "NetworkPolicies"): the extender's (on by
default) and the opt-in ones of the operator, perllm-scheduler, agent, twin and routers
(`networkPolicy.enabled`). Which pods a policy selects and which ports it opens are derived
from the rendered workloads (their pod labels, container ports, Services, scrape annotations
and PodMonitors), never written out here; every rendered policy passes the Kubernetes
client's V1NetworkPolicy model and the API server's NetworkPolicy validation rules
(k8s.io/kubernetes pkg/apis/networking/validation), ported below."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_render import CHART, KUBE_VERSION, PROFILE_IDS, find, helm, render, schema_refusal
from kubernetes.client import ApiClient

Doc = dict[str, Any]
API = ApiClient()
WORKLOADS = ("Deployment", "DaemonSet")
# Every component on: two routers (one for a service in another namespace), monitors forced
# so that the PodMonitors (the agent's metrics port) render too.
ALL_ON = (
    "networkPolicy.enabled=true,agent.enabled=true,twin.enabled=true,router.enabled=true,"
    "router.services[0].name=chat,router.services[0].namespace=team-a,"
    "router.services[1].name=code,"
    "monitoring.serviceMonitor.enabled=true,monitoring.serviceMonitor.force=true"
)

# --- the API server's rules (apimachinery validation, networking validation) -------------

DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN = re.compile(rf"^{DNS1123_LABEL}(\.{DNS1123_LABEL})*$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
IANA_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


def _label_key_errors(key: str, at: str) -> list[str]:
    prefix, _, name = key.rpartition("/")
    ok = len(name) <= 63 and LABEL_NAME.match(name) is not None
    if prefix:
        ok = ok and len(prefix) <= 253 and DNS1123_SUBDOMAIN.match(prefix) is not None
    return [] if ok else [f"{at}: invalid label key {key!r}"]


def _labels_errors(labels: Any, at: str) -> list[str]:
    if not isinstance(labels, dict):
        return [f"{at}: must be a map"]
    errs: list[str] = []
    for k, v in labels.items():
        errs += _label_key_errors(k, at)
        if not isinstance(v, str) or len(v) > 63 or not LABEL_VALUE.match(v):
            errs.append(f"{at}.{k}: invalid label value {v!r}")
    return errs


def _selector_errors(sel: Any, at: str) -> list[str]:
    """metav1validation.ValidateLabelSelector."""
    if not isinstance(sel, dict) or set(sel) - {"matchLabels", "matchExpressions"}:
        return [f"{at}: not a label selector: {sel!r}"]
    errs = _labels_errors(sel.get("matchLabels", {}), f"{at}.matchLabels")
    for i, e in enumerate(sel.get("matchExpressions", [])):
        where = f"{at}.matchExpressions[{i}]"
        errs += _label_key_errors(e.get("key", ""), where)
        values = e.get("values") or []
        if e.get("operator") in ("In", "NotIn"):
            errs += [] if values else [f"{where}: In/NotIn need values"]
        elif e.get("operator") in ("Exists", "DoesNotExist"):
            errs += [f"{where}: Exists/DoesNotExist take no values"] if values else []
        else:
            errs.append(f"{where}: bad operator {e.get('operator')!r}")
    return errs


def _peer_errors(peer: Any, at: str) -> list[str]:
    """ValidateNetworkPolicyPeer: selectors, or an ipBlock alone."""
    if not isinstance(peer, dict):
        return [f"{at}: must be a map"]
    selectors = [k for k in ("podSelector", "namespaceSelector") if k in peer]
    if "ipBlock" in peer:
        if selectors:
            return [f"{at}: ipBlock with {selectors}: may not specify more than 1 peer type"]
        block = peer["ipBlock"]
        try:
            cidr = ipaddress.ip_network(block["cidr"], strict=False)
        except (KeyError, ValueError):
            return [f"{at}.ipBlock.cidr: not a CIDR: {block.get('cidr')!r}"]
        errs = []
        for ex in block.get("except", []):
            net = ipaddress.ip_network(ex, strict=False)
            inside = net.version == cidr.version and net.subnet_of(cidr)  # type: ignore[arg-type]
            if not inside or net.prefixlen <= cidr.prefixlen:
                errs.append(f"{at}.ipBlock.except: {ex} is not a strict subset of {cidr}")
        return errs
    if not selectors:
        return [f"{at}: must specify a peer"]
    return [e for k in selectors for e in _selector_errors(peer[k], f"{at}.{k}")]


def _port_errors(port: Any, at: str) -> list[str]:
    errs = []
    if port.get("protocol", "TCP") not in ("TCP", "UDP", "SCTP"):
        errs.append(f"{at}.protocol: {port['protocol']!r}")
    p = port.get("port")
    if isinstance(p, bool) or not (
        (isinstance(p, int) and 1 <= p <= 65535)
        or (isinstance(p, str) and len(p) <= 15 and IANA_SVC_NAME.match(p) and "--" not in p)
    ):
        errs.append(f"{at}.port: {p!r} is neither a port number nor a port name")
    return errs


def network_policy_errors(np: Doc) -> list[str]:
    """What the API server refuses in a NetworkPolicy (ValidateNetworkPolicy), plus what it
    would accept but never mean here: a rule without `from` admits everyone."""
    meta, spec = np["metadata"], np["spec"]
    errs: list[str] = []
    name = meta.get("name", "")
    if len(name) > 253 or not DNS1123_SUBDOMAIN.match(name):
        errs.append(f"metadata.name: {name!r}")
    errs += _labels_errors(meta.get("labels", {}), "metadata.labels")
    errs += _selector_errors(spec.get("podSelector"), "spec.podSelector")
    types = spec.get("policyTypes", [])
    if len(set(types)) != len(types) or not set(types) <= {"Ingress", "Egress"}:
        errs.append(f"spec.policyTypes: {types}")
    for i, rule in enumerate(spec.get("ingress") or []):
        at = f"spec.ingress[{i}]"
        if not rule.get("from"):
            errs.append(f"{at}: no `from`: every source admitted")
        for j, peer in enumerate(rule.get("from") or []):
            errs += _peer_errors(peer, f"{at}.from[{j}]")
        for j, port in enumerate(rule.get("ports") or []):
            errs += _port_errors(port, f"{at}.ports[{j}]")
    return errs


def _roundtrip(obj: Doc) -> Doc:
    """`obj` through the Kubernetes client's V1NetworkPolicy and back: a misspelt field is
    dropped, a wrong type refused."""
    model = API.deserialize(json.dumps(obj), "V1NetworkPolicy", None)
    out: Doc = API.sanitize_for_serialization(model)
    return out


# --- what the rendered workloads say -----------------------------------------------------


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    """Whether a label selector selects an object with these labels (an empty one: all)."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        has, value = e["key"] in labels, labels.get(e["key"])
        ok = {
            "In": has and value in e.get("values", []),
            "NotIn": not has or value not in e.get("values", []),
            "Exists": has,
            "DoesNotExist": not has,
        }[e["operator"]]
        if not ok:
            return False
    return True


def workloads(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d["kind"] in WORKLOADS]


def pod_labels(w: Doc) -> dict[str, str]:
    labels: dict[str, str] = w["spec"]["template"]["metadata"]["labels"]
    return labels


def container_ports(w: Doc) -> dict[str, int]:
    """The pods' container ports, by name (the number under its own name too)."""
    out: dict[str, int] = {}
    for c in w["spec"]["template"]["spec"]["containers"]:
        for p in c.get("ports", []):
            out[p["name"]] = out[str(p["containerPort"])] = p["containerPort"]
    return out


def served_ports(docs: list[Doc], w: Doc) -> set[int]:
    """The ports of `w`'s pods that some peer is meant to reach: a Service's target, the
    scrape annotation's port, a PodMonitor's endpoint. The rest (the operator's liveness
    port, kube-scheduler's HTTPS port) serve the kubelet's probes only."""
    ports, labels = container_ports(w), pod_labels(w)
    ns = w["metadata"]["namespace"]
    out: set[int] = set()
    for d in docs:
        if d["metadata"].get("namespace") != ns:
            continue
        if d["kind"] == "Service" and selects({"matchLabels": d["spec"]["selector"]}, labels):
            out |= {ports[str(p["targetPort"])] for p in d["spec"]["ports"]}
        if d["kind"] == "PodMonitor" and selects(d["spec"]["selector"], labels):
            out |= {
                ports[p["port"]] for p in d["spec"]["podMetricsEndpoints"] if p["port"] in ports
            }
    ann = w["spec"]["template"]["metadata"].get("annotations", {})
    if "prometheus.io/port" in ann:
        out.add(ports[ann["prometheus.io/port"]])
    return out


def policies(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d["kind"] == "NetworkPolicy"]


def selected(np: Doc, docs: list[Doc]) -> list[Doc]:
    """The workloads whose pods `np` selects (same namespace)."""
    return [
        w
        for w in workloads(docs)
        if w["metadata"]["namespace"] == np["metadata"]["namespace"]
        and selects(np["spec"]["podSelector"], pod_labels(w))
    ]


def rules_by_port(np: Doc) -> dict[int, list[Doc]]:
    out: dict[int, list[Doc]] = {}
    for rule in np["spec"].get("ingress") or []:
        for p in rule["ports"]:
            out.setdefault(p["port"], []).extend(rule["from"])
    return out


def peer_selects(peer: Doc, w: Doc) -> bool:
    """Whether a pod-selector peer (no namespaceSelector: the policy's namespace) admits
    the pods of workload `w` of the same namespace."""
    return (
        "podSelector" in peer
        and "namespaceSelector" not in peer
        and selects(peer["podSelector"], pod_labels(w))
    )


def check_policies(docs: list[Doc], exact: bool = True) -> None:
    """Every policy is valid, selects exactly one workload's pods (and is named after it),
    and opens exactly the ports those pods serve (`exact`; else some of them: a port
    whose peers are none stays closed), by their container port numbers; no workload is
    selected twice."""
    nps = policies(docs)
    for np in nps:
        name = np["metadata"]["name"]
        assert network_policy_errors(np) == [], name
        assert _roundtrip(np) == np, name
        sel = selected(np, docs)
        assert len(sel) == 1, f"{name} selects the pods of {[w['metadata']['name'] for w in sel]}"
        w = sel[0]
        assert w["metadata"]["name"] == name
        assert np["spec"]["policyTypes"] == ["Ingress"], name
        opened = set(rules_by_port(np))
        assert opened <= set(container_ports(w).values()), name
        served = served_ports(docs, w)
        assert opened == served if exact else opened <= served, name
        for rule in np["spec"].get("ingress") or []:
            assert all(p["protocol"] == "TCP" for p in rule["ports"])
    chosen = [w["metadata"]["name"] for np in nps for w in selected(np, docs)]
    assert len(chosen) == len(set(chosen)), chosen


# --- tests ----------------------------------------------------------------------------------


def test_every_component_gets_a_policy_that_selects_its_pods_and_opens_its_ports() -> None:
    docs = render("--set", ALL_ON)
    names = {w["metadata"]["name"] for w in workloads(docs)}
    assert names == {
        "perllm-operator",
        "perllm-extender",
        "perllm-scheduler",
        "perllm-agent",
        "perllm-twin",
        "perllm-router-chat",
        "perllm-router-code",
    }
    # one policy per workload, each selecting that workload's pods only
    assert {np["metadata"]["name"] for np in policies(docs)} == names
    check_policies(docs)
    by_name = {w["metadata"]["name"]: w for w in workloads(docs)}
    # the operator and kube-scheduler serve their kubelet probes only: no peer at all
    for name in ("perllm-operator", "perllm-scheduler"):
        assert find(docs, "NetworkPolicy", name)["spec"]["ingress"] == []
        assert container_ports(by_name[name])  # ... although they listen (probes)


def test_extender_port_only_from_the_scheduler_pods_metrics_only_from_prometheus() -> None:
    docs = render("--set", ALL_ON)
    np = find(docs, "NetworkPolicy", "perllm-extender")
    ext = find(docs, "Deployment", "perllm-extender")
    ports = container_ports(ext)
    by_port = rules_by_port(np)
    assert set(by_port) == {ports["http"], ports["metrics"]}
    (peer,) = by_port[ports["http"]]
    # the peer admits the perllm-scheduler's pods and no other workload's
    assert [w["metadata"]["name"] for w in workloads(docs) if peer_selects(peer, w)] == [
        "perllm-scheduler"
    ]
    assert by_port[ports["metrics"]] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]


def test_agents_admit_each_other_probe_peers_and_prometheus() -> None:
    cidr = "192.168.1.0/24"
    docs = render(
        "--set",
        ALL_ON,
        "--set-json",
        f'networkPolicy.agent.probeFrom=[{{"ipBlock":{{"cidr":"{cidr}"}}}}]',
    )
    check_policies(docs)
    agent = find(docs, "DaemonSet", "perllm-agent")
    (peers,) = rules_by_port(find(docs, "NetworkPolicy", "perllm-agent")).values()
    own = [p for p in peers if "podSelector" in p]
    assert [w["metadata"]["name"] for w in workloads(docs) if peer_selects(own[0], w)] == [
        agent["metadata"]["name"]
    ]
    assert {"ipBlock": {"cidr": cidr}} in peers
    assert {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    } in (peers)


def test_routers_admit_their_services_namespace_and_the_listed_clients() -> None:
    docs = render(
        "--set",
        ALL_ON,
        "--set-json",
        'networkPolicy.router.from=[{"namespaceSelector":{"matchLabels":'
        '{"kubernetes.io/metadata.name":"ingress-nginx"}}}]',
    )
    check_policies(docs)
    for name in ("perllm-router-chat", "perllm-router-code"):
        config = yaml.safe_load(find(docs, "ConfigMap", name)["data"]["router.yaml"])
        service_ns = config["discovery"]["service"].split("/")[0]
        (peers,) = rules_by_port(find(docs, "NetworkPolicy", name)).values()
        namespaces = [p["namespaceSelector"]["matchLabels"] for p in peers]
        assert namespaces == [
            {"kubernetes.io/metadata.name": ns}
            for ns in (service_ns, "ingress-nginx", "monitoring")
        ], name
    assert service_ns == "perllm-system"  # `code` has no namespace: the release's
    # only the listed clients (and Prometheus)
    off = render(
        "--set",
        ALL_ON + ",networkPolicy.router.fromServiceNamespace=false",
        "--set-json",
        'networkPolicy.router.from=[{"ipBlock":{"cidr":"203.0.113.0/24"}}]',
    )
    check_policies(off)
    (peers,) = rules_by_port(find(off, "NetworkPolicy", "perllm-router-chat")).values()
    assert peers[0] == {"ipBlock": {"cidr": "203.0.113.0/24"}} and len(peers) == 2


@pytest.mark.parametrize("profile", PROFILE_IDS)
def test_profiles_with_network_policies(profile: str) -> None:
    """Off by default (the extender's own excepted); on, every profile's policies hold."""
    docs = render(profile=profile, monitoring=True)
    assert [np["metadata"]["name"] for np in policies(docs)] == ["perllm-extender"]
    check_policies(docs)
    # with the Prometheus Operator's API: the cloud profile's agent is scraped through its
    # PodMonitor, not annotations
    on = render("--set", "networkPolicy.enabled=true", profile=profile, monitoring=True)
    assert {np["metadata"]["name"] for np in policies(on)} == {
        w["metadata"]["name"] for w in workloads(on)
    }
    check_policies(on)


def test_without_prometheus_peers_the_metrics_ports_admit_nobody() -> None:
    """An empty peer list renders no rule: a rule with an empty `from` would admit all."""
    docs = render(
        "--set",
        ALL_ON,
        "--set-json",
        "networkPolicy.metricsFrom=[]",
        "--set-json",
        "extender.networkPolicy.metricsFrom=[]",
    )
    check_policies(docs, exact=False)
    assert find(docs, "NetworkPolicy", "perllm-twin")["spec"]["ingress"] == []
    ext = find(docs, "Deployment", "perllm-extender")
    assert set(rules_by_port(find(docs, "NetworkPolicy", "perllm-extender"))) == {
        container_ports(ext)["http"]
    }


def test_host_network_kube_scheduler_reaches_the_extender_through_from() -> None:
    """k3s' own kube-scheduler (scheduler.enabled=false) runs in the server process on the
    host network: only an ipBlock (the nodes' CIDR) can admit it."""
    r = helm(
        "template", "perllm", str(CHART), "--kube-version", KUBE_VERSION,
        "--set", "scheduler.enabled=false", check=False,
    )  # fmt: skip
    assert r.returncode != 0
    assert "extender.networkPolicy: scheduler.enabled is false" in r.stderr, r.stderr
    assert "extender.networkPolicy.from" in r.stderr
    docs = render(
        "--set",
        "scheduler.enabled=false",
        "--set-json",
        'extender.networkPolicy.from=[{"ipBlock":{"cidr":"192.168.1.0/24"}}]',
    )
    check_policies(docs)
    ext = find(docs, "Deployment", "perllm-extender")
    by_port = rules_by_port(find(docs, "NetworkPolicy", "perllm-extender"))
    assert by_port[container_ports(ext)["http"]] == [{"ipBlock": {"cidr": "192.168.1.0/24"}}]
    # with the chart's scheduler, `from` adds to its pods
    both = render("--set-json", 'extender.networkPolicy.from=[{"ipBlock":{"cidr":"10.0.0.0/24"}}]')
    peers = rules_by_port(find(both, "NetworkPolicy", "perllm-extender"))[
        container_ports(find(both, "Deployment", "perllm-extender"))["http"]
    ]
    assert len(peers) == 2 and peers[1] == {"ipBlock": {"cidr": "10.0.0.0/24"}}


def test_routers_nobody_could_reach_fail_naming_the_values() -> None:
    r = helm(
        "template", "perllm", str(CHART), "--kube-version", KUBE_VERSION,
        "--set", "networkPolicy.enabled=true,router.enabled=true,router.services[0].name=chat,"
                 "networkPolicy.router.fromServiceNamespace=false",
        check=False,
    )  # fmt: skip
    assert r.returncode != 0
    assert "networkPolicy.router: fromServiceNamespace is false and from is empty" in r.stderr


BAD_PEERS = [
    # an ipBlock stands alone (the API server: "may not specify more than 1 peer type")
    (
        'networkPolicy.router.from=[{"ipBlock":{"cidr":"10.0.0.0/8"},"podSelector":{}}]',
        "at '/networkPolicy/router/from/0/podSelector': false schema",
    ),
    (
        'networkPolicy.agent.probeFrom=[{"ipBlock":{"cidr":"10.0.0.1"}}]',
        "probeFrom/0/ipBlock/cidr'",
    ),
    (
        'networkPolicy.metricsFrom=[{"ipBlock":{"cidr":"10.0.0.300/8"}}]',
        "metricsFrom/0/ipBlock/cidr'",
    ),
    # a typo would reach the API server as {} (every pod)
    (
        'networkPolicy.metricsFrom=[{"podSelector":{"matchLabel":{"a":"b"}}}]',
        "metricsFrom/0/podSelector'",
    ),
    (
        'networkPolicy.metricsFrom=[{"podSelector":{"matchExpressions":[{"key":"a","operator":"In"}]}}]',
        "matchExpressions/0': missing property 'values'",
    ),
    (
        'extender.networkPolicy.from=[{"namespaceSelector":{"matchExpressions":'
        '[{"key":"a","operator":"Exists","values":["b"]}]}}]',
        "at '/extender/networkPolicy/from/0/namespaceSelector/matchExpressions/0/values'",
    ),
    ("networkPolicy.metricsFrom=[{}]", "at '/networkPolicy/metricsFrom/0': minProperties"),
    (
        "networkPolicy.router.fromServiceNamespace=null",
        "at '/networkPolicy/router': missing property 'fromServiceNamespace'",
    ),
]


@pytest.mark.parametrize(("setting", "fragment"), BAD_PEERS, ids=[b[1] for b in BAD_PEERS])
def test_bad_peers_are_rejected_naming_the_value(setting: str, fragment: str) -> None:
    err = schema_refusal(setting, "--set-json")
    assert fragment in err, err


def test_ipv6_and_expression_peers_are_accepted(tmp_path: Path) -> None:
    values = tmp_path / "np.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "networkPolicy": {
                    "enabled": True,
                    "agent": {
                        "probeFrom": [{"ipBlock": {"cidr": "fd00::/8", "except": ["fd00::/16"]}}]
                    },
                    "metricsFrom": [
                        {
                            "namespaceSelector": {
                                "matchExpressions": [{"key": "team", "operator": "Exists"}]
                            },
                            "podSelector": {
                                "matchLabels": {"app.kubernetes.io/name": "prometheus"}
                            },
                        }
                    ],
                },
                "agent": {"enabled": True},
            }
        )
    )
    docs = render("-f", str(values))
    check_policies(docs)


def test_the_validator_refuses_what_the_api_server_refuses() -> None:
    """The ported rules catch the mistakes they are there for."""
    good = find(render("--set", ALL_ON), "NetworkPolicy", "perllm-agent")
    assert network_policy_errors(good) == []

    def with_peer(peer: Doc) -> list[str]:
        np = json.loads(json.dumps(good))
        np["spec"]["ingress"][0]["from"] = [peer]
        return network_policy_errors(np)

    assert with_peer({"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}})
    assert with_peer({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}})
    assert with_peer({"ipBlock": {"cidr": "10.0.0.0/33"}})
    assert with_peer({"podSelector": {"matchLabels": {"a": "-x"}}})
    assert with_peer({})
    np = json.loads(json.dumps(good))
    np["spec"]["ingress"][0]["ports"][0]["port"] = 70000
    np["spec"]["ingress"].append({"ports": [{"port": 80}]})
    assert len(network_policy_errors(np)) == 2


def test_the_documented_k3s_example_renders_valid_policies(tmp_path: Path) -> None:
    """docs/helm.md's k3s values (with the edge-k3s profile), and its commented
    host-network kube-scheduler variant."""
    doc = (CHART.parents[1] / "docs" / "helm.md").read_text()
    (block,) = re.findall(r"```yaml\n(# k3s-netpol-values\.yaml.*?)```", doc, re.S)
    values = yaml.safe_load(block)
    f = tmp_path / "k3s.yaml"
    f.write_text(yaml.safe_dump(values))
    docs = render("-f", str(f), profile="edge-k3s-values.yaml")
    check_policies(docs)
    assert {np["metadata"]["name"] for np in policies(docs)} == {
        w["metadata"]["name"] for w in workloads(docs)
    }
    commented = "\n".join(
        line.replace("# ", "", 1) for line in block.splitlines() if line.startswith("# ")
    )
    extender = yaml.safe_load(commented[commented.index("extender:") :])
    values.update(extender, scheduler={"enabled": False})
    f.write_text(yaml.safe_dump(values))
    docs = render("-f", str(f), profile="edge-k3s-values.yaml")
    check_policies(docs)
    ext = find(docs, "Deployment", "perllm-extender")
    by_port = rules_by_port(find(docs, "NetworkPolicy", "perllm-extender"))
    assert by_port[container_ports(ext)["http"]] == extender["extender"]["networkPolicy"]["from"]
