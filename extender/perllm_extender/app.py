"""`create_app(config)`: the extender's FastAPI application, assembled from the routers
around one `Live` (the scheduler and its background workers)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from perllm.profiles import default_catalogue
from perllm_extender.config import ExtenderConfig
from perllm_extender.live import Live
from perllm_extender.metrics import Metrics
from perllm_extender.middleware import BodyLimit
from perllm_extender.routers import health, live, observe, scheduler

log = logging.getLogger("perllm.extender")


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
    # read by `dependencies` (and by tests reaching into a running app)
    app.state.config = cfg
    app.state.live = components
    app.state.scheduler = components.scheduler
    app.state.metrics = metrics
    app.include_router(scheduler.router, prefix=cfg.prefix.rstrip("/"))
    app.include_router(health.router)
    app.include_router(live.router)
    app.include_router(observe.router)

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
