"""A lean pooled HTTP/1.1 client for the router's upstream calls: asyncio protocols and
httptools' C parser (the one uvicorn uses), one keep-alive pool per backend.

Per request it does what the proxy needs and nothing more: write the head and the body in
one call, hand back the status and content type once the head is parsed, then the body
chunks as they arrive (de-chunked), with a read timeout between chunks. A connection is
reused only after a complete response that allowed keep-alive; a connection that went
stale in the pool is retried once on a fresh one (nothing had been answered yet). There is
no cookie, redirect, proxy or HTTP/2 support: the upstream is a model server.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

import httptools

_HIGH_WATER = 1 << 18  # buffered body bytes before the socket is paused
# A response's head (with any 1xx before it) at most this long: the parser buffers a header
# line until it ends, so a head that never ends grew until the read timeout.
MAX_HEAD = 1 << 16


class UpstreamError(Exception):
    """`kind`: connect (nothing sent or answered), timeout (connect, response head or
    between two chunks), or disconnect (cut mid-way).
    `sent`: whether any of the request may have reached the backend (False: the connection
    itself failed, so the request can go elsewhere)."""

    def __init__(self, kind: str, message: str, sent: bool = True) -> None:
        super().__init__(message)
        self.kind, self.sent = kind, sent


class _Conn(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.ctype = b"application/json"
        self.framed = False  # content-length or chunked: EOF is not the end
        self.interim = False  # a 1xx head (e.g. 103 Early Hints) before the answer
        self.head = False
        self.before_head = 0  # bytes received before the head was complete
        self.complete = False
        self.keep_alive = False
        self.received = False
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False
        self.error: UpstreamError | None = None
        self.waiter: asyncio.Future[None] | None = None

    # -- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(UpstreamError("disconnect", f"bad HTTP response: {e}"))
            self.close()
            return
        if not self.head:  # (checked after parsing: a read may hold the head and a body)
            self.before_head += len(data)
            if self.before_head > MAX_HEAD:
                self._fail(
                    UpstreamError("disconnect", f"bad HTTP response: head over {MAX_HEAD} bytes")
                )
                self.close()
                return
        if self.chunks:  # (body chunks: one wake and one flow-control check per read)
            if self.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
                self.paused = True
                self.transport.pause_reading()
            self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.head and not self.framed and not self.complete:
            self.complete = True  # a body delimited by the end of the connection
            self._wake()
        elif not self.complete:
            kind = "disconnect" if self.received else "connect"
            self._fail(UpstreamError(kind, f"connection closed: {exc or 'EOF'}"))

    # -- httptools callbacks ---------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        n = name.lower()
        if n == b"content-type":
            self.ctype = value
        elif n == b"content-length" or (n == b"transfer-encoding" and b"chunked" in value.lower()):
            self.framed = True

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if 100 <= self.status <= 199 and self.status != 101:
            # An informational head (RFC 9110 §15.2): skipped; the answer follows.
            self.interim, self.ctype, self.framed = True, b"application/json", False
            return
        if not 200 <= self.status <= 599:  # (none the client could be answered with)
            self._fail(UpstreamError("disconnect", f"bad HTTP response: status {self.status}"))
            self.close()
            return
        self.head = True
        if self.status in (204, 304):
            self.framed = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)

    def on_message_complete(self) -> None:
        if self.interim:  # (the 1xx head's end, not the answer's)
            self.interim = False
            return
        self.keep_alive = self.parser.should_keep_alive()  # (false once the message is done)
        self.framed = True
        self.complete = True
        self._wake()

    # -- internals ---------------------------------------------------------------------
    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _fail(self, e: UpstreamError) -> None:
        if self.error is None:
            self.error = e
        w = self.waiter
        if w is not None and not w.done():
            w.set_exception(e)

    async def wait(self, timeout: float) -> None:
        if self.error is not None:
            raise self.error
        w = self.waiter = self.loop.create_future()
        h = self.loop.call_later(timeout, _expire, w, timeout)
        try:
            await w
        finally:
            h.cancel()
            self.waiter = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()  # at once: the backend stops generating


def _expire(w: asyncio.Future[None], timeout: float) -> None:
    if not w.done():
        w.set_exception(UpstreamError("timeout", f"no data within {timeout:g}s"))


class Response:
    """An upstream response after its head: `status`, `content_type`, then `chunks()`;
    `release()` (always) returns the connection to the pool or closes it."""

    def __init__(self, pool: Pool, conn: _Conn, read_timeout: float) -> None:
        self._pool, self._conn, self._timeout = pool, conn, read_timeout
        self.status = conn.status
        self.content_type = conn.ctype
        self._done = False

    @property
    def complete(self) -> bool:
        """The whole body has been received (what `take` returns may be the last of it)."""
        return self._conn.complete

    def take(self) -> bytes | None:
        """All body bytes received so far (joined: one write downstream per read), b""
        once the response is complete, or None: nothing yet, `await wait()`."""
        c = self._conn
        if c.chunks:
            if len(c.chunks) == 1:
                data = c.chunks.popleft()
            else:
                data = b"".join(c.chunks)
                c.chunks.clear()
            c.buffered = 0
            if c.complete:
                self._done = True
            if c.paused and c.transport is not None:
                c.paused = False
                c.transport.resume_reading()
            return data
        if c.complete:
            self._done = True
            return b""
        return None

    async def wait(self) -> None:
        """Until more body bytes or the end arrive (UpstreamError: timeout, cut off)."""
        await self._conn.wait(self._timeout)

    def release(self) -> None:
        c = self._conn
        if self._done and c.complete and c.keep_alive and not c.closed:
            self._pool.put(c)
        else:
            c.close()


class Pool:
    """Keep-alive connections to one backend (base URL with an optional path prefix)."""

    def __init__(
        self,
        url: str,
        connect_timeout: float,
        read_timeout: float,
        max_idle: int = 256,
        tls: ssl.SSLContext | Callable[[], ssl.SSLContext] | None = None,
    ) -> None:
        """`tls`: how an https backend is verified (default: the system's CAs), or what
        gives that context for each new connection (a `perllm.secrets.CaFile`'s rotated
        CAs: the connections kept alive stay as they are)."""
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.host = u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | Callable[[], ssl.SSLContext] | None = (
            (tls or ssl.create_default_context()) if u.scheme == "https" else None
        )
        self.prefix = u.path.rstrip("/")
        default = (u.scheme == "http" and self.port == 80) or self.port == 443
        self.authority = (u.hostname if default else f"{u.hostname}:{self.port}").encode()
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.max_idle = max_idle
        self.idle: deque[_Conn] = deque()
        self.closed = False  # its backend left: connections are closed, not kept

    def put(self, c: _Conn) -> None:
        c._reset()
        if not self.closed and len(self.idle) < self.max_idle:
            self.idle.append(c)
        else:
            c.close()

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        tls = self.ssl() if callable(self.ssl) else self.ssl
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, proto = await loop.create_connection(
                    lambda: _Conn(loop),
                    self.host,
                    self.port,
                    ssl=tls,
                    server_hostname=self.host if tls else None,
                )
        except TimeoutError:
            raise UpstreamError(
                "timeout", f"connect timed out ({self.connect_timeout:g}s)", sent=False
            ) from None
        except OSError as e:
            raise UpstreamError("connect", f"cannot connect: {e}", sent=False) from None
        return proto

    async def post(
        self, path: str, body: bytes, headers: Iterable[tuple[bytes, bytes]] = ()
    ) -> Response:
        """Send a POST and wait for the response head (within the read timeout)."""
        length = b"content-length: " + str(len(body)).encode() + b"\r\n"
        return await self._exchange(self._head(b"POST ", path, length, headers) + body)

    async def get(self, path: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> Response:
        """Send a GET (the health probe, `perllm.router.probe`) and wait for the response
        head (within the read timeout)."""
        return await self._exchange(self._head(b"GET ", path, b"", headers))

    def _head(
        self, method: bytes, path: str, first: bytes, headers: Iterable[tuple[bytes, bytes]]
    ) -> bytes:
        """A request head: `method` (with its space) `path` to this pool's host, the
        `first` header lines (the body's length), then `headers`."""
        return b"".join(
            [
                method,
                self.prefix.encode(),
                path.encode(),
                b" HTTP/1.1\r\nhost: ",
                self.authority,
                b"\r\n",
                first,
                *(k + b": " + v + b"\r\n" for k, v in headers),
                b"\r\n",
            ]
        )

    async def _exchange(self, data: bytes) -> Response:
        """Write a request (a pooled connection, else a new one) and read its head."""
        for attempt in (0, 1):
            reused = False
            conn: _Conn | None = None
            while self.idle:
                c = self.idle.pop()
                if not c.closed:
                    conn, reused = c, True
                    break
            if conn is None:
                conn = await self._connect()
            assert conn.transport is not None
            conn.transport.write(data)
            try:
                while not conn.head:
                    await conn.wait(self.read_timeout)
            except UpstreamError as e:
                conn.close()
                if reused and e.kind == "connect" and attempt == 0:
                    continue  # closed by the server while idle: once more, fresh
                raise
            except BaseException:
                conn.close()
                raise
            return Response(self, conn, self.read_timeout)
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the idle connections; those in use are closed when released."""
        self.closed = True
        while self.idle:
            self.idle.pop().close()
