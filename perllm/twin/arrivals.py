"""The twin's requests: a slot's arrivals for the cluster's live services.

The world model's workload (`perllm.world.workload`) draws a whole run's requests for
the scenario's classes up front; the twin draws slot by slot, per service, because the
services come and go with the cluster. Token and payload distributions, the flash-crowd
rate schedule (a class's own `rate_windows`, else the scenario's) and the clipping to the
model's context are the world's; a service that no scenario class describes gets
lognormal distributions around its declared means. Arrivals within a slot are Poisson at
the service's declared rate: a class's gamma burstiness or trace is not replayed here.
"""

from __future__ import annotations

import math

import numpy as np

from perllm.contract import ServiceSpec
from perllm.scenario import Dist, Scenario
from perllm.twin.records import Request, SvcKey
from perllm.world.arrivals import rate_factor
from perllm.world.workload import draw, whole_tokens

# Spread of token counts for a service that no scenario class describes (σ of ln).
FALLBACK_SIGMA = 0.5


def service_dists(sc: Scenario, spec: ServiceSpec) -> tuple[Dist, Dist, Dist | None]:
    """(prompt tokens, output tokens, attachment bytes) distributions of a service: its
    scenario class's when one of the same name runs the same model."""
    cls = next((c for c in sc.workload.classes if c.name == spec.name), None)
    if cls is not None and cls.model == spec.model:
        return cls.input_tokens, cls.output_tokens, cls.attachment_bytes
    tr = spec.traffic
    ln = FALLBACK_SIGMA

    def around(mean: float) -> Dist:
        return Dist(kind="lognormal", mu=math.log(mean) - ln * ln / 2, sigma=ln)

    attach = around(tr.payload_bytes) if tr.payload_bytes > 0 else None
    return around(tr.prompt_tokens), around(tr.output_tokens), attach


def slot_requests(
    sc: Scenario,
    services: dict[SvcKey, ServiceSpec],
    live: list[SvcKey],
    t0: float,
    rng: np.random.Generator,
    cap: int | None = None,
    dropped: dict[SvcKey, int] | None = None,
) -> list[Request]:
    """The requests arriving in the slot from `t0`, for the services `live`, by arrival;
    the scenario's rate schedule repeats every `duration_s`. At most `cap` per service:
    the rest is counted in `dropped` and never drawn (an absurd rate costs nothing)."""
    slot_s = sc.slot_s
    t_in = t0 % sc.duration_s
    index = {c.name: k for k, c in enumerate(sc.workload.classes)}
    out: list[Request] = []
    for key in live:
        spec = services[key]
        # The rate windows of the service's scenario class (its own, or the scenario's).
        k = index.get(spec.name)
        windows = sc.workload.rate_windows if k is None else sc.workload.windows(k)
        factor = rate_factor(windows, t_in)
        n = int(rng.poisson(spec.traffic.rate_rps * factor * slot_s))
        if cap is not None and n > cap:
            if dropped is not None:
                dropped[key] = dropped.get(key, 0) + n - cap
            n = cap
        if n == 0:
            continue
        times = t0 + np.sort(rng.uniform(0.0, slot_s, n))
        d_in, d_out, d_att = service_dists(sc, spec)
        lin = draw(d_in, n, rng)
        lout = draw(d_out, n, rng)
        lin, lout = whole_tokens(lin, lout, sc.catalogue.models[spec.model].context)
        att = draw(d_att, n, rng) if d_att is not None else np.zeros(n)
        speed = rng.lognormal(0.0, sc.speed_noise, n)
        dl = spec.requirements.deadline
        out.extend(
            Request(t, key, li, lo, a, dl.budget(lo), sp)
            for t, li, lo, a, sp in zip(
                times.tolist(),
                lin.tolist(),
                lout.tolist(),
                att.tolist(),
                speed.tolist(),
                strict=True,
            )
        )
    out.sort(key=lambda r: r.arrival)
    return out
