"""`create_app(config)`: the extender's FastAPI application, assembled from the routers
around one `Live` (the scheduler and its background workers); `probe_app(app)`: the
plain-HTTP side application of `--metrics-port` (/healthz, /readyz, /metrics only)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from perllm.profiles import default_catalogue
from perllm_extender.config import ExtenderConfig
from perllm_extender.live import Live
from perllm_extender.metrics import Metrics
from perllm_extender.middleware import BodyLimit, Unexpected
from perllm_extender.routers import health, live, observe, scheduler
from perllm_extender.security import PodVerifier, api_pod_source

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

    on = cfg.api_docs  # (off: no /openapi.json, /docs, /redoc; `app.openapi()` still works)
    app = FastAPI(
        title="PerLLM scheduler extender",
        version="0.2.0",
        lifespan=lifespan,
        openapi_url="/openapi.json" if on else None,
        docs_url="/docs" if on else None,
        redoc_url="/redoc" if on else None,
    )
    # read by `dependencies` (and by tests reaching into a running app)
    app.state.config = cfg
    app.state.live = components
    app.state.scheduler = components.scheduler
    app.state.metrics = metrics
    app.state.verifier = _verifier(cfg, components, metrics)
    app.include_router(scheduler.router, prefix=cfg.prefix.rstrip("/"))
    app.include_router(health.router)
    app.include_router(observe.router)
    if cfg.debug_routes:
        app.include_router(live.router)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.errors.inc()
        errs = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))} for e in exc.errors()
        ][:20]
        return JSONResponse(status_code=422, content={"Error": "invalid request", "detail": errs})

    _plain_errors(app)
    app.add_middleware(BodyLimit, limit=cfg.max_body_bytes)
    app.add_middleware(Unexpected, on_error=metrics.errors.inc)  # outermost: 500, logged
    return app


def _plain_errors(app: FastAPI) -> None:
    """403 (no client certificate), 404, 405 as `{"Error": reason}`, the shape of every
    other error here (FastAPI's default is `{"detail": ...}`); headers such as 405's
    `Allow` are kept."""

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            status_code=exc.status_code, content={"Error": str(exc.detail)}, headers=exc.headers
        )


def _verifier(cfg: ExtenderConfig, live: Live, metrics: Metrics) -> PodVerifier | None:
    """On when a pod informer runs (or `verify_pods`): only then is there a truth to check
    requests against; without one (`--no-kube`, development) every pod is taken as sent."""
    on = cfg.verify_pods if cfg.verify_pods is not None else bool(live.informers)
    if not on:
        return None
    source = cfg.pod_source
    if source is None and live.api_client is not None:
        source = api_pod_source(live.api_client)
    return PodVerifier(live.scheduler.pods, metrics.registry, source)


def probe_app(main: FastAPI) -> FastAPI:
    """/healthz, /readyz and /metrics of `main`'s extender, for a plain-HTTP port that
    kubelet probes and Prometheus reach without a client certificate. Nothing else: no
    decisions, no debug routes. Its lifespan is `main`'s (run it with lifespan off)."""
    side = FastAPI(title="PerLLM scheduler extender (probes)", openapi_url=None)
    side.state.config = main.state.config
    side.state.live = main.state.live
    side.state.metrics = main.state.metrics
    side.include_router(health.router)
    side.include_router(observe.router)
    _plain_errors(side)
    return side
