"""What a counterfactual policy is given in the twin: a slot's requests as a `Batch`, and
its fleet copy's state as an `Observation` (as in the simulator)."""

from __future__ import annotations

import numpy as np

from perllm.contract import ServiceSpec
from perllm.policies.base import Batch, F, Observation
from perllm.twin.fleet import Fleet
from perllm.twin.records import Request, SvcKey


def round_batch(
    reqs: list[Request], keys: list[SvcKey], services: dict[SvcKey, ServiceSpec]
) -> Batch:
    """The slot's requests in order; class = the service's index in `keys`."""
    cls = np.array([keys.index(r.service) for r in reqs], np.intp)
    specs = [services[r.service] for r in reqs]
    exp_out = np.array([s.traffic.output_tokens for s in specs], float)
    return Batch(
        idx=np.arange(len(reqs), dtype=np.intp),
        arrival=np.array([r.arrival for r in reqs], float),
        cls=cls,
        l_in=np.array([r.l_in for r in reqs], float),
        attach=np.array([r.attach for r in reqs], float),
        min_quality=np.array([s.requirements.min_quality for s in specs], float),
        expected_out=exp_out,
        expected_deadline=np.array(
            [s.requirements.deadline.budget(o) for s, o in zip(specs, exp_out, strict=True)]
        ),
    )


def fleet_observation(fleet: Fleet, t0: float, k: int, bw_mbps: F) -> Observation:
    """The fleet copy's servers at the start of slot k (t0), with the bandwidth estimate."""
    rows = [s.observe(t0) for s in fleet.states]
    return Observation(
        now=t0,
        slot=k,
        running=np.array([r[0] for r in rows], float),
        waiting=np.array([r[1] for r in rows], float),
        kv_used=np.array([r[2] for r in rows], float),
        bw_mbps=bw_mbps,
    )
