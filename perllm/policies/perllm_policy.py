"""PerLLM's CS-UCB as a simulator policy (the same `CSUCB` the extender runs)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from perllm.csucb import CSUCB, CSUCBConfig, realised_prediction
from perllm.policies.base import Batch, Env, Feedback, I, Observation, Policy

if TYPE_CHECKING:
    from perllm.world.sim import World


class PerLLM(Policy):
    name = "perllm"

    def __init__(self, config: CSUCBConfig | None = None) -> None:
        # A request router may reject: by default CS-UCB sheds a request that is late
        # even in expectation wherever it may run (the extender, which must place a pod,
        # keeps CSUCBConfig's default, least-late).
        self.config = config or CSUCBConfig(on_infeasible="shed")

    def reset(self, env: Env, world: World | None = None) -> None:
        super().reset(env, world)
        self.pending: dict[int, tuple[float, float]] = {}
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
        for i, a, b, shed in zip(
            batch.idx.tolist(),
            d.predicted_fixed.tolist(),
            d.predicted_per_token.tolist(),
            d.shed.tolist(),
            strict=True,
        ):
            if not shed:  # a shed request never runs: no feedback comes
                self.pending[i] = (a, b)
        return d.choice  # SHED (-1) where shed

    def feedback(self, fb: Feedback) -> None:
        # The decision-time prediction, at the realised output length (as the extender
        # does with the tokens the model server reports).
        ab = np.array([self.pending.pop(i) for i in fb.idx.tolist()])
        predicted = realised_prediction(ab[:, 0], ab[:, 1], fb.l_out)
        self.bandit.update(fb.cls, fb.server, fb.time, predicted, fb.energy, fb.deadline, fb.l_out)


POLICIES = [PerLLM]
