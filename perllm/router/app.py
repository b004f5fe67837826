"""The router's ASGI application (plain ASGI: the hot path is a few awaits per chunk).

Per request: read and size the body (limits, 4xx: `intake`), wait for a slot of the
bounded concurrency, place it with CS-UCB from the backends' in-flight requests and
measured bandwidth, proxy it (streamed as it arrives, bytes untouched: `forward`), and
learn from what was observed: the end-to-end time and the output tokens (`feedback`).
This module holds the routing, admission and the placement; the backends it places on
are its `perllm.router.membership.Membership`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import time
from collections.abc import Sequence

from perllm.contract import ServiceSpec
from perllm.httpguard import allowance
from perllm.profiles import Catalogue
from perllm.router.asgi import Receive, Refused, Scope, Send, Shed, error, reply
from perllm.router.config import Backend, RouterConfig
from perllm.router.decision import Ticket
from perllm.router.feedback import Feedback
from perllm.router.forward import ClientWatch, Forwarder
from perllm.router.intake import BodyBudget, ClientGone, Hold, OverBudget, read_request
from perllm.router.members import Members
from perllm.router.membership import Membership
from perllm.router.metrics import RouterMetrics
from perllm.router.request import BadRequest, Parsed

log = logging.getLogger("perllm.router")

ROUTES = {"/v1/chat/completions": True, "/v1/completions": False}


class Router(Membership):
    def __init__(self, config: RouterConfig, backends: Sequence[Backend] | None = None) -> None:
        super().__init__(config, RouterMetrics())
        self._auth = self._secret(config.auth.token_file) if config.auth else None
        self._slots = asyncio.Semaphore(self.limits.max_concurrency)
        self._queued = 0
        self.metrics.queued.set_function(lambda: self._queued)
        self._bodies = BodyBudget(self.limits.body_budget_bytes)
        self.metrics.body_bytes.set_function(lambda: self._bodies.held)
        self._feedback = Feedback(0.0, 0.0)
        self._proxy = Forwarder(self, self._feedback, own_auth=self._auth is not None)
        # The service: from the config, or (discovery alone) read from its LLMService by
        # discovery before anything is served (`set_spec`); until then requests get 503.
        self.models: set[str] = set()
        self.waiting_for = ""  # why there is no spec yet
        if config.service is not None or config.scenario is not None:
            self.set_spec(*config.resolve())
        initial = list(backends) if backends is not None else list(config.backends)
        if initial and self.spec is not None:
            self.set_backends(initial)
        self.discovery = None
        self.status_writer = None  # writes status.routing into the LLMService (discovery only)
        if config.discovery is not None:
            from perllm.router.discovery import Discovery
            from perllm.router.status import StatusWriter

            d = config.discovery
            ns, name = d.service.split("/", 1)
            self.discovery = Discovery(
                self, ns, name, d.url_template, d.port, d.interval_s, d.timeout_s,
                d.kubeconfig, d.prometheus_access(), follow_spec=self.spec is None,
            )  # fmt: skip
            if d.status_interval_s > 0:
                self.status_writer = StatusWriter(
                    self, ns, name, d.status_interval_s, d.timeout_s, d.kubeconfig
                )

    def set_spec(self, spec: ServiceSpec, catalogue: Catalogue) -> bool:
        """The service this router fronts (its LLMService changed: a new decider over the
        same backends, learning into the same statistics). Returns whether it changed;
        `RouterConfigError`, nothing changed, for a model the catalogue lacks (an edited
        LLMService: its deciders could not be built, and the router was left without any)."""
        if spec == self.spec and catalogue is self.catalogue:
            return False
        if spec.model not in catalogue.models:
            from perllm.router.config import RouterConfigError

            raise RouterConfigError(f"spec.model: {spec.model!r} is not in the catalogue")
        first = self.spec is None
        self.spec, self.catalogue = spec, catalogue
        self.models = self.config.model_names(spec)
        dl = spec.requirements.deadline
        self._feedback.set(dl.seconds, dl.per_output_token_s)
        self._expected_out = spec.traffic.output_tokens
        self._min_quality = spec.requirements.min_quality
        self._models_body = json.dumps(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": "perllm"}
                    for m in sorted(self.models)
                ],
            }
        ).encode()
        if self._members is not None:
            backends, self._members = self._members.backends, None
            self.set_backends(backends)
        if not first:
            log.info("service %s changed: decisions follow its new spec", spec.name)
        return True

    async def start(self) -> None:
        """Start discovery, the health probe and the status writer (the ASGI lifespan's
        startup; tests call it themselves)."""
        if self.discovery is not None:
            await self.discovery.refresh()  # the first membership before serving
            self.discovery.start()
        await self.warm()  # a large fleet's compiled loop, before the first request
        self.serving = True
        if self.prober is not None:
            self.prober.start()
        if self.status_writer is not None:
            self.status_writer.start()

    async def aclose(self) -> None:
        if self._warming is not None:
            self._warming.cancel()  # (its thread finishes the load; nothing waits for it)
        if self.discovery is not None:
            await self.discovery.stop()
        if self.status_writer is not None:
            await self.status_writer.stop()
        if self.prober is not None:  # (before the pools: its probes' connections first)
            await self.prober.stop()
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
                await error(send, 405, "invalid_request_error", "use POST", [(b"allow", b"POST")])
                return
            await self._completion(scope, receive, send, ROUTES[path])
        elif path == "/v1/models" and method == "GET":
            if not await self._not_ready(send) and not await self._denied(scope, send):
                await reply(send, 200, self._models_body)
        elif path == "/metrics" and method == "GET":
            ctype = self.metrics.content_type.encode()
            await reply(send, 200, self.metrics.exposition(), ctype)
        elif path == "/healthz":
            await reply(send, 200, b'{"status":"ok"}')
        elif path == "/readyz":
            down = self.down()
            if self.spec is None:
                await self._not_ready(send)
            elif self._members is None:
                await error(send, 503, "not_ready", "no backends")
            elif len(down) == len(self._members.names):
                await error(send, 503, "not_ready", self.why_down())
            elif down:
                await reply(send, 200, json.dumps({"status": "degraded", "down": down}).encode())
            else:
                await reply(send, 200, b'{"status":"ok"}')
        elif path in ("/v1/models", "/metrics"):
            await error(send, 405, "invalid_request_error", "use GET", [(b"allow", b"GET")])
        else:
            await error(send, 404, "not_found", f"no route {path}")

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
        if await self._not_ready(send) or await self._denied(scope, send):
            return
        hold = self._bodies.hold()  # its body's bytes, until it is answered
        try:
            await self._held(scope, receive, send, chat, t0, hold)
        finally:
            hold.release()

    async def _held(
        self, scope: Scope, receive: Receive, send: Send, chat: bool, t0: float, hold: Hold
    ) -> None:
        lim = self.limits
        try:
            # (no slot held yet) body_timeout_s, plus the listener's allowance for a body
            # that keeps coming (`perllm.httpguard`): a large upload over a slow link
            async with asyncio.timeout(lim.body_timeout_s) as tm:
                due = tm.when()

                def got(size: int) -> None:
                    if due is not None:
                        tm.reschedule(due + allowance(size, lim.min_body_bytes_per_s))

                raw, req, tight = await read_request(
                    scope["headers"], receive, chat, self.models, lim.max_body_bytes, got, hold
                )
        except TimeoutError:
            self.metrics.reject(408)
            why = f"body not received within {lim.body_timeout_s:g}s"
            if lim.min_body_bytes_per_s:
                why += f" (+1 s per {lim.min_body_bytes_per_s} bytes)"
            await error(send, 408, "invalid_request_error", why, [(b"connection", b"close")])
            return
        except BadRequest as e:
            self.metrics.reject(e.status)
            await error(send, e.status, e.kind, e.message)
            return
        except OverBudget as e:  # (the rest of its body uvicorn reads and drops, as a 413's)
            self.metrics.shed.labels("body_budget").inc()
            await error(send, 503, "body_budget", str(e), [(b"retry-after", b"1")])
            return
        except ClientGone:  # (mid-upload: no answer to give; was a 400 counted as invalid)
            self.metrics.abandoned.inc()
            return
        # (the body is read: what receive gives now is a disconnect)
        watch = ClientWatch(receive, send, self.limits.send_timeout_s)
        try:
            try:
                await self._admit()
            except Shed as e:
                await self._shed(send, e)
                return
            try:
                await self._place(scope, watch, req, raw, tight, t0)
            except Shed as e:
                await self._shed(send, e)
            finally:
                self._slots.release()
        except asyncio.CancelledError:
            if not watch.client_gone():
                raise
            self.metrics.abandoned.inc()  # gone before it was sent: its queue place freed
        finally:
            watch.close()

    async def _place(
        self,
        scope: Scope,
        watch: ClientWatch,
        req: Parsed,
        raw: bytes,
        tight: float | None,
        t0: float,
    ) -> None:
        """Decide and proxy; a backend that refuses the connection (or does not accept
        it in time) is ejected and the request decided again among the others (nothing
        was sent), up to `retries` times. (The proxy reports the other outcomes to the
        membership's health: answered, or timed out after the request was sent.)"""
        for attempt in range(self.limits.retries + 1):
            members = self._members
            if members is None:
                raise Shed(503, "no_backends", "no ready backend for this service")
            live = self._live(members)
            if live is None:
                raise Shed(503, "backends_down", self.why_down())
            ticket = self._decide(live, req, tight)
            try:
                await self._proxy(scope, watch, req, raw, live, ticket, tight, t0)
            except Refused as e:
                self._refused(e)
                if attempt == self.limits.retries:
                    raise
                self.metrics.retries.inc()
                continue
            return

    async def _not_ready(self, send: Send) -> bool:
        """Without the service's spec yet (discovery alone, `set_spec`): answered 503
        (True), as nothing that depends on it (its model names, its deadline) is known."""
        if self.spec is not None:
            return False
        await error(send, 503, "not_ready", self.waiting_for or "no service spec yet")
        return True

    async def _denied(self, scope: Scope, send: Send) -> bool:
        """With `auth`: a request to /v1/* without the token is answered 401 (True)."""
        if self._auth is None or self._authorized(scope["headers"]):
            return False
        self.metrics.reject(401)
        await error(send, 401, "authentication_error", "missing or wrong bearer token")
        return True

    def _authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        assert self._auth is not None
        got = next((v for k, v in headers if k == b"authorization"), b"")
        # The scheme's name is case-insensitive (RFC 9110 11.1: `bearer` is `Bearer`);
        # the token itself is compared as sent, in constant time.
        if got[:7].lower() == b"bearer ":
            got = b"Bearer " + got[7:]
        return hmac.compare_digest(got, self._auth.bearer())

    async def _shed(self, send: Send, e: Shed) -> None:
        self.metrics.shed.labels(e.reason).inc()
        await error(send, e.status, e.reason, e.message)

    async def _admit(self) -> None:
        """A slot of the bounded concurrency, within the queue's length and timeout."""
        if self._slots.locked():
            if self._queued >= self.limits.max_queue:
                raise Shed(503, "queue_full", "router queue full: try again later")
            self._queued += 1
            try:  # (acquire itself cancelled, not a task of it as wait_for's: a slot granted
                # as a disconnect cancels the wait goes to the next waiter, not lost)
                async with asyncio.timeout(self.limits.queue_timeout_s):
                    await self._slots.acquire()
            except TimeoutError:
                raise Shed(
                    503, "queue_timeout", f"no slot within {self.limits.queue_timeout_s:g}s"
                ) from None
            finally:
                self._queued -= 1
        else:
            await self._slots.acquire()

    def expected_out(self, req: Parsed) -> float:
        """The output length decided on: the service's declared mean, capped by max_tokens."""
        l_out = self._expected_out
        return l_out if req.max_tokens is None else min(l_out, float(req.max_tokens))

    def ticket(
        self, members: Members, req: Parsed, now: float, tight: float | None = None
    ) -> Ticket:
        """CS-UCB's placement of `req` among `members` with their load at `now`
        (`time.perf_counter()`, or a replay's clock: `perllm.burst.simulate_arm`), to meet
        the service's deadline or `tight` (a client's `x-perllm-deadline-s`) if shorter."""
        flights = [self.backlog(n) for n in members.names]
        running, waiting = members.decider.load_lists(
            0, [len(f) for f in flights], [f.waiting(now) for f in flights]
        )
        return members.decider.decide_one(
            0, req.prompt_tokens, self.expected_out(req), req.attach_bytes, self._min_quality,
            running, waiting, members.bw.tolist(), math.inf if tight is None else tight,
        )  # fmt: skip

    def _decide(self, members: Members, req: Parsed, tight: float | None) -> Ticket:
        t = time.perf_counter()
        ticket = self.ticket(members, req, t, tight)
        self.metrics.decide_s.observe(time.perf_counter() - t)
        if ticket.server < 0:  # (CS-UCB's own shed rule: no backend to send it to)
            raise Shed(503, "deadline_unmeetable", "no backend can meet the deadline")
        b = members.backends[ticket.server]
        if self.config.shed and not ticket.feasible:
            l_out = self.expected_out(req)
            budget = self._feedback.budget(l_out)
            header = "" if tight is None else f"; x-perllm-deadline-s {tight:g}s"
            raise Shed(
                503,
                "deadline_unmeetable",
                f"no backend can meet the deadline ({budget:.3g}s at {l_out:g} output "
                f"tokens{header}); least violating {b.name}: predicted "
                f"{ticket.predicted_time:.3g}s",
            )
        bm = members.metrics[ticket.server]
        (bm.feasible if ticket.feasible else bm.infeasible).inc()
        if ticket.explored:
            bm.explored.inc()
        return ticket


def create_app(config: RouterConfig) -> Router:
    return Router(config)
