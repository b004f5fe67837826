"""Clairvoyant greedy: a per-round greedy policy with full knowledge of the round.

Formerly called the "hindsight oracle". It is not an optimum: it is myopic across rounds
(it never holds capacity back for later requests), and under overload CS-UCB beats it.
The real hindsight bound over the whole run is `perllm.bound` (docs/bound.md).

It sees what no scheduler can: the realised bandwidth of the slot, each request's real
output length and speed, and the exact state of every server queue. Each round it
evaluates every request on every server by dry-running the world itself, and assigns the
round in arrival order (the order the world runs it), minimising deadline or quality
violation first and marginal energy second, each placement's effect on the queues
included before the next request is evaluated.
It is myopic like every per-round policy (it does not reserve capacity for later rounds).
"""

from __future__ import annotations

import numpy as np

from perllm.policies.base import Batch, I, Observation, Policy


class ClairvoyantGreedy(Policy):
    name = "clairvoyant-greedy"
    hindsight = True

    def assign(self, batch: Batch, obs: Observation) -> I:
        world = self.world
        assert world is not None, "clairvoyant greedy needs the world"
        _t, w = self.env.table, self.env.weights
        mask = self.fallback(batch, self.quality_ok(batch))
        out = np.empty(len(batch), np.intp)
        # Dry runs must see earlier placements of this round: place on a scratch copy.
        saved = [s.snapshot() for s in world.servers]
        for k in range(len(batch)):
            i = int(batch.idx[k])
            best, best_key = -1, (np.inf, np.inf)
            for j in np.flatnonzero(mask[k]):
                d, o, et = world.execute(i, int(j), obs.slot, commit=False)
                late = max(d - world.req.deadline[i], 0.0) / world.req.deadline[i]
                cost = max(w.tran * et + w.infer * o.e_infer - w.idle * o.e_idle_saved, 0.0)
                key = (late, cost)
                if key < best_key:
                    best, best_key = int(j), key
            out[k] = best
            world.execute(i, best, obs.slot, commit=True)
        for s, snap in zip(world.servers, saved, strict=True):
            s.restore(snap)
        return out


POLICIES = [ClairvoyantGreedy]
