"""The ASGI vocabulary the router speaks: the callable's types, whole replies, OpenAI-style
error replies, and `Shed` (a request the router answers itself with a 5xx)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
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
    """The backend could not be connected to (`timeout`: not within the connect timeout):
    nothing was sent, the request may go elsewhere."""

    def __init__(self, backend: str, message: str, timeout: bool = False) -> None:
        super().__init__(502, "upstream_unavailable", message)
        self.backend, self.timeout = backend, timeout


Headers = Sequence[tuple[bytes, bytes]]


async def reply(
    send: Send, status: int, body: bytes, ctype: bytes = JSON, headers: Headers = ()
) -> None:
    start = [(b"content-type", ctype), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def error(send: Send, status: int, kind: str, message: str, headers: Headers = ()) -> None:
    body = json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()
    with contextlib.suppress(OSError, RuntimeError):
        await reply(send, status, body, headers=headers)
