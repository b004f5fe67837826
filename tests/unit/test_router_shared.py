"""The router's decision component and the simulator's CS-UCB policy, fed the same
requests and outcomes, make the same decisions."""

from __future__ import annotations

import numpy as np

from perllm.csucb import CSUCB
from perllm.policies.base import Batch, Env, Feedback, I, Observation
from perllm.policies.perllm_policy import PerLLM
from perllm.router.decision import Decider, Ticket
from perllm.scenario import load_scenario, parse_scenario
from perllm.world.sim import World, simulate


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
    running, waiting = d.load(0, (slots + 3).tolist())
    assert np.array_equal(running, slots) and np.array_equal(waiting, np.full(len(slots), 3.0))
