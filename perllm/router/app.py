"""The router's ASGI application (plain ASGI: the hot path is a few awaits per chunk).

Per request: read and size the body (limits, 4xx), wait for a slot of the bounded
concurrency, place it with CS-UCB from the backends' in-flight requests and measured
bandwidth, proxy it (streamed as it arrives, bytes untouched), and learn from what was
observed: the end-to-end time and the output tokens.

The backends are a membership snapshot (`_Members`) that can be replaced while requests
are in flight (`Router.set_backends`, fed by `perllm.router.discovery`): a request keeps
the snapshot it was decided in; CS-UCB's learned statistics are shared by all snapshots.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from perllm.router.config import Backend, RouterConfig
from perllm.router.decision import Decider, Ticket
from perllm.router.metrics import BackendMetrics, RouterMetrics
from perllm.router.proxy import FORWARDED, TokenCounter
from perllm.router.request import BadRequest, Parsed, deadline_header, parse
from perllm.router.upstream import Pool, UpstreamError

log = logging.getLogger("perllm.router")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

ROUTES = {"/v1/chat/completions": True, "/v1/completions": False}
DECISION_HEADER = b"x-perllm-decision"
DEADLINE_HEADER = b"x-perllm-deadline-s"
JSON = b"application/json"
_CTYPE_JSON = (b"content-type", JSON)


class Shed(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


@dataclass
class _Members:
    """One membership of the backends and the decider over exactly them."""

    backends: list[Backend]
    names: list[str]
    decider: Decider
    pools: list[Pool]
    bw: np.ndarray[Any, np.dtype[np.float64]]
    metrics: list[BackendMetrics]


@dataclass
class _Flight:
    """One proxied request: what learning needs when it ends."""

    members: _Members
    ticket: Ticket
    start: float
    deadline_s: float | None  # the header's tightening, if any
    counter: TokenCounter
    first: float | None = None


def _key(b: Backend) -> tuple[Any, ...]:
    """What makes a new decider necessary (bandwidth alone does not)."""
    return (b.name, b.url, b.tier, b.hardware, b.link, b.model)


class Router:
    def __init__(self, config: RouterConfig, backends: Sequence[Backend] | None = None) -> None:
        self.config = config
        self.spec, self.catalogue = config.resolve()
        self.models = config.model_names(self.spec)
        self.limits = config.limits
        self.metrics = RouterMetrics()
        self._inflight: dict[str, int] = {}
        self._bw_override: dict[str, float] = {}
        self._pools: dict[tuple[str, str], Pool] = {}
        self._members: _Members | None = None
        self._stats: Any = None  # CS-UCB's ArmStats, shared across memberships
        self._slots = asyncio.Semaphore(self.limits.max_concurrency)
        self._queued = 0
        dl = self.spec.requirements.deadline
        self._dl_s, self._dl_tok = dl.seconds, dl.per_output_token_s
        self._expected_out = self.spec.traffic.output_tokens
        self._min_quality = self.spec.requirements.min_quality
        self._models_body = json.dumps(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": "perllm"}
                    for m in sorted(self.models)
                ],
            }
        ).encode()
        initial = list(backends) if backends is not None else list(config.backends)
        if initial:
            self.set_backends(initial)
        self.discovery = None
        if config.discovery is not None:
            from perllm.router.discovery import Discovery

            d = config.discovery
            ns, name = d.service.split("/", 1)
            self.discovery = Discovery(
                self, ns, name, d.url_template, d.port, d.interval_s, d.timeout_s,
                d.kubeconfig, d.prometheus,
            )  # fmt: skip

    # -- membership ------------------------------------------------------------------------
    @property
    def backends(self) -> list[Backend]:
        return self._members.backends if self._members else []

    @property
    def decider(self) -> Decider:
        if self._members is None:
            raise RuntimeError("no backends yet")
        return self._members.decider

    @property
    def inflight(self) -> list[int]:
        """Requests in flight per current backend (in `backends` order)."""
        return [self._inflight.get(n, 0) for n in (self._members.names if self._members else [])]

    def set_backends(self, backends: Sequence[Backend]) -> bool:
        """Replace the membership (discovery). Same backends with other bandwidths: only
        the bandwidths change; otherwise a new decider over the new set, learning into the
        same CS-UCB statistics. Returns whether the membership changed."""
        backends = sorted(backends, key=lambda b: b.name)
        names = [b.name for b in backends]
        if len(set(names)) != len(names):
            raise ValueError(f"backend names must be unique: {names}")
        m = self._members
        if m is not None and [_key(b) for b in m.backends] == [_key(b) for b in backends]:
            m.backends = backends
            for j, b in enumerate(backends):
                m.bw[j] = self._bw_override.get(b.name, b.measured_mbps)
            return False
        if not backends:
            self._members = None
            log.warning("no backends: requests are answered 503 until some are ready")
            return m is not None
        self.catalogue_check(backends)
        decider = Decider.for_servers(
            [self.spec],
            [b.server() for b in backends],
            self.catalogue,
            self.config.weights,
            None if self._stats is not None else self.config.csucb_config(),
            self._stats,
        )
        self._stats = decider.bandit.stats
        pools = []
        for b in backends:
            key = (b.name, b.url)
            if key not in self._pools:
                self._pools[key] = Pool(
                    b.url, self.limits.connect_timeout_s, self.limits.read_timeout_s,
                    self.limits.max_concurrency,
                )  # fmt: skip
            pools.append(self._pools[key])
        live = {(b.name, b.url) for b in backends}
        for key in [k for k in self._pools if k not in live]:
            self._pools.pop(key).close()  # idle connections only; in-flight ones finish
        self._members = _Members(
            backends,
            names,
            decider,
            pools,
            np.array([self._bw_override.get(b.name, b.measured_mbps) for b in backends], float),
            [self.metrics.backend(b.name, b.tier.value) for b in backends],
        )
        for n in names:
            self._inflight.setdefault(n, 0)
        log.info("backends: %s", ", ".join(f"{b.name}={b.url}" for b in backends))
        return True

    def catalogue_check(self, backends: Sequence[Backend]) -> None:
        from perllm.router.config import RouterConfigError

        for b in backends:
            if b.hardware not in self.catalogue.hardware:
                raise RouterConfigError(
                    f"backends[{b.name}].hardware: unknown hardware {b.hardware!r}; "
                    f"known: {sorted(self.catalogue.hardware)}"
                )

    def set_bandwidth(self, backend: str, mbps: float) -> None:
        """A backend's measured link bandwidth (Prometheus); kept across memberships."""
        self._bw_override[backend] = mbps
        m = self._members
        if m is not None and backend in m.names:
            m.bw[m.names.index(backend)] = mbps

    async def start(self) -> None:
        """Start discovery (the ASGI lifespan's startup; tests call it themselves)."""
        if self.discovery is not None:
            await self.discovery.refresh()  # the first membership before serving
            self.discovery.start()

    async def aclose(self) -> None:
        if self.discovery is not None:
            await self.discovery.stop()
        for p in self._pools.values():
            p.close()

    # -- ASGI -----------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path in ROUTES:
            if method != "POST":
                await _error(send, 405, "invalid_request_error", "use POST")
                return
            await self._completion(scope, receive, send, ROUTES[path])
        elif path == "/v1/models" and method == "GET":
            await _reply(send, 200, self._models_body)
        elif path == "/metrics" and method == "GET":
            ctype = self.metrics.content_type.encode()
            await _reply(send, 200, self.metrics.exposition(), ctype)
        elif path == "/healthz":
            await _reply(send, 200, b'{"status":"ok"}')
        elif path == "/readyz":
            if self._members is None:
                await _error(send, 503, "not_ready", "no backends")
            else:
                await _reply(send, 200, b'{"status":"ok"}')
        else:
            await _error(send, 404, "not_found", f"no route {path}")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            m = await receive()
            if m["type"] == "lifespan.startup":
                await self.start()
                await send({"type": "lifespan.startup.complete"})
            elif m["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _completion(self, scope: Scope, receive: Receive, send: Send, chat: bool) -> None:
        t0 = time.perf_counter()
        headers = scope["headers"]
        try:
            raw = await self._body(headers, receive)
            req = parse(raw, chat)
            if req.model not in self.models:
                raise BadRequest(
                    404,
                    "model_not_found",
                    f"model {req.model!r} not served here: {sorted(self.models)}",
                )
            tight = None
            for k, v in headers:
                if k == DEADLINE_HEADER:
                    tight = deadline_header(v.decode("latin-1"))
        except BadRequest as e:
            self.metrics.rejected.labels(str(e.status)).inc()
            await _error(send, e.status, e.kind, e.message)
            return
        try:
            await self._admit()
        except Shed as e:
            self.metrics.shed.labels(e.reason).inc()
            await _error(send, e.status, e.reason, e.message)
            return
        try:
            members = self._members
            if members is None:
                raise Shed(503, "no_backends", "no ready backend for this service")
            ticket = self._decide(members, req, tight)
            await self._proxy(scope, receive, send, req, raw, members, ticket, tight, t0)
        except Shed as e:
            self.metrics.shed.labels(e.reason).inc()
            await _error(send, e.status, e.reason, e.message)
        finally:
            self._slots.release()

    async def _body(self, headers: list[tuple[bytes, bytes]], receive: Receive) -> bytes:
        limit = self.limits.max_body_bytes
        for k, v in headers:
            if k == b"content-length" and v.isdigit() and int(v) > limit:
                raise BadRequest(413, "invalid_request_error", f"body over {limit} bytes")
        m = await receive()
        b = m.get("body", b"")
        if not m.get("more_body") and m["type"] == "http.request":
            if len(b) > limit:
                raise BadRequest(413, "invalid_request_error", f"body over {limit} bytes")
            return b  # type: ignore[no-any-return]
        chunks: list[bytes] = []
        size = 0
        while True:
            if m["type"] == "http.disconnect":
                raise BadRequest(400, "invalid_request_error", "client disconnected")
            b = m.get("body", b"")
            size += len(b)
            if size > limit:
                raise BadRequest(413, "invalid_request_error", f"body over {limit} bytes")
            chunks.append(b)
            if not m.get("more_body"):
                return b"".join(chunks)
            m = await receive()

    async def _admit(self) -> None:
        """A slot of the bounded concurrency, within the queue's length and timeout."""
        if self._slots.locked():
            if self._queued >= self.limits.max_queue:
                raise Shed(503, "queue_full", "router queue full: try again later")
            self._queued += 1
            try:
                await asyncio.wait_for(self._slots.acquire(), self.limits.queue_timeout_s)
            except TimeoutError:
                raise Shed(
                    503, "queue_timeout", f"no slot within {self.limits.queue_timeout_s:g}s"
                ) from None
            finally:
                self._queued -= 1
        else:
            await self._slots.acquire()

    def _decide(self, members: _Members, req: Parsed, tight: float | None) -> Ticket:
        t = time.perf_counter()
        l_out = self._expected_out
        if req.max_tokens is not None:
            l_out = min(l_out, float(req.max_tokens))
        inflight = self._inflight
        running, waiting = members.decider.load(0, [inflight[n] for n in members.names])
        ticket = members.decider.decide(
            [0], [req.prompt_tokens], [l_out], [req.attach_bytes], [self._min_quality],
            running, waiting, members.bw,
        )[0]  # fmt: skip
        self.metrics.decide_s.observe(time.perf_counter() - t)
        b = members.backends[ticket.server]
        budget = self._dl_s + self._dl_tok * l_out
        if self.config.shed:
            if not ticket.feasible:
                raise Shed(
                    503,
                    "deadline_unmeetable",
                    f"no backend can meet the deadline ({budget:.3g}s at {l_out:g} output "
                    f"tokens); least violating {b.name}: predicted {ticket.predicted_time:.3g}s",
                )
            if tight is not None and ticket.predicted_time > tight:
                raise Shed(
                    503,
                    "deadline_unmeetable",
                    f"x-perllm-deadline-s {tight:g}s: best backend {b.name} predicts "
                    f"{ticket.predicted_time:.3g}s",
                )
        bm = members.metrics[ticket.server]
        (bm.feasible if ticket.feasible else bm.infeasible).inc()
        if ticket.explored:
            bm.explored.inc()
        return ticket

    async def _proxy(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        req: Parsed,
        raw: bytes,
        members: _Members,
        ticket: Ticket,
        tight: float | None,
        t0: float,
    ) -> None:
        j = ticket.server
        b = members.backends[j]
        bm = members.metrics[j]
        if b.model is not None and b.model != req.model:
            raw = json.dumps({**req.body, "model": b.model}).encode()
        fwd = [(k, v) for k, v in scope["headers"] if k in FORWARDED]
        fwd.append(_CTYPE_JSON)
        flight = _Flight(members, ticket, t0, tight, TokenCounter(req.stream))
        self._inflight[b.name] += 1
        bm.inflight.inc()
        me = asyncio.current_task()
        state = [False, False]  # done, client gone

        async def watch() -> None:
            while True:
                m = await receive()
                if m["type"] == "http.disconnect":
                    if not state[0] and me is not None:
                        state[1] = True
                        me.cancel()
                    return

        watcher = asyncio.create_task(watch())
        resp = None
        started = False
        try:
            try:
                resp = await members.pools[j].post(scope["path"], raw, fwd)
            except UpstreamError as e:
                if e.kind == "timeout":
                    self._failed(flight, "timeout")
                    raise Shed(504, "upstream_timeout", f"backend {b.name} timed out") from None
                bm.error("connect").inc()
                raise Shed(502, "upstream_unavailable", f"backend {b.name}: {e}") from None
            await send(
                {
                    "type": "http.response.start",
                    "status": resp.status,
                    "headers": [
                        (b"content-type", resp.content_type),
                        (DECISION_HEADER, _decision_header(b, ticket)),
                    ],
                }
            )
            started = True
            counter = flight.counter
            last = False
            try:
                while True:
                    chunk = resp.take()  # everything buffered: one send per read
                    if chunk is None:
                        await resp.wait()
                        continue
                    if not chunk:
                        break
                    if flight.first is None:
                        flight.first = time.perf_counter()
                    counter.feed(chunk)
                    last = resp.complete  # the end with the last bytes: one write less
                    await send({"type": "http.response.body", "body": chunk, "more_body": not last})
                    if last:
                        break
            except UpstreamError as e:
                self._failed(flight, e.kind)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            if not last:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            if resp.status < 400:
                self._completed(flight)
            else:
                bm.error("status").inc()
        except asyncio.CancelledError:
            if not state[1]:
                raise
            if me is not None:
                me.uncancel()
            bm.error("client_disconnect").inc()
            if started:
                return
        finally:
            state[0] = True
            watcher.cancel()
            self._inflight[b.name] -= 1
            bm.inflight.dec()
            if resp is not None:
                resp.release()

    def _completed(self, f: _Flight) -> None:
        now = time.perf_counter()
        self._learn(f, now - f.start, f.counter.tokens())
        bm = f.members.metrics[f.ticket.server]
        bm.latency.observe(now - f.start)
        if f.first is not None:
            bm.ttft.observe(f.first - f.start)

    def _failed(self, f: _Flight, kind: str) -> None:
        """A backend that timed out or broke off: its elapsed time is a real outcome."""
        f.members.metrics[f.ticket.server].error(kind).inc()
        self._learn(f, time.perf_counter() - f.start, f.counter.tokens())

    def _learn(self, f: _Flight, d: float, l_out: float) -> None:
        deadline = self._dl_s + self._dl_tok * l_out
        if f.deadline_s is not None:
            deadline = min(deadline, f.deadline_s)
        f.members.decider.learn([f.ticket], [d], [l_out], [deadline])
        f.members.metrics[f.ticket.server].judge(d <= deadline)


def _decision_header(b: Backend, t: Ticket) -> bytes:
    return (
        f"backend={b.name}; tier={b.tier.value}; predicted={t.predicted_time:.3f}s; "
        f"feasible={'true' if t.feasible else 'false'}"
    ).encode()


def _str(v: bytes | None) -> str | None:
    return None if v is None else v.decode("latin-1")


async def _reply(send: Send, status: int, body: bytes, ctype: bytes = JSON) -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", ctype)]}
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _error(send: Send, status: int, kind: str, message: str) -> None:
    body = json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()
    with contextlib.suppress(OSError, RuntimeError):
        await _reply(send, status, body)


def create_app(config: RouterConfig) -> Router:
    return Router(config)
