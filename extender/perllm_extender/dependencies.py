"""What the routers depend on, taken from the app `create_app` built (one place that knows
where it is kept). The providers are `async` so FastAPI calls them on the event loop: a
sync provider would cost the decision endpoints a threadpool hop each."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from perllm_extender.decide import Scheduler
from perllm_extender.live import Live
from perllm_extender.metrics import Metrics


async def get_live(request: Request) -> Live:
    live: Live = request.app.state.live
    return live


async def get_scheduler(request: Request) -> Scheduler:
    sched: Scheduler = request.app.state.scheduler
    return sched


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


async def get_body(request: Request) -> bytes:
    return await request.body()


LiveDep = Annotated[Live, Depends(get_live)]
SchedulerDep = Annotated[Scheduler, Depends(get_scheduler)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
# The body is read raw and decoded in `wire` (one fast parse, no per-Node validation, no
# reply re-validation); the models still document the endpoints.
BodyDep = Annotated[bytes, Depends(get_body)]
