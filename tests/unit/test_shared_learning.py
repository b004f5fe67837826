"""The extender learns like the simulator: the same decisions and outcomes, through each
side's real code path (the simulator's `PerLLM` policy: assign + feedback; the extender's
`Scheduler.decide` + `Learner` on Prometheus answers + `Scheduler.apply`), end in the same
learned statistics, bit for bit."""

from __future__ import annotations

import numpy as np
from perllm_extender.bandits import service_key
from perllm_extender.decide import Scheduler
from perllm_extender.decision import DecisionEvent
from perllm_extender.learning import Learner, Placement
from perllm_extender.nodes import to_server
from test_extender_fakes import NAMES, NODES, StubProm, pod, spec

from perllm.contract import EnergyWeights, Server
from perllm.costmodel import build_cost_table
from perllm.policies.base import Batch, Env, Feedback, Observation
from perllm.policies.perllm_policy import PerLLM
from perllm.profiles import default_catalogue
from perllm.telemetry import queries

CAT = default_catalogue()
SVC = spec("batch", 20.0, per_token=0.05, output=128, prompt=512)
Q = queries.learning("1m")


def servers() -> list[Server]:
    """The extender's models of the nodes, in its order (sorted by name)."""
    out = [to_server(n, CAT) for n in NODES]
    assert all(isinstance(s, Server) for s in out)
    return sorted((s for s in out if isinstance(s, Server)), key=lambda s: s.name)


class Simulator:
    """The simulator's policy over the extender's cost table of the same node set."""

    def __init__(self) -> None:
        table = build_cost_table([SVC], [(s.name, s) for s in servers()], CAT)
        dl = SVC.requirements.deadline
        env = Env(
            table, EnergyWeights(), 1.0, np.array([128.0]), np.array([dl.seconds]),
            np.array([dl.per_output_token_s]), 0,
        )  # fmt: skip
        self.table, self.policy = table, PerLLM()
        self.policy.reset(env)

    def assign(self, i: int) -> str:
        tr, m = SVC.traffic, self.table.n_servers
        one = np.ones(1)
        batch = Batch(
            np.array([i], np.intp), np.zeros(1), np.zeros(1, np.intp), one * tr.prompt_tokens,
            one * tr.payload_bytes, np.zeros(1), one * tr.output_tokens, np.zeros(1),
        )  # fmt: skip
        obs = Observation(0.0, i, np.zeros(m), np.zeros(m), np.zeros(m), self.table.link_mbps)
        return self.table.server_names[int(self.policy.assign(batch, obs)[0])]

    def feedback(self, i: int, node: str, t: float, energy: float, l_out: float) -> None:
        dl = SVC.requirements.deadline
        one = np.ones(1)
        fb = Feedback(
            np.array([i], np.intp), np.zeros(1, np.intp),
            np.array([self.table.server_names.index(node)], np.intp), one * t,
            one * (dl.seconds + dl.per_output_token_s * l_out), one * np.nan, one * energy,
            one * SVC.traffic.prompt_tokens, one * l_out,
        )  # fmt: skip
        self.policy.feedback(fb)


class Extender:
    """The extender's scheduler and learner, Prometheus canned per learning pass."""

    def __init__(self) -> None:
        self.sched = Scheduler(CAT)
        for n in NODES:
            self.sched.nodes.upsert(n)
        self.sched.services.add(SVC, "llm")
        self.prom = StubProm()
        self.learner = Learner(self.prom, self.sched.apply)

        def record(ev: DecisionEvent) -> None:  # what the live side does with a decision
            p = Placement.of(ev)
            assert p is not None
            self.learner.record(p)

        self.sched.listeners.append(record)

    def assign(self, i: int) -> str:
        d = self.sched.decide(pod(SVC, name=f"p{i}", uid=f"u{i}"), None, NAMES, "filter")
        assert d.chosen is not None
        return d.chosen

    def feedback(self, i: int, t: float, energy: float, l_out: float) -> None:
        lb = {"namespace": "llm", "pod": f"p{i}"}
        self.prom.exact_rows = {
            Q["latency"]: [(lb, t)],
            Q["rate"]: [(lb, 1.0)],
            Q["tokens"]: [(lb, l_out)],
            Q["energy"]: [({"namespace": "llm", "service": SVC.name}, energy)],
        }
        assert self.learner.learn_once() == (1, i + 1)


def test_the_extender_and_the_simulator_learn_the_same_statistics() -> None:
    sim, ext = Simulator(), Extender()
    rng = np.random.default_rng(7)
    for i in range(40):
        node = sim.assign(i)
        assert ext.assign(i) == node, i
        # outcomes that move the ratios (slow and fast), output lengths far from the mean
        t = float(rng.uniform(0.5, 30.0))
        l_out = float(rng.integers(4, 2000))
        energy = float(rng.uniform(1.0, 500.0))
        sim.feedback(i, node, t, energy, l_out)
        ext.feedback(i, t, energy, l_out)
    a = sim.policy.bandit.stats
    b = ext.sched.arms.peek(service_key("llm", SVC))
    assert b is not None and a is not b
    assert a.class_names == b.class_names and a.pool_names == b.pool_names
    for name in ("n", "sum_ratio", "sumsq_ratio", "sum_reward", "plays", "out_hist"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert (a.total, a.rounds, a.violations) == (b.total, b.rounds, b.violations)
    assert a.plays.sum() == 40 and a.total == 40
    assert len({k for k, v in a.export_state()["arms"].items() if v["n"] > 0}) >= 2
