"""Files the components read: kubeconfigs, tokens, scheduler configs, KWOK stages, Prometheus."""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from perllm.devcluster.certs import TlsFiles

PERLLM_SCHEDULER = "perllm-scheduler"
# Users of the token file. The schedulers run as system:kube-scheduler, so RBAC's bootstrap
# bindings (system:kube-scheduler, system:volume-scheduler) govern them as in a real cluster.
ADMIN_USER = "admin"
SCHEDULER_USER = "system:kube-scheduler"
# An identity with no bindings at all: tests grant it roles to check RBAC is enforced.
VIEWER_USER = "perllm-e2e-viewer"


@dataclass(frozen=True)
class Tokens:
    admin: str = field(default_factory=lambda: secrets.token_hex(16))
    scheduler: str = field(default_factory=lambda: secrets.token_hex(16))
    viewer: str = field(default_factory=lambda: secrets.token_hex(16))

    def csv(self) -> str:
        # token,user,uid,"group1,group2" (kube-apiserver --token-auth-file)
        return (
            f'{self.admin},{ADMIN_USER},{ADMIN_USER},"system:masters"\n'
            f"{self.scheduler},{SCHEDULER_USER},{SCHEDULER_USER}\n"
            f"{self.viewer},{VIEWER_USER},{VIEWER_USER}\n"
        )


def kubeconfig(server: str, token: str, ca_pem: bytes, user: str = ADMIN_USER) -> str:
    """A kubeconfig that verifies the API server against `ca_pem` (`certs.apiserver_tls`)."""
    cluster = {"server": server, "certificate-authority-data": base64.b64encode(ca_pem).decode()}
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [{"name": "perllm-dev", "cluster": cluster}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "perllm-dev", "context": {"cluster": "perllm-dev", "user": user}}],
        "current-context": "perllm-dev",
    }
    return yaml.safe_dump(doc, sort_keys=False)


def kubeconfig_server(path: Path) -> str:
    """The API server URL of a kubeconfig's current context; ValueError saying what is
    missing when the file is no such kubeconfig (`up --attach` names it)."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"cannot read it: {e}") from None
    if not isinstance(doc, dict):
        raise ValueError("not a kubeconfig (no YAML mapping)")
    current = doc.get("current-context")
    if not current:
        raise ValueError("no current-context (select one: kubectl config use-context NAME)")

    def named(section: str, name: object) -> dict[str, Any]:
        for item in doc.get(section) or []:
            if isinstance(item, dict) and item.get("name") == name:
                body = item.get(section[:-1])
                if isinstance(body, dict):
                    return body
        raise ValueError(f"no {section[:-1]} {name!r} (the current context's) in {section}")

    server = named("clusters", named("contexts", current).get("cluster")).get("server")
    if not isinstance(server, str) or not server:
        raise ValueError(f"context {current!r}: its cluster has no server URL")
    return server


@dataclass(frozen=True)
class Extender:
    """The PerLLM extender as the second scheduler sees it (its scheduler-config entry).

    An `https://` URL is called over TLS with client authentication: the server is verified
    against `tls_dir`'s CA and kube-scheduler presents its client certificate
    (`certs.TlsFiles.under(tls_dir)`; the Cluster fills `tls_dir` with fresh certificates when
    it is empty). An `http://` URL is plain HTTP (an extender run with `--insecure-http`)."""

    url: str = "https://127.0.0.1:8888/scheduler"
    ignorable: bool = True  # pods still schedule while no extender is running
    weight: int = 5
    http_timeout: str = "2s"
    tls_dir: str = ""

    @property
    def https(self) -> bool:
        return self.url.startswith("https://")

    def as_config(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "urlPrefix": self.url,
            "filterVerb": "filter",
            "prioritizeVerb": "prioritize",
            "weight": self.weight,
            "nodeCacheCapable": True,
            "httpTimeout": self.http_timeout,
            "ignorable": self.ignorable,
        }
        if self.https:
            if not self.tls_dir:  # kube-scheduler would skip verification without a CA
                raise ValueError(f"extender {self.url}: https needs tls_dir (its certificates)")
            f = TlsFiles.under(Path(self.tls_dir))
            doc["enableHTTPS"] = True
            doc["tlsConfig"] = {
                "caFile": str(f.ca),
                "certFile": str(f.client_cert),
                "keyFile": str(f.client_key),
            }
        return doc


# The perllm-scheduler profile looks at every feasible node: kube-scheduler's default stops
# its search after max(100, ~50 %) feasible nodes, from a rotating start, so at 200+ nodes
# the extender would choose among an arbitrary part of the fleet (and a different node set
# for each pod, defeating its per-set caches). The chart sets the same (docs/helm.md).
PERLLM_PERCENTAGE_OF_NODES_TO_SCORE = 100


def scheduler_config(
    kubeconfig_path: Path,
    scheduler_name: str,
    extender: Extender | None = None,
    client_qps: float | None = None,
    percentage_of_nodes_to_score: int | None = None,
) -> str:
    """`client_qps`: the scheduler's API rate limit (burst twice that); None keeps
    kube-scheduler's default (qps 50, burst 100), which caps binding near 55 pods/s.
    `percentage_of_nodes_to_score`: None is PerLLM's 100 for the perllm-scheduler profile
    and kube-scheduler's adaptive default for any other; 0 is always the adaptive default."""
    if percentage_of_nodes_to_score is None and scheduler_name == PERLLM_SCHEDULER:
        percentage_of_nodes_to_score = PERLLM_PERCENTAGE_OF_NODES_TO_SCORE
    profile: dict[str, Any] = {"schedulerName": scheduler_name}
    if percentage_of_nodes_to_score:
        profile["percentageOfNodesToScore"] = percentage_of_nodes_to_score
    doc: dict[str, Any] = {
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        # In the file, not --kubeconfig beside --config (that one is ignored with --config).
        "clientConnection": {"kubeconfig": str(kubeconfig_path)},
        "leaderElection": {"leaderElect": False},
        "profiles": [profile],
    }
    if client_qps:
        doc["clientConnection"].update(qps=client_qps, burst=int(2 * client_qps))
    if extender is not None:
        doc["extenders"] = [extender.as_config()]
    return yaml.safe_dump(doc, sort_keys=False)


# Project-written KWOK stages: node-initialize, pod-ready, pod-delete.
KWOK_STAGES = Path(__file__).with_name("kwok-stages.yaml").read_text()


def annotation_scrape_job(kubeconfig: Path, job: str = "kubernetes-pods") -> dict[str, Any]:
    """The annotation-driven pod job of the prometheus-community `prometheus` chart
    (`kubernetes-pods`: keep pods annotated prometheus.io/scrape=true, their
    prometheus.io/path and port; namespace, pod and node as labels), discovering through
    `kubeconfig` instead of in-cluster credentials. Which pods, ports and paths are
    scraped comes from the pods' own annotations, i.e. from the objects the chart and the
    operator create."""
    ann = "__meta_kubernetes_pod_annotation_prometheus_io_"
    return {
        "job_name": job,
        "honor_labels": True,
        "kubernetes_sd_configs": [{"role": "pod", "kubeconfig_file": str(kubeconfig)}],
        "relabel_configs": [
            {"source_labels": [f"{ann}scrape"], "action": "keep", "regex": "true"},
            {
                "source_labels": [f"{ann}path"],
                "action": "replace",
                "target_label": "__metrics_path__",
                "regex": "(.+)",
            },
            {
                "source_labels": ["__address__", f"{ann}port"],
                "action": "replace",
                "regex": r"([^:]+)(?::\d+)?;(\d+)",
                "replacement": "$1:$2",
                "target_label": "__address__",
            },
            {"action": "labelmap", "regex": "__meta_kubernetes_pod_label_(.+)"},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"source_labels": ["__meta_kubernetes_pod_node_name"], "target_label": "node"},
        ],
    }


def prometheus_config(scrape_configs: list[dict[str, Any]], self_port: int) -> str:
    """1 s intervals; Prometheus scrapes itself so `up == 1` proves it works."""
    jobs = [
        {"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{self_port}"]}]},
        *scrape_configs,
    ]
    doc = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "scrape_configs": jobs}
    return yaml.safe_dump(doc, sort_keys=False)
