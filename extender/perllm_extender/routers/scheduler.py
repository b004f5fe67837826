"""`POST {prefix}/filter` and `POST {prefix}/prioritize` (INTERFACES.md §1)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from perllm_extender.decide import PodDecision, Scheduler, constraint_of
from perllm_extender.metrics import Metrics
from perllm_extender.models import ExtenderArgs, ExtenderFilterResult, HostPriority, NodeList

log = logging.getLogger("perllm.extender")
router = APIRouter()


def _run(request: Request, args: ExtenderArgs, verb: str) -> PodDecision | JSONResponse:
    sched: Scheduler = request.app.state.scheduler
    metrics: Metrics = request.app.state.metrics
    node_objs = (
        args.Nodes.items if args.Nodes is not None and args.Nodes.items is not None else None
    )
    if args.Nodes is not None and node_objs is None:
        node_objs = []
    try:
        d = sched.decide(args.Pod, node_objs, args.NodeNames, verb)
    except Exception as e:  # a request we cannot serve is the caller's problem: 400
        metrics.errors.inc()
        log.warning("%s: bad request: %s", verb, e, exc_info=not isinstance(e, ValueError))
        return JSONResponse(status_code=400, content={"Error": f"{type(e).__name__}: {e}"})
    if d.service is None:
        metrics.passthrough.labels(verb).inc()
    else:
        metrics.decisions.labels(verb).inc()
        metrics.latency.labels(verb).observe(d.latency_s)
        if verb == "filter":
            metrics.feasible.observe(len(d.passed))
            if not d.feasible:
                metrics.violations.inc()
        if not d.reused:  # one pod, one play: count what the decision did once
            for reason in d.failed.values():
                metrics.exclusions.labels(constraint_of(reason)).inc()
            if d.violated is not None:
                metrics.constraint_violations.labels(d.violated).inc()
            if d.exploration:
                metrics.exploration.inc()
            metrics.regret.inc(d.regret)
    return d


@router.post("/filter", response_model=ExtenderFilterResult)
def filter_nodes(request: Request, args: ExtenderArgs) -> ExtenderFilterResult | JSONResponse:
    d = _run(request, args, "filter")
    if isinstance(d, JSONResponse):
        return d
    if args.Nodes is not None:  # nodeCacheCapable false: only Nodes is read
        keep = set(d.passed)
        items = [
            o
            for o in (args.Nodes.items or [])
            if isinstance(o.get("metadata"), dict) and o["metadata"].get("name") in keep
        ]
        return ExtenderFilterResult(Nodes=NodeList(metadata={}, items=items), FailedNodes=d.failed)
    return ExtenderFilterResult(NodeNames=d.passed, FailedNodes=d.failed)


@router.post("/prioritize", response_model=list[HostPriority])
def prioritize(request: Request, args: ExtenderArgs) -> list[HostPriority] | JSONResponse:
    d = _run(request, args, "prioritize")
    if isinstance(d, JSONResponse):
        return d
    return [HostPriority(Host=n, Score=d.scores.get(n, 0)) for n in d.nodes]
