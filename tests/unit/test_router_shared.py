"""The router's decision component and the simulator's CS-UCB policy, fed the same
requests and outcomes, make the same decisions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from perllm.costmodel import download_bits, upload_bits
from perllm.csucb import CSUCB, CSUCBConfig
from perllm.policies.base import Batch, Env, Feedback, I, Observation
from perllm.policies.perllm_policy import PerLLM
from perllm.router.decision import Backlog, Decider, Ticket
from perllm.scenario import load_scenario, parse_scenario
from perllm.world.server import ServerState, execute
from perllm.world.sim import World, coeff_grid, simulate


class Twinned(PerLLM):
    """The simulator's policy, with the router's decider shadowing every call."""

    name = "perllm"

    def reset(self, env: Env, world: World | None = None) -> None:
        super().reset(env, world)
        self.router = Decider(CSUCB(env.table, env.weights, self.config))
        self.tickets: dict[int, Ticket] = {}
        self.rounds = self.requests = 0
        self.mismatch: list[tuple[int, int, int]] = []

    def assign(self, batch: Batch, obs: Observation) -> I:
        tickets = self.router.decide(
            batch.cls.tolist(),
            batch.l_in.tolist(),
            batch.expected_out.tolist(),
            batch.attach.tolist(),
            batch.min_quality.tolist(),
            obs.running,
            obs.waiting,
            obs.bw_mbps,
        )
        choice = super().assign(batch, obs)
        for i, t, j in zip(batch.idx.tolist(), tickets, choice.tolist(), strict=True):
            self.tickets[i] = t
            if t.server != j:
                self.mismatch.append((i, t.server, j))
            a, b = self.pending[i]
            assert (t.fixed, t.per_token) == (a, b)
        self.rounds += 1
        self.requests += len(batch)
        return choice

    def feedback(self, fb: Feedback) -> None:
        self.router.learn(
            [self.tickets.pop(i) for i in fb.idx.tolist()],
            fb.time.tolist(),
            fb.l_out.tolist(),
            fb.deadline.tolist(),
            fb.energy.tolist(),
        )
        super().feedback(fb)


def test_router_decider_decides_like_the_simulator_policy() -> None:
    sc = load_scenario("demo")
    sc = parse_scenario({**sc.model_dump(mode="json"), "duration_s": 240.0}, "demo")
    p = Twinned()
    simulate(sc, p, seed=3)
    assert p.requests > 200 and p.rounds > 100
    assert p.mismatch == []
    assert p.router.bandit.dumps() == p.bandit.dumps()  # the same learned state


def test_load_splits_inflight_at_the_backend_slots() -> None:
    sc = load_scenario("demo")
    d = Decider(CSUCB(World(sc, 0).table))
    slots = d.table.max_conc[0]
    m = len(slots)
    running, waiting = d.load(0, (slots + 3).tolist(), [0] * m)
    assert np.array_equal(running, slots) and np.array_equal(waiting, np.full(m, 3.0))
    # requests whose prefill has not started wait although slots are free
    running, waiting = d.load(0, [5] * m, [2] * m)
    assert np.array_equal(running, np.full(m, 3.0)) and np.array_equal(waiting, np.full(m, 2.0))
    running, waiting = d.load(0, (slots + 3).tolist(), [5] * m)
    assert np.array_equal(running, slots - 2) and np.array_equal(waiting, np.full(m, 5.0))


def test_backlog_counts_waiting_as_the_world_model_queues() -> None:
    """A burst at an L4: its slots are far from full, but it prefills one request at a
    time, so requests queue for the prefill. The router's count of those (from when it sent
    each and the cost model's prefill) is what the replica's metrics show (`observe`), which
    is what the simulator's CS-UCB decides on; counted at the slots alone (as before issue
    #13) nothing ever waited there."""
    sc = load_scenario("demo")
    chat = next(s for s in sc.services() if s.name == "chat")
    servers = [(n, s) for n, s in sc.expanded_servers() if n in ("edge-gpu-1", "cloud")]
    d = Decider.for_servers([chat], [s for _, s in servers], sc.catalogue)
    t = d.table
    coeffs = coeff_grid(t)[0]
    bw = t.link_mbps.copy()
    states = [ServerState(c.p_idle, c.p_busy, c.p_prefill, c.is_gpu) for c in coeffs]
    backlogs = [Backlog() for _ in servers]
    rng = np.random.default_rng(5)
    seen = []
    for k in range(40):  # ~6 a second for 6.5 s, to both servers: beyond the L4's prefill
        at = k * 0.16
        l_in = float(rng.integers(300, 2500))
        for j, (_, s) in enumerate(servers):
            bits = (float(upload_bits(l_in, 0.0)), float(download_bits(200.0)))
            link = (bw[j] * 1e6, s.link.rtt_ms / 1000, 0.0)
            execute(states[j], coeffs[j], at, l_in, 200.0, bits, link, 1.0)
            lead, pre = d.arrival(0, j, l_in, 0.0, float(bw[j]))
            backlogs[j].add(at, Ticket(0, j, True, 0, 0, 0, 0, False, lead, pre))
            now = at + 0.08  # between arrivals: some prefills have started
            seen.append((j, states[j].observe(now)[1], backlogs[j].waiting(now)))
    assert [w for _, w, _ in seen] == [b for _, _, b in seen]
    assert max(w for j, w, _ in seen if j == 0) >= 10  # the L4's prefill queue
    running, waiting = d.load(0, [len(b) for b in backlogs], [b.waiting(7.0) for b in backlogs])
    assert waiting[0] > 0 and running[0] < t.max_conc[0, 0]


def test_backlog_follows_what_it_observes() -> None:
    """Prefills predicted at 2 s each: a first token or an end sooner than predicted moves
    the queue behind it forward, and an empty backlog has no queue left."""
    t = Ticket(0, 0, True, 1.0, 1.0, 0.5, 0.01, False, 0.1, 2.0)
    b = Backlog()
    keys = [b.add(0.0, t) for _ in range(4)]  # prefills predicted from 0.1, 2.1, 4.1, 6.1
    assert len(b) == 4 and b.waiting(0.05) == 4 and b.waiting(1.0) == 3 and b.waiting(7) == 0
    b.prefilled(keys[1], 2.5)  # its first token at 2.5, not 4.1: it started by 0.5
    assert b.waiting(2.6) == 1 and b.waiting(4.4) == 1 and b.waiting(4.6) == 0  # 3rd at 2.5
    b.prefilled(keys[0], 3.0)  # later than predicted: nothing to learn
    b.done(keys[1], 3.0, prefilled=True)
    assert len(b) == 3 and b.waiting(4.4) == 1 and b.waiting(4.6) == 0
    b.done(keys[3], 3.0, prefilled=True)  # ended before its predicted start: the one ahead had
    assert b.waiting(1.5) == 0
    b.done(keys[0], 3.0, prefilled=True)
    b.done(keys[2], 3.0, prefilled=True)
    b.add(3.0, t)  # ended sooner than predicted: no queue left behind them
    assert b.waiting(3.05) == 1 and b.waiting(3.2) == 0


def test_a_failed_request_pulls_no_queue_forward() -> None:
    """A fast error (429/503 from an overloaded backend, a refusal, a timeout, the client
    gone) is no sign that the prefills ahead of it started: it is only removed."""
    t = Ticket(0, 0, True, 1.0, 1.0, 0.5, 0.01, False, 0.1, 2.0)
    b = Backlog()
    keys = [b.add(0.0, t) for _ in range(4)]  # prefills predicted from 0.1, 2.1, 4.1, 6.1
    b.done(keys[3], 0.2, prefilled=False)  # answered 429 at once
    assert len(b) == 3 and b.waiting(0.2) == 2 and b.waiting(2.0) == 2 and b.waiting(4.2) == 0
    b.done(keys[1], 0.3, prefilled=False)
    assert len(b) == 2 and b.waiting(0.3) == 1 and b.waiting(4.0) == 1
    answered = Backlog()  # the same ending as an answer: those ahead had started
    keys = [answered.add(0.0, t) for _ in range(4)]
    answered.done(keys[3], 0.2, prefilled=True)
    assert answered.waiting(0.2) == 0


def test_one_request_path_decides_and_learns_like_the_batch_path() -> None:
    """`Decider.decide_one` / `learn_one` (the router's per-request path, plain floats) and
    `decide` / `learn` (numpy arrays) from the same state, fed the same requests, loads and
    outcomes: the same tickets, the same learned state. Loads up to far beyond the slots,
    quality floors only some servers meet and narrow links make infeasible and shed rounds."""
    sc = load_scenario("demo")
    servers = [s for n, s in sc.expanded_servers()]
    for on_infeasible in ("shed", "least-late"):
        cfg = CSUCBConfig(on_infeasible=on_infeasible)
        a = Decider.for_servers(sc.services(), servers, sc.catalogue, config=cfg)
        b = Decider.for_servers(sc.services(), servers, sc.catalogue, config=cfg)
        m, c = len(servers), len(sc.services())
        rng = np.random.default_rng(11)
        shed = 0
        for _ in range(600):
            k = int(rng.integers(c))
            l_in, l_out = float(rng.integers(1, 4000)), float(rng.integers(1, 800))
            attach = float(rng.choice([0.0, 2e5, 5e6]))
            floor = float(rng.choice([0.0, 0.0, 0.6, 0.8]))
            inflight = rng.integers(0, 300, m) * (rng.random(m) < 0.5)
            running, waiting = a.load_lists(k, inflight.tolist(), (inflight // 3).tolist())
            bw = (rng.choice([0.5, 20.0, 300.0], m)).tolist()
            # a client's tighter deadline on a third of them (x-perllm-deadline-s)
            cap = float(rng.uniform(0.3, 20.0)) if rng.random() < 0.33 else math.inf
            one = a.decide_one(k, l_in, l_out, attach, floor, running, waiting, bw, cap)
            (batch,) = b.decide([k], [l_in], [l_out], [attach], [floor],
                                np.array(running), np.array(waiting), np.array(bw),
                                None if cap == math.inf else [cap])  # fmt: skip
            assert repr(one) == repr(batch)
            if one.server < 0:
                shed += 1
                continue
            d = float(one.predicted_time * rng.uniform(0.5, 2.0))
            got = float(rng.integers(1, 900))
            deadline = float(rng.uniform(0.5, 30.0))
            energy = None if rng.random() < 0.7 else float(rng.uniform(0, 500))
            a.learn_one(one, d, got, deadline, energy)
            b.learn([batch], [d], [got], [deadline], None if energy is None else [energy])
        assert a.bandit.dumps() == b.bandit.dumps()
        assert shed > 0 or on_infeasible == "least-late"


def test_the_one_request_path_refuses_a_cap_the_batch_path_refuses() -> None:
    # NaN or ≤ 0 is refused by `CSUCB.decide`; the one-request path must not read it as
    # "no cap" (NaN == inf is False, and the float path would compare against NaN).
    sc = load_scenario("demo")
    servers = [s for n, s in sc.expanded_servers()]
    d = Decider.for_servers(sc.services(), servers, sc.catalogue)
    m = len(servers)
    before = d.bandit.dumps()
    for bad in (math.nan, 0.0, -1.0):
        with pytest.raises(ValueError, match="deadline_cap"):
            d.decide_one(0, 100.0, 50.0, 0.0, 0.0, [0.0] * m, [0.0] * m, [100.0] * m, bad)
    assert d.bandit.dumps() == before  # nothing counted as a round
