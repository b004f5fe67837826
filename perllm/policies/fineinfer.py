"""FineInfer (He, Lu, Alonso, EuroMLSys '24): deferred continuous batching at one site.

FineInfer is a single-server engine with no placement decision of its own. Its deferred
continuous batching (DCB), as coded in the official benchmark (llm-db/FineInfer,
benchmarks/fineinfer/fi-ht.py): while nothing is running, arrivals are held until the
oldest pending one has waited `delay_bound` = 1 s (so that they batch up; the engine
fine-tunes meanwhile); once a batch runs, it is ordinary continuous batching and new
arrivals join at the next token boundary, with no deferral.

Here every request goes to one site, the cloud GPU tier by default (FineInfer is
GPU-only). A site is a server name (that one engine) or a tier name (one FineInfer engine
on every server of the tier): a request goes to the least-loaded site server that can
take it (running + waiting + placed this round, relative to the class's concurrency
there), and each site server applies DCB to its own requests. The world has no
per-iteration control, so DCB is a dispatcher rule per server: when the server was idle
at the start of the round (no running or waiting request) and no deferred group is
pending there, the round's requests placed on it open a group released at their oldest
arrival + delay_bound; later arrivals placed on it before that release join the group;
while the server is busy, requests are admitted on arrival and the world's continuous
batching (one prefill at a time, shared decode) does the rest. The hold is returned
through `release_times` and honoured by the world at the server's queue. Idleness is
observed at slot granularity (the telemetry a dispatcher has). Requests whose class
cannot run at any site server, or whose quality floor no site server meets when another
server meets it, go to the least-loaded server that can take them, without deferral.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from perllm.contract import Tier
from perllm.policies.base import Batch, Env, F, I, Observation, Policy

if TYPE_CHECKING:
    from perllm.world.sim import World

DELAY_BOUND_S = 1.0  # fi-ht.py `delay_bound`


def resolve_site(names: tuple[str, ...], tiers: tuple[str, ...], site: str) -> I:
    """Server indices of `site`: a server name (that server), else a tier name (every
    server of that tier, in fleet order; none when the fleet has no server of that tier,
    e.g. the default cloud site on an edge-only fleet: every request then falls back)."""
    if site in names:
        return np.array([names.index(site)], np.intp)
    if site in tiers or site in {t.value for t in Tier}:
        return np.array([j for j, t in enumerate(tiers) if t == site], np.intp)
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
        self.sites = resolve_site(t.server_names, t.tiers, self.site_name)
        self.on_site = np.zeros(t.n_servers, bool)
        self.on_site[self.sites] = True
        # Release time of each server's deferred group, if one is pending (-inf: none).
        self.release = np.full(t.n_servers, -np.inf)
        self.hold: F = np.zeros(0)

    def assign(self, batch: Batch, obs: Observation) -> I:
        t = self.env.table
        mask = self.fallback(batch, self.quality_ok(batch))
        at_site: NDArray[np.bool_] = np.any(mask & self.on_site[None, :], axis=1)
        out = np.empty(len(batch), np.intp)
        load = (obs.running + obs.waiting).astype(float)
        # Site requests in arrival order, each to the least-loaded site server that can
        # take it (load relative to the class's concurrency there); each placement adds
        # load that the next request sees.
        for k in np.flatnonzero(at_site):
            cap = np.maximum(t.max_conc[batch.cls[k]], 1.0)
            score = np.where(mask[k] & self.on_site, (load + 1) / cap, np.inf)
            j = int(np.argmin(score))
            out[k] = j
            load[j] += 1
        if not at_site.all():
            out[~at_site] = self._least_loaded(batch, obs, mask, ~at_site)
        self.hold = np.zeros(len(batch))
        for j in np.unique(out[at_site]):  # DCB per site server, on its own group
            rows = at_site & (out == j)
            self.hold[rows] = self._deferral(int(j), batch.arrival[rows], obs)
        return out

    def release_times(self, batch: Batch, obs: Observation) -> F | None:
        return self.hold

    def _deferral(self, j: int, arrival: F, obs: Observation) -> float:
        """Admission time for this round's requests at site server j (0: on arrival)."""
        if obs.now < self.release[j]:  # a deferred group is pending: batch up with it
            return float(self.release[j])
        if obs.running[j] == 0 and obs.waiting[j] == 0:  # idle: open a new group
            self.release[j] = float(arrival.min()) + self.delay_bound
            return float(self.release[j])
        return 0.0  # running: join the continuous batch at the next token boundary

    def _least_loaded(
        self, batch: Batch, obs: Observation, mask: np.ndarray, rows: np.ndarray
    ) -> I:
        t = self.env.table
        load = (obs.running + obs.waiting).astype(float)
        load[self.sites] = np.inf  # these requests cannot use the site
        out = []
        for k in np.flatnonzero(rows):
            cap = np.maximum(t.max_conc[batch.cls[k]], 1.0)
            score = np.where(mask[k], (load + 1) / cap, np.inf)
            j = int(np.argmin(score))
            out.append(j)
            load[j] += 1
        return np.array(out, np.intp)


POLICIES = [FineInfer]
