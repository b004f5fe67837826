"""What an OpenAI-compatible server's stream events say, read alike by `perllm load` and
the router: which events carry generated text (a token each, where the server reports no
usage), and the error event a server sends when it fails mid-stream (after its 200 head:
a failed stream for `perllm load`, a failure and no outcome to learn for the router)."""

from __future__ import annotations

import json
import re
from typing import Any

# A stream event that carries generated text: a non-empty string under one of these keys
# (a key cannot be faked by generated text: its quotes there are escaped). A role-only
# first event or a last one with only finish_reason carries none.
_TEXT = re.compile(
    rb'"(?:content|text|reasoning_content|reasoning|refusal|arguments)"\s*:\s*"(?!")'
)
# A data line that may hold an error event (cheap to test: the rest is parsed only then).
_ERROR_LINE = re.compile(rb'^data:[ \t]*(\{.*"(?:error|object)".*)$', re.MULTILINE)


def carries_text(event: bytes, start: int = 0) -> bool:
    """Whether an event's data (`event[start:]`) carries generated text: a token."""
    at = event.find(b'"choices"', start)  # (the text is in a choice: the head skipped)
    return _TEXT.search(event, at if at > 0 else start) is not None


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
