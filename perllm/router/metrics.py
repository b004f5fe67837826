"""The router's Prometheus metrics (one registry per router, so tests can run several)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

PROBE_RESULTS = ("answered", "refused", "timeout")
# `perllm_router_rejected_requests_total`'s reason of the router's own 4xx, per status (the
# listener's are `perllm.httpguard`'s: read_timeout 408, head_too_large 431)
REJECT_REASONS = {
    400: "invalid_request",
    401: "unauthorized",
    404: "model_not_found",
    408: "body_timeout",
    413: "body_too_large",
    415: "unsupported_media_type",
}
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)


class RouterMetrics:
    content_type = CONTENT_TYPE_LATEST

    # Over 60 lines by nature: one declaration per metric (name, help, labels, buckets),
    # each a typed attribute the hot path uses directly; nothing else happens here.
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.decisions = Counter(
            "perllm_router_decisions_total",
            "Requests placed by CS-UCB, per backend, tier and whether a feasible one existed.",
            ["backend", "tier", "feasible"],
            registry=r,
        )
        self.explored = Counter(
            "perllm_router_exploration_total",
            "Decisions that played a never-played (service, pool) arm.",
            ["backend", "tier"],
            registry=r,
        )
        self.judged = Counter(
            "perllm_router_requests_judged_total",
            "Completed requests, per backend and whether they met their deadline.",
            ["backend", "tier", "met"],
            registry=r,
        )
        self.attainment = Gauge(
            "perllm_router_attainment_ratio",
            "Share of completed requests that met their deadline, since start.",
            registry=r,
        )
        self.shed = Counter(
            "perllm_router_shed_requests_total",
            "Requests answered 503 by the router, per reason.",
            ["reason"],
            registry=r,
        )
        self.errors = Counter(
            "perllm_router_upstream_errors_total",
            "Upstream failures per backend and kind (connect, timeout, total_timeout, auth, "
            "status, stream_error, disconnect, client_disconnect, client_stalled).",
            ["backend", "kind"],
            registry=r,
        )
        self.discovery_errors = Counter(
            "perllm_router_discovery_errors_total",
            "Failed discovery rounds, per what failed: spec (the LLMService), pods (the pod "
            "or node list: the backends of the last good round are kept), bandwidth.",
            ["what"],
            registry=r,
        )
        self.ejected = Gauge(
            "perllm_router_backend_ejected",
            "1 from a refused connection or a timeout until the backend answers again.",
            ["backend"],
            registry=r,
        )
        self.probes = Counter(
            "perllm_router_probes_total",
            "Health probes of ejected backends, per backend and result (answered, refused, "
            "timeout).",
            ["backend", "result"],
            registry=r,
        )
        self.retries = Counter(
            "perllm_router_retries_total",
            "Requests decided again after their backend refused (or timed out) the connection.",
            registry=r,
        )
        self.rejected = Counter(
            "perllm_router_rejected_requests_total",
            "Requests refused with a 4xx, per status and reason: the router's (invalid_request, "
            "unauthorized, model_not_found, body_timeout, body_too_large, "
            "unsupported_media_type) and its listener's (read_timeout, head_too_large).",
            ["status", "reason"],
            registry=r,
        )
        self.abandoned = Counter(
            "perllm_router_abandoned_requests_total",
            "Requests whose client disconnected before they were sent to a backend (while "
            "sending its body or waiting for a slot).",
            registry=r,
        )
        # Read at scrape time (`set_function` by the router): no work per request.
        self.queued = Gauge(
            "perllm_router_queued_requests",
            "Requests waiting for a slot of limits.max_concurrency (at most limits.max_queue).",
            registry=r,
        )
        self.body_bytes = Gauge(
            "perllm_router_body_bytes",
            "Bytes of request bodies held, from their first byte until their request is "
            "answered (at most limits.body_budget_bytes).",
            registry=r,
        )
        self.inflight = Gauge(
            "perllm_router_inflight_requests",
            "Requests in flight per backend (the load CS-UCB sees).",
            ["backend"],
            registry=r,
        )
        self.latency = Histogram(
            "perllm_router_request_seconds",
            "End-to-end time of completed requests, per backend.",
            ["backend"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "perllm_router_time_to_first_token_seconds",
            "Time to the first upstream body chunk, per backend.",
            ["backend"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.decide_s = Histogram(
            "perllm_router_decision_seconds",
            "Time of one CS-UCB decision.",
            buckets=(1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
            registry=r,
        )
        self.status_writes = Counter(
            "perllm_router_status_writes_total",
            "Writes of the LLMService's status.routing, per result (ok, error).",
            ["result"],
            registry=r,
        )
        self._met = self._total = 0
        self._backends: dict[tuple[str, str], BackendMetrics] = {}
        # Per tier, [requests, met] judged at backends retired since start (status).
        self.gone: dict[str, list[int]] = {}

    def reject(self, status: int, reason: str | None = None) -> None:
        """A request refused with `status` (4xx), for `reason` (default: the status's)."""
        reason = reason or REJECT_REASONS.get(status, "invalid_request")
        self.rejected.labels(str(status), reason).inc()

    def judge(self, backend: str, tier: str, met: bool) -> None:
        self.judged.labels(backend, tier, "true" if met else "false").inc()
        self.count(met)

    def count(self, met: bool) -> None:
        self._total += 1
        self._met += met
        self.attainment.set(self._met / self._total)

    def backend(self, name: str, tier: str) -> BackendMetrics:
        """The labelled series of one backend, bound once (the hot path skips `labels`)."""
        key = (name, tier)
        if key not in self._backends:
            self._backends[key] = BackendMetrics(self, name, tier)
        return self._backends[key]

    def served(self) -> list[BackendMetrics]:
        """Every backend judged at least once since start and not retired (members, or
        not any more with requests still in flight); the retired ones are in `gone`."""
        return [b for b in self._backends.values() if b.requests]

    def retire(self, name: str) -> None:
        """Backend `name` left the membership and has nothing in flight: its labelled
        series are removed (pod names change at each rollout, so they would pile up) and
        its judged requests move to its tier's `gone`. A request still holding its
        `BackendMetrics` would only update children no longer exported."""
        for key in [k for k in self._backends if k[0] == name]:
            b = self._backends.pop(key)
            if b.requests:
                g = self.gone.setdefault(b.tier, [0, 0])
                g[0], g[1] = g[0] + b.requests, g[1] + b.met_requests
            for v in ("true", "false"):
                self.decisions.remove(name, b.tier, v)
                self.judged.remove(name, b.tier, v)
            self.explored.remove(name, b.tier)
            for kind in b._errors:
                self.errors.remove(name, kind)
        for result in PROBE_RESULTS:
            self.probes.remove(name, result)
        for m in (self.inflight, self.latency, self.ttft, self.ejected):
            m.remove(name)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class BackendMetrics:
    """One backend's children of the router's metrics, looked up once."""

    def __init__(self, m: RouterMetrics, name: str, tier: str) -> None:
        self._m, self.name, self.tier = m, name, tier
        self.requests = self.met_requests = 0  # judged, and within the deadline (status)
        self.feasible = m.decisions.labels(name, tier, "true")
        self.infeasible = m.decisions.labels(name, tier, "false")
        self.explored = m.explored.labels(name, tier)
        self.met = m.judged.labels(name, tier, "true")
        self.missed = m.judged.labels(name, tier, "false")
        self.inflight = m.inflight.labels(name)
        self.inflight.set(0)
        self.latency = m.latency.labels(name)
        self.ttft = m.ttft.labels(name)
        self._errors: dict[str, Any] = {}

    def judge(self, met: bool) -> None:
        (self.met if met else self.missed).inc()
        self.requests += 1
        self.met_requests += met
        self._m.count(met)

    def error(self, kind: str) -> Any:
        if kind not in self._errors:
            self._errors[kind] = self._m.errors.labels(self.name, kind)
        return self._errors[kind]
