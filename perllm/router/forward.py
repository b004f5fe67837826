"""The proxy path: a placed request forwarded to its backend and the response streamed
back as it arrives (bytes untouched, one send per read), counting output tokens on the
way; its outcome goes to `Feedback`, and whether the backend answered in time to the
membership's health (`Membership.answered`, `timed_out`). A client that disconnects
cancels the request (`ClientWatch`, from its admission on)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from typing import TYPE_CHECKING

from perllm.router.asgi import Message, Receive, Refused, Scope, Send, Shed, abort
from perllm.router.config import Backend
from perllm.router.decision import Backlog, Ticket
from perllm.router.feedback import Feedback, Flight
from perllm.router.health import refusal
from perllm.router.members import Members
from perllm.router.metrics import BackendMetrics
from perllm.router.proxy import FORWARDED, TokenCounter
from perllm.router.request import Parsed
from perllm.router.upstream import Pool, Response, UpstreamError

if TYPE_CHECKING:
    from perllm.router.membership import Membership

log = logging.getLogger("perllm.router")

DECISION_HEADER = b"x-perllm-decision"
_CTYPE_JSON = (b"content-type", b"application/json")
_NO_AUTH = FORWARDED - {b"authorization"}  # (the client's credential stays here)


class Forwarder:
    def __init__(self, membership: Membership, feedback: Feedback, own_auth: bool = False) -> None:
        self._inflight = membership._inflight  # the requests in flight per backend name
        self._membership = membership  # told how backends answer, and when one is idle
        self._feedback = feedback
        self._total = membership.limits.total_timeout_s
        # With the router's own `auth`, the client's bearer token is the router's secret:
        # never forwarded (a backend without a token_file gets no authorization header).
        self._keep = _NO_AUTH if own_auth else FORWARDED

    async def __call__(
        self,
        scope: Scope,
        watch: ClientWatch,
        req: Parsed,
        raw: bytes,
        members: Members,
        ticket: Ticket,
        tight: float | None,
        t0: float,
    ) -> None:
        j = ticket.server
        b, bm = members.backends[j], members.metrics[j]
        # (set anew if its backend was retired since the decision: it is dropped again,
        # empty, at a later change)
        backlog = self._inflight.setdefault(b.name, Backlog())
        key = backlog.add(time.perf_counter(), ticket)
        flight = Flight(
            members,
            ticket,
            t0,
            tight,
            TokenCounter(req.stream, req.max_tokens, req.n),
            None,
            backlog,
            key,
        )
        bm.inflight.inc()
        resp = None
        started = False  # the response's head sent to the client
        watch.limit(self._total)
        try:
            resp = await self._open(members.pools[j], scope, req, raw, b, flight)
            await watch.send(_response_start(resp, b, ticket))
            started = True
            await self._relay(watch, resp, flight, bm, b.name)
        except asyncio.CancelledError:
            if not watch.client_gone():
                raise
            if watch.expired:
                self._expired(watch, flight, b.name, started)
            elif watch.stalled:  # (the response is left unfinished: the connection closed)
                abort()
                bm.error("client_stalled").inc()
                log.warning("a client read nothing of its answer from %s for %gs: aborted",
                            b.name, watch.stall_s)  # fmt: skip
            else:
                bm.error("client_disconnect").inc()
        finally:
            watch.limit(None)  # (a reply of the router's own may follow: not cut by it)
            # An answer's prefill was observed at its first chunk (`_relay`); an ending
            # before one, or an error status, pulls no queue forward.
            backlog.done(key, time.perf_counter(), prefilled=False)
            bm.inflight.dec()
            if resp is not None:
                resp.release()
            if not len(backlog):
                self._membership.drained(b.name)

    def _expired(self, watch: ClientWatch, flight: Flight, name: str, started: bool) -> None:
        """`total_timeout_s` passed: a 504 if the client has no response yet (`Shed`),
        else its response aborted. The backend is ejected as one not answering in time
        unless the relay was waiting on the client then (a slow reader slows the backend
        down too: its answer waits in the socket)."""
        why = f"backend {name}: no complete answer within total_timeout_s={self._total:g}s"
        if watch.expired == "client":
            flight.members.metrics[flight.ticket.server].error("total_timeout").inc()
            why += " (the client was reading slowly)"
        else:
            self._feedback.failed(flight, "total_timeout")
            self._membership.timed_out(name, why)
        if not started:
            raise Shed(504, "upstream_timeout", why)
        abort()
        log.warning("%s: the client's response is aborted", why)

    async def _open(
        self, pool: Pool, scope: Scope, req: Parsed, raw: bytes, b: Backend, flight: Flight
    ) -> Response:
        """The upstream request sent and its response head read; failures are `Shed`."""
        if b.model is not None and b.model != req.model:
            raw = json.dumps({**req.body, "model": b.model}).encode()
        token = flight.members.tokens[flight.ticket.server]
        if token is None:
            fwd = [(k, v) for k, v in scope["headers"] if k in self._keep]
        else:  # a remote tier: its own credential, never the client's
            fwd = [(k, v) for k, v in scope["headers"] if k in _NO_AUTH]
            fwd.append((b"authorization", token.bearer()))
        fwd.append(_CTYPE_JSON)
        try:
            resp = await pool.post(scope["path"], raw, fwd)
        except UpstreamError as e:
            if not e.sent:  # refused, or not accepted in time: it may go elsewhere
                flight.members.metrics[flight.ticket.server].error(e.kind).inc()
                raise Refused(b.name, f"backend {b.name}: {e}", e.kind == "timeout") from None
            if e.kind == "timeout":  # sent, so not sent again; the next ones go elsewhere
                self._feedback.failed(flight, "timeout")
                why = f"backend {b.name}: no response within {pool.read_timeout:g}s"
                self._membership.timed_out(b.name, why)
                raise Shed(504, "upstream_timeout", why) from None
            # Sent and not answered: the connection closed before an answer (connect) or
            # what came was no HTTP answer (disconnect: a wrong port, TLS spoken to an
            # http:// url). A missed request, and the backend fails as one refusing
            # connections: the next ones go elsewhere (not this one: it may have reached
            # the backend). Counted as `connect` alone, it was neither judged nor ejected:
            # a backend dropping every request kept getting them, at 100 % attainment.
            why = f"backend {b.name}: {e}"
            self._feedback.failed(flight, e.kind)
            self._membership.unanswered(b.name, why)
            raise Shed(502, "upstream_unavailable", why) from None
        refused = refusal(resp.status, token is not None)
        if refused is not None:
            # Nothing was served (`refusal`): like a refused connection the backend is
            # ejected, the condition says why, and the request goes elsewhere. Passed on,
            # a client got a 401 for a credential not its own, or a redirect without its
            # Location, and a redirect was learned as a fast answer.
            resp.release()
            flight.members.metrics[flight.ticket.server].error(refused[0]).inc()
            raise Refused(b.name, f"backend {b.name}: {refused[1]}", answered=True)
        return resp

    async def _relay(
        self, watch: ClientWatch, resp: Response, flight: Flight, bm: BackendMetrics, name: str
    ) -> None:
        """The body, streamed as it arrives; then what the outcome teaches."""
        counter = flight.counter
        send, clock = watch.client_send, watch.clock  # (`watch.send` inlined: per chunk)
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
                    # The first token of an answer: its prefill is over. An error body
                    # (429, 503 from an overloaded backend) says nothing of a prefill.
                    if flight.backlog is not None and resp.status < 400:
                        flight.backlog.prefilled(flight.key, flight.first)
                counter.feed(chunk)
                last = resp.complete  # the end with the last bytes: one write less
                watch.sending = clock()
                await send({"type": "http.response.body", "body": chunk, "more_body": not last})
                watch.sending = 0.0
                if last:
                    break
        except UpstreamError as e:
            self._feedback.failed(flight, e.kind)
            if e.kind == "timeout":  # the answer stalled: not answering in time
                why = f"backend {name}: answer stalled, {e}"
                self._membership.timed_out(name, why)
            else:  # cut off mid-way, but it answers
                why = f"backend {name}: answer cut off, {e}"
                self._membership.answered(name)
            # The response is left unfinished, so the server closes the connection without
            # its end (no last chunk): the client sees a truncated answer, not a complete
            # 200 without [DONE] or with half a JSON body.
            abort()
            log.warning("%s: the client's response is aborted", why)
            return
        self._membership.answered(name)
        if not last:
            await watch.send({"type": "http.response.body", "body": b"", "more_body": False})
        if resp.status >= 400:
            bm.error("status").inc()
        elif counter.error is not None:  # failed after its 200 head: no speed to learn
            self._feedback.failed(flight, "stream_error")
            log.warning("backend %s: error event in its stream: %s", name, counter.error)
        else:
            self._feedback.completed(flight)


class ClientWatch:
    """Watches the client once its body is read, while its request waits for a slot and
    is proxied: a disconnect cancels the task (its queue place, or its upstream request),
    and so does a `send` to it not done within `stall_s` (`stalled`: a client that stops
    reading its answer, whose socket never closes, held a slot and a backend's request
    for good), and so does the end of a proxied request's `limit` (`expired`). `close`
    before the end of the task: a complete response reads as a disconnect too."""

    def __init__(self, receive: Receive, send: Send, stall_s: float) -> None:
        self._task = asyncio.current_task()
        self._done = self._gone = self._undone = self.stalled = False
        # "backend" or "client": `limit`'s time passed, waiting on that side
        self.expired: str | None = None
        self.client_send, self.stall_s = send, stall_s
        self._loop = asyncio.get_running_loop()
        self.clock = self._loop.time
        self.sending = 0.0  # when the send under way began (`clock`); 0.0: none
        self.until = math.inf  # `limit`'s end (`clock`)
        self._timer: asyncio.TimerHandle | None = None
        self._watcher = asyncio.create_task(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while True:
            m = await receive()
            if m["type"] == "http.disconnect":
                self._cancel()
                return

    def limit(self, seconds: float | None) -> None:
        """Cancel the task `seconds` from now (`expired`), or no more (None): the total
        time of a proxied request, checked by the same timer (`_check`)."""
        if seconds is None:
            self.until = math.inf  # (the timer, if armed, checks the stall alone)
            return
        now = self.clock()
        self.until = now + seconds
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(min(self.until, now + self.stall_s), self._check)

    async def send(self, message: Message) -> None:
        """`send` to the client, timed: `sending` set while it waits (the relay's loop
        sets it itself), checked by one timer a request every `stall_s`, armed here."""
        now = self.sending = self.clock()
        if self._timer is None:
            self._timer = self._loop.call_at(now + self.stall_s, self._check)
        await self.client_send(message)
        self.sending = 0.0

    def _check(self) -> None:
        began, now = self.sending, self.clock()
        if now >= self.until:
            self.expired = "client" if began else "backend"
            self._cancel()
        elif began and now - began >= self.stall_s:
            self.stalled = True
            self._cancel()
        elif not self._done:
            at = min((began or now) + self.stall_s, self.until)
            self._timer = self._loop.call_at(at, self._check)

    def _cancel(self) -> None:
        if not self._done and not self._gone and self._task is not None:
            self._gone = True
            self._task.cancel()

    def client_gone(self) -> bool:
        """Whether the cancellation being handled is the watch's, the client gone or
        `stalled` (then it is undone, once)."""
        if self._gone and not self._undone and self._task is not None:
            self._undone = True
            self._task.uncancel()
        return self._gone

    def close(self) -> None:
        self._done = True
        self._watcher.cancel()
        if self._timer is not None:
            self._timer.cancel()


def _response_start(resp: Response, b: Backend, t: Ticket) -> Message:
    decision = (
        f"backend={b.name}; tier={b.tier.value}; predicted={t.predicted_time:.3f}s; "
        f"feasible={'true' if t.feasible else 'false'}"
    ).encode()
    return {
        "type": "http.response.start",
        "status": resp.status,
        "headers": [(b"content-type", resp.content_type), (DECISION_HEADER, decision)],
    }
