"""Kubernetes Node objects as `perllm.contract.Server`s.

Nodes carry what `perllm.devcluster.nodes.node_manifests` renders: the tier and hardware
labels and the link annotations. A node the extender cannot model is reported, with a
reason, instead of failing the request.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from perllm.contract import Link, Server, Tier
from perllm.labels import (  # noqa: F401 - re-exported names
    ANN_HARDWARE,
    ANN_LINK_BANDWIDTH,
    ANN_LINK_ENERGY,
    ANN_LINK_NOISE,
    ANN_LINK_RTT,
    DOMAIN,
    LABEL_HARDWARE,
    LABEL_TIER,
    ann_number,
    shown,
)
from perllm.profiles import Catalogue

Obj = dict[str, Any]


def meta_map(obj: Obj, key: str) -> dict[str, str]:
    """metadata.<key> (labels, annotations) with only its string entries; {} when absent."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return {}
    m = meta.get(key)
    if not isinstance(m, dict):
        return {}
    return {k: v for k, v in m.items() if isinstance(k, str) and isinstance(v, str)}


def node_name(obj: Obj) -> str | None:
    meta = obj.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    return name if isinstance(name, str) and name else None


def to_server(obj: Obj, catalogue: Catalogue) -> Server | str:
    """The node as a Server, or the reason it cannot be one."""
    name = node_name(obj)
    if name is None:
        return "node without metadata.name"
    labels, ann = meta_map(obj, "labels"), meta_map(obj, "annotations")
    tier = labels.get(LABEL_TIER)
    if tier not in {t.value for t in Tier}:
        return f"no valid {LABEL_TIER} label (got {tier if tier is None else shown(tier)})"
    hardware = labels.get(LABEL_HARDWARE) or ann.get(ANN_HARDWARE)
    if not hardware:
        return f"no {LABEL_HARDWARE} label or annotation"
    if hardware not in catalogue.hardware:
        return f"unknown hardware {shown(hardware)} (not in the catalogue)"
    try:
        bw = ann_number(ann, ANN_LINK_BANDWIDTH)
        if bw is None:
            return f"no {ANN_LINK_BANDWIDTH} annotation"
        extra = {
            field: v
            for field, key in (
                ("noise", ANN_LINK_NOISE),
                ("rtt_ms", ANN_LINK_RTT),
                ("energy_uj_per_bit", ANN_LINK_ENERGY),
            )
            if (v := ann_number(ann, key)) is not None
        }
        return Server(
            name=name,
            tier=Tier(tier),
            hardware=hardware,
            link=Link(bandwidth_mbps=bw, **extra),
        )
    except (ValueError, ValidationError) as e:
        return f"cannot model node: {_short(e)}"


def _short(e: Exception) -> str:
    if isinstance(e, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
        )
    return str(e)


def _rv(meta: Obj) -> str | None:
    rv = meta.get("resourceVersion")
    return rv if isinstance(rv, str) and rv else None


def _facts(obj: Obj) -> tuple[Any, Any]:
    """What a node's model depends on."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return None, None
    return meta.get("labels"), meta.get("annotations")


class NodeCache:
    """Node objects by name, for `nodeCacheCapable: true` requests (names only).

    Fed from `Nodes` requests, the node informer and, on a miss, the API lookup. Holds at
    most `max_nodes` (requests may name anything): the longest cached go first.
    """

    def __init__(self, max_nodes: int = 100_000) -> None:
        self.max_nodes = max_nodes
        self._nodes: dict[str, Obj] = {}
        self._lock = threading.Lock()
        self.gen = 0  # bumped when a node's modelled facts (labels, annotations) change
        # name -> (labels, annotations, Server or reason, the Server's JSON, resourceVersion
        # or None): modelling a node costs ~40 us (pydantic), ~40 ms per 1,000-node request
        # if done every time
        self._models: dict[str, tuple[Any, Any, Server | str, str, str | None]] = {}

    def model(self, name: str, obj: Obj, catalogue: Catalogue) -> tuple[Server | str, str]:
        """`to_server(obj)` and its JSON (the bandit cache key), recomputed only when the
        node's labels or annotations change (status churn does not count)."""
        meta = obj.get("metadata")
        labels = meta.get("labels") if isinstance(meta, dict) else None
        ann = meta.get("annotations") if isinstance(meta, dict) else None
        hit = self._models.get(name)
        if hit is not None and hit[0] == labels and hit[1] == ann:
            return hit[2], hit[3]
        srv = to_server(obj, catalogue)
        key = srv.model_dump_json() if isinstance(srv, Server) else ""
        with self._lock:
            self._models[name] = (
                labels,
                ann,
                srv,
                key,
                _rv(meta) if isinstance(meta, dict) else None,
            )
            if len(self._models) > 4 * max(len(self._nodes), 1024):  # drop departed nodes
                self._models = {k: v for k, v in self._models.items() if k in self._nodes}
        return srv, key

    def ingest(
        self, objs: list[Obj], catalogue: Catalogue
    ) -> tuple[dict[str, Server | str], dict[str, str]]:
        """The Nodes of a `nodeCacheCapable: false` request, cached and modelled in one pass
        under one lock: `{name: Server or reason}` in request order (first occurrence of a
        name wins) and `{name: the Server's JSON}` (two flat dicts, no tuple per node).

        Every request carries 1,000s of freshly decoded Node dicts, so an unchanged node
        must cost little: the same `metadata.resourceVersion` as when it was modelled (the
        API server's change marker) settles it with one string compare; without one, labels
        and annotations are compared. An unchanged node's model entry is not rewritten (no
        per-request garbage in the long-lived heap for the cyclic GC to chase)."""
        out: dict[str, Server | str] = {}
        keys: dict[str, str] = {}
        with self._lock:
            nodes, models = self._nodes, self._models
            for o in objs:
                meta = o.get("metadata")
                if not isinstance(meta, dict):
                    continue
                name = meta.get("name")
                if not isinstance(name, str) or not name or name in out:
                    continue
                rv = _rv(meta)
                hit = models.get(name)
                if hit is not None and rv is not None and rv == hit[4]:
                    srv, key = hit[2], hit[3]
                    changed = False
                else:
                    labels, ann = meta.get("labels"), meta.get("annotations")
                    if hit is not None and hit[0] == labels and hit[1] == ann:
                        srv, key = hit[2], hit[3]
                        changed = False
                    else:
                        srv = to_server(o, catalogue)
                        key = srv.model_dump_json() if isinstance(srv, Server) else ""
                        changed = True
                    if changed or rv is not None:  # a status-only change: remember its rv
                        models[name] = (labels, ann, srv, key, rv)
                if nodes.get(name) is None or changed:
                    self.gen += 1  # status churn (heartbeats) does not count
                nodes[name] = o
                out[name] = srv
                keys[name] = key
            self._bound()
            if len(models) > 4 * max(len(nodes), 1024):  # drop departed nodes
                self._models = {k: v for k, v in models.items() if k in nodes}
        return out, keys

    def _bound(self) -> None:
        """Under the lock: at most `max_nodes` nodes."""
        extra = len(self._nodes) - self.max_nodes
        if extra > 0:
            for name in list(itertools.islice(self._nodes, extra)):
                del self._nodes[name]
                self._models.pop(name, None)
            self.gen += 1

    def upsert(self, obj: Obj) -> None:
        name = node_name(obj)
        if name is not None:
            with self._lock:
                old = self._nodes.get(name)
                self._nodes[name] = obj
                if old is None or _facts(old) != _facts(obj):
                    self.gen += 1  # status churn (heartbeats) does not count
                if old is None:
                    self._bound()

    def remove(self, name: str) -> None:
        with self._lock:
            if self._nodes.pop(name, None) is not None:
                self.gen += 1

    def replace(self, objs: list[Obj]) -> None:
        """A full list (the informer's re-list): nodes not in it are gone."""
        fresh = {n: o for o in objs if (n := node_name(o)) is not None}
        with self._lock:
            self._nodes = fresh
            self.gen += 1
            self._bound()

    def get(self, name: str) -> Obj | None:
        with self._lock:
            return self._nodes.get(name)

    def get_many(self, names: list[str]) -> list[tuple[str, Obj | None]]:
        """`(name, get(name))` for each name, under one lock."""
        with self._lock:
            nodes = self._nodes
            return [(n, nodes.get(n)) for n in names]

    def missing(self, names: list[str]) -> list[str]:
        """The names not cached, under one lock."""
        with self._lock:
            nodes = self._nodes
            return [n for n in names if n not in nodes]

    def __len__(self) -> int:
        return len(self._nodes)


def kube_api_client(kubeconfig: str | None = None) -> Any | None:
    """A kubernetes ApiClient from KUBECONFIG / ~/.kube/config or the in-cluster
    configuration; None when there is none."""
    import kubernetes

    try:
        if kubeconfig:
            kubernetes.config.load_kube_config(kubeconfig)  # type: ignore[no-untyped-call]
        else:
            try:
                kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
            except kubernetes.config.ConfigException:
                kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    except Exception:
        return None
    client = kubernetes.client.ApiClient()
    if not client.configuration.verify_ssl:
        import urllib3

        # say it once here instead of a warning on every request of every informer
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        logging.getLogger("perllm.extender").warning(
            "the kubeconfig turns TLS verification off (insecure-skip-tls-verify)"
        )
    return client


def api_node_source(
    kubeconfig: str | None = None, api_client: Any | None = None
) -> Callable[[str], Obj | None] | None:
    """Node objects read from the API server on a cache miss (KUBECONFIG or in-cluster);
    None when no cluster configuration is available."""
    import kubernetes

    client = api_client if api_client is not None else kube_api_client(kubeconfig)
    if client is None:
        return None
    api = kubernetes.client.CoreV1Api(client)

    def fetch(name: str) -> Obj | None:
        try:
            node = api.read_node(name, _request_timeout=1.0)
        except Exception:
            return None
        out = api.api_client.sanitize_for_serialization(node)
        return out if isinstance(out, dict) else None

    return fetch
