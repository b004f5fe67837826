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
(~4 bytes a token). The requests run on the nodes of `perllm.twin.admission` (their own
`ServerState`s, not the twin's synthetic traffic's; a client that disconnects frees its
slot then); the answers are shaped in `perllm.twin.answer`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Literal

from perllm.contract import ServiceSpec
from perllm.costmodel import build_cost_table
from perllm.httpguard import listen as listen  # (the twin's --openai-port)
from perllm.router.asgi import error
from perllm.router.config import Limits
from perllm.router.intake import read_body, served
from perllm.router.request import BadRequest, Parsed, parse
from perllm.scenario import Scenario
from perllm.twin.admission import Admission, NodeAdmissions, Timeline
from perllm.twin.answer import one_choice, reply_json, send_answer

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


class TwinOpenAI(NodeAdmissions):
    """The ASGI app: `/pods/<namespace>/<pod>/v1/...` of the pods `resolve` knows."""

    def __init__(
        self,
        sc: Scenario,
        resolve: Resolver,
        speed: float = 1.0,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        super().__init__(sc, speed, seed, clock)
        self.resolve = resolve
        self.max_body_bytes = max_body_bytes
        self.overdue = 0  # answers ended at MAX_ANSWER_SLEEP_S

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
            await reply_json(send, 200, {"status": "ok"})
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
            await reply_json(send, 200, {"object": "list", "data": data})
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
            one_choice(req.n)
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
            await send_answer(ad, req, chat, send, until, headers, started)
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


class _Overdue(Exception):
    """An answer past MAX_ANSWER_SLEEP_S of wall time (args: the seconds it would take)."""


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


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


def uvicorn_config(app: Any, lifespan: Literal["auto", "on", "off"] = "auto") -> Any:
    """uvicorn for the twin's endpoints, reading requests under the router's bounds (a
    read deadline growing with the body, a head limit: `perllm.httpguard`); a plain
    listener kept a silent or trickling connection open for ever."""
    import uvicorn

    from perllm.httpguard import guarded
    from perllm.router.serving import bounds

    return uvicorn.Config(app, log_level="warning", access_log=False, lifespan=lifespan,
                          http=guarded(bounds(Limits())), ws="none")  # fmt: skip


def serve_in_thread(app: Any, sock: socket.socket) -> threading.Thread:
    """uvicorn on a daemon thread (the twin's clock owns the main thread), on `listen`'s
    socket."""
    import uvicorn

    server = uvicorn.Server(uvicorn_config(app, lifespan="off"))
    th = threading.Thread(target=server.run, args=([sock],), name="twin-openai", daemon=True)
    th.start()
    return th
