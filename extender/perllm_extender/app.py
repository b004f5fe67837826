"""`create_app(config)`: the extender's FastAPI application."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from perllm.profiles import Catalogue, default_catalogue
from perllm_extender.live import Live
from perllm_extender.metrics import Metrics
from perllm_extender.publish import PublishApi
from perllm_extender.routers import health, live, scheduler
from perllm_extender.state import StateStore
from perllm_extender.telemetry import QueryClient

log = logging.getLogger("perllm.extender")


@dataclass
class ExtenderConfig:
    prefix: str = "/scheduler"  # kube-scheduler's urlPrefix path (perllm/devcluster/config.py)
    max_body_bytes: int = 8 * 1024 * 1024
    default_model: str = "llama2-7b"
    log_size: int = 1000
    catalogue: Catalogue | None = field(default=None, repr=False)
    # Node objects on a node-cache miss, e.g. `nodes.api_node_source()`; None: cache only
    node_source: Callable[[str], dict[str, Any] | None] | None = field(default=None, repr=False)
    # -- live side (started in the app's lifespan) -----------------------------------------
    prometheus_url: str | None = None  # None: no telemetry, decisions on profile priors
    prometheus: QueryClient | None = field(default=None, repr=False)  # instead of the URL
    telemetry_interval_s: float = 2.0
    max_telemetry_age_s: float = 60.0  # older values are ignored (prior used)
    latency_window: str = "1m"
    learn_interval_s: float = 15.0
    learn_window: str = "1m"
    state_interval_s: float = 60.0
    state_namespace: str = "perllm-system"
    state_store: StateStore | None = field(default=None, repr=False)  # default: ConfigMap
    publish_api: PublishApi | None = field(default=None, repr=False)  # default: kube client
    publish_interval_s: float = 1.0  # per service
    # API server: informers, publication, the state ConfigMap. False: none of them unless
    # injected above (`--no-kube`, unit tests).
    kube: bool = False
    api_client: Any = field(default=None, repr=False)  # kubernetes ApiClient (kube=True)
    informers: bool = True


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


def create_app(config: ExtenderConfig | None = None) -> FastAPI:
    cfg = config or ExtenderConfig()
    metrics = Metrics()
    components = Live(cfg, cfg.catalogue or default_catalogue(), metrics)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        components.start()
        try:
            yield
        finally:
            components.stop()

    app = FastAPI(title="PerLLM scheduler extender", version="0.2.0", lifespan=lifespan)
    app.state.config = cfg
    app.state.live = components
    app.state.scheduler = components.scheduler
    app.state.metrics = metrics
    app.include_router(scheduler.router, prefix=cfg.prefix.rstrip("/"))
    app.include_router(health.router)
    app.include_router(live.router)

    @app.get("/metrics")
    def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/decisions")
    def decisions(request: Request, limit: int = 100) -> list[dict[str, Any]]:
        entries = list(request.app.state.scheduler.log)
        return entries[-max(0, limit) :] if limit > 0 else []

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.errors.inc()
        errs = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))} for e in exc.errors()
        ][:20]
        return JSONResponse(status_code=422, content={"Error": "invalid request", "detail": errs})

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        metrics.errors.inc()
        log.exception("%s %s: unexpected error", request.method, request.url.path)
        return JSONResponse(status_code=400, content={"Error": f"{type(exc).__name__}: {exc}"})

    app.add_middleware(BodyLimit, limit=cfg.max_body_bytes)
    return app
