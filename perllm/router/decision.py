"""The router's decision component: a thin layer over `perllm.csucb.CSUCB`.

It decides and learns exactly as the simulator's policy (`perllm.policies.perllm_policy.
PerLLM`) does: `decide` is one `CSUCB.decide` round, the ticket keeps the decision-time
prediction `D ≈ fixed + per_token·L_out`, and `learn` is one `CSUCB.update` with the
observed time divided by `realised_prediction(fixed, per_token, l_out)`. Fed the same
requests and outcomes from the same state, both make the same decisions
(tests/unit/test_router_shared.py). The only router-specific parts are how live load is
read (`Backlog`: the router's requests in flight per backend, split into running and
waiting as the backend's metrics would count them) and the energy of an outcome, which
the router cannot meter: the decision's predicted energy scaled by observed/predicted time
(the extender's `predicted` source).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from perllm.contract import EnergyWeights, Server, ServiceSpec
from perllm.costmodel import build_cost_table, gpu_prefill, transmission_time, upload_bits
from perllm.csucb import CSUCB, ArmStats, CSUCBConfig, realised_prediction, single
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
    lead_s: float  # from sending it until it is at the server: upload and half the RTT
    prefill_s: float  # its prefill there on a GPU, which prefills one at a time; 0 on a CPU


class Backlog:
    """The router's requests in flight at one backend, in the order sent, each with when
    its prefill is predicted to start. A GPU prefills one request at a time in arrival
    order (the cost model's queue, the world model's `ServerState`), so in a burst requests
    wait for the prefills ahead of them although slots are free; the backend's metrics
    count them as waiting (vLLM's semantics, `ServerState.observe`) and so does this.
    Without it a GPU's hundreds of slots hid that queue from the decision (issue #13).
    What is observed corrects the prediction (`prefilled`), so a backend faster than the
    cost model does not pile up a queue that exists only here."""

    def __init__(self) -> None:
        # key -> [ready, prefill, start], in insertion (= sending) order; starts never
        # decrease along it
        self._flights: dict[int, list[float]] = {}
        self._free = -math.inf  # when the predicted prefills in flight end
        self._keys = itertools.count()

    def __len__(self) -> int:
        return len(self._flights)

    def add(self, now: float, ticket: Ticket) -> int:
        """A request sent at `now` (s, any monotonic clock); its key for `done`."""
        ready = now + ticket.lead_s
        start = ready if ready > self._free else self._free
        self._free = start + ticket.prefill_s
        key = next(self._keys)
        self._flights[key] = [ready, ticket.prefill_s, start]
        return key

    def prefilled(self, key: int, now: float) -> None:
        """Request `key`'s prefill had ended by `now` (its first token arrived, or its
        answer ended). Where it was predicted to end later, it and those sent before it
        started by then, and those after it are predicted again from there."""
        f = self._flights.get(key)
        if f is None or f[2] + f[1] <= now:
            return
        start = now - f[1]
        free = -math.inf
        after = False
        for k, g in self._flights.items():
            if k == key:
                after = True
                g[2] = start
            elif not after:
                g[2] = min(g[2], start)  # prefilled before it
            else:
                g[2] = g[0] if g[0] > free else free
            free = g[2] + g[1]
        self._free = free

    def done(self, key: int, now: float, *, prefilled: bool) -> None:
        """Request `key` ended at `now`. `prefilled`: it was answered, so its prefill had
        ended by then (and the queue ahead of it had started). A failure (refused, an
        error status, a timeout, the client gone) says nothing of the queue: it is only
        removed, else a fast 429 from an overloaded backend would mark every request
        ahead of it as started and draw more to it."""
        if prefilled:
            self.prefilled(key, now)
        del self._flights[key]
        if not self._flights:  # nothing in flight: no prefill queue, however long predicted
            self._free = -math.inf

    def waiting(self, now: float) -> int:
        """Requests in flight whose prefill is predicted not to have started by `now`."""
        n = 0
        for _, _, start in reversed(self._flights.values()):  # the latest starts last
            if start <= now:
                break
            n += 1
        return n


class Decider:
    def __init__(self, bandit: CSUCB) -> None:
        """Per-request decisions with `bandit` (the simulator's CS-UCB, unchanged)."""
        table = self.table = bandit.t
        self.bandit = bandit
        st = bandit.stats
        self._cls_row = [st.class_index(s.name) for s in table.services]
        self._pool_col = [st.pool_index(p) for p in table.pools]
        self._slots: list[list[float]] = np.maximum(table.max_conc, 1.0).tolist()  # [C][M]
        self._rtt = table.rtt_s.tolist()
        self._gpu = table.is_gpu.tolist()
        self._r_pf, self._ttft0 = table.r_pf.tolist(), table.ttft0.tolist()

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

    def load(self, cls: int, inflight: Sequence[float], unstarted: Sequence[float]) -> tuple[F, F]:
        """(running, waiting) per server from the requests in flight there and how many
        of them have not started their prefill (`Backlog.waiting`): the others run, up to
        the server's slots for this class, and the rest wait (what its metrics would show)."""
        running, waiting = self.load_lists(cls, inflight, unstarted)
        return np.array(running), np.array(waiting)

    def load_lists(
        self, cls: int, inflight: Sequence[float], unstarted: Sequence[float]
    ) -> tuple[list[float], list[float]]:
        """`load` as Python lists (`decide_one`'s arguments)."""
        running, waiting = [], []
        for n, u, cap in zip(inflight, unstarted, self._slots[cls], strict=True):
            r = float(n) - float(u)
            r = cap if cap < r else r  # np.minimum's value (no NaN here)
            running.append(r)
            waiting.append(float(n) - r)
        return running, waiting

    def arrival(
        self, cls: int, server: int, l_in: float, attach: float, bw_mbps: float
    ) -> tuple[float, float]:
        """(lead, prefill) of a request sent to `server`: from sending it until it is at
        the server (upload, half the RTT), and its prefill there on a GPU (0 on a CPU): the
        world model's, less its speed noise (`Backlog`). Python floats: one per decision."""
        lead = transmission_time(upload_bits(l_in, attach), bw_mbps, self._rtt[server] / 2)
        if not self._gpu[cls][server]:
            return lead, 0.0
        return lead, gpu_prefill(l_in, self._r_pf[cls][server], self._ttft0[cls][server])

    def decide_one(
        self,
        cls: int,
        l_in: float,
        l_out: float,
        attach: float,
        min_quality: float,
        running: list[float],
        waiting: list[float],
        bw_mbps: list[float],
        deadline_cap: float = math.inf,
    ) -> Ticket:
        """`decide` for one request (what the router does), without arrays of one;
        `deadline_cap`: a deadline (s) tighter than the class's (a client's header)."""
        before = self.bandit.stats.plays[self._cls_row[cls]].tolist()
        req = ([cls], [l_in], [l_out], [attach], [min_quality], running, waiting, bw_mbps)
        d = single.decide_one(self.bandit, req, deadline_cap)
        j = max(d.choice, 0)  # -1: shed, never sent
        return Ticket(
            cls, d.choice, d.feasible, d.predicted_time, d.predicted_energy, d.predicted_fixed,
            d.predicted_per_token, before[self._pool_col[d.choice]] == 0,
            *self.arrival(cls, j, l_in, attach, bw_mbps[j]),
        )  # fmt: skip

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
        deadline_cap: Sequence[float] | None = None,
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
            deadline_cap=None if deadline_cap is None else np.asarray(deadline_cap, float),
        )
        bw = bw_mbps.tolist()
        return [
            Ticket(
                k,
                j,
                bool(ok),
                pt,
                e,
                a,
                b,
                bool(before[self._cls_row[k], self._pool_col[j]] == 0),
                *self.arrival(k, max(j, 0), li, at, bw[max(j, 0)]),  # j -1: shed, never sent
            )
            for k, j, ok, pt, e, a, b, li, at in zip(
                c.tolist(),
                d.choice.tolist(),
                d.feasible.tolist(),
                d.predicted_time.tolist(),
                d.predicted_energy.tolist(),
                d.predicted_fixed.tolist(),
                d.predicted_per_token.tolist(),
                [float(x) for x in l_in],
                [float(x) for x in attach],
                strict=True,
            )
        ]

    def learn_one(
        self,
        ticket: Ticket,
        time: float,
        l_out: float,
        deadline: float,
        energy: float | None = None,
    ) -> None:
        """`learn` for one completed request, without arrays of one."""
        predicted = realised_prediction(ticket.fixed, ticket.per_token, l_out)
        if energy is None:
            p = predicted if predicted > 1e-9 else 1e-9  # np.maximum's value
            energy = ticket.predicted_energy * time / p
        single.update_one(
            self.bandit, ticket.cls, ticket.server, time, predicted, energy, deadline, l_out
        )

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
