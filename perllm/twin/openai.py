"""The twin's model servers as OpenAI-compatible endpoints, timed by the world model.

`/pods/<namespace>/<pod>/v1/chat/completions` (and `/v1/completions`, `/v1/models`)
answers as the pod's model server would: the request runs through
`perllm.world.server.execute` on the pod's node (its `ServerState`: FIFO upload on the
node's link, admission into the node's slots with the (service, node) coefficients of
the cost model, prefill, decode, download), and the answer is timed by the outcome in
(scaled) real time: the first token when the prefill ends, then the other tokens evenly
over the decode, the end after the download; `speed` simulated seconds pass per wall
second. So `perllm router` can be tested end to end over real HTTP without GPUs.

Prompt tokens and attachment bytes are estimated from the body as the router does
(~4 bytes a token); the output length is the service's output distribution (its scenario
class's, else lognormal around the declared mean) capped by `max_tokens`. These requests
run on their own `ServerState`s: the twin's synthetic traffic and its metrics are not
changed by them (and they do not see that traffic's load). A client that disconnects
frees its request's slot on the node then (`ServerState.abort`), as a model server would,
and the requests queued behind it on that node are admitted again from that moment.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from perllm.contract import ServiceSpec
from perllm.costmodel import build_cost_table, download_bits, upload_bits
from perllm.router.asgi import error, reply
from perllm.router.config import Limits
from perllm.router.intake import read_body, served
from perllm.router.request import BadRequest, Parsed, parse
from perllm.scenario import Scenario
from perllm.twin.arrivals import service_dists
from perllm.twin.fleet import server_powers
from perllm.world.server import Coeffs, Outcome, ServerState, execute
from perllm.world.sim import coeff_grid
from perllm.world.workload import draw, whole_tokens

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
# (namespace, pod) -> (the service it serves, its node), or None: unknown pod.
Resolver = Callable[[str, str], "tuple[ServiceSpec, str] | None"]
# One answer is held at most this long (wall): past it (an overloaded node, a low speed)
# it ends with a 504 or, streamed, an error event and no end (`_Overdue`).
MAX_ANSWER_SLEEP_S = 600.0
log = logging.getLogger("perllm.twin")
MAX_BODY_BYTES = Limits().max_body_bytes  # a request body's size at most (the router's)


def pod_url(base: str, namespace: str, pod: str) -> str:
    """A pod's OpenAI base URL on a twin served at `base` (the `/pods/<namespace>/<pod>`
    route `TwinOpenAI` answers; `/v1/...` follows). With `"{namespace}"` and `"{pod}"`
    it is a router discovery `url_template`."""
    return f"{base}/pods/{namespace}/{pod}"


@dataclass(frozen=True)
class Timeline:
    """Simulated seconds from arrival: first token, last token, answer complete."""

    first: float
    last: float
    done: float
    tokens: int
    prompt_tokens: int
    # Where it runs: the node's index and its admission (`TwinOpenAI.abort` frees its slot).
    server: int
    outcome: Outcome


@dataclass(eq=False)
class Admission:
    """One request on a node: what `execute` needs to admit it again (the inputs drawn at
    arrival, `ready` when its upload had arrived) and its current timeline. Until it
    starts, an abort on its node may re-admit it earlier (`TwinOpenAI.abort`)."""

    tl: Timeline
    arrival: float
    c: Coeffs
    l_in: float
    l_out: float
    bits: tuple[float, float]
    link: tuple[float, float, float]
    speed: float
    ready: float
    # Its answer waits on `wake` (in `loop`), done when `tl` moves.
    wake: asyncio.Future[None] | None = None
    loop: asyncio.AbstractEventLoop | None = None


def static_pods(sc: Scenario, namespace: str = "default") -> dict[tuple[str, str], tuple[str, str]]:
    """One pod per (class, node) the node can run: `<namespace>/<class>-<node>`."""
    services = sc.services()
    servers = sc.expanded_servers()
    t = build_cost_table(services, servers, sc.catalogue)
    return {
        (namespace, f"{s.name}-{node}"): (s.name, node)
        for c, s in enumerate(services)
        for j, (node, _) in enumerate(servers)
        if t.allowed[c, j]
    }


class TwinOpenAI:
    def __init__(
        self,
        sc: Scenario,
        resolve: Resolver,
        speed: float = 1.0,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        if not speed > 0:
            raise ValueError("speed: must be > 0")
        self.sc, self.resolve, self.speed, self.clock = sc, resolve, speed, clock
        self.max_body_bytes = max_body_bytes
        self.t0 = clock()
        self.servers = sc.expanded_servers()
        self.node_index = {n: j for j, (n, _) in enumerate(self.servers)}
        hw = sc.catalogue.hardware
        self.states = []
        for _, s in self.servers:
            p_idle, p_busy, p_prefill = server_powers(hw[s.hardware])
            self.states.append(ServerState(p_idle, p_busy, p_prefill, hw[s.hardware].kind == "gpu"))
        # Per node: the admissions not started yet, in admission order, and the node's
        # state before the first of them (with the aborts since): an abort re-admits them
        # from there, as a model server's queue moves up when a running request leaves.
        self.queued: list[list[Admission]] = [[] for _ in self.states]
        self.base: list[ServerState | None] = [None for _ in self.states]
        self.rng = np.random.default_rng([seed, 0x0A1])
        self._tables: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.served = 0
        self.overdue = 0  # answers ended at MAX_ANSWER_SLEEP_S
        # Marginal energy of the requests served (J): the world model's attributed
        # inference energy plus both ways' transmission energy (idle power is not here).
        self.energy_j = 0.0

    @classmethod
    def standalone(
        cls,
        sc: Scenario,
        speed: float = 1.0,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> TwinOpenAI:
        pods = static_pods(sc)
        specs = {s.name: s for s in sc.services()}

        def resolve(ns: str, pod: str) -> tuple[ServiceSpec, str] | None:
            hit = pods.get((ns, pod))
            return None if hit is None else (specs[hit[0]], hit[1])

        return cls(sc, resolve, speed, seed, clock, max_body_bytes)

    def now(self) -> float:
        """Simulated seconds since start."""
        return (self.clock() - self.t0) * self.speed

    def _coeffs(self, spec: ServiceSpec, j: int) -> tuple[Any, bool, float]:
        key = spec.model_dump_json()
        got = self._tables.get(key)
        if got is None:
            t = build_cost_table([spec], self.servers, self.sc.catalogue)
            got = self._tables[key] = (t, coeff_grid(t)[0])
        t, grid = got
        return grid[j], bool(t.allowed[0, j]), float(t.perf_scale[j])

    def timeline(
        self, spec: ServiceSpec, node: str, l_in: float, attach: float, max_tokens: float | None
    ) -> Timeline:
        """Run one request arriving now on `node` through the world model."""
        return self.admit(spec, node, l_in, attach, max_tokens).tl

    def admit(
        self, spec: ServiceSpec, node: str, l_in: float, attach: float, max_tokens: float | None
    ) -> Admission:
        """`timeline`, with what `abort` needs."""
        j = self.node_index[node]
        c, allowed, perf = self._coeffs(spec, j)
        if not allowed:
            raise BadRequest(503, "unplaceable", f"node {node} cannot run {spec.name}")
        _, d_out, _ = service_dists(self.sc, spec)
        context = self.sc.catalogue.models[spec.model].context
        with self._lock:
            lout_draw = draw(d_out, 1, self.rng)
            if max_tokens is not None:
                lout_draw = np.minimum(lout_draw, max_tokens)
            li, lo = whole_tokens(np.array([l_in]), lout_draw, context)
            l_in_t, l_out = float(li[0]), float(lo[0])
            noise = float(self.rng.lognormal(0.0, self.sc.speed_noise))
            link = self.servers[j][1].link
            bps = link.bandwidth_mbps * 1e6
            a = self.now()
            s = self.states[j]
            self._started(j, a)
            s.observe(a)  # (drops the ended requests it keeps: they would pile up)
            bits = (float(upload_bits(l_in_t, attach)), float(download_bits(l_out)))
            hop = (bps, link.rtt_ms / 1000, link.energy_uj_per_bit * 1e-6)
            ready = s.upload(a, bits[0], bps, commit=False) + hop[1] / 2
            before = s.snapshot() if not self.queued[j] else None
            d, out, e_tran = execute(s, c, a, l_in_t, l_out, bits, hop, noise * perf)
            ad = Admission(
                _timeline(d, out, a, hop[1] / 2, l_out, l_in_t, j),
                a, c, l_in_t, l_out, bits, hop, noise * perf, ready,
            )  # fmt: skip
            if out.start > a:  # it waits for a slot: an abort before its start moves it up
                if before is not None:
                    self.base[j] = before
                self.queued[j].append(ad)
            self.served += 1
            self.energy_j += out.e_infer + e_tran
        return ad

    def _started(self, j: int, now: float) -> None:
        """The admissions on node `j` started by `now` can no longer move: into `base`."""
        q, base = self.queued[j], self.base[j]
        while q and q[0].tl.outcome.start <= now:
            assert base is not None
            self._run(base, q.pop(0))
            base.observe(now)
        if not q:
            self.base[j] = None

    @staticmethod
    def _run(s: ServerState, ad: Admission) -> tuple[float, Outcome, float]:
        """Admit `ad` on `s` again (its upload had arrived at `ready`)."""
        return execute(s, ad.c, ad.arrival, ad.l_in, ad.l_out, ad.bits, ad.link, ad.speed,
                       hold=ad.ready)  # fmt: skip

    def abort(self, ad: Admission) -> None:
        """Its client went away now: free the request's slot and KV cache on its node, as a
        model server does with a disconnected request (`ServerState.abort`), and admit the
        requests queued behind it again from now (their times were fixed when they
        arrived, with its slot taken until its end)."""
        with self._lock:
            now, j = self.now(), ad.tl.server
            self._started(j, now)
            q, base = self.queued[j], self.base[j]
            if ad in q:  # never started: it leaves the queue (its upload stays done)
                q.remove(ad)
                self.energy_j -= ad.tl.outcome.e_infer
            else:
                self.states[j].abort(ad.tl.outcome, now)
                if base is not None:
                    base.abort(ad.tl.outcome, now)
            if base is None:
                return
            live = self.states[j]
            s = base.snapshot()
            for x in q:  # in admission order, from the state before the first of them
                d, out, _ = self._run(s, x)
                self.energy_j += out.e_infer - x.tl.outcome.e_infer
                x.tl = _timeline(d, out, x.arrival, x.link[1] / 2, x.l_out, x.l_in, j)
                if x.wake is not None and x.loop is not None:
                    x.loop.call_soon_threadsafe(_wake, x.wake)
            s.link_free = live.link_free  # (the uploads happened: they stay as they were)
            live.restore(s)
            if not q:
                self.base[j] = None

    # -- ASGI -----------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                while (await receive())["type"] != "lifespan.shutdown":
                    await send({"type": "lifespan.startup.complete"})
                await send({"type": "lifespan.shutdown.complete"})
            return
        parts = scope["path"].strip("/").split("/")
        if parts == ["healthz"]:
            await _reply(send, 200, {"status": "ok"})
            return
        if len(parts) < 5 or parts[0] != "pods" or parts[3] != "v1":
            await error(send, 404, "not_found", "use /pods/<namespace>/<pod>/v1/...")
            return
        hit = self.resolve(parts[1], parts[2])
        if hit is None:
            await error(send, 404, "not_found", f"no pod {parts[1]}/{parts[2]}")
            return
        spec, node = hit
        route = "/".join(parts[4:])
        if route == "models":
            if scope["method"] != "GET":
                await error(send, 405, "invalid_request_error", "use GET", [(b"allow", b"GET")])
                return
            data = [
                {"id": m, "object": "model", "owned_by": "perllm-twin"}
                for m in (spec.model, spec.name)
            ]
            await _reply(send, 200, {"object": "list", "data": data})
            return
        if route not in ("chat/completions", "completions"):
            await error(send, 404, "not_found", f"no route {route}")
            return
        if scope["method"] != "POST":
            await error(send, 405, "invalid_request_error", "use POST", [(b"allow", b"POST")])
            return
        chat = route == "chat/completions"
        try:  # (the router's checks: size limit, JSON, fields, a model this pod serves)
            raw = await read_body(scope["headers"], receive, self.max_body_bytes)
            req = served(parse(raw, chat), (spec.model, spec.name))
            _one_choice(req.n)
            ad = self.admit(spec, node, req.prompt_tokens, req.attach_bytes, req.max_tokens)
        except BadRequest as e:
            await error(send, e.status, e.kind, e.message)
            return
        answer = asyncio.ensure_future(self._answer(ad, node, req, chat, send))
        gone = asyncio.ensure_future(_disconnect(receive))
        try:
            await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
            if answer.done():
                answer.result()
        finally:
            if not answer.done():  # the client left (or the server stops) before the end
                self.abort(ad)
            answer.cancel()
            gone.cancel()

    async def _answer(self, ad: Admission, node: str, req: Parsed, chat: bool, send: Send) -> None:
        start = self.clock()
        loop = ad.loop = asyncio.get_running_loop()

        async def until(at: Callable[[Timeline], float]) -> None:
            """Until `at(timeline)` simulated seconds after arrival; the timeline may move
            up while the request waits for a slot (an abort ahead of it). `_Overdue` once
            the answer has taken MAX_ANSWER_SLEEP_S (sending the rest at once would fake a
            faster answer than the world model's)."""
            while True:
                ad.wake = loop.create_future()  # (before reading the timeline: no lost wake)
                due = self.t0 + (ad.arrival + at(ad.tl)) / self.speed
                now, cap = self.clock(), start + MAX_ANSWER_SLEEP_S
                if due <= now:
                    return
                if now >= cap:
                    raise _Overdue(self.t0 + (ad.arrival + ad.tl.done) / self.speed - start)
                await asyncio.wait({ad.wake}, timeout=min(due, cap) - now)

        headers = [(b"x-perllm-twin-node", node.encode())]
        started: list[bool] = []  # (the stream's head was sent)
        try:
            await self._send_answer(ad, req, chat, send, until, headers, started)
        except _Overdue as e:
            self.overdue += 1
            self.abort(ad)  # (nobody reads the rest: its slot is given back now)
            why = (f"the twin holds an answer at most {MAX_ANSWER_SLEEP_S:g}s of wall time; "
                   f"this one would take {e.args[0]:.0f}s (node {node} overloaded, or the "
                   "twin's speed too low)")  # fmt: skip
            log.warning("%s: ended with an error", why)
            if not started:
                await error(send, 504, "timeout", why, headers)
                return
            # An error event, then no end (no [DONE], no last chunk): the client, and the
            # router, see an answer broken off, not a complete one to learn from.
            body = json.dumps({"error": {"message": why, "type": "timeout", "code": 504}})
            await send({"type": "http.response.body", "body": b"data: " + body.encode() + b"\n\n",
                        "more_body": True})  # fmt: skip

    async def _send_answer(
        self,
        ad: Admission,
        req: Parsed,
        chat: bool,
        send: Send,
        until: Callable[[Callable[[Timeline], float]], Awaitable[None]],
        headers: list[tuple[bytes, bytes]],
        started: list[bool],
    ) -> None:
        tl = ad.tl  # (its token counts never move)
        usage = {"prompt_tokens": tl.prompt_tokens, "completion_tokens": tl.tokens,
                 "total_tokens": tl.prompt_tokens + tl.tokens}  # fmt: skip
        # As OpenAI: "length" only when max_tokens cut the answer; ids and times per answer.
        capped = req.max_tokens is not None and tl.tokens >= req.max_tokens
        finish = "length" if capped else "stop"
        head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
                "created": int(time.time()), "model": req.model}  # fmt: skip
        if not req.stream:
            await until(lambda t: t.done)
            text = "tok " * tl.tokens
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
            choice |= (
                {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
            )
            out = {**head, "object": "chat.completion" if chat else "text_completion",
                   "choices": [choice], "usage": usage}  # fmt: skip
            await _reply(send, 200, out, headers)
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), *headers]})  # fmt: skip
        started.append(True)
        # (a completions stream's chunks are text_completion objects with a "text")
        obj = "chat.completion.chunk" if chat else "text_completion"
        # As vLLM: the last token's chunk carries finish_reason (so a client counting
        # events, as the router does without `usage`, counts the tokens exactly), and
        # `usage` comes only when asked, in a last chunk with no choices (as OpenAI).
        for k in range(tl.tokens):
            await until(functools.partial(_token_at, k=k))
            part: dict[str, Any] = {"content": "tok "} | ({"role": "assistant"} if k == 0 else {})
            delta = {"delta": part} if chat else {"text": "tok "}
            why = finish if k == tl.tokens - 1 else None
            ev = {**head, "object": obj, "choices": [{"index": 0, **delta, "finish_reason": why}]}
            await send({"type": "http.response.body", "body": _sse(ev), "more_body": True})
        await until(lambda t: t.done)
        tail = b"data: [DONE]\n\n"
        if req.include_usage:
            tail = _sse({**head, "object": obj, "choices": [], "usage": usage}) + tail
        await send({"type": "http.response.body", "body": tail})


class _Overdue(Exception):
    """An answer past MAX_ANSWER_SLEEP_S of wall time (args: the seconds it would take)."""


def _timeline(
    d: float, out: Outcome, a: float, half: float, l_out: float, l_in: float, j: int
) -> Timeline:
    """The answer's times from `execute`'s result for a request arriving at `a`."""
    first = out.start + out.prefill - a + half
    last = out.end - a + half
    return Timeline(first, max(first, last), max(d, last), int(l_out), int(l_in), j, out)


def _one_choice(n: int) -> None:
    """`n` (read as the router reads it: `parse`): the world model runs one sequence a
    request, so the twin answers n=1 only (as llama.cpp's server; the router forwards n
    to a backend that may serve more)."""
    if n != 1:
        raise BadRequest(
            400, "invalid_request_error", f"n: the twin answers one choice per request, not {n}"
        )


def _token_at(t: Timeline, k: int) -> float:
    """When token `k` of the answer is sent: the first, then evenly over the decode."""
    return t.first + k * (t.last - t.first) / max(t.tokens - 1, 1)


def _wake(f: asyncio.Future[None]) -> None:
    if not f.done():
        f.set_result(None)


def _sse(ev: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(ev).encode() + b"\n\n"


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _reply(
    send: Send, status: int, obj: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await reply(send, status, json.dumps(obj).encode(), headers=headers or ())


def twin_resolver(tw: Any) -> Resolver:
    """The pods of a running `perllm.twin.engine.Twin` (bound, not terminating), read
    without its lock (single dict lookups)."""

    def resolve(ns: str, pod: str) -> tuple[ServiceSpec, str] | None:
        ps = tw.pods.get((ns, pod))
        if ps is None:
            return None
        spec = tw.services.get(ps.service)
        return None if spec is None else (spec, tw.node_names[ps.node])

    return resolve


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port for uvicorn, bound here: a port in use or a bad address
    is an OSError in the caller's thread (uvicorn's own bind exits the thread it runs in,
    and the twin ran on without its endpoints)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def serve_in_thread(app: Any, sock: socket.socket) -> threading.Thread:
    """uvicorn on a daemon thread (the twin's clock owns the main thread), on `listen`'s
    socket."""
    import uvicorn

    cfg = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(cfg)
    th = threading.Thread(target=server.run, args=([sock],), name="twin-openai", daemon=True)
    th.start()
    return th
