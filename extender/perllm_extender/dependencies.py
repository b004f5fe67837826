"""What the routers depend on, taken from the app `create_app` built (one place that knows
where it is kept). The providers are `async` so FastAPI calls them on the event loop: a
sync provider would cost the decision endpoints a threadpool hop each."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from perllm.mediatype import refused
from perllm_extender.decide import Scheduler
from perllm_extender.live import Live
from perllm_extender.metrics import Metrics
from perllm_extender.security import PodVerifier


async def get_live(request: Request) -> Live:
    live: Live = request.app.state.live
    return live


async def get_scheduler(request: Request) -> Scheduler:
    sched: Scheduler = request.app.state.scheduler
    return sched


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


async def get_verifier(request: Request) -> PodVerifier | None:
    verifier: PodVerifier | None = request.app.state.verifier
    return verifier


async def authenticated(request: Request) -> None:
    """With client authentication configured, only requests over the TLS listener (whose
    handshake required a certificate signed by the client CA) get through: the scheme is the
    transport's (uvicorn runs without proxy headers), never a header's."""
    if request.app.state.config.client_auth and request.url.scheme != "https":
        raise HTTPException(403, "a TLS client certificate is required")


async def get_body(request: Request) -> bytes:
    """The body of a filter/prioritize call (415 unless JSON: `perllm.mediatype`)."""
    ctype = request.headers.get("content-type")
    if (why := refused(None if ctype is None else ctype.encode("latin-1"))) is not None:
        raise HTTPException(415, why)
    return await request.body()


async def get_max_nodes(request: Request) -> int:
    n: int = request.app.state.config.max_nodes
    return n


LiveDep = Annotated[Live, Depends(get_live)]
SchedulerDep = Annotated[Scheduler, Depends(get_scheduler)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
VerifierDep = Annotated[PodVerifier | None, Depends(get_verifier)]
Authenticated = Depends(authenticated)
# The body is read raw and decoded in `wire` (one fast parse, no per-Node validation, no
# reply re-validation); the models still document the endpoints.
BodyDep = Annotated[bytes, Depends(get_body)]
MaxNodesDep = Annotated[int, Depends(get_max_nodes)]
