"""Scenario transforms a sweep applies to its base scenario (pydantic `model_copy`).

Load lives in `workload.arrivals.rate_rps` (the scenario-wide Poisson/gamma rate that the
classes share) and in each class's own `classes[k].arrivals.rate_rps` when it sets one;
the cloud link is `servers[i].link.bandwidth_mbps` of every server group with tier cloud.
"""

from __future__ import annotations

import math

from perllm.contract import Tier
from perllm.scenario import Scenario


class SweepError(ValueError):
    """A sweep that cannot be built; the message says which input is wrong."""


def _positive(what: str, x: float) -> None:
    if not (isinstance(x, int | float) and math.isfinite(x) and x > 0):
        raise SweepError(f"{what}: must be a finite number > 0, got {x!r}")


def _check_no_trace(sc: Scenario) -> None:
    w = sc.workload
    if w.arrivals.kind == "trace" and any(
        c.arrivals is None or (c.arrivals.kind or "trace") == "trace" for c in w.classes
    ):
        raise SweepError(f"{sc.name}: its arrivals replay a trace, whose rate cannot be scaled")
    for c in w.classes:
        if c.arrivals is not None and (c.arrivals.kind or w.arrivals.kind) == "trace":
            raise SweepError(
                f"{sc.name}: class {c.name} replays a trace, whose rate cannot be scaled"
            )


def base_rate(sc: Scenario) -> float:
    """Mean arrival rate of all classes together (req/s, rate windows aside)."""
    _check_no_trace(sc)
    return float(sum(sc.declared_rate(k) for k in range(len(sc.workload.classes))))


def scale_load(sc: Scenario, factor: float) -> Scenario:
    """`sc` with every arrival rate multiplied by `factor` (the mix and windows unchanged)."""
    _positive("load multiplier", factor)
    _check_no_trace(sc)
    w = sc.workload
    update: dict[str, object] = {}
    if w.arrivals.rate_rps is not None:
        update["arrivals"] = w.arrivals.model_copy(
            update={"rate_rps": w.arrivals.rate_rps * factor}
        )
    classes = []
    for c in w.classes:
        if c.arrivals is not None and c.arrivals.rate_rps is not None:
            c = c.model_copy(
                update={
                    "arrivals": c.arrivals.model_copy(
                        update={"rate_rps": c.arrivals.rate_rps * factor}
                    )
                }
            )
        classes.append(c)
    update["classes"] = classes
    return sc.model_copy(update={"workload": w.model_copy(update=update)})


def set_load(sc: Scenario, rate_rps: float) -> Scenario:
    """`sc` with a total mean arrival rate of `rate_rps` (every rate scaled alike)."""
    _positive("load (req/s)", rate_rps)
    return scale_load(sc, rate_rps / base_rate(sc))


def set_cloud_bandwidth(sc: Scenario, mbps: float) -> Scenario:
    """`sc` with the nominal link bandwidth of every cloud server set to `mbps` (per-slot
    noise and bandwidth windows still apply on top)."""
    _positive("cloud link (Mbps)", mbps)
    if sc.bandwidth.trace:
        raise SweepError(
            f"{sc.name}: bandwidth.trace sets nominal bandwidths over time; "
            "a cloud-bandwidth sweep would be overridden by it"
        )
    if not any(s.tier == Tier.CLOUD for s in sc.servers):
        raise SweepError(f"{sc.name}: has no cloud server to set the link of")
    servers = [
        s.model_copy(update={"link": s.link.model_copy(update={"bandwidth_mbps": float(mbps)})})
        if s.tier == Tier.CLOUD
        else s
        for s in sc.servers
    ]
    return sc.model_copy(update={"servers": servers})


def set_duration(sc: Scenario, duration_s: float) -> Scenario:
    _positive("duration (s)", duration_s)
    return sc.model_copy(update={"duration_s": float(duration_s)})
