"""What the router learns from a response body as it passes through: output tokens.
(The upstream calls themselves: `perllm.router.upstream`.)"""

from __future__ import annotations

import json
import math
import re

from perllm.costmodel import BYTES_PER_TOKEN
from perllm.sse import error_in

# Request headers passed on to the backend (lower case, as ASGI gives them).
FORWARDED = frozenset(
    {b"authorization", b"accept", b"user-agent", b"openai-organization", b"x-request-id"}
)

# A JSON answer is kept whole up to this and read once at its end (a chat answer is a few
# KiB). Kept whole up to 16 MiB, 256 concurrent answers could hold 4 GiB, and parsing one
# (logprobs) held the event loop ~0.5 s. Past it only the bytes after each "usage" key are
# kept, `_SPAN` at most (a usage object is well under 1 KiB).
WHOLE = 1 << 18
_SPAN = 1 << 12
_USAGE_KEY = re.compile(rb'"usage"\s*:')
_DECODER = json.JSONDecoder()


class TokenCounter:
    """Output tokens of one sequence of a response as it streams: `usage.completion_tokens`
    when the server reports it, else one per SSE data event (streams) or ~4 bytes a token
    of the answer's text (whole JSON bodies), over `n` (the request's choices: servers
    count the tokens of all of them, and a stream has an event per choice's token; the
    cost model sizes one sequence). At most `limit` (the request's max_tokens, a bound per
    choice): a backend's count is not trusted beyond what the request allowed (one
    reporting 1e308 would teach CS-UCB a time ratio of ~0 for its arm). A JSON answer over
    `WHOLE` bytes is not kept: its count is the last "usage" object in it that reads as
    one."""

    def __init__(self, stream: bool, limit: float | None = None, n: int = 1) -> None:
        self.stream, self.n = stream, n
        self.limit = math.inf if limit is None else limit
        self.events = 0
        self.usage: float | None = None
        self._body: bytearray | None = bytearray()  # (None: over WHOLE)
        self._size = 0
        self._span: bytes | None = None  # from the last "usage" key on, at most _SPAN
        self._tail = b""
        self.error: str | None = None  # a stream's error event (`perllm.sse`): no outcome

    def feed(self, chunk: bytes) -> None:
        if not self.stream:
            self._size += len(chunk)
            if self._body is None:
                self._scan(self._tail + chunk, len(self._tail), chunk)
            elif self._size <= WHOLE:
                self._body += chunk
            else:
                data, self._body = bytes(self._body + chunk), None
                self._scan(data, 0, chunk)
            return
        data = self._tail + chunk
        self.events += data.count(b"data:") - data.count(b"data: [DONE]")
        self.events -= self._tail.count(b"data:") - self._tail.count(b"data: [DONE]")
        if b'error"' in data and self.error is None:  # (a substring test per chunk)
            self.error = error_in(data)
        if b'"usage"' in chunk:
            for line in data.split(b"\n"):
                if line.startswith(b"data:") and b'"usage"' in line:
                    self._usage_of(line[5:])
        self._tail = data[-16:]

    def _scan(self, data: bytes, new: int, chunk: bytes) -> None:
        """`data` (its bytes from `new` on not seen before) of an answer over WHOLE: the
        bytes after each "usage" key in it kept, read when the next one starts or at the
        end (`_read_span`)."""
        found = False
        for m in _USAGE_KEY.finditer(data):
            if m.end() > new:  # (a key within the kept tail was found before)
                self._read_span()
                self._span, found = data[m.end() : m.end() + _SPAN], True
        if not found and self._span is not None and len(self._span) < _SPAN:
            self._span += chunk[: _SPAN - len(self._span)]
        self._tail = data[-16:]

    def _read_span(self) -> None:
        if self._span is None:
            return
        try:
            u, _ = _DECODER.raw_decode(self._span.decode("utf-8", "replace").lstrip())
        except (ValueError, RecursionError):  # (cut at _SPAN, or no JSON value)
            return
        finally:
            self._span = None
        self._count(u)

    def _usage_of(self, raw: bytes) -> None:
        try:
            u = json.loads(raw).get("usage")
        except (ValueError, AttributeError, RecursionError):  # (nested too deeply to read)
            return
        self._count(u)

    def _count(self, u: object) -> None:
        """`usage.completion_tokens`, where it is a count."""
        n = u.get("completion_tokens") if isinstance(u, dict) else None
        # (a bool is an int in Python; an int beyond a float's range, inf, NaN or a
        # negative count is no count: the other estimates stand)
        if isinstance(n, int | float) and not isinstance(n, bool):
            try:
                f = float(n)
            except OverflowError:
                return
            if math.isfinite(f) and f >= 0:
                self.usage = f

    def tokens(self) -> float:
        return min(max(1.0, self._tokens() / self.n), max(1.0, self.limit))

    def _tokens(self) -> float:
        if self.usage is not None:
            return max(1.0, self.usage)
        if self.stream:
            # The last content event often carries finish_reason only; an empty stream is 1.
            return float(max(1, self.events))
        if self._body is not None:
            self._usage_of(bytes(self._body))
        else:
            self._read_span()
        if self.usage is not None:
            return max(1.0, self.usage)
        return max(1.0, self._size / BYTES_PER_TOKEN)
