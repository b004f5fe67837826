"""Endpoints of the live side: the telemetry snapshot, forced refresh, a learning pass and
a state save (for operators and tests; see docs/extender.md)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from perllm_extender.live import Live

router = APIRouter()


def _live(request: Request) -> Live:
    live: Live = request.app.state.live
    return live


def _snapshot(live: Live) -> dict[str, Any]:
    t = live.telemetry
    stale = t.staleness_s()
    return {
        **t.snapshot.to_dict(t.max_age_s),
        "staleness_s": None if stale == float("inf") else round(stale, 3),
        "degraded": t.degraded(),
        "refreshes": t.refreshes,
    }


@router.get("/telemetry")
def telemetry(request: Request) -> dict[str, Any]:
    return _snapshot(_live(request))


@router.post("/telemetry/refresh")
def telemetry_refresh(request: Request) -> dict[str, Any]:
    live = _live(request)
    live.telemetry.refresh()
    return _snapshot(live)


@router.post("/learn")
def learn(request: Request) -> dict[str, int]:
    live = _live(request)
    updated, tracked = live.learner.learn_once()
    return {"updated": updated, "tracked": tracked}


@router.post("/state/save", response_model=None)
def state_save(request: Request) -> dict[str, Any] | JSONResponse:
    live = _live(request)
    if live.keeper is None:
        return JSONResponse(
            status_code=409,
            content={"saved": False, "Error": "no state store (--no-kube and none configured)"},
        )
    ok = live.keeper.save()
    return {"saved": ok, "services": len(live.scheduler.arms), "error": live.keeper.last_error}
