"""PerLLM's CS-UCB as a simulator policy (the same `CSUCB` the extender runs)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from perllm.csucb import CSUCB, CSUCBConfig
from perllm.policies.base import Batch, Env, Feedback, I, Observation, Policy

if TYPE_CHECKING:
    from perllm.world.sim import World


class PerLLM(Policy):
    name = "perllm"

    def __init__(self, config: CSUCBConfig | None = None) -> None:
        self.config = config

    def reset(self, env: Env, world: World | None = None) -> None:
        super().reset(env, world)
        self.bandit = CSUCB(env.table, env.weights, self.config)

    def assign(self, batch: Batch, obs: Observation) -> I:
        d = self.bandit.decide(
            batch.cls,
            batch.l_in,
            batch.expected_out,
            batch.attach,
            batch.min_quality,
            obs.running,
            obs.waiting,
            obs.bw_mbps,
        )
        return d.choice

    def feedback(self, fb: Feedback) -> None:
        self.bandit.update(
            fb.cls, fb.server, fb.time, fb.predicted_time, fb.energy, fb.deadline, fb.l_out
        )


POLICIES = [PerLLM]
