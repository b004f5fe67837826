"""The discrete-event simulator: a world model of the edge-cloud system driven by a policy.

Time is slotted as in the paper: the requests arriving in one slot form a round (a super
arm) that the policy assigns jointly; each request then runs from its own arrival time.
Link bandwidth is redrawn every slot; the policy sees last slot's measurement. Outcomes
are fed back to the policy when requests complete (delayed feedback, as in a cluster).

Two optional policy hooks (defaults in `policies.base.Policy` do nothing):
- `prepare(sc, seed)` runs once before the run; policies that train in the simulator
  (AGOD) pre-train there, on seeds other than the evaluation seed.
- `release_times(batch, obs)`, asked right after `assign`, may return per request the
  earliest time its server may admit it (a hold at the server's queue, as a serving
  engine that defers batching does). The upload still starts at arrival and D is still
  measured from the true arrival, so the hold counts as queueing delay.

A policy may shed a request (choice -1, `policies.base.SHED`): it is never executed and
fails. The scenario's `admission` drops a request its server could only start too late
(`reject-late`: after its deadline; `timeout`: after `timeout_s` in the queue): it never
runs, frees its place in the queue and fails. Both are reported apart from late ones
(`RunResult.shed`, `RunResult.rejected`) and give the policy no feedback.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from perllm.costmodel import (
    CostTable,
    build_cost_table,
    download_bits,
    marginal_energy,
    upload_bits,
)
from perllm.policies.base import Batch, Env, Feedback, Observation, Policy
from perllm.scenario import Scenario
from perllm.world.links import bandwidth_matrix
from perllm.world.result import RunResult
from perllm.world.server import Coeffs, Outcome, ServerState, execute
from perllm.world.workload import generate

F = NDArray[np.float64]


def coeff_grid(t: CostTable) -> list[list[Coeffs]]:
    """Scalar coefficients per (class, server), for the per-request hot path."""
    return [
        [
            Coeffs(
                bool(t.is_gpu[c, j]),
                float(t.w[c, j]),
                float(t.kv[c, j]),
                float(t.bw[c, j]),
                float(t.pp[c, j]),
                float(t.kappa[c, j]),
                float(t.r_pf[c, j]),
                float(t.ttft0[c, j]),
                float(t.step0[c, j]),
                float(t.flop[c, j]),
                int(t.max_conc[c, j]),
                float(t.kv_budget[c, j]),
                float(t.p_busy[c, j]),
                float(t.p_prefill[c, j]),
                float(t.p_idle[c, j]),
            )
            for j in range(t.n_servers)
        ]
        for c in range(t.n_classes)
    ]


class World:
    """The hidden truth of one run: servers, realised bandwidth, output lengths and speeds."""

    def __init__(self, sc: Scenario, seed: int) -> None:
        self.sc = sc
        self.seed = seed
        self.table = build_cost_table(sc.services(), sc.expanded_servers(), sc.catalogue)
        self.req = generate(sc, seed)
        self.n_slots = int(np.ceil(sc.duration_s / sc.slot_s))
        self.bw = bandwidth_matrix(sc, self.table, self.n_slots, seed)  # [S, M] Mbps
        rng = np.random.default_rng([seed, 0x5EED])
        self.speed = rng.lognormal(0.0, sc.speed_noise, len(self.req))
        self.coeffs = coeff_grid(self.table)
        t = self.table
        self.servers = [
            ServerState(
                p_idle=float(t.p_idle[0, j]),
                p_busy=_server_power(t, j, "p_busy"),
                p_prefill=_server_power(t, j, "p_prefill"),
                is_gpu=bool(t.is_gpu[0, j]),
            )
            for j in range(t.n_servers)
        ]
        self.rtt = t.rtt_s.tolist()
        self.perf: list[float] = t.perf_scale.tolist()
        self.up = np.asarray(upload_bits(self.req.l_in, self.req.attach)).tolist()
        self.down = np.asarray(download_bits(self.req.l_out)).tolist()
        # Python floats for the per-request path (numpy scalars cost a call each).
        self._arrival: list[float] = self.req.arrival.tolist()
        self._cls: list[int] = self.req.cls.tolist()
        self._l_in: list[float] = self.req.l_in.tolist()
        self._l_out: list[float] = self.req.l_out.tolist()
        self._speed: list[float] = self.speed.tolist()
        self._bw: list[list[float]] = self.bw.tolist()
        self._e_bit: list[float] = t.e_bit.tolist()
        # Admission control: the latest start of each request (inf: none).
        self.latest: list[float] = sc.admission.latest_start(
            self.req.arrival, self.req.deadline
        ).tolist()

    def execute(
        self, i: int, j: int, slot: int, commit: bool = True, hold: float = 0.0
    ) -> tuple[float, Outcome, float]:
        """Run request i on server j, admitted no earlier than `hold` (s); dropped
        (`Outcome.dropped`) if the scenario's admission control refuses to start it as late
        as it could start.

        Returns (processing time D, outcome, transmission J).
        """
        bps = self._bw[slot][j] * 1e6
        return execute(
            self.servers[j],
            self.coeffs[self._cls[i]][j],
            self._arrival[i],
            self._l_in[i],
            self._l_out[i],
            (self.up[i], self.down[i]),
            (bps, self.rtt[j], self._e_bit[j]),
            self._speed[i] * self.perf[j],
            hold,
            commit,
            self.latest[i],
        )


def _server_power(t: CostTable, j: int, key: str) -> float:
    col = getattr(t, key)[:, j]
    allowed = t.allowed[:, j]
    return float(col[allowed].max()) if allowed.any() else float(col.max())


def make_env(world: World, seed: int) -> Env:
    sc, t = world.sc, world.table
    return Env(
        table=t,
        weights=sc.weights,
        slot_s=sc.slot_s,
        expected_out=np.array([s.traffic.output_tokens for s in t.services]),
        deadline_s=np.array([s.requirements.deadline.seconds for s in t.services]),
        deadline_per_token=np.array(
            [s.requirements.deadline.per_output_token_s for s in t.services]
        ),
        seed=seed,
    )


def simulate(
    sc: Scenario, policy: Policy, seed: int, on_slot: Callable[[int, int], None] | None = None
) -> RunResult:
    """Run `policy` on scenario `sc` with `seed`; `on_slot(done, total)` reports progress."""
    policy.prepare(sc, seed)
    world = World(sc, seed)
    env = make_env(world, seed)
    policy.reset(env, world if policy.hindsight else None)
    run = _Run(world, env, policy)
    r = world.req
    bounds = np.searchsorted(r.arrival, np.arange(world.n_slots + 1) * sc.slot_s)
    for slot in range(world.n_slots):
        now = slot * sc.slot_s
        _deliver(policy, run.pending, now, run.ledger)
        lo, hi = int(bounds[slot]), int(bounds[slot + 1])
        if hi > lo:
            run.round(slot, now, lo, hi)
        if on_slot is not None:
            on_slot(slot + 1, world.n_slots)
    _deliver(policy, run.pending, np.inf, run.ledger)
    return run.result(time.perf_counter() - run.t0)


class _Run:
    """The bookkeeping of one `simulate` run: per-request outcomes and pending feedback."""

    def __init__(self, world: World, env: Env, policy: Policy) -> None:
        self.world, self.env, self.policy = world, env, policy
        self.t0 = time.perf_counter()
        r, n = world.req, len(world.req)
        # What feedback reports per request, one row each (`LEDGER` columns): a completed
        # slot's feedback is one gather. Server, D, prediction and cost are views into it.
        ledger = self.ledger = np.zeros((n, len(LEDGER)))
        ledger[:, 0], ledger[:, 1], ledger[:, 2] = r.cls, -1, np.inf
        ledger[:, 3], ledger[:, 6], ledger[:, 7] = r.deadline, r.l_in, r.l_out
        self.server, self.d = ledger[:, 1], ledger[:, 2]
        self.pred, self.cost = ledger[:, 4], ledger[:, 5]
        self.finish, self.e_tran, self.e_inf = np.zeros(n), np.zeros(n), np.zeros(n)
        self.pending: list[tuple[float, int]] = []  # (finish time, request) awaiting feedback
        self.exp_dl = env.deadline_s + env.deadline_per_token * env.expected_out
        self.allowed = world.table.allowed.tolist()
        self.shed, self.rejected = np.zeros(n, bool), np.zeros(n, bool)

    def round(self, slot: int, now: float, lo: int, hi: int) -> None:
        """The requests arriving in `slot` ([lo, hi)): observe, ask the policy, run them."""
        world, policy, r, t = self.world, self.policy, self.world.req, self.world.table
        idx = np.arange(lo, hi)
        cls = r.cls[lo:hi].copy()
        running, waiting, kv_used = np.array(
            [s.observe(now) for s in world.servers], float
        ).T.copy()
        obs = Observation(
            now=now,
            slot=slot,
            running=running,
            waiting=waiting,
            kv_used=kv_used,
            bw_mbps=world.bw[slot - 1] if slot > 0 else t.link_mbps,
        )
        batch = Batch(
            idx=idx,
            arrival=r.arrival[lo:hi].copy(),
            cls=cls,
            l_in=r.l_in[lo:hi].copy(),
            attach=r.attach[lo:hi].copy(),
            min_quality=r.min_quality[lo:hi].copy(),
            expected_out=self.env.expected_out[cls],
            expected_deadline=self.exp_dl[cls],
        )
        choice = policy.assign(batch, obs)
        if len(choice) != len(idx):
            raise RuntimeError(
                f"policy {policy.name} returned {len(choice)} choices for {len(idx)} requests"
            )
        hold = policy.release_times(batch, obs)
        if hold is not None and len(hold) != len(idx):
            raise RuntimeError(
                f"policy {policy.name} returned {len(hold)} release times for {len(idx)} requests"
            )
        holds = [0.0] * len(idx) if hold is None else np.asarray(hold, float).tolist()
        rows = [
            self._execute(i, j, c, slot, h)
            for i, j, c, h in zip(
                range(lo, hi), np.asarray(choice).tolist(), cls.tolist(), holds, strict=True
            )
        ]
        self.server[lo:hi] = choice
        self.shed[lo:hi] = np.asarray(choice) < 0
        (
            self.d[lo:hi],
            self.finish[lo:hi],
            self.e_tran[lo:hi],
            self.e_inf[lo:hi],
            self.cost[lo:hi],
            self.pred[lo:hi],
        ) = np.array(rows).T

    def _execute(
        self, i: int, j: int, c: int, slot: int, hold: float
    ) -> tuple[float, float, float, float, float, float]:
        """Run request i on server j: (D, finish, E_tran, E_infer, cost, prediction).
        j < 0: shed by the policy, never run (D 0, no energy)."""
        world = self.world
        if j < 0:
            return 0.0, world._arrival[i], 0.0, 0.0, 0.0, 0.0
        if not self.allowed[c][j]:
            t = world.table
            raise RuntimeError(
                f"policy {self.policy.name} placed class {t.services[c].name} on "
                f"{t.server_names[j]}, which cannot run it"
            )
        di, out, et = world.execute(i, j, slot, hold=hold)
        if out.dropped:
            self.rejected[i] = True
            return di, out.end, et, 0.0, marginal_energy(world.sc.weights, et, 0.0, 0.0), 0.0
        e = out.e_infer
        heapq.heappush(self.pending, (out.end, i))
        # The model's prediction for the realised request on the state it met: the
        # learning signal is the ratio of observed to this (model error only).
        cost = marginal_energy(world.sc.weights, et, e, out.e_idle_saved)
        return di, out.end, et, e, cost, _predicted(world, i, j, out)

    def result(self, wall: float) -> RunResult:
        world, sc, r, t = self.world, self.world.sc, self.world.req, self.world.table
        n = len(r)
        horizon = max(sc.duration_s, float(self.finish.max()) if n else 0.0)
        # Every server is powered for the whole scenario and, past its end, until its own
        # last request completes (one server's tail is not charged to the others' idle power).
        ei, eidle = (
            zip(*(s.energy(max(sc.duration_s, s.busy_until)) for s in world.servers), strict=True)
            if t.n_servers
            else ((), ())
        )
        placed = self.server.astype(np.intp)
        d = self.d.copy()
        ran = ~self.shed
        q_ok = ~ran | (t.quality[r.cls, np.where(ran, placed, 0)] >= r.min_quality - 1e-9)
        return RunResult(
            scenario=sc.name,
            policy=self.policy.name,
            seed=world.seed,
            duration_s=sc.duration_s,
            requests=r,
            server=placed,
            time=d,
            met=(d <= r.deadline) & q_ok & ran & ~self.rejected,
            quality_ok=q_ok,
            finish=self.finish,
            e_tran=self.e_tran,
            e_infer_attr=self.e_inf,
            cost=self.cost.copy(),
            energy_infer_j=np.array(ei),
            energy_idle_j=np.array(eidle),
            horizon_s=horizon,
            wall_s=wall,
            server_names=t.server_names,
            tiers=t.tiers,
            class_names=tuple(s.name for s in t.services),
            models=tuple(s.model for s in t.services),
            shed=self.shed.copy(),
            rejected=self.rejected.copy(),
            admission=sc.admission.mode,
        )


def _predicted(world: World, i: int, j: int, out: Outcome) -> float:
    """The profile's D for request i as admitted (same concurrency, no noise)."""
    speed = world._speed[i] * world.perf[j]
    return (out.end - out.start) * speed + (out.start - world._arrival[i])


LEDGER = ("cls", "server", "time", "deadline", "predicted_time", "energy", "l_in", "l_out")


def _deliver(policy: Policy, pending: list[tuple[float, int]], now: float, ledger: F) -> None:
    done: list[int] = []
    while pending and pending[0][0] <= now:
        done.append(heapq.heappop(pending)[1])
    if not done:
        return
    ix = np.array(done, np.intp)
    cls, server, observed, deadline, predicted, energy, l_in, l_out = ledger[ix].T.copy()
    policy.feedback(
        Feedback(
            idx=ix,
            cls=cls.astype(np.intp),
            server=server.astype(np.intp),
            time=observed,
            deadline=deadline,
            predicted_time=predicted,
            energy=energy,
            l_in=l_in,
            l_out=l_out,
        )
    )
