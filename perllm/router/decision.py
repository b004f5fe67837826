"""The router's decision component: a thin layer over `perllm.csucb.CSUCB`.

It decides and learns exactly as the simulator's policy (`perllm.policies.perllm_policy.
PerLLM`) does: `decide` is one `CSUCB.decide` round, the ticket keeps the decision-time
prediction `D ≈ fixed + per_token·L_out`, and `learn` is one `CSUCB.update` with the
observed time divided by `realised_prediction(fixed, per_token, l_out)`. Fed the same
requests and outcomes from the same state, both make the same decisions
(tests/unit/test_router_shared.py). The only router-specific parts are how live load is
read (in-flight requests per backend, split into running and waiting at the backend's
slots) and the energy of an outcome, which the router cannot meter: the decision's
predicted energy scaled by observed/predicted time (the extender's `predicted` source).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from perllm.contract import EnergyWeights, Server, ServiceSpec
from perllm.costmodel import build_cost_table
from perllm.csucb import CSUCB, ArmStats, CSUCBConfig, realised_prediction
from perllm.profiles import Catalogue

F = NDArray[np.float64]


@dataclass(frozen=True)
class Ticket:
    """One decided request: where it goes and what was predicted for it."""

    cls: int
    server: int
    feasible: bool
    predicted_time: float  # at the expected output length
    predicted_energy: float
    fixed: float  # D ≈ fixed + per_token·L_out
    per_token: float
    explored: bool  # the (class, pool) arm had never been played


class Decider:
    def __init__(self, bandit: CSUCB) -> None:
        """Per-request decisions with `bandit` (the simulator's CS-UCB, unchanged)."""
        table = self.table = bandit.t
        self.bandit = bandit
        st = bandit.stats
        self._cls_row = [st.class_index(s.name) for s in table.services]
        self._pool_col = [st.pool_index(p) for p in table.pools]
        self._slots = np.maximum(table.max_conc, 1.0)  # [C, M]

    @classmethod
    def for_servers(
        cls,
        services: Sequence[ServiceSpec],
        servers: Sequence[Server],
        catalogue: Catalogue,
        weights: EnergyWeights | None = None,
        config: CSUCBConfig | None = None,
        stats: ArmStats | None = None,
    ) -> Decider:
        """`stats`: learn into (and decide from) statistics shared with other deciders,
        e.g. the router's previous membership of backends."""
        table = build_cost_table(services, [(s.name, s) for s in servers], catalogue)
        return cls(CSUCB(table, weights, config, stats))

    def load(self, cls: int, inflight: Sequence[float]) -> tuple[F, F]:
        """(running, waiting) per server from the requests in flight there: up to the
        server's slots for this class run, the rest wait (what its metrics would show)."""
        n = np.asarray(inflight, float)
        running = np.minimum(n, self._slots[cls])
        return running, n - running

    def decide(
        self,
        cls: Sequence[int],
        l_in: Sequence[float],
        l_out: Sequence[float],
        attach: Sequence[float],
        min_quality: Sequence[float],
        running: F,
        waiting: F,
        bw_mbps: F,
    ) -> list[Ticket]:
        """One CS-UCB round (the router decides rounds of one request)."""
        st = self.bandit.stats
        before = st.plays.copy()
        c = np.asarray(cls, np.intp)
        d = self.bandit.decide(
            c,
            np.asarray(l_in, float),
            np.asarray(l_out, float),
            np.asarray(attach, float),
            np.asarray(min_quality, float),
            running,
            waiting,
            bw_mbps,
        )
        return [
            Ticket(
                k,
                j,
                bool(ok),
                t,
                e,
                a,
                b,
                bool(before[self._cls_row[k], self._pool_col[j]] == 0),
            )
            for k, j, ok, t, e, a, b in zip(
                c.tolist(),
                d.choice.tolist(),
                d.feasible.tolist(),
                d.predicted_time.tolist(),
                d.predicted_energy.tolist(),
                d.predicted_fixed.tolist(),
                d.predicted_per_token.tolist(),
                strict=True,
            )
        ]

    def learn(
        self,
        tickets: Sequence[Ticket],
        time: Sequence[float],
        l_out: Sequence[float],
        deadline: Sequence[float],
        energy: Sequence[float] | None = None,
    ) -> None:
        """One `CSUCB.update` for completed requests. Without `energy`: the predicted
        energy scaled by observed/predicted time."""
        if not tickets:
            return
        lo = np.asarray(l_out, float)
        fixed = np.array([t.fixed for t in tickets])
        per_tok = np.array([t.per_token for t in tickets])
        predicted = realised_prediction(fixed, per_tok, lo)
        d = np.asarray(time, float)
        if energy is None:
            e = np.array([t.predicted_energy for t in tickets]) * d / np.maximum(predicted, 1e-9)
        else:
            e = np.asarray(energy, float)
        self.bandit.update(
            np.array([t.cls for t in tickets], np.intp),
            np.array([t.server for t in tickets], np.intp),
            d,
            predicted,
            e,
            np.asarray(deadline, float),
            lo,
        )
