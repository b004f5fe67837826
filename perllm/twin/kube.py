"""What the twin reads from the cluster: LLMServices, their bound pods, and the nodes.

A periodic list (default every second) rather than watch streams: the cluster is small,
a list is one consistent snapshot, and an API server that goes away only costs a log
line and the last-known state (the world keeps running).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from perllm.contract import ServiceSpec
from perllm.costmodel import build_cost_table
from perllm.crd import GROUP, PLURAL, VERSION, InvalidService, service_spec
from perllm.labels import LABEL_SERVICE
from perllm.scenario import Scenario
from perllm.service_pods import by_service, own_pods
from perllm.twin.records import PodKey, SvcKey

log = logging.getLogger("perllm.twin")
Obj = dict[str, Any]


class KubeUnavailable(RuntimeError):
    """No kubeconfig and not in a cluster."""


def load_clients() -> tuple[Any, Any]:
    """(CoreV1Api, CustomObjectsApi) from KUBECONFIG / ~/.kube/config, else in-cluster."""
    from kubernetes import client, config

    try:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    except Exception as first:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            raise KubeUnavailable(
                f"no usable kubeconfig ({first}) and not running in a cluster; set KUBECONFIG"
            ) from None
    if not client.Configuration.get_default_copy().verify_ssl:
        # A local control plane without a CA in its kubeconfig: say so once, not per request.
        import urllib3

        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        log.warning("the kubeconfig disables TLS verification of the API server")
    return client.CoreV1Api(), client.CustomObjectsApi()


@dataclass
class ClusterView:
    services: dict[SvcKey, ServiceSpec] = field(default_factory=dict)
    pods: dict[PodKey, tuple[SvcKey, str]] = field(default_factory=dict)
    nodes: set[str] = field(default_factory=set)


class ClusterReader:
    """Lists the cluster and maps it onto the scenario; every problem is logged once."""

    def __init__(self, scenario: Scenario, core: Any, custom: Any, timeout_s: float = 5.0):
        self.sc = scenario
        self.core = core
        self.custom = custom
        self.timeout = timeout_s
        self.nodes = {n for n, _ in scenario.expanded_servers()}
        self._said: set[str] = set()
        self._valid: dict[str, bool] = {}
        self.healthy = False

    def _once(self, key: str, msg: str, *args: object) -> None:
        if key not in self._said:
            self._said.add(key)
            log.warning(msg, *args)

    def _usable(self, spec: ServiceSpec) -> bool:
        """The scenario's catalogue can model the service (model and variants known)."""
        key = spec.model_dump_json()
        if key not in self._valid:
            try:
                build_cost_table([spec], self.sc.expanded_servers(), self.sc.catalogue)
                self._valid[key] = True
            except (KeyError, ValueError) as e:
                self._valid[key] = False
                self._once(
                    f"svc:{key}", "LLMService %s: cannot be simulated (%s); ignored", spec.name, e
                )
        return self._valid[key]

    def read(self) -> ClusterView | None:
        """One snapshot, or None when the API server cannot be read (logged)."""
        try:
            objs = self.custom.list_cluster_custom_object(
                GROUP, VERSION, PLURAL, _request_timeout=self.timeout
            )
            raw = self.core.list_pod_for_all_namespaces(
                label_selector=LABEL_SERVICE,
                _request_timeout=self.timeout,
                _preload_content=False,  # JSON, as `service_pods` reads a pod
            )
            pods: list[Obj] = json.loads(raw.data)["items"]
            nodes = self.core.list_node(_request_timeout=self.timeout)
        except Exception as e:
            if self.healthy or "read" not in self._said:
                log.warning(
                    "cannot read the cluster (%s); keeping the last known state",
                    str(e).splitlines()[0][:200],
                )
            self._said.add("read")
            self.healthy = False
            return None
        if not self.healthy:
            log.info("reading the cluster")
        self.healthy = True
        view = ClusterView(nodes={n.metadata.name for n in nodes.items})
        for name in sorted(view.nodes - self.nodes):
            self._once(
                f"node:{name}", "node %s is not in the scenario: pods there are not simulated", name
            )
        owners: dict[SvcKey, Obj] = {}
        for obj in objs.get("items", []):
            meta = obj.get("metadata", {})
            try:
                spec = service_spec(obj)
            except InvalidService as e:
                self._once(f"bad:{meta.get('namespace')}/{meta.get('name')}", "%s", e)
                continue
            if self._usable(spec):
                key = (meta.get("namespace", "default"), spec.name)
                view.services[key], owners[key] = spec, obj
        for svc, p in self._own(pods, owners):
            meta, node = p["metadata"], (p.get("spec") or {}).get("nodeName")
            phase = (p.get("status") or {}).get("phase")
            if not node or meta.get("deletionTimestamp") or phase in ("Succeeded", "Failed"):
                continue
            if node not in self.nodes:
                continue
            if node not in view.nodes:  # deleted: its pods are bound until the pod GC runs
                self._once(
                    f"gone:{node}",
                    "node %s is not in the cluster: its pods are not simulated",
                    node,
                )
                continue
            view.pods[(svc[0], meta["name"])] = (svc, node)
        return view

    def _own(self, pods: list[Obj], owners: dict[SvcKey, Obj]) -> list[tuple[SvcKey, Obj]]:
        """The pods the services' children made (`service_pods.own_pods`), as the operator
        and the router count them: a hand-made pod (or a copy of a child) carrying a
        service's label was simulated as one of its replicas. Such a pod is logged once."""
        labelled = by_service(pods)
        out: list[tuple[SvcKey, Obj]] = []
        for svc, obj in owners.items():
            mine = own_pods(obj, labelled.get(svc, []))
            ids = {id(p) for p in mine}
            for p in labelled.get(svc, []):
                # (a terminating pod of a child since deleted, e.g. a tier scaled to 0, was
                # one: not a foreign pod to report)
                if id(p) not in ids and not p["metadata"].get("deletionTimestamp"):
                    pod = f"{svc[0]}/{p['metadata'].get('name')}"
                    self._once(
                        f"foreign:{pod}",
                        "pod %s is labelled %s=%s but no child of that LLMService made it: "
                        "not simulated",
                        pod,
                        LABEL_SERVICE,
                        svc[1],
                    )
            out += [(svc, p) for p in mine]
        return out
