"""Serve an ASGI app with uvicorn inside a running event loop (tests, benchmarks, the
e2e harness): `async with serving(app) as url:` on a free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import uvicorn

from perllm.httpguard import Bounds, guarded, listen, log_listening
from perllm.router.asgi import error_body, quiet_aborts

if TYPE_CHECKING:
    from perllm.router.app import Router
    from perllm.router.config import Limits
    from perllm.router.metrics import RouterMetrics


class _Embedded(uvicorn.Server):
    """Leaves SIGINT and SIGTERM to the program it runs in: uvicorn's own handlers would
    stop the server on Ctrl-C, failing its requests mid-way while the program carries on
    (the demo's routed phase would report those as missed deadlines)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serving(
    app: Any, host: str = "127.0.0.1", port: int = 0, tls: tuple[str, str] | None = None
) -> AsyncIterator[str]:
    """`tls`: (certificate, key) PEM files: served over https."""
    cfg = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
        ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
    )
    quiet_aborts()
    server = _Embedded(cfg)
    task = asyncio.create_task(server.serve())
    for _ in range(500):  # bounded: 5 s
        if server.started:
            break
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    else:
        raise RuntimeError("uvicorn did not start within 5 s")
    sock = server.servers[0].sockets[0]
    bound = sock.getsockname()[1]
    try:
        yield f"{'https' if tls else 'http'}://{host}:{bound}"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)


def bounds(limits: Limits, metrics: RouterMetrics | None = None) -> Bounds:
    """The router listener's bounds on reading a request (`perllm.httpguard`): the
    deadline is `limits.request_timeout_s` plus `min_body_bytes_per_s`' allowance; the
    refusals are OpenAI-style errors, counted in `metrics`' rejected requests (reason
    read_timeout, head_too_large) if given."""
    return Bounds(
        limits.request_timeout_s,
        limits.min_body_bytes_per_s,
        body=_refusal,
        logger="perllm.router",
        refused=None if metrics is None else metrics.reject,
    )


def _refusal(status: int, why: str) -> bytes:
    return error_body(status, "invalid_request_error", why)


def config(app: Router, host: str, port: int, log_level: str = "warning") -> uvicorn.Config:
    """uvicorn with uvloop and httptools guarded by `bounds` (no WebSocket upgrades: the
    router has no WebSocket route), no access log."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        access_log=False,
        log_level=log_level,
        loop="uvloop",
        http=guarded(bounds(app.limits, app.metrics)),
        ws="none",
        server_header=False,  # (no `server: uvicorn` on every answer)
    )


def run(app: Router, host: str, port: int, log_level: str = "warning") -> None:
    """Serve the router (blocking; `config`). The startup heap (catalogue, cost tables,
    pydantic models) is moved out of the cyclic GC first, so that the collections the
    per-request garbage triggers stay short."""
    sock = listen(host, port, "--port")  # (a port in use: a ListenError for the CLI)
    try:
        gc.collect()
        gc.freeze()
        quiet_aborts()
        log_listening(sock)
        uvicorn.Server(config(app, host, port, log_level)).run(sockets=[sock])
    finally:
        sock.close()
