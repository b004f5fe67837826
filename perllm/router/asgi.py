"""The ASGI vocabulary the router speaks: the callable's types, whole replies, OpenAI-style
error replies, and `Shed` (a request the router answers itself with a 5xx)."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from contextvars import ContextVar
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON = b"application/json"


class Shed(Exception):
    """Answered by the router (`status`, `reason` as the error type and metric label)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


class Refused(Shed):
    """The backend could not be connected to (`timeout`: not within the connect timeout),
    or `answered` with a refusal (`health.refusal`): nothing was served, the request may go
    elsewhere."""

    def __init__(
        self, backend: str, message: str, timeout: bool = False, answered: bool = False
    ) -> None:
        super().__init__(502, "upstream_unavailable", message)
        self.backend, self.timeout, self.answered = backend, timeout, answered


Headers = Sequence[tuple[bytes, bytes]]


async def reply(
    send: Send, status: int, body: bytes, ctype: bytes = JSON, headers: Headers = ()
) -> None:
    start = [(b"content-type", ctype), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def error_body(status: int, kind: str, message: str) -> bytes:
    """An OpenAI-style error."""
    return json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()


async def error(send: Send, status: int, kind: str, message: str, headers: Headers = ()) -> None:
    body = error_body(status, kind, message)
    with contextlib.suppress(OSError, RuntimeError):
        await reply(send, status, body, headers=headers)


# uvicorn's line for an app that returned mid-response, at ERROR: a bug, unless the router
# left the response unfinished on purpose (`abort`), which it logs itself with the reason.
UNFINISHED = "ASGI callable returned without completing response."
_ABORTED: ContextVar[bool] = ContextVar("perllm_router_aborted", default=False)


def abort() -> None:
    """The response under way is left unfinished on purpose (its backend stalled or broke
    off, its client stalled, its total time ran out): uvicorn then closes the connection,
    so the client sees a truncated answer. (uvicorn runs each request in its own task:
    the mark is this request's.)"""
    _ABORTED.set(True)


class QuietAborts(logging.Filter):
    """Drops uvicorn's ERROR line for a response the router aborted (`abort`); any other
    unfinished response stays an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == UNFINISHED and _ABORTED.get())


def quiet_aborts() -> None:
    """`QuietAborts` on uvicorn's error logger (once)."""
    lg = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, QuietAborts) for f in lg.filters):
        lg.addFilter(QuietAborts())
