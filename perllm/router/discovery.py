"""Backends from the cluster: the ready pods of one `LLMService` and their nodes.

Every `interval_s` (a periodic list, not a watch: one request for the LLMService, one for
its pods, one per node they run on, each with a timeout, in a worker thread off the event
loop):

- pods labelled `perllm.io/service=<name>` in the namespace that are the service's own,
  by the operator's rule (`perllm.service_pods`, its `own_pods`: made by a ReplicaSet of one of
  the LLMService's child Deployments, read from the pod alone; a hand-made copy of a child,
  a bare pod with the label, are left out), Running and Ready, not terminating, bound to
  a node and with an IP; the LLMService is read every round for its children (the spec's
  read where discovery follows it), the last one read standing in while it cannot be
  (before the first, the round fails as a failed pod list does);
- each pod's node modelled as a contract `Server` by the extender's own
  `perllm_extender.nodes.to_server` (tier and hardware labels, link annotations); a node
  that cannot be modelled leaves its pods out (logged once per reason);
- the URL from `url_template` (`{ip}`, `{port}`, `{namespace}`, `{pod}`, `{node}`), the
  port being the container port named `http`, else the first one, else `port`.

The router's membership is replaced only when it changed (`Router.set_backends`; CS-UCB's
learned statistics carry over). With a Prometheus URL, the measured bandwidth per node
(the extender's snapshot query, `perllm.telemetry.queries.snapshot`) is applied to the
backends on that node (`Router.set_bandwidth`). A failed list keeps the last membership.
One Kubernetes API client serves every call; stopping discovery closes it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from perllm.contract import ServiceSpec
from perllm.labels import LABEL_SERVICE
from perllm.profiles import Catalogue
from perllm.router.config import Backend
from perllm.router.periodic import Periodic
from perllm.service_pods import deployment_of, pod_deployments
from perllm.telemetry.prom import PromAccess

if TYPE_CHECKING:
    from perllm.router.app import Router

log = logging.getLogger("perllm.router.discovery")

Obj = dict[str, Any]


def _ready(pod: Obj) -> bool:
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    if meta.get("deletionTimestamp") or status.get("phase") != "Running":
        return False
    if not status.get("podIP") or not (pod.get("spec") or {}).get("nodeName"):
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def _port(pod: Obj, default: int) -> int:
    ports = [
        p
        for c in (pod.get("spec") or {}).get("containers") or []
        for p in c.get("ports") or []
        if isinstance(p.get("containerPort"), int)
    ]
    named = [p for p in ports if p.get("name") == "http"]
    return int((named or ports or [{"containerPort": default}])[0]["containerPort"])


def backends_from(
    pods: list[Obj],
    nodes: dict[str, Obj],
    catalogue: Catalogue,
    url_template: str = "http://{ip}:{port}",
    default_port: int = 8000,
    skipped: dict[str, str] | None = None,
) -> list[Backend]:
    """The ready pods as backends (pure: the cluster objects as JSON dicts). `skipped`
    collects pod → why it was left out."""
    from perllm_extender.nodes import to_server

    out: list[Backend] = []
    why = skipped if skipped is not None else {}
    # An IPv6 address is bracketed in a URL, unless the template brackets it already (the
    # way to write an IPv6 cluster's template before `{ip}` was bracketed here).
    bracket = "[{ip}]" not in url_template
    for pod in pods:
        meta = pod.get("metadata") or {}
        name, ns = meta.get("name", "?"), meta.get("namespace", "default")
        if not _ready(pod):
            why[name] = "not ready"
            continue
        node = pod["spec"]["nodeName"]
        if node not in nodes:
            why[name] = f"node {node} not found"
            continue
        server = to_server(nodes[node], catalogue)
        if isinstance(server, str):
            why[name] = f"node {node}: {server}"
            continue
        ip = pod["status"]["podIP"]
        url = url_template.format(
            ip=f"[{ip}]" if bracket and ":" in ip else ip,
            port=_port(pod, default_port), namespace=ns, pod=name, node=node,
        )  # fmt: skip
        try:
            b = Backend(
                name=name,
                url=url,
                tier=server.tier,
                hardware=server.hardware,
                link=server.link,
                node=node,
            )
        except ValidationError as e:  # one pod's URL, not the whole membership
            why[name] = "; ".join(str(err["msg"]) for err in e.errors())
            continue
        out.append(b)
    return out


def api_client(kubeconfig: str | None) -> Any:
    """A Kubernetes client: `kubeconfig`, else in-cluster, else ~/.kube/config."""
    from kubernetes import client, config

    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return client.ApiClient()


@dataclass
class Discovery(Periodic):
    """Keeps a router's backends to the ready pods of `namespace/service`."""

    router: Router
    namespace: str
    service: str
    url_template: str = "http://{ip}:{port}"
    default_port: int = 8000
    interval_s: float = 5.0
    timeout_s: float = 5.0
    kubeconfig: str | None = None
    prometheus: PromAccess = field(default_factory=PromAccess)  # url None: no bandwidth
    follow_spec: bool = False  # read the service's spec from its LLMService every round
    rounds: int = 0
    errors: int = 0
    _client: Any = field(default=None, repr=False)  # the ApiClient under `_api`, `_custom`
    _api: Any = field(default=None, repr=False)
    _custom: Any = field(default=None, repr=False)
    _prom: Any = field(default=None, repr=False)
    # What was last logged, kept for the current pods and the last spec error only (pod
    # names change at every rollout, and a connection error's text per attempt: a set of
    # all ever said grew for good).
    spec_error: str = ""
    # Why the last pod list failed and since when (time.time()); "" / None after a good one:
    # the members are then the last good round's (said in the BackendsReachable condition).
    list_error: str = ""
    list_error_since: float | None = None
    _skipped: dict[str, str] = field(default_factory=dict, repr=False)  # pod -> why
    # The LLMService as last read (whose children's pods are the backends), whether this
    # round tried to read it already, and why the last read failed ("" after a good one).
    owner: Obj | None = field(default=None, repr=False)
    owner_error: str = ""
    _owner_tried: bool = field(default=False, repr=False)
    _clash: set[str] = field(default_factory=set, repr=False)
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    def _kube(self) -> Any:
        """The one ApiClient both APIs use (its connection pool closed by `stop`)."""
        if self._client is None:
            self._client = api_client(self.kubeconfig)
        return self._client

    def _core(self) -> Any:
        if self._api is None:
            from kubernetes import client

            self._api = client.CoreV1Api(self._kube())
        return self._api

    def _read_owner(self) -> Obj:
        """The LLMService, read now and kept as `owner` (blocking)."""
        from perllm.crd import GROUP, PLURAL, VERSION

        if self._custom is None:
            from kubernetes import client

            self._custom = client.CustomObjectsApi(self._kube())
        self._owner_tried = True
        obj: Obj = self._custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, self.service, _request_timeout=self.timeout_s
        )
        self.owner, self.owner_error = obj, ""
        return obj

    def spec_once(self) -> ServiceSpec:
        """The LLMService's spec (blocking: run it in a thread)."""
        from perllm.crd import service_spec

        return service_spec(self._read_owner())

    def owner_once(self) -> Obj:
        """The LLMService whose own pods are the backends (blocking): read this round
        (by `spec_once` when following the spec), else the last one read, said once; none
        read yet, raises (the round fails: the last membership is kept)."""
        if not self._owner_tried:
            try:
                return self._read_owner()
            except Exception as e:
                why = str(getattr(e, "reason", None) or e)[:300]
                if self.owner is None:
                    raise RuntimeError(
                        f"cannot read LLMService {self.namespace}/{self.service} (whose "
                        f"own pods are the backends): {why}"
                    ) from e
                if why != self.owner_error:
                    log.warning(
                        "cannot read LLMService %s/%s: its pods are told by the last one "
                        "read: %s", self.namespace, self.service, why,
                    )  # fmt: skip
                self.owner_error = why
        if self.owner is None:
            raise RuntimeError(
                f"cannot read LLMService {self.namespace}/{self.service} (whose own pods "
                f"are the backends): {self.spec_error or 'not read yet'}"
            )
        return self.owner

    async def _follow_spec(self) -> bool:
        """Read the spec into the router; False when there is none to route with yet."""
        from perllm.crd import InvalidService
        from perllm.router.config import RouterConfigError

        what = f"LLMService {self.namespace}/{self.service}"
        try:
            spec = await asyncio.to_thread(self.spec_once)
            self.router.set_spec(spec, self.router.catalogue)
        except (InvalidService, RouterConfigError) as e:
            why = f"{what} is invalid: {e}"
        except Exception as e:  # not found, RBAC, API down: say which
            why = f"cannot read {what}: {getattr(e, 'reason', None) or e}"
        else:
            self.router.waiting_for = self.spec_error = ""
            return True
        self.errors += 1
        self.router.metrics.discovery_errors.labels("spec").inc()
        if why != self.spec_error:
            self.spec_error = why
            log.warning("%s%s", why, "" if self.router.spec else "; waiting for it")
        if self.router.spec is None:
            self.router.waiting_for = f"waiting for the service's spec: {why}"
            return False
        return True  # keep routing with the last spec read

    def list_once(self) -> list[Backend]:
        """One list of the service's own pods and their nodes (blocking: run it in a
        thread)."""
        api = self._core()
        mine = pod_deployments(self.owner_once())
        raw = api.list_namespaced_pod(
            self.namespace,
            label_selector=f"{LABEL_SERVICE}={self.service}",
            _request_timeout=self.timeout_s,
            _preload_content=False,
        )
        pods: list[Obj] = []
        skipped: dict[str, str] = {}
        for p in json.loads(raw.data)["items"]:
            dep = deployment_of(p)
            if dep in mine:
                pods.append(p)
            elif _ready(p):  # (as `backends_from` does, only a ready one is said)
                made = f"made by Deployment {dep}" if dep else "made by no Deployment"
                skipped[(p.get("metadata") or {}).get("name", "?")] = (
                    f"not {self.namespace}/{self.service}'s own: {made}, not one of its "
                    f"children ({', '.join(sorted(mine))})"
                )
        nodes: dict[str, Obj] = {}
        for n in {p.get("spec", {}).get("nodeName") for p in pods if _ready(p)}:
            if n:
                try:
                    r = api.read_node(n, _request_timeout=self.timeout_s, _preload_content=False)
                except Exception as e:
                    # A deleted node whose pods are still listed: those pods are left out
                    # ("node not found"), not the whole round failed, every round, until
                    # they are collected (the membership frozen meanwhile).
                    if getattr(e, "status", None) == 404:
                        continue
                    raise
                nodes[n] = json.loads(r.data)
        out = backends_from(
            pods, nodes, self.router.catalogue, self.url_template, self.default_port, skipped
        )
        said = {pod: why for pod, why in skipped.items() if why != "not ready"}
        for pod, why in said.items():
            if self._skipped.get(pod) != why:
                log.warning("pod %s/%s left out: %s", self.namespace, pod, why)
        self._skipped = said
        return out

    def bandwidth_once(self) -> dict[str, float]:
        """Measured Mbit/s per node from Prometheus (blocking), {} without it."""
        if not self.prometheus.url:
            return {}
        from perllm.telemetry import names, queries

        if self._prom is None:
            self._prom = self.prometheus.client()
        ans = self._prom.query(queries.snapshot("1m")["bandwidth"])
        if ans is None:
            return {}
        return {n: v / 1e6 for n, v in ans.by(names.NODE).items() if v > 0}

    async def refresh(self) -> None:
        self._owner_tried = False  # the LLMService is read once a round
        if self.follow_spec and not await self._follow_spec():
            return
        try:
            backends = await asyncio.to_thread(self.list_once)
        except Exception as e:  # API down, timeout, RBAC: keep what we have
            self.errors += 1
            self.router.metrics.discovery_errors.labels("pods").inc()
            why = str(getattr(e, "reason", None) or e)[:300]
            if self.list_error_since is None:
                self.list_error_since = time.time()
            if why != self.list_error:
                log.warning("discovery of %s/%s failed: %s", self.namespace, self.service, why)
            self.list_error = why
            return
        self.list_error, self.list_error_since = "", None
        self.rounds += 1
        static = {b.name for b in self.router.static}
        clash = {b.name for b in backends if b.name in static}
        for name in clash - self._clash:
            log.warning("pod %s left out: a static backend has its name", name)
        self._clash = clash
        backends = [b for b in backends if b.name not in static] + self.router.static
        if self.router.set_backends(backends):
            log.info("%s/%s: %d ready backends", self.namespace, self.service, len(backends))
        try:
            bw = await asyncio.to_thread(self.bandwidth_once)
        except Exception as e:
            self.router.metrics.discovery_errors.labels("bandwidth").inc()
            log.warning("bandwidth from Prometheus failed: %s", e)
            return
        for b in backends:
            if b.node in bw:
                self.router.set_bandwidth(b.name, bw[b.node])

    @property
    def left_out(self) -> dict[str, str]:
        """Ready pods of the last good round left out, and why (no tier label, ...)."""
        return dict(self._skipped)

    async def step(self) -> None:
        await self.refresh()

    async def stop(self) -> None:
        """Stop the loop and close the API client (again: nothing more); a later round
        opens a new one."""
        await super().stop()
        if self._client is not None:  # its connection pool and threads
            self._client.close()
        self._client = self._api = self._custom = None
