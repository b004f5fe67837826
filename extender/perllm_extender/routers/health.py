"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

router = APIRouter()


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> dict[str, Any]:
    """200 while serving: without telemetry the extender decides on profile priors, so it
    stays ready and reports why it is degraded instead."""
    live = getattr(request.app.state, "live", None)
    if live is None:
        return {"status": "ready"}
    out: dict[str, Any] = live.readiness()
    return out
