"""PerLLM pods and the nodes they run on.

Fed by the pod informer (bindings as the API server reports them) and, without one, by
the extender's own decisions (the chosen node is assumed to be where the pod lands). Used
to sum per-pod load per node, to list a service's placed nodes, and to forget pods that
are gone.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from perllm_extender.services import pod_key, pod_uid, service_label

Obj = dict[str, Any]


@dataclass(frozen=True)
class PodInfo:
    key: str  # namespace/name
    uid: str
    service: str
    node: str | None
    bound: bool  # node from the API server (spec.nodeName), not assumed from a decision
    # deletionTimestamp set: still on its node (load) but no longer one of the service's
    # placed pods (a replaced pod's old copy must not linger in status.placement.nodes)
    terminating: bool = False
    # what the API server says (None: only assumed from a decision): the pod's
    # spec.schedulerName, which `security.PodVerifier` compares with the request's
    scheduler: str | None = None
    from_api: bool = False


def _placed(p: PodInfo | None) -> tuple[str, str | None] | None:
    """What a pod contributes to its service's placed nodes."""
    if p is None or p.terminating:
        return None
    return (p.service, p.node)


class PodIndex:
    def __init__(self) -> None:
        self._pods: dict[str, PodInfo] = {}
        self._lock = threading.Lock()
        self.informed = False  # True once an informer has listed pods: absence means gone
        # (namespace, service) whose placed nodes the API server changed: a pod gone, being
        # deleted or bound elsewhere than assumed (called outside the lock)
        self.on_change: Callable[[str, str], None] | None = None

    def _changed(self, key: str, before: PodInfo | None, after: PodInfo | None) -> None:
        if self.on_change is None or _placed(before) == _placed(after):
            return
        ns = key.split("/", 1)[0]
        for p in {before, after}:
            if p is not None:
                self.on_change(ns, p.service)

    def upsert(self, obj: Obj) -> None:
        """A pod from the API server; finished pods are removed."""
        svc = service_label(obj)
        key = pod_key(obj)
        status = obj.get("status")
        phase = status.get("phase") if isinstance(status, dict) else None
        if svc is None or phase in ("Succeeded", "Failed"):
            self.remove(key)
            return
        spec = obj.get("spec")
        node = spec.get("nodeName") if isinstance(spec, dict) else None
        sched = spec.get("schedulerName") if isinstance(spec, dict) else None
        meta = obj.get("metadata")
        terminating = isinstance(meta, dict) and meta.get("deletionTimestamp") is not None
        with self._lock:
            old = self._pods.get(key)
            if not node and old is not None and old.uid == pod_uid(obj):
                node, bound = old.node, old.bound  # keep an assumed node until bound
            else:
                bound = bool(node)
            new = self._pods[key] = PodInfo(
                key,
                pod_uid(obj),
                svc,
                node if isinstance(node, str) and node else None,
                bound,
                terminating,
                sched if isinstance(sched, str) else None,
                True,
            )
        self._changed(key, old, new)

    def replace(self, objs: list[Obj]) -> None:
        """A full list (informer re-list): pods not in it are gone."""
        keep = {pod_key(o) for o in objs}
        with self._lock:
            gone = [self._pods.pop(k) for k in [k for k in self._pods if k not in keep]]
        for p in gone:
            self._changed(p.key, p, None)
        for o in objs:
            self.upsert(o)
        self.informed = True

    def assume(self, key: str, uid: str, service: str, node: str) -> None:
        """The extender chose `node` for the pod; a binding the API reported wins."""
        with self._lock:
            old = self._pods.get(key)
            if old is not None and old.uid == uid:
                if not old.bound:  # keep what the API server said about the pod
                    self._pods[key] = dataclasses.replace(old, service=service, node=node)
                return
            self._pods[key] = PodInfo(key, uid, service, node, False)

    def remove(self, key: str) -> None:
        with self._lock:
            old = self._pods.pop(key, None)
        self._changed(key, old, None)

    def get(self, key: str) -> PodInfo | None:
        with self._lock:
            return self._pods.get(key)

    def node_of(self, key: str) -> str | None:
        p = self.get(key)
        return p.node if p is not None else None

    def service_nodes(self, namespace: str, service: str) -> list[str]:
        """Sorted nodes of a service's placed pods (not those being deleted)."""
        prefix = f"{namespace}/"
        with self._lock:
            return sorted(
                p.node
                for p in self._pods.values()
                if p.service == service
                and p.node
                and not p.terminating
                and p.key.startswith(prefix)
            )

    def __len__(self) -> int:
        return len(self._pods)
