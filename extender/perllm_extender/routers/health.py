"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from perllm_extender.dependencies import LiveDep

router = APIRouter()


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(live: LiveDep) -> dict[str, Any]:
    """200 while serving: without telemetry the extender decides on profile priors, so it
    stays ready and reports why it is degraded instead."""
    return live.readiness()
