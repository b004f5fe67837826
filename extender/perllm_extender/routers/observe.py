"""What the extender did, for Prometheus: `GET /metrics` (open, like /healthz: no client
certificate needed; also served on the plain-HTTP `--metrics-port`)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from perllm_extender.dependencies import MetricsDep

router = APIRouter()


@router.get("/metrics")
def metrics_endpoint(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
