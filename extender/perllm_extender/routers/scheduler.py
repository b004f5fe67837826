"""`POST {prefix}/filter` and `POST {prefix}/prioritize`: kube-scheduler's extender calls
(wire format: extender/README.md)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from perllm_extender.decide import Scheduler
from perllm_extender.decision import NOT_CHOSEN, PodDecision, constraint_of
from perllm_extender.dependencies import (
    Authenticated,
    BodyDep,
    MaxNodesDep,
    MetricsDep,
    SchedulerDep,
    VerifierDep,
)
from perllm_extender.metrics import Metrics
from perllm_extender.models import ExtenderArgs, ExtenderFilterResult, HostPriority
from perllm_extender.security import PodVerifier
from perllm_extender.services import BadPod
from perllm_extender.wire import TooManyNodes, parse_args, reply, request_body_openapi

log = logging.getLogger("perllm.extender")
router = APIRouter(dependencies=[Authenticated])


def _run(
    sched: Scheduler, metrics: Metrics, args: ExtenderArgs, verb: str
) -> PodDecision | JSONResponse:
    node_objs = (
        args.Nodes.items if args.Nodes is not None and args.Nodes.items is not None else None
    )
    if args.Nodes is not None and node_objs is None:
        node_objs = []
    try:
        d = sched.decide(args.Pod, node_objs, args.NodeNames, verb)
    except BadPod as e:  # a PerLLM pod whose requirements cannot be read: 400 with why
        metrics.errors.inc()
        log.warning("%s: bad request: %r", verb, str(e))
        return JSONResponse(status_code=400, content={"Error": f"BadPod: {e}"})
    # anything else is a bug: `middleware.Unexpected` answers 500 and logs the traceback
    if d.service is None:
        metrics.passthrough.labels(verb).inc()
    else:
        metrics.decisions.labels(verb).inc()
        metrics.latency.labels(verb).observe(d.latency_s)
        if verb == "filter":
            metrics.feasible.observe(d.n_feasible)
            if not d.feasible:
                metrics.violations.inc()
        if not d.reused:  # one pod, one play: count what the decision did once
            for reason in d.failed.values():
                if not reason.startswith(NOT_CHOSEN):
                    metrics.exclusions.labels(constraint_of(reason)).inc()
            if d.violated is not None:
                metrics.constraint_violations.labels(d.violated).inc()
            if d.exploration:
                metrics.exploration.inc()
            metrics.regret.inc(d.regret)
    return d


async def _decide(
    sched: Scheduler, metrics: Metrics, args: ExtenderArgs, verb: str
) -> PodDecision | JSONResponse:
    """`_run`, in a worker thread when the request names nodes to read from the API first
    (bounded by the lookup budget): /healthz and other requests keep being served."""
    if args.Nodes is None and sched.needs_lookup(args.NodeNames):
        return await asyncio.to_thread(_run, sched, metrics, args, verb)
    return _run(sched, metrics, args, verb)


_OPENAPI = request_body_openapi()


# The handlers are `async` although a decision is CPU work: kube-scheduler calls one at a
# time, and running it on the event loop saves the threadpool hop (~0.25 ms of a ~1.7 ms
# call at 200 nodes, measured), which the scheduling cycle pays twice per pod. Background
# work (telemetry, informers, publication, learning) runs in its own threads.
async def _refused(verifier: PodVerifier | None, args: ExtenderArgs, verb: str) -> Response | None:
    """403 for a PerLLM pod that is not what the request says (`security.PodVerifier`)."""
    why = None if verifier is None else await verifier.verify(args.Pod)
    if why is None:
        return None
    log.warning("%s: refused: %r", verb, why)
    return JSONResponse(status_code=403, content={"Error": f"refused: {why}"})


async def _answer(
    sched: Scheduler,
    metrics: Metrics,
    verifier: PodVerifier | None,
    body: bytes,
    max_nodes: int,
    verb: str,
    respond: Callable[[ExtenderArgs, PodDecision], Response],
) -> Response:
    """Parse, verify the pod, decide; `respond` turns the decision into the verb's reply
    (a refusal or a bad request is answered here)."""
    try:
        args = parse_args(body, max_nodes)
    except TooManyNodes as e:
        metrics.errors.inc()
        log.warning("%s: refused: %s", verb, e)
        return JSONResponse(status_code=413, content={"Error": str(e)})
    if (no := await _refused(verifier, args, verb)) is not None:
        return no
    d = await _decide(sched, metrics, args, verb)
    if isinstance(d, JSONResponse):
        return d
    return respond(args, d)


def _filter_reply(args: ExtenderArgs, d: PodDecision) -> Response:
    nodes: dict[str, Any] | None = None
    if args.Nodes is not None:  # nodeCacheCapable false: only Nodes is read
        # each passed node once, the first copy of its name: the one modelled and decided
        # on (`NodeCache.ingest`); kube-scheduler takes every item it gets back as feasible
        first: dict[str, Any] = {}
        for o in args.Nodes.items or []:
            name = o["metadata"]["name"]  # a string: `wire` checked every Node
            first.setdefault(name, o)
        nodes = {"metadata": {}, "items": [first[n] for n in d.passed if n in first]}
    # ExtenderFilterResult's fields, in its order
    return reply(
        {
            "Nodes": nodes,
            "NodeNames": None if nodes is not None else d.passed,
            "FailedNodes": d.failed,
            "FailedAndUnresolvableNodes": {},
            "Error": "",
        }
    )


def _prioritize_reply(_args: ExtenderArgs, d: PodDecision) -> Response:
    return reply([{"Host": n, "Score": d.scores.get(n, 0)} for n in d.nodes])


@router.post("/filter", response_model=ExtenderFilterResult, openapi_extra=_OPENAPI)
async def filter_nodes(
    sched: SchedulerDep,
    metrics: MetricsDep,
    verifier: VerifierDep,
    body: BodyDep,
    max_nodes: MaxNodesDep,
) -> Response:
    return await _answer(sched, metrics, verifier, body, max_nodes, "filter", _filter_reply)


@router.post("/prioritize", response_model=list[HostPriority], openapi_extra=_OPENAPI)
async def prioritize(
    sched: SchedulerDep,
    metrics: MetricsDep,
    verifier: VerifierDep,
    body: BodyDep,
    max_nodes: MaxNodesDep,
) -> Response:
    return await _answer(sched, metrics, verifier, body, max_nodes, "prioritize", _prioritize_reply)
