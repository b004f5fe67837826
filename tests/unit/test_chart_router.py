"""The Helm chart's per-service routers: config Secrets and least privilege, limits
chart-wide and per service (the router's own schema), remote tiers (hardware, CA Secret),
and a service or remote tier listed twice refused.

Needs the pinned Helm (tools/build-binaries.sh helm); without it these tests skip, saying
so (chart_render.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from chart_render import CHART, _router_values, find, helm, render


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
