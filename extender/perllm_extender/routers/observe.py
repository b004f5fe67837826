"""What the extender did: its Prometheus metrics and its recent decisions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from perllm_extender.dependencies import MetricsDep, SchedulerDep

router = APIRouter()


@router.get("/metrics")
def metrics_endpoint(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/decisions")
def decisions(sched: SchedulerDep, limit: int = 100) -> list[dict[str, Any]]:
    entries = list(sched.log)
    return entries[-max(0, limit) :] if limit > 0 else []
