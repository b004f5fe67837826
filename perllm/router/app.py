"""The router's ASGI application (plain ASGI: the hot path is a few awaits per chunk).

Per request: read and size the body (limits, 4xx), wait for a slot of the bounded
concurrency, place it with CS-UCB from the backends' in-flight requests and measured
bandwidth, proxy it (streamed as it arrives), and learn from what was observed: the
end-to-end time and the output tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from perllm.router.config import RouterConfig
from perllm.router.decision import Decider, Ticket
from perllm.router.metrics import RouterMetrics
from perllm.router.proxy import FORWARDED, TokenCounter, make_client
from perllm.router.request import BadRequest, Parsed, deadline_header, parse

log = logging.getLogger("perllm.router")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

ROUTES = {"/v1/chat/completions": True, "/v1/completions": False}
DECISION_HEADER = b"x-perllm-decision"
DEADLINE_HEADER = b"x-perllm-deadline-s"
JSON = b"application/json"


class Shed(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


@dataclass
class _Flight:
    """One proxied request: what learning needs when it ends."""

    ticket: Ticket
    start: float
    deadline_s: float | None  # the header's tightening, if any
    counter: TokenCounter
    first: float | None = None


class Router:
    def __init__(
        self,
        config: RouterConfig,
        transports: dict[str, httpx.AsyncBaseTransport] | None = None,
    ) -> None:
        self.config = config
        self.spec, cat = config.resolve()
        self.backends = config.backends
        self.decider = Decider.for_servers(
            [self.spec],
            [b.server() for b in self.backends],
            cat,
            config.weights,
            config.csucb_config(),
        )
        self.models = config.model_names(self.spec)
        self.limits = config.limits
        self.metrics = RouterMetrics()
        self.inflight = [0] * len(self.backends)
        self.bw = np.array([b.measured_mbps for b in self.backends], float)
        tr = transports or {}
        self.clients = [make_client(b, self.limits, tr.get(b.name)) for b in self.backends]
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
        for b in self.backends:
            self.metrics.inflight.labels(b.name).set(0)

    def set_bandwidth(self, backend: str, mbps: float) -> None:
        """Update a backend's measured link bandwidth (Prometheus, later)."""
        j = [b.name for b in self.backends].index(backend)
        self.bw[j] = mbps

    async def aclose(self) -> None:
        for c in self.clients:
            await c.aclose()

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
        elif path in ("/healthz", "/readyz"):
            await _reply(send, 200, b'{"status":"ok"}')
        else:
            await _error(send, 404, "not_found", f"no route {path}")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            m = await receive()
            if m["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif m["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _completion(self, scope: Scope, receive: Receive, send: Send, chat: bool) -> None:
        t0 = time.perf_counter()
        headers = dict(scope["headers"])
        try:
            raw = await self._body(headers, receive)
            req = parse(raw, chat)
            if req.model not in self.models:
                raise BadRequest(
                    404,
                    "model_not_found",
                    f"model {req.model!r} not served here: {sorted(self.models)}",
                )
            tight = deadline_header(_str(headers.get(DEADLINE_HEADER)))
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
            ticket = self._decide(req, tight)
            await self._proxy(scope, receive, send, req, raw, headers, ticket, tight, t0)
        except Shed as e:
            self.metrics.shed.labels(e.reason).inc()
            await _error(send, e.status, e.reason, e.message)
        finally:
            self._slots.release()

    async def _body(self, headers: dict[bytes, bytes], receive: Receive) -> bytes:
        limit = self.limits.max_body_bytes
        cl = headers.get(b"content-length")
        if cl is not None and cl.isdigit() and int(cl) > limit:
            raise BadRequest(413, "invalid_request_error", f"body over {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            m = await receive()
            if m["type"] == "http.disconnect":
                raise BadRequest(400, "invalid_request_error", "client disconnected")
            b = m.get("body", b"")
            size += len(b)
            if size > limit:
                raise BadRequest(413, "invalid_request_error", f"body over {limit} bytes")
            chunks.append(b)
            if not m.get("more_body"):
                return b"".join(chunks)

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

    def _decide(self, req: Parsed, tight: float | None) -> Ticket:
        t = time.perf_counter()
        l_out = self._expected_out
        if req.max_tokens is not None:
            l_out = min(l_out, float(req.max_tokens))
        running, waiting = self.decider.load(0, self.inflight)
        ticket = self.decider.decide(
            [0], [req.prompt_tokens], [l_out], [req.attach_bytes], [self._min_quality],
            running, waiting, self.bw,
        )[0]  # fmt: skip
        self.metrics.decide_s.observe(time.perf_counter() - t)
        b = self.backends[ticket.server]
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
        self.metrics.decisions.labels(b.name, b.tier.value, str(ticket.feasible).lower()).inc()
        if ticket.explored:
            self.metrics.explored.labels(b.name, b.tier.value).inc()
        return ticket

    def _decision_header(self, t: Ticket) -> bytes:
        b = self.backends[t.server]
        return (
            f"backend={b.name}; tier={b.tier.value}; predicted={t.predicted_time:.3f}s; "
            f"feasible={str(t.feasible).lower()}"
        ).encode()

    async def _proxy(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        req: Parsed,
        raw: bytes,
        headers: dict[bytes, bytes],
        ticket: Ticket,
        tight: float | None,
        t0: float,
    ) -> None:
        j = ticket.server
        b = self.backends[j]
        if b.model is not None and b.model != req.model:
            raw = json.dumps({**req.body, "model": b.model}).encode()
        fwd = {k: _str(headers[k.encode()]) for k in FORWARDED if k.encode() in headers}
        fwd["content-type"] = "application/json"
        client = self.clients[j]
        flight = _Flight(ticket, t0, tight, TokenCounter(req.stream))
        self.inflight[j] += 1
        gauge = self.metrics.inflight.labels(b.name)
        gauge.inc()
        me = asyncio.current_task()
        state = {"done": False, "gone": False}

        async def watch() -> None:
            while True:
                m = await receive()
                if m["type"] == "http.disconnect":
                    if not state["done"] and me is not None:
                        state["gone"] = True
                        me.cancel()
                    return

        watcher = asyncio.create_task(watch())
        resp: httpx.Response | None = None
        started = False
        try:
            try:
                resp = await client.send(
                    client.build_request("POST", scope["path"], content=raw, headers=fwd),
                    stream=True,
                )
            except httpx.TimeoutException:
                self._failed(flight, "timeout")
                raise Shed(504, "upstream_timeout", f"backend {b.name} timed out") from None
            except httpx.HTTPError as e:
                self.metrics.errors.labels(b.name, "connect").inc()
                raise Shed(502, "upstream_unavailable", f"backend {b.name}: {e!r}") from None
            out_headers = [
                (b"content-type", resp.headers.get("content-type", "application/json").encode()),
                (DECISION_HEADER, self._decision_header(ticket)),
            ]
            await send(
                {"type": "http.response.start", "status": resp.status_code, "headers": out_headers}
            )
            started = True
            try:
                async for chunk in resp.aiter_raw():
                    if flight.first is None:
                        flight.first = time.perf_counter()
                    flight.counter.feed(chunk)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except httpx.TimeoutException:
                self._failed(flight, "timeout")
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            except httpx.HTTPError:
                self._failed(flight, "disconnect")
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            if resp.status_code < 400:
                self._completed(flight)
            else:
                self.metrics.errors.labels(b.name, "status").inc()
        except asyncio.CancelledError:
            if not state["gone"]:
                raise
            if me is not None:
                me.uncancel()
            self.metrics.errors.labels(b.name, "client_disconnect").inc()
            if started:
                return
        finally:
            state["done"] = True
            watcher.cancel()
            self.inflight[j] -= 1
            gauge.dec()
            if resp is not None:
                await resp.aclose()

    def _completed(self, f: _Flight) -> None:
        now = time.perf_counter()
        self._learn(f, now - f.start, f.counter.tokens())
        b = self.backends[f.ticket.server].name
        self.metrics.latency.labels(b).observe(now - f.start)
        if f.first is not None:
            self.metrics.ttft.labels(b).observe(f.first - f.start)

    def _failed(self, f: _Flight, kind: str) -> None:
        """A backend that timed out: its elapsed time is a real outcome (a miss)."""
        self.metrics.errors.labels(self.backends[f.ticket.server].name, kind).inc()
        self._learn(f, time.perf_counter() - f.start, f.counter.tokens())

    def _learn(self, f: _Flight, d: float, l_out: float) -> None:
        deadline = self._dl_s + self._dl_tok * l_out
        if f.deadline_s is not None:
            deadline = min(deadline, f.deadline_s)
        self.decider.learn([f.ticket], [d], [l_out], [deadline])
        b = self.backends[f.ticket.server]
        self.metrics.judge(b.name, b.tier.value, d <= deadline)


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


def create_app(
    config: RouterConfig, transports: dict[str, httpx.AsyncBaseTransport] | None = None
) -> Router:
    return Router(config, transports)
