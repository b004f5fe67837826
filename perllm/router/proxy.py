"""What the router learns from a response body as it passes through: output tokens.
(The upstream calls themselves: `perllm.router.upstream`.)"""

from __future__ import annotations

import json
import math
import re

from perllm.costmodel import BYTES_PER_TOKEN
from perllm.sse import carries_text, error_in

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
# A stream's line is kept whole up to this (an event is well under; past it, logprobs of
# a long answer, only its start is kept, where the text is).
_LINE_MAX = 1 << 16


class TokenCounter:
    """Output tokens of one sequence of a response as it streams: `usage.completion_tokens`
    when the server reports it, else one per SSE data event carrying text (streams, read
    by lines) or ~4 bytes a token of the answer's text (whole JSON bodies), over `n` (the
    request's choices: servers count the tokens of all of them, and a stream has an event
    per choice's token; the cost model sizes one sequence). At most `limit` (the request's
    max_tokens, a bound per choice): a backend's count is not trusted beyond what the
    request allowed (one reporting 1e308 would teach CS-UCB a time ratio of ~0 for its
    arm). A JSON answer over `WHOLE` bytes is not kept: its count is the last "usage"
    object in it that reads as one."""

    def __init__(self, stream: bool, limit: float | None = None, n: int = 1) -> None:
        self.stream, self.n = stream, n
        self.limit = math.inf if limit is None else limit
        self.events = 0
        self.usage: float | None = None
        self._body: bytearray | None = bytearray()  # (None: over WHOLE)
        self._size = 0
        self._span: bytes | None = None  # from the last "usage" key on, at most _SPAN
        self._tail = b""
        self._line = b""  # a stream's line not ended yet (its start, up to _LINE_MAX)
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
        if b"\r" in chunk:  # (SSE's other line ends; a CRLF cut by a read: a blank line)
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        line = self._line
        if len(line) >= _LINE_MAX:  # a line too long to keep: the rest of it skipped
            end = chunk.find(b"\n")
            if end < 0:
                return
            self._event(line)
            line, chunk = b"", chunk[end + 1 :]
        data = line + chunk if line else chunk
        if b'error"' in data and self.error is None:  # (a substring test per chunk)
            self.error = error_in(data)
        *lines, rest = data.split(b"\n")
        usage = b'"usage"' in data  # (once a read: the lines are looked at for it only then)
        for ln in lines:
            self._event(ln, usage)
        self._line = rest[:_LINE_MAX]

    def _event(self, line: bytes, usage: bool = True) -> None:
        """One whole line of a stream: a data event with text is a token; its usage read."""
        if line.startswith(b"data:"):
            if carries_text(line, 5):
                self.events += 1
            if usage and b'"usage"' in line:
                self._usage_of(line[5:])

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
            if self._line:  # (a last line without its end)
                self._event(self._line)
                self._line = b""
            if self.usage is not None:
                return self.usage
            return float(self.events)  # (an empty stream: 1, `tokens`)
        if self._body is not None:
            self._usage_of(bytes(self._body))
        else:
            self._read_span()
        if self.usage is not None:
            return max(1.0, self.usage)
        return max(1.0, self._size / BYTES_PER_TOKEN)
