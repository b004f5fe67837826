"""What an OpenAI-compatible server's stream events say beyond tokens: the error event a
server sends when it fails mid-stream (after its 200 head), read alike by `perllm load`
(a failed stream, not an answer) and the router (a failure, not an outcome to learn)."""

from __future__ import annotations

import json
import re
from typing import Any

# A data line that may hold an error event (cheap to test: the rest is parsed only then).
_ERROR_LINE = re.compile(rb'^data:[ \t]*(\{.*"(?:error|object)".*)$', re.MULTILINE)


def stream_error(ev: Any) -> str | None:
    """The message of an error event: OpenAI's `{"error": {...}}` (vLLM, the router),
    or vLLM's older `{"object": "error", "message": ...}`; None if it is none."""
    if not isinstance(ev, dict):
        return None
    err = ev.get("error")
    if err is None and ev.get("object") == "error":
        err = ev
    if err is None:
        return None
    if not isinstance(err, dict):
        return str(err)[:120]
    return str(err.get("message") or err.get("type") or json.dumps(err))[:120]


def error_in(data: bytes) -> str | None:
    """The first error event among the whole `data:` lines of `data` (bytes of a stream),
    or None. A line cut by a chunk boundary is not read (error events are small and sent
    in one write)."""
    for m in _ERROR_LINE.finditer(data.replace(b"\r", b"\n")):
        try:
            why = stream_error(json.loads(m.group(1)))
        except (ValueError, RecursionError):
            continue
        if why is not None:
            return why
    return None
