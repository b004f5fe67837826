"""uvicorn's HTTP/1.1 protocol (httptools) with the bounds it lacks: a read deadline and a
head size limit, for every listener of the project (the extender's two, the router's, the
twin's OpenAI endpoints).

uvicorn times out only an idle keep-alive connection *after* a response: a connection that
never sends a request, a request head sent a byte at a time, or a body trickled in were
kept open forever, and the head had no size limit (2 MB of headers were read and
answered). Each such connection holds a socket and what it sent, so anyone reaching the
port could run the process out of descriptors or memory. `guarded(Bounds(...))` is the
protocol class to give uvicorn (`http=`):

- **deadline**: a request must arrive whole, head and body, within `timeout_s` of its
  first byte (or of the connection, before its first request), plus one second for every
  `min_rate` bytes of body received so far (`min_rate` 0: no allowance). Else **408** and
  the connection closed. The allowance is the anti-slowloris rule for large uploads over
  slow links: a body arriving at `min_rate` bytes/s or faster never runs out of time,
  one trickled slower does (at the latest `timeout_s / (1 - rate / min_rate)` after its
  first byte), whatever its size. Body bytes that arrive after the request's answer
  (an app that answered without reading it all: a 413, a 401, a 404) earn none: uvicorn
  reads and drops them until the request ends, and with the allowance a client sending
  at `min_rate` or faster kept such a connection, and the bandwidth, for good (past any
  body size limit of the app's); now it is closed at the deadline;
- **head**: a request line and headers over `max_head_bytes` are **431** and the
  connection closed.

Only reading the request is timed: once the request is in, the deadline stops, so the
app's processing and its (streamed) response are not bounded here. A pipelined request's
wait for the one before it counts against its deadline. The refusal's body is
`Bounds.body(status, why)` (JSON), and a line at INFO on `Bounds.logger`; `Bounds.refused`,
if set, is told each refusal answered (status, reason: `READ_TIMEOUT`, `HEAD_TOO_LARGE`),
e.g. to count it in a metric of the program's own (a connection closed after the request
had its answer is not counted again).

Cost per request: one timer handle (`loop.call_later`, cancelled when the request is in)
and a few integer operations per read; the allowance moves no timer (the timer, when it
fires, re-arms itself for what the body earned meanwhile).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024
# The reasons `Bounds.refused` is told: the deadline passed (408; also a connection that
# sent nothing in time), the head too large (431).
READ_TIMEOUT, HEAD_TOO_LARGE = "read_timeout", "head_too_large"


def error_body(status: int, why: str) -> bytes:
    """`{"Error": why}` (the Kubernetes scheduler extender's error field)."""
    return json.dumps({"Error": why}).encode()


@dataclass(frozen=True)
class Bounds:
    timeout_s: float  # a request, head and body, from its first byte (or the connection)
    min_rate: float = 0.0  # bytes/s: each body byte received adds 1 / min_rate s; 0: none
    max_head_bytes: int = MAX_HEAD_BYTES
    body: Callable[[int, str], bytes] = error_body  # the refusal's JSON body
    logger: str = "perllm"
    # told (status, reason) of each refusal, once its connection is closing (a metric)
    refused: Callable[[int, str], None] | None = None

    def allowance(self, body_bytes: int) -> float:
        return allowance(body_bytes, self.min_rate)


def allowance(body_bytes: int, min_rate: float) -> float:
    """Seconds `body_bytes` of body add to a deadline at `min_rate` bytes/s (0: none); the
    router's body deadline (`limits.body_timeout_s`) grows by the same rule."""
    return body_bytes / min_rate if min_rate > 0 else 0.0


def guarded(bounds: Bounds) -> type[GuardedHttp]:
    """The protocol class (uvicorn's `http=`) that enforces `bounds`."""
    return type("GuardedHttp", (GuardedHttp,), {"bounds": bounds})


class GuardedHttp(HttpToolsProtocol):
    """`HttpToolsProtocol` with a per-request read deadline and a head size limit
    (`bounds`; use `guarded`)."""

    bounds: ClassVar[Bounds] = Bounds(10.0)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
        self._until = 0.0  # when the request must be in, before its body's allowance
        self._in_head = True  # reading a request head (or waiting for one)
        self._head_bytes = 0
        self._body_bytes = 0
        self._completed = False  # a request ended in the data being parsed
        super().connection_made(transport)
        self._arm()  # a connection that never sends a request is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # a byte after a response starts the next request's clock (uvicorn's keep-alive
        # timer stops at any byte, even the blank lines a parser skips)
        self._arm()
        self._completed = False
        if self._in_head:
            super().data_received(data)
            # a read that ended a request may hold the next head's start: not counted (so
            # a head may exceed the limit by one read, never grow without bound)
            if self._in_head and not self._completed and not self.transport.is_closing():
                self._head_bytes += len(data)
                if self._head_bytes > self.bounds.max_head_bytes:
                    why = f"request head over {self.bounds.max_head_bytes} bytes"
                    self._refuse(431, HEAD_TOO_LARGE, why)
        else:
            if self.cycle is None or not self.cycle.response_complete:  # (answered: none)
                self._body_bytes += len(data)  # (with chunk framing: near enough)
            super().data_received(data)

    def on_message_begin(self) -> None:
        self._arm()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()  # the request is in: what follows is the app's time
        self._in_head, self._completed = True, True
        self._head_bytes = self._body_bytes = 0

    def _arm(self) -> None:
        if self._deadline is None:
            self._until = self.loop.time() + self.bounds.timeout_s
            self._deadline = self.loop.call_at(self._until, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        due = self._until + self.bounds.allowance(self._body_bytes)
        if due > self.loop.time():  # the body received meanwhile earned more time
            self._deadline = self.loop.call_at(due, self._expired)
            return
        self._refuse(408, READ_TIMEOUT, f"request not received within {self._limit()}")

    def _limit(self) -> str:
        b = self.bounds
        extra = f" (+1 s per {b.min_rate:g} body bytes)" if b.min_rate > 0 else ""
        return f"{b.timeout_s:g} s{extra}"

    def _refuse(self, status: int, reason: str, why: str) -> None:
        """`bounds.body(status, why)` with `status` unless a response is under way, then
        close; `bounds.refused` told of an answered one."""
        self._disarm()
        peer = f"{self.client[0]}:{self.client[1]}" if self.client else "client"
        logging.getLogger(self.bounds.logger).info(
            "%s: %s (%d, connection closed)", peer, why, status
        )
        answer = self.cycle is None or not self.cycle.response_started
        if answer:
            body = self.bounds.body(status, why)
            head = [STATUS_LINE[status]]
            for name, value in self.server_state.default_headers:
                head += [name, b": ", value, b"\r\n"]
            head += [
                b"content-type: application/json\r\n",
                b"content-length: %d\r\n" % len(body),
                b"connection: close\r\n\r\n",
            ]
            self.transport.write(b"".join(head) + body)
        self.transport.close()
        if answer and self.bounds.refused is not None:  # (after the close: leaks nothing)
            self.bounds.refused(status, reason)


class ListenError(OSError):
    """A port a server cannot listen on, named by its flag."""

    def __init__(self, flag: str, host: str, port: int, why: OSError) -> None:
        super().__init__(f"{flag} {port}: cannot listen on {host}:{port}: {why.strerror or why}")


def listen(host: str, port: int, flag: str | None = None) -> socket.socket:
    """A socket bound to host:port to hand uvicorn (`Server.run(sockets=[...])`), bound
    here: a port in use or a bad address is an OSError in the caller (a `ListenError`
    naming `flag` when given). uvicorn's own bind logged it and exited 3 after the app
    had started (the extender had started its informers), or ended the thread it ran in."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if flag is None:
            raise
        raise ListenError(flag, host, port, e) from None
    return sock


def log_listening(sock: socket.socket, scheme: str = "http") -> None:
    """uvicorn's "running on" line, which it leaves out for a socket it is handed."""
    host, port = sock.getsockname()[:2]
    logging.getLogger("uvicorn.error").info(
        "Uvicorn running on %s://%s:%d (Press CTRL+C to quit)", scheme, host, port
    )
