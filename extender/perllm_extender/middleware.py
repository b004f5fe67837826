"""ASGI middleware of the extender."""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("perllm.extender")


class BodyLimit:
    """413 for bodies over `limit` bytes (declared or streamed); the body is read here and
    replayed to the app."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    too_big = int(v) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    await self._reject(scope, receive, send)
                    return
        chunks: list[bytes] = []
        total, more = 0, True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body = msg.get("body", b"")
            total += len(body)
            if total > self.limit:
                await self._reject(scope, receive, send)
                return
            chunks.append(body)
            more = bool(msg.get("more_body", False))
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        resp = JSONResponse(
            status_code=413, content={"Error": f"request body over {self.limit} bytes"}
        )
        await resp(scope, receive, send)


class Unexpected:
    """A bug in a handler is a 500 with its traceback logged, answered here: Starlette's
    `ServerErrorMiddleware` would send the 500 and then re-raise, and uvicorn closes the
    connection on an exception after the response started, so the scheduler's next request
    on that keep-alive connection failed (seen with an object-valued `metadata.name`)."""

    def __init__(self, app: ASGIApp, on_error: Callable[[], None] | None = None) -> None:
        self.app, self.on_error = app, on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking(msg: Message) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, receive, tracking)
        except Exception:
            log.exception("%s %s: unexpected error", scope.get("method"), scope.get("path"))
            if self.on_error is not None:
                self.on_error()
            if started:  # nothing sensible can follow a half-sent response
                return
            resp = JSONResponse(status_code=500, content={"Error": "internal error (logged)"})
            await resp(scope, receive, send)
