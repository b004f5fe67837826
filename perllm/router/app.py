"""The router's ASGI application (plain ASGI: the hot path is a few awaits per chunk).

Per request: read and size the body (limits, 4xx: `intake`), wait for a slot of the
bounded concurrency, place it with CS-UCB from the backends' in-flight requests and
measured bandwidth, proxy it (streamed as it arrives, bytes untouched: `forward`), and
learn from what was observed: the end-to-end time and the output tokens (`feedback`).
This module holds the routing, the membership, admission and the placement.

The backends are a membership snapshot (`Members`) that can be replaced while requests
are in flight (`Router.set_backends`, fed by `perllm.router.discovery`): a request keeps
the snapshot it was decided in; CS-UCB's learned statistics are shared by all snapshots.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from perllm.contract import ServiceSpec
from perllm.profiles import Catalogue, default_catalogue
from perllm.router.asgi import Receive, Refused, Scope, Send, Shed, error, reply
from perllm.router.config import Backend, RouterConfig
from perllm.router.decision import Decider, Ticket
from perllm.router.feedback import Feedback
from perllm.router.forward import Forwarder
from perllm.router.health import Ejections
from perllm.router.intake import read_request
from perllm.router.members import Members, decider_key
from perllm.router.metrics import RouterMetrics
from perllm.router.request import BadRequest, Parsed
from perllm.router.secrets import SecretError, SecretFile
from perllm.router.upstream import Pool

log = logging.getLogger("perllm.router")

ROUTES = {"/v1/chat/completions": True, "/v1/completions": False}


class Router:
    def __init__(self, config: RouterConfig, backends: Sequence[Backend] | None = None) -> None:
        self.config = config
        self.limits = config.limits
        self.metrics = RouterMetrics()
        self._inflight: dict[str, int] = {}
        self._bw_override: dict[str, float] = {}
        self._pools: dict[tuple[str, str], Pool] = {}
        self._members: Members | None = None
        self._stats: Any = None  # CS-UCB's ArmStats, shared across memberships
        self._eject = Ejections(self.limits.eject_s, self.limits.eject_max_s)
        self._secrets: dict[str, SecretFile] = {}
        self._auth = self._secret(config.auth.token_file) if config.auth else None
        # Static backends (remote tiers) stay members beside the discovered pods.
        self.static = list(config.backends) if config.discovery is not None else []
        # The membership without its ejected backends, per ejected set (same statistics).
        self._without: dict[frozenset[str], tuple[Members, list[int]]] = {}
        self._slots = asyncio.Semaphore(self.limits.max_concurrency)
        self._queued = 0
        self._feedback = Feedback(0.0, 0.0)
        self._proxy = Forwarder(self._inflight, self._feedback)
        # The service: from the config, or (discovery alone) read from its LLMService by
        # discovery before anything is served (`set_spec`); until then requests get 503.
        self.spec: ServiceSpec | None = None
        self.catalogue: Catalogue = default_catalogue()
        self.models: set[str] = set()
        self.waiting_for = ""  # why there is no spec yet
        if config.service is not None or config.scenario is not None:
            self.set_spec(*config.resolve())
        initial = list(backends) if backends is not None else list(config.backends)
        if initial and self.spec is not None:
            self.set_backends(initial)
        self.discovery = None
        if config.discovery is not None:
            from perllm.router.discovery import Discovery

            d = config.discovery
            ns, name = d.service.split("/", 1)
            self.discovery = Discovery(
                self, ns, name, d.url_template, d.port, d.interval_s, d.timeout_s,
                d.kubeconfig, d.prometheus, follow_spec=self.spec is None,
            )  # fmt: skip

    def set_spec(self, spec: ServiceSpec, catalogue: Catalogue) -> bool:
        """The service this router fronts (its LLMService changed: a new decider over the
        same backends, learning into the same statistics). Returns whether it changed."""
        if spec == self.spec and catalogue is self.catalogue:
            return False
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
        if m is not None and [decider_key(b) for b in m.backends] == [
            decider_key(b) for b in backends
        ]:
            m.backends = backends
            for j, b in enumerate(backends):
                m.bw[j] = self._bw_override.get(b.name, b.measured_mbps)
            return False
        self._without.clear()
        self._eject.forget(names)
        for b in m.backends if m is not None else []:
            self.metrics.ejected.labels(b.name).set(0)
        if not backends:
            self._members = None
            log.warning("no backends: requests are answered 503 until some are ready")
            return m is not None
        self.catalogue_check(backends)
        decider = self._decider_for(backends)
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
        self._members = Members(
            backends,
            names,
            decider,
            pools,
            np.array([self._bw_override.get(b.name, b.measured_mbps) for b in backends], float),
            [self.metrics.backend(b.name, b.tier.value) for b in backends],
            [self._secret(b.token_file) if b.token_file else None for b in backends],
        )
        for n in names:
            self._inflight.setdefault(n, 0)
        log.info("backends: %s", ", ".join(f"{b.name}={b.url}" for b in backends))
        return True

    def _secret(self, path: str) -> SecretFile:
        from perllm.router.config import RouterConfigError

        if path not in self._secrets:
            try:
                self._secrets[path] = SecretFile(path)
            except SecretError as e:
                raise RouterConfigError(f"token_file: {e}") from None
        return self._secrets[path]

    def _decider_for(self, backends: Sequence[Backend]) -> Decider:
        """A decider over `backends`, learning into the router's one set of statistics."""
        assert self.spec is not None, "no service spec yet"
        decider = Decider.for_servers(
            [self.spec],
            [b.server() for b in backends],
            self.catalogue,
            self.config.weights,
            None if self._stats is not None else self.config.csucb_config(),
            self._stats,
        )
        self._stats = decider.bandit.stats
        return decider

    def _live(self, m: Members) -> Members | None:
        """`m` without its ejected backends (None: all are); the subset shares the pools,
        metrics and statistics, and reads the current bandwidths."""
        out = self._eject.out(m.names)
        if not out:
            return m
        if len(out) == len(m.names):
            return None
        if out not in self._without:
            keep = [j for j, n in enumerate(m.names) if n not in out]
            sub = Members(
                [m.backends[j] for j in keep],
                [m.names[j] for j in keep],
                self._decider_for([m.backends[j] for j in keep]),
                [m.pools[j] for j in keep],
                m.bw[keep],
                [m.metrics[j] for j in keep],
                [m.tokens[j] for j in keep],
            )
            self._without[out] = (sub, keep)
        sub, keep = self._without[out]
        sub.bw[:] = m.bw[keep]
        return sub

    def _refused(self, e: Refused) -> None:
        cooldown = self._eject.refused(e.backend)
        self.metrics.ejected.labels(e.backend).set(1)
        log.warning("%s; left out of decisions for %.3gs", e.message, cooldown)

    def down(self) -> list[str]:
        """Backends left out of decisions now (refused connections)."""
        return sorted(self._eject.out(self._members.names)) if self._members else []

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
                await error(send, 405, "invalid_request_error", "use POST")
                return
            await self._completion(scope, receive, send, ROUTES[path])
        elif path == "/v1/models" and method == "GET":
            await reply(send, 200, self._models_body)
        elif path == "/metrics" and method == "GET":
            ctype = self.metrics.content_type.encode()
            await reply(send, 200, self.metrics.exposition(), ctype)
        elif path == "/healthz":
            await reply(send, 200, b'{"status":"ok"}')
        elif path == "/readyz":
            down = self.down()
            if self.spec is None:
                await error(send, 503, "not_ready", self.waiting_for or "no service spec yet")
            elif self._members is None:
                await error(send, 503, "not_ready", "no backends")
            elif len(down) == len(self._members.names):
                await error(send, 503, "not_ready", f"every backend refuses connections: {down}")
            elif down:
                await reply(send, 200, json.dumps({"status": "degraded", "down": down}).encode())
            else:
                await reply(send, 200, b'{"status":"ok"}')
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
        if self.spec is None:
            await error(send, 503, "not_ready", self.waiting_for or "no service spec yet")
            return
        if self._auth is not None and not self._authorized(scope["headers"]):
            self.metrics.rejected.labels("401").inc()
            await error(send, 401, "authentication_error", "missing or wrong bearer token")
            return
        try:
            raw, req, tight = await read_request(
                scope["headers"], receive, chat, self.models, self.limits.max_body_bytes
            )
        except BadRequest as e:
            self.metrics.rejected.labels(str(e.status)).inc()
            await error(send, e.status, e.kind, e.message)
            return
        try:
            await self._admit()
        except Shed as e:
            await self._shed(send, e)
            return
        try:
            await self._place(scope, receive, send, req, raw, tight, t0)
        except Shed as e:
            await self._shed(send, e)
        finally:
            self._slots.release()

    async def _place(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        req: Parsed,
        raw: bytes,
        tight: float | None,
        t0: float,
    ) -> None:
        """Decide and proxy; a backend that refuses the connection is ejected and the
        request decided again among the others (nothing was sent), up to `retries` times."""
        for attempt in range(self.limits.retries + 1):
            members = self._members
            if members is None:
                raise Shed(503, "no_backends", "no ready backend for this service")
            live = self._live(members)
            if live is None:
                raise Shed(
                    503,
                    "backends_down",
                    f"every backend refuses connections: {', '.join(members.names)}",
                )
            ticket = self._decide(live, req, tight)
            name = live.names[ticket.server]
            try:
                await self._proxy(scope, receive, send, req, raw, live, ticket, tight, t0)
            except Refused as e:
                self._refused(e)
                if attempt == self.limits.retries:
                    raise
                self.metrics.retries.inc()
                continue
            if self._eject.answered(name):
                self.metrics.ejected.labels(name).set(0)
            return

    def _authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        assert self._auth is not None
        got = next((v for k, v in headers if k == b"authorization"), b"")
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

    def _decide(self, members: Members, req: Parsed, tight: float | None) -> Ticket:
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
        budget = self._feedback.budget(l_out)
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


def create_app(config: RouterConfig) -> Router:
    return Router(config)
