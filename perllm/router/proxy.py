"""What the router learns from a response body as it passes through: output tokens.
(The upstream calls themselves: `perllm.router.upstream`.)"""

from __future__ import annotations

import json

from perllm.costmodel import BYTES_PER_TOKEN

# Request headers passed on to the backend (lower case, as ASGI gives them).
FORWARDED = frozenset(
    {b"authorization", b"accept", b"user-agent", b"openai-organization", b"x-request-id"}
)


class TokenCounter:
    """Output tokens of a response as it streams: `usage.completion_tokens` when the
    server reports it, else one per SSE data event (streams) or ~4 bytes a token of the
    answer's text (whole JSON bodies)."""

    def __init__(self, stream: bool) -> None:
        self.stream = stream
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
        if isinstance(u, dict) and isinstance(u.get("completion_tokens"), int | float):
            self.usage = float(u["completion_tokens"])

    def tokens(self) -> float:
        if self.usage is not None:
            return max(1.0, self.usage)
        if self.stream:
            # The last content event often carries finish_reason only; an empty stream is 1.
            return float(max(1, self.events))
        self._usage_of(bytes(self._body))
        if self.usage is not None:
            return max(1.0, self.usage)
        return max(1.0, len(self._body) / BYTES_PER_TOKEN)
