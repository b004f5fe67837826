"""A completion request read off ASGI and validated before it waits for a slot: the body
within its size limit, the JSON (`perllm.router.request.parse`), a model this router
serves, and the `x-perllm-deadline-s` header. Anything wrong is a `BadRequest` (4xx); a
body the bodies held at once have no room for (`BodyBudget`) is `OverBudget` (503)."""

from __future__ import annotations

from collections.abc import Callable, Collection

from perllm.mediatype import refused
from perllm.router.asgi import Receive
from perllm.router.request import BadRequest, Parsed, deadline_header, parse

DEADLINE_HEADER = b"x-perllm-deadline-s"

Headers = list[tuple[bytes, bytes]]


class ClientGone(Exception):
    """The client disconnected before its body was in: nobody to answer."""


class OverBudget(Exception):
    """Holding this body would take the bodies held at once past `limits.body_budget_bytes`."""


class BodyBudget:
    """The bytes of request bodies held at once (`limits.body_budget_bytes`; 0: no limit):
    each request's `Hold` grows as its body comes (at once to a declared Content-Length)
    and gives its bytes back when the request is answered."""

    __slots__ = ("held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit, self.held = limit, 0

    def hold(self) -> Hold:
        return Hold(self)


class Hold:
    """One request's bytes in a `BodyBudget`: calling it with `size` holds `size` bytes in
    all (`OverBudget` if that would take the total past the limit); `release` gives them
    back. (A plain object: a generator context manager and a closure cost the router ~3 %
    of its CPU per request, bench/router_overhead.py.)"""

    __slots__ = ("budget", "mine")

    def __init__(self, budget: BodyBudget) -> None:
        self.budget, self.mine = budget, 0

    def __call__(self, size: int) -> None:
        more = size - self.mine
        if more <= 0:
            return
        b = self.budget
        if b.limit and b.held + more > b.limit:
            raise OverBudget(
                f"router busy: the request bodies it holds would exceed "
                f"limits.body_budget_bytes ({b.limit}); retry later"
            )
        b.held += more
        self.mine = size

    def release(self) -> None:
        self.budget.held -= self.mine
        self.mine = 0


async def read_request(
    headers: Headers,
    receive: Receive,
    chat: bool,
    models: Collection[str],
    limit: int,
    progress: Callable[[int], None] | None = None,
    hold: Callable[[int], None] | None = None,
) -> tuple[bytes, Parsed, float | None]:
    """(raw body, parsed body, the deadline header's tightening or None). `progress`: told
    the bytes read so far after each piece of a body that comes in several; `hold`: told
    the bytes to hold (a `BodyBudget.hold`) before they are read, where declared, else as
    they come."""
    raw = await read_body(headers, receive, limit, progress, hold)
    req = served(parse(raw, chat), models)
    values = [v for k, v in headers if k == DEADLINE_HEADER]
    if len(values) > 1:  # (no list field: which one a proxy or client meant is unknown)
        raise BadRequest(
            400,
            "invalid_request_error",
            f"x-perllm-deadline-s: given {len(values)} times; give one",
        )
    tight = deadline_header(values[0].decode("latin-1")) if values else None
    return raw, req, tight


def served(req: Parsed, models: Collection[str]) -> Parsed:
    """`req`, if its model is one of `models` (else a 404 naming them)."""
    if req.model not in models:
        raise BadRequest(
            404, "model_not_found", f"model {req.model!r} not served here: {sorted(models)}"
        )
    return req


async def read_body(
    headers: Headers,
    receive: Receive,
    limit: int,
    progress: Callable[[int], None] | None = None,
    hold: Callable[[int], None] | None = None,
) -> bytes:
    declared = 0
    for k, v in headers:
        if k == b"content-length" and v.isdigit() and (declared := int(v)) > limit:
            raise BadRequest(413, "invalid_request_error", f"body over {limit} bytes")
        if k == b"content-type" and (why := refused(v)) is not None:
            raise BadRequest(415, "invalid_request_error", why)
    if hold is not None:
        hold(declared)  # (refused before a byte of it is read)
    m = await receive()
    b = m.get("body", b"")
    if not m.get("more_body") and m["type"] == "http.request":
        if len(b) > limit:
            raise BadRequest(413, "invalid_request_error", f"body over {limit} bytes")
        if hold is not None:
            hold(len(b))
        return b  # type: ignore[no-any-return]
    chunks: list[bytes] = []
    size = 0
    while True:
        if m["type"] == "http.disconnect":
            raise ClientGone
        b = m.get("body", b"")
        size += len(b)
        if size > limit:
            raise BadRequest(413, "invalid_request_error", f"body over {limit} bytes")
        if hold is not None:
            hold(size)
        chunks.append(b)
        if progress is not None:
            progress(size)
        if not m.get("more_body"):
            return b"".join(chunks)
        m = await receive()
