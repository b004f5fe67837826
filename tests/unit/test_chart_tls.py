"""The chart's extender TLS and NetworkPolicy (docs/helm.md, "Extender TLS")."""

from __future__ import annotations

import base64
from typing import Any

from chart_render import find, render, scheduler_config
from cryptography import x509

Doc = dict[str, Any]


def _args(docs: list[Doc]) -> list[str]:
    c = find(docs, "Deployment", "perllm-extender")["spec"]["template"]["spec"]["containers"][0]
    return list(c["args"])


def _cert(secret: Doc, key: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(base64.b64decode(secret["data"][key]))


def test_default_is_mutual_tls_with_helm_made_certificates() -> None:
    docs = render(namespace="perllm-x")
    args = _args(docs)
    assert "--tls-client-ca=/etc/perllm-extender/tls/ca.crt" in args
    assert "--metrics-port=8889" in args
    assert "--insecure-http" not in args and "--debug-routes" not in args
    pod = find(docs, "Deployment", "perllm-extender")["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["readinessProbe"]["httpGet"]["port"] == "metrics"
    assert c["livenessProbe"]["httpGet"]["port"] == "metrics"
    # each side mounts only its own pair
    assert [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v] == [
        "perllm-extender-tls"
    ]
    spod = find(docs, "Deployment", "perllm-scheduler")["spec"]["template"]["spec"]
    assert [v["secret"]["secretName"] for v in spod["volumes"] if "secret" in v] == [
        "perllm-extender-client-tls"
    ]
    server = find(docs, "Secret", "perllm-extender-tls")
    client = find(docs, "Secret", "perllm-extender-client-tls")
    ca = _cert(server, "ca.crt")
    assert _cert(client, "ca.crt") == ca
    srv, cli = _cert(server, "tls.crt"), _cert(client, "tls.crt")
    for leaf in (srv, cli):
        leaf.verify_directly_issued_by(ca)
    sans = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "perllm-extender.perllm-x.svc" in sans.get_values_for_type(x509.DNSName)
    ext = scheduler_config(docs)["extenders"][0]
    assert ext["urlPrefix"].startswith("https://perllm-extender.perllm-x.svc:")
    assert ext["enableHTTPS"] is True
    assert set(ext["tlsConfig"]) == {"caFile", "certFile", "keyFile"}


def test_tls_off_is_plain_http_and_cert_manager_makes_the_secrets() -> None:
    off = render("--set", "extender.tls.enabled=false,extender.debugRoutes=true")
    assert "--insecure-http" in _args(off) and "--debug-routes" in _args(off)
    assert not [d for d in off if d["kind"] == "Secret" and "extender" in d["metadata"]["name"]]
    ext = scheduler_config(off)["extenders"][0]
    assert ext["urlPrefix"].startswith("http://") and "tlsConfig" not in ext
    cm = render("--set", "extender.tls.certManager.enabled=true")
    assert not [d for d in cm if d["kind"] == "Secret" and "extender" in d["metadata"]["name"]]
    certs = {d["spec"]["secretName"]: d["spec"] for d in cm if d["kind"] == "Certificate"}
    assert certs["perllm-extender-tls"]["usages"][-1] == "server auth"
    assert certs["perllm-extender-client-tls"]["usages"][-1] == "client auth"
    assert certs["perllm-extender-ca"]["isCA"] is True


def test_network_policy_admits_only_the_scheduler_and_the_monitoring_namespace() -> None:
    docs = render()
    np = find(docs, "NetworkPolicy", "perllm-extender")["spec"]
    assert np["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "extender"
    api, metrics = np["ingress"]
    (peer,) = api["from"]
    assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "scheduler"
    assert api["ports"] == [{"port": 8888, "protocol": "TCP"}]
    assert metrics["ports"] == [{"port": 8889, "protocol": "TCP"}]
    assert metrics["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }
    # no metrics peers: no rule at all (an empty `from` would admit everyone)
    none = render("--set-json", "extender.networkPolicy.metricsFrom=[]")
    assert len(find(none, "NetworkPolicy", "perllm-extender")["spec"]["ingress"]) == 1
    off = render("--set", "extender.networkPolicy.enabled=false")
    assert not [d for d in off if d["kind"] == "NetworkPolicy"]
