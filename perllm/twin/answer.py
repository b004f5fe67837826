"""The twin's OpenAI answers, timed by the world model: the completion object once the
answer is done, or the SSE stream (as vLLM's) with each token sent when its `Timeline`
says."""

from __future__ import annotations

import functools
import json
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from perllm.router.asgi import reply
from perllm.router.request import BadRequest, Parsed
from perllm.twin.admission import Admission, Timeline

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]


async def send_answer(
    ad: Admission,
    req: Parsed,
    chat: bool,
    send: Send,
    until: Callable[[Callable[[Timeline], float]], Awaitable[None]],
    headers: list[tuple[bytes, bytes]],
    started: list[bool],
) -> None:
    """`req`'s answer, each part sent once `until` has waited for its time on `ad`'s
    timeline; `started` gets an entry once a stream's head is sent (an error after it
    can only be an event)."""
    tl = ad.tl  # (its token counts never move)
    usage = {"prompt_tokens": tl.prompt_tokens, "completion_tokens": tl.tokens,
             "total_tokens": tl.prompt_tokens + tl.tokens}  # fmt: skip
    # As OpenAI: "length" only when max_tokens cut the answer; ids and times per answer.
    capped = req.max_tokens is not None and tl.tokens >= req.max_tokens
    finish = "length" if capped else "stop"
    head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "created": int(time.time()), "model": req.model}  # fmt: skip
    if not req.stream:
        await until(lambda t: t.done)
        text = "tok " * tl.tokens
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        choice |= {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
        out = {**head, "object": "chat.completion" if chat else "text_completion",
               "choices": [choice], "usage": usage}  # fmt: skip
        await reply_json(send, 200, out, headers)
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream"), *headers]})  # fmt: skip
    started.append(True)
    # (a completions stream's chunks are text_completion objects with a "text")
    obj = "chat.completion.chunk" if chat else "text_completion"
    # As vLLM: the last token's chunk carries finish_reason (so a client counting
    # events, as the router does without `usage`, counts the tokens exactly), and
    # `usage` comes only when asked, in a last chunk with no choices (as OpenAI).
    for k in range(tl.tokens):
        await until(functools.partial(token_at, k=k))
        part: dict[str, Any] = {"content": "tok "} | ({"role": "assistant"} if k == 0 else {})
        delta = {"delta": part} if chat else {"text": "tok "}
        why = finish if k == tl.tokens - 1 else None
        ev = {**head, "object": obj, "choices": [{"index": 0, **delta, "finish_reason": why}]}
        await send({"type": "http.response.body", "body": sse(ev), "more_body": True})
    await until(lambda t: t.done)
    tail = b"data: [DONE]\n\n"
    if req.include_usage:
        tail = sse({**head, "object": obj, "choices": [], "usage": usage}) + tail
    await send({"type": "http.response.body", "body": tail})


def one_choice(n: int) -> None:
    """`n` (read as the router reads it: `parse`): the world model runs one sequence a
    request, so the twin answers n=1 only (as llama.cpp's server; the router forwards n
    to a backend that may serve more)."""
    if n != 1:
        raise BadRequest(
            400, "invalid_request_error", f"n: the twin answers one choice per request, not {n}"
        )


def token_at(t: Timeline, k: int) -> float:
    """When token `k` of the answer is sent: the first, then evenly over the decode."""
    return t.first + k * (t.last - t.first) / max(t.tokens - 1, 1)


def sse(ev: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(ev).encode() + b"\n\n"


async def reply_json(
    send: Send, status: int, obj: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await reply(send, status, json.dumps(obj).encode(), headers=headers or ())
