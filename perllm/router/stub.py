"""A trivial OpenAI-compatible backend for tests and benchmarks: answers `tokens` tokens
(streamed as SSE events or as one JSON body) after an optional delay per token, and any
GET (the router's health probe, `GET /v1/models`) with its model list, counted apart."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


async def _disconnect(receive: Callable[[], Awaitable[Message]]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class StubBackend:
    def __init__(
        self,
        name: str = "stub",
        tokens: int = 8,
        token_delay_s: float = 0.0,
        hang: bool = False,
        usage: bool = True,
    ) -> None:
        self.name, self.tokens, self.token_delay_s = name, tokens, token_delay_s
        self.hang, self.usage = hang, usage
        self.requests = 0
        self.probes = 0  # GETs (health probes), not in `requests`
        self.last_headers: dict[bytes, bytes] = {}  # of the last request or probe (auth)
        self.active = 0  # requests being answered now (a leak shows here)
        self.cancelled = 0

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        more = True
        while more:
            m = await receive()
            body += m.get("body", b"")
            more = bool(m.get("more_body"))
        if scope["method"] == "GET":
            self.probes += 1
        else:
            self.requests += 1
        self.last_headers = dict(scope.get("headers") or [])
        self.active += 1
        # Like a model server, stop generating when the client (the router) goes away.
        answer = asyncio.ensure_future(self._answer(scope, body, send))
        gone = asyncio.ensure_future(_disconnect(receive))
        try:
            await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not answer.done():
                answer.cancel()
                self.cancelled += 1
                await asyncio.gather(answer, return_exceptions=True)
        finally:
            gone.cancel()
            answer.cancel()
            self.active -= 1

    async def _answer(
        self, scope: Scope, body: bytes, send: Callable[[Message], Awaitable[None]]
    ) -> None:
        if self.hang:
            await asyncio.sleep(3600)
        if scope["method"] == "GET":
            models = {"object": "list", "data": [{"id": self.name, "object": "model"}]}
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": json.dumps(models).encode()})
            return
        req = json.loads(body) if body else {}
        n = int(req.get("max_tokens") or self.tokens)
        n = min(n, self.tokens)
        chat = scope["path"].endswith("chat/completions")
        if not req.get("stream"):
            for _ in range(n):
                if self.token_delay_s:
                    await asyncio.sleep(self.token_delay_s)
            text = "tok " * n
            choice = {"index": 0, "finish_reason": "stop"}
            choice |= (
                {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
            )
            out: dict[str, Any] = {
                "id": "x",
                "object": "chat.completion",
                "model": req.get("model"),
                "backend": self.name,
                "choices": [choice],
            }
            if self.usage:
                out["usage"] = {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1}
            data = json.dumps(out).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": data})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for _ in range(n):
            if self.token_delay_s:
                await asyncio.sleep(self.token_delay_s)
            delta = {"delta": {"content": "tok "}} if chat else {"text": "tok "}
            ev = {"id": "x", "object": "chat.completion.chunk", "choices": [{"index": 0, **delta}]}
            await send(
                {
                    "type": "http.response.body",
                    "body": b"data: " + json.dumps(ev).encode() + b"\n\n",
                    "more_body": True,
                }
            )
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
