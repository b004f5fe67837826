"""Debug routes: the telemetry snapshot, forced refresh, a learning pass, a state save and
the recent decisions (for operators and tests; see docs/extender.md). Included only with
`debug_routes` (`perllm extender --debug-routes`), and then only for authenticated clients
(a TLS client certificate when `client_auth`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from perllm_extender.dependencies import Authenticated, LiveDep, SchedulerDep
from perllm_extender.live import Live

router = APIRouter(dependencies=[Authenticated])


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
def telemetry(live: LiveDep) -> dict[str, Any]:
    return _snapshot(live)


@router.post("/telemetry/refresh")
def telemetry_refresh(live: LiveDep) -> dict[str, Any]:
    live.telemetry.refresh()
    return _snapshot(live)


@router.post("/learn")
def learn(live: LiveDep) -> dict[str, int]:
    updated, tracked = live.learner.learn_once()
    return {"updated": updated, "tracked": tracked}


@router.post("/state/save", response_model=None)
def state_save(live: LiveDep) -> dict[str, Any] | JSONResponse:
    if live.keeper is None:
        return JSONResponse(
            status_code=409,
            content={"saved": False, "Error": "no state store (--no-kube and none configured)"},
        )
    ok = live.keeper.save()
    return {"saved": ok, "services": len(live.scheduler.arms), "error": live.keeper.last_error}


@router.get("/decisions")
def decisions(sched: SchedulerDep, limit: int = 100) -> list[dict[str, Any]]:
    entries = list(sched.log)
    return entries[-max(0, limit) :] if limit > 0 else []
