"""Simple baselines: edge-only, cloud-only, round-robin, least-loaded, greedy deadline-aware.

Each respects the hard static constraints (tier allowed, variant fits, quality floor)
when some server satisfies them, as any sane deployment would; they differ in how they
pick among those servers.
"""

from __future__ import annotations

import numpy as np

from perllm.estimate import round_view
from perllm.policies.base import Batch, I, Observation, Policy


class _TierOnly(Policy):
    tier: str

    def assign(self, batch: Batch, obs: Observation) -> I:
        t = self.env.table
        ok = self.quality_ok(batch)
        on_tier = np.array([tr == self.tier for tr in t.tiers])
        mask = self.fallback(batch, ok & on_tier[None, :], wider=ok)
        out = np.empty(len(batch), np.intp)
        load = (obs.running + obs.waiting).astype(float)
        for k in range(len(batch)):
            cap = t.max_conc[batch.cls[k]]
            j = int(np.argmin(np.where(mask[k], load / np.maximum(cap, 1), np.inf)))
            out[k] = j
            load[j] += 1
        return out


class EdgeOnly(_TierOnly):
    name = "edge-only"
    tier = "edge"


class CloudOnly(_TierOnly):
    name = "cloud-only"
    tier = "cloud"


class RoundRobin(Policy):
    name = "round-robin"

    def assign(self, batch: Batch, obs: Observation) -> I:
        mask = self.fallback(batch, self.quality_ok(batch))
        m = mask.shape[1]
        out = np.empty(len(batch), np.intp)
        nxt = getattr(self, "_next", 0)
        for k in range(len(batch)):
            for step in range(m):
                j = (nxt + step) % m
                if mask[k, j]:
                    out[k] = j
                    nxt = j + 1
                    break
        self._next = nxt
        return out


class LeastLoaded(Policy):
    name = "least-loaded"

    def assign(self, batch: Batch, obs: Observation) -> I:
        t = self.env.table
        mask = self.fallback(batch, self.quality_ok(batch))
        load = (obs.running + obs.waiting).astype(float)
        out = np.empty(len(batch), np.intp)
        for k in range(len(batch)):
            cap = t.max_conc[batch.cls[k]]
            j = int(np.argmin(np.where(mask[k], (load + 1) / np.maximum(cap, 1), np.inf)))
            out[k] = j
            load[j] += 1
        return out


class GreedyDeadline(Policy):
    """The cost model without learning: cheapest server predicted to meet the deadline,
    else the fastest; the profile is trusted as is (no pessimism, no exploration)."""

    name = "greedy-deadline"

    def assign(self, batch: Batch, obs: Observation) -> I:
        t, e = self.env.table, self.env
        v = round_view(
            t,
            e.weights,
            batch.cls,
            batch.l_in,
            batch.expected_out,
            batch.attach,
            obs.running,
            obs.waiting,
            obs.bw_mbps,
        )
        mask = self.fallback(batch, self.quality_ok(batch))
        added = np.zeros(t.n_servers, np.intp)
        ar = np.arange(t.n_servers)
        out = np.empty(len(batch), np.intp)
        for k in np.argsort(batch.expected_deadline, kind="stable"):
            lvl = np.minimum(added, v.levels - 1)
            time, energy = v.time[k, ar, lvl], v.energy[k, ar, lvl]
            ok = mask[k] & (time <= batch.expected_deadline[k])
            j = int(
                np.argmin(np.where(ok, energy, np.inf))
                if ok.any()
                else np.argmin(np.where(mask[k], time, np.inf))
            )
            out[k] = j
            added[j] += 1
        return out


POLICIES = [EdgeOnly, CloudOnly, RoundRobin, LeastLoaded, GreedyDeadline]
