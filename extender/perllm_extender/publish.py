"""Publication of decisions to the LLMService (docs/extender.md, "Publication").

For each decision about a pod of an LLMService: a merge patch of the status subresource's
`status.placement`, and a core/v1 Event on the LLMService (reason `Placed`, or
`PlacedLeastViolating` when nothing was feasible). Off the request path: `submit()` only
stores the latest placement per service and wakes a worker thread; the worker writes at
most once per service per `min_interval_s` (decisions in between are coalesced: the status
shows the latest, the Event counts the others). API errors are counted and logged once per
(service, error), never raised to the decision.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from perllm.crd import GROUP, KIND, PLURAL, VERSION
from perllm.timefmt import rfc3339
from perllm_extender.bandits import MAX_SERVICES
from perllm_extender.decision import DecisionEvent, trimmed

log = logging.getLogger("perllm.extender.publish")

COMPONENT = "perllm-extender"
MAX_CANDIDATES = 8  # in a published explanation
Obj = dict[str, Any]


class PublishApi(Protocol):
    def patch_status(self, namespace: str, name: str, body: Obj) -> None: ...

    def create_event(self, namespace: str, body: Obj) -> None: ...


def placement(ev: DecisionEvent, nodes: list[str], now: float | None = None) -> Obj:
    d = ev.decision
    return {
        "tier": d.tier,
        "nodes": nodes,
        "pod": ev.key.split("/", 1)[1],
        "chosen": d.chosen,
        "predictedTimeSeconds": d.predicted_time_s,
        "predictedEnergyJ": d.predicted_energy_j,
        "feasible": d.feasible,
        "decidedAt": rfc3339(now or time.time()),
        "explanation": trimmed(d.explanation, MAX_CANDIDATES),
    }


def event_body(ns: str, service: str, uid: str | None, p: Obj, coalesced: int, now: float) -> Obj:
    expl = p.get("explanation") or {}
    reason = "Placed" if p["feasible"] else "PlacedLeastViolating"
    msg = (
        f"pod {p['pod']} -> node {p['chosen']} ({p['tier']}): predicted "
        f"{p['predictedTimeSeconds']:.2f}s vs deadline {expl.get('deadline_s', 0.0):.2f}s, "
        f"{p['predictedEnergyJ']:.1f} J"
    )
    if not p["feasible"]:
        msg += "; no node could meet the requirements, least violating chosen"
    if coalesced:
        msg += f" (+{coalesced} earlier decision{'s' if coalesced > 1 else ''} coalesced)"
    ts = rfc3339(now)
    involved: Obj = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": service,
        "namespace": ns,
    }
    if uid:
        involved["uid"] = uid
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{service}.", "namespace": ns},
        "involvedObject": involved,
        "reason": reason,
        "message": msg[:1024],
        "type": "Normal" if p["feasible"] else "Warning",
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": COMPONENT,
        "firstTimestamp": ts,
        "lastTimestamp": ts,
        "count": 1 + coalesced,
    }


@dataclass
class _Pending:
    placement: Obj  # a decision's placement, or only {"nodes": [...]} (`decision` False)
    uid: str | None
    coalesced: int = 0
    decision: bool = True  # False: a status patch of placement.nodes alone, no Event


class Publisher:
    def __init__(
        self,
        api: PublishApi,
        *,
        min_interval_s: float = 1.0,
        service_nodes: Callable[[str, str], list[str]] | None = None,
        service_uid: Callable[[str, str], str | None] | None = None,
        on_failure: Callable[[str], None] | None = None,
        max_services: int = MAX_SERVICES,
    ) -> None:
        """`max_services`: services whose last write and nodes are remembered (the least
        recently published forgotten first: deleted services' entries stayed forever)."""
        self.api = api
        self.max_services = max_services
        self.min_interval_s = min_interval_s
        self.service_nodes = service_nodes or (lambda _ns, _s: [])
        self.service_uid = service_uid or (lambda _ns, _s: None)
        self.on_failure = on_failure or (lambda _what: None)
        self.published = 0
        self.failures = 0
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._last: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._nodes: OrderedDict[tuple[str, str], list[str]] = OrderedDict()  # last queued
        self._logged: set[tuple[str, str, str]] = set()
        self._cv = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None

    def submit(self, ev: DecisionEvent) -> None:
        """Queue the latest placement of the pod's service (never blocks on the API)."""
        if ev.decision.chosen is None:
            return
        k = (ev.namespace, ev.spec.name)
        # one entry per placed pod (the pod index already holds this decision)
        nodes = sorted(self.service_nodes(*k)) or [ev.decision.chosen]
        p = placement(ev, nodes)
        with self._cv:
            old = self._pending.get(k)
            self._pending[k] = _Pending(
                p,
                self.service_uid(*k),
                0 if old is None or not old.decision else old.coalesced + 1,
            )
            self._remember(self._nodes, k, nodes)
            self._cv.notify()

    def _remember(self, d: OrderedDict[tuple[str, str], Any], k: tuple[str, str], v: Any) -> None:
        """d[k] = v, most recent last, at most `max_services` entries (call under _cv)."""
        d[k] = v
        d.move_to_end(k)
        while len(d) > self.max_services:
            d.popitem(last=False)

    def nodes_changed(self, namespace: str, service: str) -> None:
        """A pod of the service went, is being deleted or was bound elsewhere: bring
        `status.placement.nodes` up to date without waiting for the next decision (a
        status patch of that field alone, no Event). Only for services this extender has
        published a decision for, and whose LLMService still exists."""
        k = (namespace, service)
        with self._cv:
            if k not in self._nodes:
                return
        uid = self.service_uid(*k)
        if uid is None:  # the LLMService is gone (or unknown): nothing to update
            return
        nodes = sorted(self.service_nodes(*k))
        with self._cv:
            if self._nodes.get(k) == nodes:
                return
            self._remember(self._nodes, k, nodes)
            pend = self._pending.get(k)
            if pend is not None:  # a decision not yet written: it carries the fresh nodes
                pend.placement = {**pend.placement, "nodes": nodes}
            else:
                self._pending[k] = _Pending({"nodes": nodes}, uid, decision=False)
            self._cv.notify()

    def flush(self, force: bool = True, deadline: float | None = None) -> int:
        """Publish what is due (all of it with `force`); returns how many services. Past
        `deadline` (time.monotonic()) the rest is dropped, with a log line."""
        now = time.monotonic()
        with self._cv:
            due = [
                k
                for k in self._pending
                if force or now - self._last.get(k, -1e18) >= self.min_interval_s
            ]
            items = [(k, self._pending.pop(k)) for k in due]
            for k in due:
                self._remember(self._last, k, now)
        for i, ((ns, svc), pend) in enumerate(items):
            if deadline is not None and time.monotonic() >= deadline:
                log.warning(
                    "publication of %d services dropped: past the shutdown deadline",
                    len(items) - i,
                )
                return i
            self._publish(ns, svc, pend)
        return len(items)

    def _publish(self, ns: str, svc: str, pend: _Pending) -> None:
        now = time.time()

        def status() -> None:
            self.api.patch_status(ns, svc, {"status": {"placement": pend.placement}})

        def event() -> None:
            self.api.create_event(
                ns, event_body(ns, svc, pend.uid, pend.placement, pend.coalesced, now)
            )

        calls: tuple[tuple[str, Callable[[], None]], ...] = (("status", status), ("event", event))
        if not pend.decision:
            calls = calls[:1]
        for what, call in calls:
            try:
                call()
            except Exception as e:
                self._failed(ns, svc, what, e)
                # The Event only after the status patch succeeded: that proves an LLMService
                # of this name exists in this namespace (no Event about services that do not
                # exist, nor in namespaces without one)
                break
            else:
                self.published += 1

    def _failed(self, ns: str, svc: str, what: str, e: Exception) -> None:
        self.failures += 1
        self.on_failure(what)
        why = _why(e)
        if len(self._logged) >= 4 * self.max_services:  # bounded: may log a failure again
            self._logged.clear()
        if (ns, svc, f"{what}:{why}") not in self._logged:
            self._logged.add((ns, svc, f"{what}:{why}"))
            log.warning(
                "publishing %s of LLMService %s/%s failed (logged once): %s", what, ns, svc, why
            )

    # -- worker ----------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="perllm-publish", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker and publish what is left, all within about `timeout` s plus one
        API call (each 5 s at most): at shutdown, with the API server unreachable, every
        pending service would otherwise take its own timeouts."""
        deadline = time.monotonic() + timeout
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.flush(deadline=deadline)  # what is left, once

    def _run(self) -> None:
        while True:
            with self._cv:
                if self._stop:
                    return
                if not self._pending:
                    self._cv.wait(1.0)
                    continue
                now = time.monotonic()
                wait = min(
                    self.min_interval_s - (now - self._last.get(k, -1e18)) for k in self._pending
                )
                if wait > 0:
                    self._cv.wait(wait)
                    continue
            try:
                self.flush(force=False)
            except Exception:
                log.exception("publisher flush failed")


def _why(e: Exception) -> str:
    status = getattr(e, "status", None)
    reason = getattr(e, "reason", None)
    if status is not None:
        return f"HTTP {status} {reason or ''}".strip()
    return f"{type(e).__name__}: {e}"


class KubePublishApi:
    """`PublishApi` on the kubernetes client."""

    def __init__(self, api_client: Any) -> None:
        import kubernetes

        self.custom = kubernetes.client.CustomObjectsApi(api_client)
        self.core = kubernetes.client.CoreV1Api(api_client)

    def patch_status(self, namespace: str, name: str, body: Obj) -> None:
        self.custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            body,
            _content_type="application/merge-patch+json",
            _request_timeout=5,
        )

    def create_event(self, namespace: str, body: Obj) -> None:
        self.core.create_namespaced_event(namespace, body, _request_timeout=5)  # type: ignore[arg-type]
