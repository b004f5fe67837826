"""FineInfer (He, Lu, Alonso, EuroMLSys '24): deferred continuous batching at one site.

FineInfer is a single-server engine with no placement decision of its own. Its deferred
continuous batching (DCB), as coded in the official benchmark (llm-db/FineInfer,
benchmarks/fineinfer/fi-ht.py): while nothing is running, arrivals are held until the
oldest pending one has waited `delay_bound` = 1 s (so that they batch up; the engine
fine-tunes meanwhile); once a batch runs, it is ordinary continuous batching and new
arrivals join at the next token boundary, with no deferral.

Here every request goes to one site, the cloud GPU by default (the only GPU of the PerLLM
testbed; FineInfer is GPU-only). The world has no per-iteration control, so DCB is a
dispatcher rule: when the site was idle at the start of the round (no running or waiting
request) and no deferred group is pending, the round's requests open a group released
at oldest arrival + delay_bound; arrivals before that release join the group; while the
site is busy, requests are admitted on arrival and the world's continuous batching (one
prefill at a time, shared decode) does the rest. The hold is returned through
`release_times` and honoured by the world at the server's queue. Idleness is observed
at slot granularity (the telemetry a dispatcher has). Requests whose class cannot run at
the site, or whose quality floor it misses when another server meets it, go to the
least-loaded server that can take them, without deferral.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from perllm.policies.base import Batch, Env, F, I, Observation, Policy

if TYPE_CHECKING:
    from perllm.world.sim import World

DELAY_BOUND_S = 1.0  # fi-ht.py `delay_bound`


def resolve_site(names: tuple[str, ...], tiers: tuple[str, ...], site: str) -> int:
    """Server index of `site`: a server name, else the first server of that tier."""
    if site in names:
        return names.index(site)
    if site in tiers:
        return tiers.index(site)
    raise ValueError(
        f"fineinfer site {site!r}: no server or tier of that name (servers: {', '.join(names)})"
    )


class FineInfer(Policy):
    name = "fineinfer"

    def __init__(self, site: str = "cloud", delay_bound_s: float = DELAY_BOUND_S) -> None:
        if delay_bound_s < 0:
            raise ValueError("delay_bound_s: must be >= 0")
        self.site_name = site
        self.delay_bound = delay_bound_s

    def reset(self, env: Env, world: World | None = None) -> None:
        super().reset(env, world)
        t = env.table
        self.site = resolve_site(t.server_names, t.tiers, self.site_name)
        self.release = -np.inf  # release time of the deferred group, if one is pending
        self.hold: F = np.zeros(0)

    def assign(self, batch: Batch, obs: Observation) -> I:
        mask = self.fallback(batch, self.quality_ok(batch))
        at_site = mask[:, self.site]
        out = np.full(len(batch), self.site, np.intp)
        if not at_site.all():
            out[~at_site] = self._least_loaded(batch, obs, mask, ~at_site)
        self.hold = np.zeros(len(batch))
        if at_site.any():
            self.hold[at_site] = self._deferral(batch.arrival[at_site], obs)
        return out

    def release_times(self, batch: Batch, obs: Observation) -> F | None:
        return self.hold

    def _deferral(self, arrival: F, obs: Observation) -> float:
        """Admission time for this round's site requests (0: admit on arrival)."""
        if obs.now < self.release:  # a deferred group is pending: batch up with it
            return self.release
        j = self.site
        if obs.running[j] == 0 and obs.waiting[j] == 0:  # idle: open a new group
            self.release = float(arrival.min()) + self.delay_bound
            return self.release
        return 0.0  # running: join the continuous batch at the next token boundary

    def _least_loaded(
        self, batch: Batch, obs: Observation, mask: np.ndarray, rows: np.ndarray
    ) -> I:
        t = self.env.table
        load = (obs.running + obs.waiting).astype(float)
        load[self.site] = np.inf  # these requests cannot use the site
        out = []
        for k in np.flatnonzero(rows):
            cap = np.maximum(t.max_conc[batch.cls[k]], 1.0)
            score = np.where(mask[k], (load + 1) / cap, np.inf)
            j = int(np.argmin(score))
            out.append(j)
            load[j] += 1
        return np.array(out, np.intp)


POLICIES = [FineInfer]
