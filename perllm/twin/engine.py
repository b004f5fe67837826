"""The twin's simulation core: the world model driven by the cluster's services and pods.

Time advances in the scenario's slots, as in `perllm.world.sim.simulate`: when the clock
enters a slot, the requests arriving in it are drawn for every service that has at least
one bound pod, and placed
- on the real fleet: each request goes to one of its service's pods (least loaded, ties
  round-robin) and runs on the `ServerState` of that pod's node;
- on one fleet copy per counterfactual policy (`perllm.policies`: cloud-only, edge-only,
  round-robin), fed the very same requests (same arrival, lengths, payload, speed noise
  and link bandwidth), placed per request by the policy as in the simulator
  (`counterfactual.py`).
Completions are applied when the clock passes them; energy is metered exactly
(`fleet.Meter`) and attributed to services (`energy.py`). A slot's requests are
drawn in `arrivals.py`.
No Kubernetes here: `kube.py` feeds `set_services` / `set_pods`, `metrics.py` reads it.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time

import numpy as np

from perllm import policies
from perllm.contract import ServiceSpec
from perllm.costmodel import CostTable, build_cost_table
from perllm.policies.base import Env, Policy
from perllm.scenario import Scenario
from perllm.twin.arrivals import slot_requests
from perllm.twin.counterfactual import fleet_observation, round_batch
from perllm.twin.energy import attribute
from perllm.twin.fleet import Executed, Fleet
from perllm.twin.records import (
    MAX_REQUESTS_PER_SLOT,
    Counts,
    Done,
    PodKey,
    PodStats,
    Request,
    SvcKey,
)
from perllm.world.links import nominal_matrix
from perllm.world.sim import coeff_grid

COUNTERFACTUALS = ("cloud-only", "edge-only", "round-robin")
ACTUAL = ""  # fleet key of the real placement


class Twin:
    """The world model of `scenario` serving the cluster's services (not thread-safe: the
    caller holds a lock around every call)."""

    def __init__(
        self,
        scenario: Scenario,
        seed: int = 0,
        counterfactuals: tuple[str, ...] = COUNTERFACTUALS,
        max_requests_per_slot: int = MAX_REQUESTS_PER_SLOT,
    ) -> None:
        if max_requests_per_slot < 1:
            raise ValueError("max_requests_per_slot: must be >= 1")
        self.sc = scenario
        self.max_requests_per_slot = max_requests_per_slot
        self.dropped: dict[SvcKey, int] = {}  # requests over the cap, never simulated
        self.behind_s = 0.0  # the server's clock target minus `now` (set by the server)
        self.seed = seed
        cat = scenario.catalogue
        self.hardware = cat.hardware
        self.server_list = scenario.expanded_servers()
        self.node_names = [n for n, _ in self.server_list]
        self.node_index = {n: j for j, n in enumerate(self.node_names)}
        self.tiers = [s.tier.value for _, s in self.server_list]
        self.is_gpu = [self.hardware[s.hardware].kind == "gpu" for _, s in self.server_list]
        self.fleets: dict[str, Fleet] = {ACTUAL: Fleet(self.server_list, cat.hardware)}
        self.policies: dict[str, Policy] = {}
        for p in counterfactuals:
            self.fleets[p] = Fleet(self.server_list, cat.hardware)
            self.policies[p] = policies.make(p)
        self.services: dict[SvcKey, ServiceSpec] = {}
        self.pods: dict[PodKey, PodStats] = {}
        self.table: CostTable | None = None
        self.keys: list[SvcKey] = []
        self._dirty = True
        # Link dynamics: nominal (windows, trace) over the scenario's duration, repeated;
        # noise U(1 ± noise) redrawn every slot.
        links = build_cost_table([], self.server_list, cat)
        self.n_period = max(1, math.ceil(scenario.duration_s / scenario.slot_s))
        self.nominal = nominal_matrix(scenario, links, self.n_period)
        self.noise = links.link_noise
        self.rng = np.random.default_rng([seed, 0x7717])
        self.bw_mbps = links.link_mbps.copy()  # current slot
        self.prev_bw_mbps = links.link_mbps.copy()  # what a policy sees (one slot old)
        self.now = 0.0
        self.next_slot = 0
        self._seq = itertools.count()
        self._rr: dict[SvcKey, int] = {}
        self.pending: list[Done] = []
        self.stats: dict[str, dict[SvcKey, Counts]] = {f: {} for f in self.fleets}
        self.tran_j: dict[str, float] = dict.fromkeys(self.fleets, 0.0)
        # energy bookkeeping per fleet: last metered value, carry per server, shared pool
        m = len(self.server_list)
        self._last_e = {f: [0.0] * m for f in self.fleets}
        self._carry = {f: [0.0] * m for f in self.fleets}
        self._pool = dict.fromkeys(self.fleets, 0.0)
        self.unattributed_j = dict.fromkeys(self.fleets, 0.0)
        self._busy = dict.fromkeys(self.fleets, 0)  # requests in flight per fleet
        self._tick: dict[str, list[Done]] = {f: [] for f in self.fleets}
        # unweighted physical energy per server of the real fleet (for DCGM/RAPL series)
        self.node_energy_j = [0.0] * m
        self.node_power_w = [self.fleets[ACTUAL].meters[j].p_idle for j in range(m)]
        self.unplaceable = 0
        self.arrivals: dict[SvcKey, int] = {}  # requests drawn (every fleet gets each one)

    # -- cluster state ------------------------------------------------------------------
    def set_services(self, services: dict[SvcKey, ServiceSpec]) -> None:
        if services != self.services:
            self.services = dict(services)
            self._dirty = True

    def set_pods(self, pods: dict[PodKey, tuple[SvcKey, str]]) -> None:
        """Bound, non-terminating pods: pod -> (service, node name); pods on nodes that are
        not scenario servers are ignored."""
        for key in [k for k in self.pods if k not in pods]:
            del self.pods[key]
        for key, (svc, node) in pods.items():
            j = self.node_index.get(node, -1)
            if j < 0:  # not a scenario server: nothing simulates it
                self.pods.pop(key, None)
                continue
            cur = self.pods.get(key)
            if cur is None or cur.service != svc or cur.node != j:
                spec = self.services.get(svc)
                self.pods[key] = PodStats(svc, j, spec.model if spec else "")
            elif spec := self.services.get(svc):
                cur.model = spec.model

    def _refresh_table(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        self.keys = sorted(self.services)
        specs = [self.services[k] for k in self.keys]
        self.table = build_cost_table(specs, self.server_list, self.sc.catalogue)
        self.coeffs = coeff_grid(self.table)
        env = Env(
            table=self.table,
            weights=self.sc.weights,
            slot_s=self.sc.slot_s,
            expected_out=np.array([s.traffic.output_tokens for s in specs], float),
            deadline_s=np.array([s.requirements.deadline.seconds for s in specs], float),
            deadline_per_token=np.array(
                [s.requirements.deadline.per_output_token_s for s in specs], float
            ),
            seed=self.seed,
        )
        for p in self.policies.values():
            p.reset(env)
        for pod in self.pods.values():
            spec = self.services.get(pod.service)
            pod.model = spec.model if spec else pod.model

    # -- time ---------------------------------------------------------------------------
    def advance(self, to: float, budget_s: float | None = None) -> bool:
        """Run the world up to simulated time `to` (s); with `budget_s`, enter no further
        slot once that much wall time is spent (a caller holding a lock then lets /metrics
        in before going on). True when it got to `to`."""
        if to < self.now:
            return True
        slot_s = self.sc.slot_s
        deadline = None if budget_s is None else time.monotonic() + budget_s
        t0, e0 = self.now, list(self.node_energy_j)
        try:
            while self.next_slot * slot_s <= to:
                if deadline is not None and time.monotonic() > deadline:
                    return False
                k = self.next_slot
                self._settle(k * slot_s)
                self._enter_slot(k)
                self.next_slot += 1
            self._settle(to)
            return True
        finally:  # the nodes' power: their average over this tick (DCGM's is over 1 s)
            if self.now > t0:
                dt = self.now - t0
                self.node_power_w = [(e - e0[j]) / dt for j, e in enumerate(self.node_energy_j)]

    def _settle(self, t: float) -> None:
        """Apply completions up to t and meter energy over (now, t]."""
        if t < self.now:
            return
        while self.pending and self.pending[0].finish <= t:
            self._complete(heapq.heappop(self.pending))
        # With no live service and nothing in flight, the fleet only idles for nobody: that
        # energy is set aside (`unattributed_j`) instead of landing on the first requests.
        nobody = not any(p.service in self.services for p in self.pods.values())
        for f, fleet in self.fleets.items():
            weighted = fleet.energy(t, self.sc.weights)
            for j, e in enumerate(weighted):
                self._carry[f][j] += e - self._last_e[f][j]
            self._last_e[f] = weighted
            if nobody and not self._busy[f]:
                self.unattributed_j[f] += sum(self._carry[f]) + self._pool[f]
                self._carry[f] = [0.0] * len(self._carry[f])
                self._pool[f] = 0.0
            self._attribute(f, t)
        self.node_energy_j = [sum(m.energy(t)) for m in self.fleets[ACTUAL].meters]
        self.now = t

    def _attribute(self, f: str, t: float) -> None:
        """Share the fleet's metered energy among services (`energy.attribute`)."""
        self._pool[f] = attribute(
            self._tick[f], self._carry[f], self._pool[f], self.fleets[f], self.stats[f], t
        )
        self._tick[f] = []

    def _complete(self, d: Done) -> None:
        c = self.stats[d.fleet].setdefault(d.service, Counts())
        if d.server == -2:  # the deadline passed before completion: a miss, known now
            c.requests += 1
            return
        if not d.counted:
            c.requests += 1
            c.met += int(d.met)
        c.energy_j += self.sc.weights.tran * d.e_tran
        if d.server >= 0:
            self._busy[d.fleet] -= 1
        self.tran_j[d.fleet] += d.e_tran
        if d.server >= 0:
            self._tick[d.fleet].append(d)
        if (pod := d.pod) is not None:  # (a pod since deleted or replaced is no longer shown)
            pod.observe(d.latency)
            pod.success += 1
            pod.prompt_tokens += d.l_in
            pod.generation_tokens += d.l_out

    # -- a slot's requests --------------------------------------------------------------
    def _enter_slot(self, k: int) -> None:
        self._refresh_table()
        slot_s = self.sc.slot_s
        t0 = k * slot_s
        period = k % self.n_period
        self.prev_bw_mbps = self.bw_mbps
        u = self.rng.uniform(1 - self.noise, 1 + self.noise)
        self.bw_mbps = self.nominal[period] * u
        live = sorted({p.service for p in self.pods.values() if p.service in self.services})
        reqs = self._arrivals(live, t0, slot_s)
        if not reqs:
            return
        for r in reqs:
            self.arrivals[r.service] = self.arrivals.get(r.service, 0) + 1
        self._place_actual(reqs)
        for name in self.policies:
            self._place_counterfactual(name, reqs, t0, k)

    def _arrivals(self, live: list[SvcKey], t0: float, slot_s: float) -> list[Request]:
        """The slot's requests (a seam: tests substitute deterministic arrivals)."""
        assert slot_s == self.sc.slot_s
        return slot_requests(
            self.sc, self.services, live, t0, self.rng, self.max_requests_per_slot, self.dropped
        )

    def _pick_pod(self, svc: SvcKey, t: float) -> PodKey | None:
        pods = sorted(k for k, p in self.pods.items() if p.service == svc)
        if not pods:
            return None
        start = self._rr.get(svc, 0) % len(pods)
        order = pods[start:] + pods[:start]
        for k in pods:  # forget requests finished by now (keeps the lists short)
            p = self.pods[k]
            p.inflight = [x for x in p.inflight if x[2] > self.now]
        best = min(order, key=lambda k: sum(1 for x in self.pods[k].inflight if x[2] > t))
        self._rr[svc] = pods.index(best) + 1
        return best

    def _run(self, f: str, req: Request, j: int) -> tuple[Executed, bool] | None:
        """Execute req on server j of fleet f; None when j cannot run the service."""
        assert self.table is not None
        c = self.keys.index(req.service)
        if not self.table.allowed[c, j]:
            return None
        spec = self.services[req.service]
        ex = self.fleets[f].execute(
            j,
            req.arrival,
            req.l_in,
            req.l_out,
            req.attach,
            req.speed,
            self.coeffs[c][j],
            float(self.bw_mbps[j]) * 1e6,
            self.sc.admission.latest_start(req.arrival, req.deadline),
        )
        q_ok = self.table.quality[c, j] >= spec.requirements.min_quality - 1e-9
        return ex, bool(ex.time <= req.deadline and q_ok and not ex.out.dropped)

    def _push(
        self, f: str, req: Request, j: int, ex: Executed, met: bool, pod: PodStats | None
    ) -> None:
        self._busy[f] += 1
        late = ex.finish > req.arrival + req.deadline
        if late:
            heapq.heappush(
                self.pending,
                Done(
                    req.arrival + req.deadline, next(self._seq), f, req.service, -2, False, 0.0, 0.0
                ),
            )
        heapq.heappush(
            self.pending,
            Done(
                ex.finish,
                next(self._seq),
                f,
                req.service,
                j,
                met,
                ex.e_tran,
                ex.out.e_infer,
                None if ex.out.dropped else pod,  # (a dropped one never completes there)
                ex.time,
                req.l_in,
                req.l_out,
                late,
            ),
        )

    def _place_actual(self, reqs: list[Request]) -> None:
        for req in reqs:
            pod = self._pick_pod(req.service, req.arrival)
            if pod is None:
                continue
            j = self.pods[pod].node
            res = self._run(ACTUAL, req, j)
            if res is None:
                # The pod sits on a node that cannot run the service: a failed request.
                self.unplaceable += 1
                heapq.heappush(
                    self.pending,
                    Done(req.arrival, next(self._seq), ACTUAL, req.service, -1, False, 0.0, 0.0),
                )
                continue
            ex, met = res
            stats = self.pods[pod]
            stats.inflight.append((req.arrival, ex.run_start, ex.out.end))
            self._push(ACTUAL, req, j, ex, met, stats)

    def _place_counterfactual(self, name: str, reqs: list[Request], t0: float, k: int) -> None:
        assert self.table is not None
        fleet, policy = self.fleets[name], self.policies[name]
        batch = round_batch(reqs, self.keys, self.services)
        obs = fleet_observation(fleet, t0, k, self.prev_bw_mbps)
        choice = policy.assign(batch, obs)
        for req, j in zip(reqs, choice, strict=True):
            res = self._run(name, req, int(j))
            if res is None:  # policies keep to allowed servers; guard anyway
                heapq.heappush(
                    self.pending,
                    Done(req.arrival, next(self._seq), name, req.service, -1, False, 0.0, 0.0),
                )
                continue
            self._push(name, req, int(j), res[0], res[1], None)

    # -- read-outs ----------------------------------------------------------------------
    def fleet_energy(self, f: str = ACTUAL) -> float:
        """Weighted energy of fleet f up to now, transmission of completed requests included
        (J); equals the sum over services of attributed energy plus what is still carried."""
        return sum(self._last_e[f]) + self.sc.weights.tran * self.tran_j[f]
