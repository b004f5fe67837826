"""What the router learns from a response body as it passes through: output tokens.
(The upstream calls themselves: `perllm.router.upstream`.)"""

from __future__ import annotations

import json
import math

from perllm.costmodel import BYTES_PER_TOKEN

# Request headers passed on to the backend (lower case, as ASGI gives them).
FORWARDED = frozenset(
    {b"authorization", b"accept", b"user-agent", b"openai-organization", b"x-request-id"}
)


class TokenCounter:
    """Output tokens of a response as it streams: `usage.completion_tokens` when the
    server reports it, else one per SSE data event (streams) or ~4 bytes a token of the
    answer's text (whole JSON bodies). At most `limit` (the request's max_tokens): a
    backend's count is not trusted beyond what the request allowed (one reporting 1e308
    would teach CS-UCB a time ratio of ~0 for its arm)."""

    def __init__(self, stream: bool, limit: float | None = None) -> None:
        self.stream = stream
        self.limit = math.inf if limit is None else limit
        self.events = 0
        self.usage: float | None = None
        self._body = bytearray()
        self._tail = b""

    def feed(self, chunk: bytes) -> None:
        if not self.stream:
            if len(self._body) < 2**24:
                self._body += chunk
            return
        data = self._tail + chunk
        self.events += data.count(b"data:") - data.count(b"data: [DONE]")
        self.events -= self._tail.count(b"data:") - self._tail.count(b"data: [DONE]")
        if b'"usage"' in chunk:
            for line in data.split(b"\n"):
                if line.startswith(b"data:") and b'"usage"' in line:
                    self._usage_of(line[5:])
        self._tail = data[-16:]

    def _usage_of(self, raw: bytes) -> None:
        try:
            u = json.loads(raw).get("usage")
        except (ValueError, AttributeError, RecursionError):  # (nested too deeply to read)
            return
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
        return min(self._tokens(), max(1.0, self.limit))

    def _tokens(self) -> float:
        if self.usage is not None:
            return max(1.0, self.usage)
        if self.stream:
            # The last content event often carries finish_reason only; an empty stream is 1.
            return float(max(1, self.events))
        self._usage_of(bytes(self._body))
        if self.usage is not None:
            return max(1.0, self.usage)
        return max(1.0, len(self._body) / BYTES_PER_TOKEN)
