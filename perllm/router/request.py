"""What the router reads from an OpenAI request: its model, whether it streams, and the
sizes the cost model needs (prompt tokens at ~4 bytes a token, as `perllm.costmodel`
assumes, and the bytes of the body beyond the text, e.g. image data URLs)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

from perllm.costmodel import BYTES_PER_TOKEN
from perllm.labels import decimal


class BadRequest(ValueError):
    """A request the router answers with a 4xx: (status, OpenAI error type, message)."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


@dataclass(frozen=True)
class Parsed:
    body: dict[str, Any]
    model: str
    stream: bool
    prompt_tokens: float  # estimate, >= 1
    attach_bytes: float
    max_tokens: float | None
    include_usage: bool = False  # stream_options.include_usage: a last chunk with `usage`
    n: int = 1  # choices asked for: a backend's output tokens are theirs together


def _utf8_len(text: str) -> int:
    """Bytes of `text` in UTF-8; a lone surrogate (valid JSON: a string cut inside an
    emoji, as JSON.stringify writes it) counts its 3 bytes instead of failing."""
    return len(text.encode("utf-8", "surrogatepass"))


def _text_and_attach(content: Any) -> tuple[int, int]:
    """(text bytes, attachment bytes) of one message's content (string or parts)."""
    if isinstance(content, str):
        return _utf8_len(content), 0
    if not isinstance(content, list):
        return 0, 0
    text = attach = 0
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text" and isinstance(part.get("text"), str):
            text += _utf8_len(part["text"])
            continue
        for key in ("image_url", "input_audio", "file", "video_url"):
            v = part.get(key)
            if isinstance(v, dict):
                v = v.get("url") or v.get("data") or v.get("file_data")
            if isinstance(v, str):
                attach += len(v)
    return text, attach


def sizes(body: dict[str, Any]) -> tuple[float, float]:
    """(prompt tokens, attachment bytes) of a chat or completions body."""
    text = attach = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        for m in messages:
            if isinstance(m, dict):
                t, a = _text_and_attach(m.get("content"))
                text, attach = text + t, attach + a
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        text += _utf8_len(prompt)
    elif isinstance(prompt, list):
        text += sum(_utf8_len(p) if isinstance(p, str) else 4 for p in prompt)
    return max(1.0, text / BYTES_PER_TOKEN), float(attach)


def _not_json(name: str) -> Any:
    """NaN, Infinity and -Infinity, which Python's json reads but JSON has not (the body
    is forwarded as it came: a model server may not read them)."""
    raise ValueError(f"{name} is not a JSON value")


_MAX_FLOAT = sys.float_info.max  # (inf, NaN and ints too large for a float fail 1 <= v <= it)

# One decoder for every request: json.loads with an argument builds a new one each call.
_DECODER = json.JSONDecoder(parse_constant=_not_json)


def parse(raw: bytes, chat: bool) -> Parsed:
    try:  # (json.loads' own reading of bytes: UTF-8, -16 or -32 by their first bytes)
        body = _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except ValueError as e:  # (JSONDecodeError, UnicodeDecodeError, _not_json)
        raise BadRequest(400, "invalid_request_error", f"body is not valid JSON: {e}") from None
    except RecursionError:
        raise BadRequest(400, "invalid_request_error", "body: JSON nested too deeply") from None
    if not isinstance(body, dict):
        raise BadRequest(400, "invalid_request_error", "body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest(400, "invalid_request_error", "model: required string")
    if chat and not isinstance(body.get("messages"), list):
        raise BadRequest(400, "invalid_request_error", "messages: required list")
    if not chat and not isinstance(body.get("prompt"), str | list):
        raise BadRequest(400, "invalid_request_error", "prompt: required string or list")
    mt = None
    for key in ("max_tokens", "max_completion_tokens"):  # (null: not given; the second wins)
        v = body.get(key)
        if v is not None:
            mt = _positive(key, v)
    n = body.get("n")  # (forwarded as it came; the output length learned is per choice)
    n = 1 if n is None else int(_positive("n", n))
    stream = body.get("stream")  # (null: not given; a string such as "false" is no flag)
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest(400, "invalid_request_error", "stream: must be true or false")
    opts = body.get("stream_options")  # (the router forwards it; the twin answers it)
    if opts is not None and not isinstance(opts, dict):
        raise BadRequest(400, "invalid_request_error", "stream_options: must be an object")
    usage = None if opts is None else opts.get("include_usage")
    if usage is not None and not isinstance(usage, bool):
        raise BadRequest(
            400, "invalid_request_error", "stream_options.include_usage: must be true or false"
        )
    if opts is not None and not stream:  # (as OpenAI and vLLM: the options of a stream)
        raise BadRequest(
            400, "invalid_request_error", "stream_options: only allowed when stream is true"
        )
    l_in, attach = sizes(body)
    return Parsed(body, model, bool(stream), l_in, attach, mt, bool(usage), n)


def _positive(key: str, v: Any) -> int | float:
    """`v`, a whole number >= 1 as OpenAI and the model servers take it (8.0 is 8, 2.5 is
    refused), or a 400 naming `key`. (An int beyond a float's range is no float: float(v)
    would overflow in `Router`.)"""
    if (
        not isinstance(v, int | float)
        or isinstance(v, bool)
        or not 1 <= v <= _MAX_FLOAT
        or (isinstance(v, float) and not v.is_integer())
    ):
        raise BadRequest(400, "invalid_request_error", f"{key}: must be a positive integer")
    return v


def deadline_header(value: str | None) -> float | None:
    """`x-perllm-deadline-s`: a positive number of seconds, or None. A plain decimal, as a
    number in an annotation (`perllm.labels.decimal`, the one parser of that format):
    `float()` also read "1_0" as 10 and "inf" and "nan"."""
    if value is None:
        return None
    try:
        d = decimal(value)
    except ValueError as e:
        raise BadRequest(400, "invalid_request_error", f"x-perllm-deadline-s: {e}") from None
    if not d > 0:
        raise BadRequest(400, "invalid_request_error", "x-perllm-deadline-s: must be > 0")
    return d
