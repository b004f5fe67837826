"""uvicorn's HTTP/1.1 protocol (httptools) with the bounds it lacks, for both listeners.

uvicorn times out only an idle keep-alive connection *after* a response: a connection that
never sends a request, a request head sent a byte at a time, or a body trickled in were
kept open forever, and the head had no size limit (2 MB of headers were read and
answered). Each such connection holds a socket and what it sent, so a client on the port
(the plain-HTTP probe port needs no certificate) could run the process out of descriptors
or memory and leave kube-scheduler without an answer. Here:

- a request must arrive whole, head and body, within `READ_TIMEOUT_S` of its first byte
  (or of the connection, before the first request): **408** and the connection closed.
  kube-scheduler sends a request at once and gives up after its `httpTimeout` (5 s by
  default, 2 s in the devcluster), so this never cuts one short;
- a request head (request line and headers) is at most `MAX_HEAD_BYTES`: **431** and the
  connection closed (kube-scheduler's are a few hundred bytes).

The body's own limit is `middleware.BodyLimit` (413). The time a pipelined request waits
for the one before it counts against its deadline (kube-scheduler does not pipeline).
"""

from __future__ import annotations

import asyncio
import json
import logging

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

log = logging.getLogger("perllm.extender")

READ_TIMEOUT_S = 10.0
MAX_HEAD_BYTES = 64 * 1024


class GuardedHttp(HttpToolsProtocol):
    """`HttpToolsProtocol` with a per-request read deadline and a head size limit."""

    read_timeout_s = READ_TIMEOUT_S
    max_head_bytes = MAX_HEAD_BYTES

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
        self._in_head = True  # reading a request head (or waiting for one)
        self._head_bytes = 0
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
        super().data_received(data)
        # a read that ended a request may hold the next head's start: not counted (so a
        # head may exceed the limit by one read, never grow without bound)
        if self._in_head and not self._completed and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self._refuse(431, f"request head over {self.max_head_bytes} bytes")

    def on_message_begin(self) -> None:
        self._arm()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()  # the request is in: what follows is the app's time
        self._in_head, self._head_bytes, self._completed = True, 0, True

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.read_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self._refuse(408, f"request not received within {self.read_timeout_s:g} s")

    def _refuse(self, status: int, why: str) -> None:
        """`{"Error": why}` with `status` unless a response is under way, then close."""
        self._disarm()
        log.info("%s: %s (%d, connection closed)", _peer(self.client), why, status)
        if self.cycle is None or not self.cycle.response_started:
            body = json.dumps({"Error": why}).encode()
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


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "client"
