"""A `requests` session and adapter that bound a whole exchange, not each read: the
Prometheus client's (`prom.Prometheus`) queries must end, whatever the server (or the
resolver) does. One deadline covers a request and its redirects: name resolution,
connect, head and body of every hop."""

from __future__ import annotations

import contextlib
import functools
import math
import socket
import threading
import time
from typing import Any

from requests import PreparedRequest, Response, Session
from requests.adapters import HTTPAdapter
from requests.exceptions import ContentDecodingError, ReadTimeout
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

# Per thread: the watch of the request being sent, and `end`, the deadline
# (time.monotonic()) of the exchange it is part of (`BoundedSession.request`).
_local = threading.local()
_LOCK = threading.Lock()  # orders a watchdog's cut against a connection changing hands
_CONNECTS = threading.Lock()  # guards _Attempt results and _blocked
# Connection attempts left running past their deadline, per host: a thread blocked in the
# resolver (getaddrinfo) cannot be cancelled, it ends when the resolver gives up.
_blocked: dict[str, int] = {}
MAX_BLOCKED = 4  # per host; beyond, a new connection there fails at once (no new thread)


class _Watch:
    """One request's deadline: the connection it runs on, shut down when it passes."""

    def __init__(self, end: float = math.inf) -> None:
        self.end = end  # time.monotonic() of the deadline
        self.conn: Any = None
        self.fired = False
        self.done = False

    def cut(self) -> None:
        with _LOCK:
            if self.done:
                return
            self.fired = True
            conn = self.conn
            if conn is not None and conn._perllm_watch is self:  # not since taken by another
                conn._perllm_cut = True
                _shutdown(conn.sock)

    def finish(self) -> bool:
        """Stop watching; whether the deadline had passed."""
        with _LOCK:
            self.done = True
            return self.fired


def _shutdown(sock: Any) -> None:
    """Shut the TCP connection down, which ends any read blocked on it. The base class's
    method on the raw socket: SSLSocket.shutdown also drops its SSL object under the reader."""
    raw = sock if isinstance(sock, socket.socket) else getattr(sock, "socket", None)
    if isinstance(raw, socket.socket):
        with contextlib.suppress(OSError):  # closed already, or never connected
            socket.socket.shutdown(raw, socket.SHUT_RDWR)


class _Watched:
    """Mixed into urllib3's connection classes: each request claims the connection for the
    current thread's watch, from connect (TLS handshake included) to its response."""

    _perllm_watch: _Watch | None = None
    _perllm_cut = False  # shut down at an earlier request's deadline

    def _claim(self) -> None:
        w: _Watch | None = getattr(_local, "watch", None)
        with _LOCK:
            stale, self._perllm_cut = self._perllm_cut, False
            self._perllm_watch = w
            if w is not None:
                w.conn = self
        if stale:  # never reuse a connection cut mid-answer: the next request reconnects
            self.close()  # type: ignore[attr-defined]
        if w is not None and w.fired:
            w.cut()

    def connect(self) -> None:
        self._claim()  # the handshake's socket can be cut
        super().connect()  # type: ignore[misc]
        self._claim()  # a deadline passed meanwhile cuts it at once

    def request(self, *args: Any, **kwargs: Any) -> None:
        self._claim()
        super().request(*args, **kwargs)  # type: ignore[misc]

    def _new_conn(self) -> Any:
        """Name resolution and the TCP connect, bounded by the deadline too: they come
        before there is a socket for the watchdog to shut down, and a hanging getaddrinfo
        ignores every socket timeout. So they run on a daemon thread, waited for until the
        deadline only."""
        w, host = self._perllm_watch, str(self.host)  # type: ignore[attr-defined]
        if w is None or w.end == math.inf:
            return super()._new_conn()  # type: ignore[misc]
        with _CONNECTS:
            if _blocked.get(host, 0) >= MAX_BLOCKED:
                raise NewConnectionError(
                    self,  # type: ignore[arg-type]
                    f"{_blocked[host]} earlier connections to {host} still hang (name "
                    "resolution?): not trying another until one ends",
                )
        attempt = _Attempt(host)
        threading.Thread(
            target=attempt.run,
            args=(super()._new_conn,),  # type: ignore[misc]
            name=f"perllm-connect-{host}",
            daemon=True,  # never holds the process at exit
        ).start()
        if attempt.wait(w.end - time.monotonic()):
            sock = attempt.result()
            # The watchdog may have fired while there was no socket to shut down: from here
            # on its cut finds this one (the TLS handshake comes next); before, it is seen.
            with _LOCK:
                self.sock, fired = sock, w.fired
            if not fired:
                return sock
            sock.close()
        w.cut()  # the deadline passed: the adapter says so
        raise ConnectTimeoutError(self, f"resolving and connecting to {host}: deadline passed")


class _Attempt:
    """One `_new_conn` on its own thread. Given up at the deadline, it is left to finish
    (counted in `_blocked` meanwhile) and the socket it may still make is closed."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.done = threading.Event()
        self.abandoned = False
        self.sock: Any = None
        self.error: Exception | None = None

    def run(self, new_conn: Any) -> None:
        sock, error = None, None
        try:
            sock = new_conn()
        except Exception as e:
            error = e
        with _CONNECTS:
            self.sock, self.error, abandoned = sock, error, self.abandoned
            self.done.set()
            if abandoned:
                _blocked[self.host] -= 1
                if not _blocked[self.host]:
                    del _blocked[self.host]
        if abandoned and sock is not None:
            sock.close()

    def wait(self, timeout_s: float) -> bool:
        """Whether it finished within `timeout_s`; if not, it is abandoned."""
        self.done.wait(max(0.0, timeout_s))
        with _CONNECTS:
            if not self.done.is_set():
                self.abandoned = True
                _blocked[self.host] = _blocked.get(self.host, 0) + 1
                return False
        return True

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.sock


@functools.cache
def _watched_pool(pool_cls: Any) -> Any:
    if issubclass(pool_cls.ConnectionCls, _Watched):
        return pool_cls
    conn_cls = type(
        f"Watched{pool_cls.ConnectionCls.__name__}", (_Watched, pool_cls.ConnectionCls), {}
    )
    return type(f"Watched{pool_cls.__name__}", (pool_cls,), {"ConnectionCls": conn_cls})


def _watch_pools(manager: Any) -> Any:
    """A pool manager (direct, HTTP or SOCKS proxy) whose connections can be watched."""
    manager.pool_classes_by_scheme = {
        scheme: _watched_pool(cls) for scheme, cls in manager.pool_classes_by_scheme.items()
    }
    return manager


class BoundedAnswers(HTTPAdapter):
    """An exchange (name resolution, connect, head and body) ends within `deadline_s`, with
    at most `max_bytes` of body. requests' timeout bounds each read only, so a server
    dripping a byte a second, in the head or the body, held a query (and with it the
    operator's status timer) for as long as it liked. At the deadline a watchdog shuts the
    connection down, which ends whatever read is blocked, and the connection is never
    reused."""

    def __init__(self, deadline_s: float, max_bytes: int, retry: Any) -> None:
        self.deadline_s, self.max_bytes = deadline_s, max_bytes
        super().__init__(max_retries=retry)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        _watch_pools(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        return _watch_pools(super().proxy_manager_for(proxy, **proxy_kwargs))

    def send(
        self,
        request: PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: dict[str, str] | None = None,
    ) -> Response:
        timed_out = ReadTimeout(
            f"timed out: no complete answer within {self.deadline_s:g}s (name resolution, "
            "connect, head and body, redirects included)"
        )
        # A redirect is sent through here again: it has what is left of the exchange's time.
        end = getattr(_local, "end", None) or time.monotonic() + self.deadline_s
        if (left := end - time.monotonic()) <= 0:
            raise timed_out
        watch = _Watch(end)
        timer = threading.Timer(left, watch.cut)
        timer.daemon = True
        body: list[bytes] = []
        _local.watch = watch
        timer.start()
        try:
            try:
                resp = super().send(request, True, timeout, verify, cert, proxies)
            finally:
                _local.watch = None  # (the body is read here, on no new connection)
            size = 0
            try:
                # read1: what has arrived (stream(n) would wait for n bytes before a check)
                while chunk := resp.raw.read1(65536, decode_content=True):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise ContentDecodingError(f"answer over {self.max_bytes} bytes")
                    if time.monotonic() > end:
                        raise timed_out
                    body.append(chunk)
            finally:
                resp.close()  # (after a whole read the connection goes back to the pool)
        except Exception:
            if watch.finish():  # whatever the cut made of it, it is the deadline
                raise timed_out from None
            raise
        finally:
            timer.cancel()
        if watch.finish():  # a cut body can read as complete (no Content-Length)
            raise timed_out
        # What requests does when it reads a body itself (`Response.content`).
        resp._content, resp._content_consumed = b"".join(body), True
        return resp


class BoundedSession(Session):
    """A session whose every request, its redirects included, ends within `deadline_s`
    (with `BoundedAnswers` mounted): requests sends each hop through the adapter again,
    and each had a deadline of its own, so N hops took up to N × `deadline_s`."""

    def __init__(self, deadline_s: float) -> None:
        super().__init__()
        self.deadline_s = deadline_s

    def request(self, *args: Any, **kwargs: Any) -> Response:
        outer = getattr(_local, "end", None)  # (a request made by a hook: the outer's time)
        _local.end = outer or time.monotonic() + self.deadline_s
        try:
            return super().request(*args, **kwargs)
        finally:
            _local.end = outer
