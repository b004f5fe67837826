"""Informers: list + watch of Nodes, PerLLM pods and LLMServices into the extender's caches.

Each informer is a daemon thread: list (raw JSON, resourceVersion), then watch from that
version with server-side timeouts and bookmarks; a 410 Gone (version too old) re-lists;
other errors back off exponentially (0.5 s to 30 s) and are logged once per outage. The
handlers are plain functions of (event type, object), so they are unit-tested on synthetic
events without an API server. With informers the NodeCache is complete and the per-miss
API read (`nodes.api_node_source`) stays only as a fallback.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from perllm.crd import GROUP, PLURAL, VERSION, InvalidService, service_spec
from perllm.labels import LABEL_SERVICE
from perllm_extender.nodes import NodeCache, node_name
from perllm_extender.pods import PodIndex
from perllm_extender.services import ServiceRegistry

log = logging.getLogger("perllm.extender.informers")

Obj = dict[str, Any]
MIN_WATCH_S = 1.0  # a watch (with its list) ending sooner is paced by the backoff
Handler = Callable[[str, Obj], None]
Lister = Callable[[list[Obj]], None]


# -- handlers (the part that is tested on synthetic events) -------------------------------
def node_handlers(cache: NodeCache) -> tuple[Handler, Lister]:
    def on_event(kind: str, obj: Obj) -> None:
        if kind == "DELETED":
            name = node_name(obj)
            if name is not None:
                cache.remove(name)
        else:
            cache.upsert(obj)

    return on_event, cache.replace


def pod_handlers(pods: PodIndex) -> tuple[Handler, Lister]:
    from perllm_extender.services import pod_key

    def on_event(kind: str, obj: Obj) -> None:
        if kind == "DELETED":
            pods.remove(pod_key(obj))
        else:
            pods.upsert(obj)

    return on_event, pods.replace


def service_handlers(services: ServiceRegistry) -> tuple[Handler, Lister]:
    warned: set[tuple[str, str]] = set()

    def ident(obj: Obj) -> tuple[str, str]:
        meta = obj.get("metadata") or {}
        return str(meta.get("namespace") or ""), str(meta.get("name") or "")

    def on_event(kind: str, obj: Obj) -> None:
        ns, name = ident(obj)
        if kind == "DELETED":
            services.remove(name, ns)
            return
        try:
            services.add_llmservice(obj)
        except InvalidService as e:
            services.remove(name, ns)
            if (ns, str(e)) not in warned:
                warned.add((ns, str(e)))
                log.warning("ignoring LLMService %s/%s: %s", ns, name, e)

    def on_list(objs: list[Obj]) -> None:
        specs = []
        for o in objs:
            try:
                specs.append((ident(o)[0], service_spec(o)))
            except InvalidService as e:
                log.warning("ignoring LLMService %s/%s: %s", *ident(o), e)
        services.replace(specs)
        for o in objs:
            services.note_uid(o)

    return on_event, on_list


# -- the watch loop ---------------------------------------------------------------------
class Informer:
    """List+watch of one resource. `list_fn(**kwargs)` is a kubernetes client list call
    (e.g. `CoreV1Api.list_node`); `kwargs` fixed arguments (label selector, group, ...)."""

    def __init__(
        self,
        name: str,
        list_fn: Callable[..., Any],
        on_event: Handler,
        on_list: Lister,
        *,
        kwargs: dict[str, Any] | None = None,
        watch_timeout_s: int = 30,
        backoff_max_s: float = 30.0,
    ) -> None:
        self.name, self.list_fn, self.kwargs = name, list_fn, dict(kwargs or {})
        self.on_event, self.on_list = on_event, on_list
        self.watch_timeout_s, self.backoff_max_s = watch_timeout_s, backoff_max_s
        self.synced = False
        self.resource_version: str | None = None
        self.last_error: str | None = None
        self.relists = 0
        self._stop = threading.Event()
        self._watch: Any = None
        self._thread: threading.Thread | None = None

    def list_once(self) -> None:
        resp = self.list_fn(**self.kwargs, _preload_content=False, _request_timeout=30)
        doc = json.loads(resp.data)
        self.on_list([o for o in doc.get("items") or [] if isinstance(o, dict)])
        self.resource_version = (doc.get("metadata") or {}).get("resourceVersion")
        self.synced = True
        self.relists += 1

    def handle(self, event: object) -> bool:
        """Apply one watch event; False when the watch must re-list (410 Gone)."""
        if not isinstance(event, dict):
            # the client yields None for a blank (keep-alive) or unparsable line: skipped,
            # as raising here re-listed the whole resource
            return True
        kind, obj = event.get("type"), event.get("raw_object") or event.get("object")
        if not isinstance(obj, dict) or not isinstance(kind, str):
            return True
        if kind == "ERROR":
            if obj.get("code") == 410:
                return False
            raise RuntimeError(f"watch error: {obj.get('reason')}: {obj.get('message')}")
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if rv:
            self.resource_version = rv
        if kind != "BOOKMARK":
            self.on_event(kind, obj)
        return True

    def _watch_once(self) -> bool:
        from kubernetes import watch

        w = watch.Watch()  # type: ignore[no-untyped-call]
        # Events as plain dicts: without a return type the client skips building its model
        # objects (~1 ms per Pod), which on a busy cluster competed with decisions for the
        # GIL. (`deserialize=False` would too, but breaks the client's own ERROR handling.)
        setattr(w, "get_return_type", lambda func: None)  # noqa: B010
        self._watch = w
        try:
            for ev in w.stream(  # type: ignore[no-untyped-call]
                self.list_fn,
                **self.kwargs,
                resource_version=self.resource_version,
                timeout_seconds=self.watch_timeout_s,
                allow_watch_bookmarks=True,
                _request_timeout=self.watch_timeout_s + 10,
            ):
                if self._stop.is_set():
                    return True
                if not self.handle(ev):
                    return False
        finally:
            w.stop()  # type: ignore[no-untyped-call]
            self._watch = None
        return True

    def run(self) -> None:
        from kubernetes.client.exceptions import ApiException

        backoff = 0.5
        relist = True
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                if relist:
                    self.list_once()
                    relist = False
                relist = not self._watch_once()
                if self._stop.is_set():
                    return
                if time.monotonic() - started < MIN_WATCH_S:
                    # a watch the server (or a proxy) ends at once, cleanly or with 410
                    # again and again: back off rather than spin list/watch requests
                    self._failed(f"watch ended within {MIN_WATCH_S:g} s of its start")
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self.backoff_max_s)
                    continue
                if self.last_error is not None:
                    log.info("%s informer: watching again", self.name)
                self.last_error = None
                backoff = 0.5
            except ApiException as e:
                if self._stop.is_set():
                    return
                if e.status == 410:  # too old: list again from now
                    relist = True
                    if time.monotonic() - started < MIN_WATCH_S:
                        self._failed(f"410 Gone within {MIN_WATCH_S:g} s of a list")
                        self._stop.wait(backoff)
                        backoff = min(backoff * 2, self.backoff_max_s)
                    continue
                self._failed(f"HTTP {e.status} {e.reason}")
                relist = True
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.backoff_max_s)
            except Exception as e:
                if self._stop.is_set():  # the connection closed under us: we are stopping
                    return
                self._failed(f"{type(e).__name__}: {e}")
                relist = True
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.backoff_max_s)

    def _failed(self, why: str) -> None:
        if self.last_error is None:
            log.warning("%s informer: %s (retrying with backoff; logged once)", self.name, why)
        self.last_error = why

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self.run, name=f"perllm-informer-{self.name}", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        w = self._watch
        if w is not None:
            w.stop()
        if self._thread is not None:
            self._thread.join(timeout)  # a blocked read ends at the watch timeout (daemon)
            self._thread = None


def kube_informers(
    api_client: Any, nodes: NodeCache, pods: PodIndex, services: ServiceRegistry
) -> list[Informer]:
    """The three informers on a kubernetes ApiClient."""
    import kubernetes

    core = kubernetes.client.CoreV1Api(api_client)
    custom = kubernetes.client.CustomObjectsApi(api_client)
    on_node, list_nodes = node_handlers(nodes)
    on_pod, list_pods = pod_handlers(pods)
    on_svc, list_svcs = service_handlers(services)
    return [
        Informer("nodes", core.list_node, on_node, list_nodes),
        Informer(
            "pods",
            core.list_pod_for_all_namespaces,
            on_pod,
            list_pods,
            kwargs={"label_selector": LABEL_SERVICE},
        ),
        Informer(
            "llmservices",
            custom.list_cluster_custom_object,
            on_svc,
            list_svcs,
            kwargs={"group": GROUP, "version": VERSION, "plural": PLURAL},
        ),
    ]
