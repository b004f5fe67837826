"""The agent's HTTP endpoints: /metrics (Prometheus text), /healthz, /probe (for peers)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST

from perllm.agent.probe import CHUNK, DEFAULT_BYTES, MAX_BYTES

log = logging.getLogger("perllm.agent")

# Incompressible payload (a VPN or proxy that compresses would otherwise inflate the
# measured bandwidth), generated once and repeated.
_PAYLOAD = os.urandom(1 << 20)
_VIEW = memoryview(_PAYLOAD)
# /probe downloads served at once (each up to MAX_BYTES, to whoever reaches the port);
# another is answered 503 at once. Peers probe one at a time every few minutes, so a
# collision is rare; unbounded, a few clients asking in parallel held a thread each and
# filled the node's uplink.
MAX_PROBES = 8
# Connections served at once, a thread each; another is closed at once. An idle one holds
# its thread up to `_Handler.timeout` (60 s): unbounded, a flood of idle connections took
# a thread each. Prometheus and the peers' probes need a handful.
MAX_CONNECTIONS = 64


class AgentHTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a slow peer's download never blocks shutdown
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], render: Callable[[], bytes]) -> None:
        self.render = render
        self.max_probes = MAX_PROBES
        self.probes = threading.BoundedSemaphore(MAX_PROBES)
        self.max_connections = MAX_CONNECTIONS
        self.connections = threading.BoundedSemaphore(self.max_connections)
        self.refused = 0  # connections closed at once, over the cap
        super().__init__(addr, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.connections.acquire(blocking=False):
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warning("over %d connections at once: closing new ones", self.max_connections)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            # no thread (RuntimeError "can't start new thread" at a thread or memory limit):
            # the place is given back, else MAX_CONNECTIONS such failures refuse every later
            # connection for good; the caller closes the socket and reports the error
            self.connections.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.release()


class _Handler(BaseHTTPRequestHandler):
    server: AgentHTTPServer
    server_version = "perllm-agent"
    timeout = 60  # seconds a client may stall a socket operation
    _head_sent = False  # once true, an error can only end the reply, not answer 500

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _reply(self, status: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def end_headers(self) -> None:
        super().end_headers()
        self._head_sent = True

    def do_GET(self) -> None:
        u = urlsplit(self.path)
        self._head_sent = False
        try:
            if u.path == "/metrics":
                self._reply(200, self.server.render(), CONTENT_TYPE_LATEST)
            elif u.path in ("/healthz", "/readyz"):
                self._reply(200, b"ok\n")
            elif u.path == "/probe":
                self._probe(u.query)
            else:
                self._reply(404, b"not found: try /metrics, /healthz or /probe?bytes=N\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away mid-reply
        except TimeoutError:  # it stopped reading for `timeout` s (a partitioned peer)
            log.debug("%s stalled on %s: connection dropped", self.address_string(), self.path)
            self.close_connection = True
        except Exception:
            log.exception("serving %s failed", self.path)
            if self._head_sent:  # a 500 now would land inside the body: end the reply
                self.close_connection = True
            else:
                self._reply(500, b"internal error\n")

    def _probe(self, query: str) -> None:
        vals = parse_qs(query, keep_blank_values=True).get("bytes", [str(DEFAULT_BYTES)])
        try:
            n = int(vals[0])
            if n < 1:
                raise ValueError
        except ValueError:
            self._reply(400, f"bytes must be an integer in 1..{MAX_BYTES}\n".encode())
            return
        n = min(n, MAX_BYTES)  # capped, and the Content-Length says so
        head = self.command == "HEAD"
        if not head and not self.server.probes.acquire(blocking=False):
            self.send_response(503)
            self.send_header("Retry-After", "1")
            body = f"busy: {self.server.max_probes} probe downloads in flight\n".encode()
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if head:
                return
            left, off = n, 0
            while left:
                k = min(CHUNK, left, len(_PAYLOAD) - off)
                self.wfile.write(_VIEW[off : off + k])
                left -= k
                off = (off + k) % len(_PAYLOAD)
        finally:
            if not head:
                self.server.probes.release()
