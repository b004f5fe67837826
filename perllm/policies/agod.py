"""AGOD / D2SAC (Du, Li et al., IEEE TMC 2024): diffusion-based discrete soft actor-critic.

The actor is a T-step denoising diffusion chain over action *logits*: x_T ~ N(0, I) is
denoised by an ε-network conditioned on the state, and π(s) = softmax(x_0) (paper eq. 15,
official code Lizonghang/AGOD). Twin critics map a state to one Q value per action. The
critic regresses y = r + γ·Σ_a π̂(a|s')·min_i Q̂_i(s')[a] (eq. 30, target actor and
critics, no entropy term); the actor minimises −E[α·H(π) + Σ_a π(a|s)·min_i Q_i(s)[a]]
through the whole chain (eq. 25-27) with α fixed; targets follow by Polyak averaging.

Adaptation to edge-cloud placement (docs/baselines.md):
- one decision per request, action = server index; actions that violate the static
  constraints (tier, memory, quality floor) are masked out of the softmax;
- state: per server (running, waiting + placed this round) / class capacity and the
  bandwidth estimate, plus the request (class one-hot, prompt, expected output, deadline,
  quality floor, attachment), all in [0, 1];
- reward (delayed, on completion), in the spirit of AGOD's utility-minus-crash reward:
  r = 1 − min(E / E_ref, 1) when the request met its deadline and quality floor (the
  utility of the assignment falls with its weighted marginal energy, PerLLM's objective),
  and r = −2 otherwise (AGOD's crash penalty r̂_F = 2);
- s' is the state of the next decision; one-step targets (the paper; the code's 3-step
  returns do not mix well with rewards that arrive out of order);
- training: optional pre-training on seeds seed+10_000, seed+10_001, ... of the same
  scenario (never the evaluation seed), then online SAC updates every round of the
  evaluation run; actions are sampled while pre-training and argmax at evaluation (eq. 17).

JAX + optax on CPU; every array op is jitted and the compiled functions are shared per
process. Import this module only with the `bench` extra installed (the registry skips it
otherwise). The networks and diffusion chain live in `agod_net`, the SAC training (config,
jitted update, replay buffer) in `agod_sac`; this module is the policy.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from perllm.estimate import energy_scale
from perllm.policies.agod_net import Params, init_actor, init_critic, q_min, sample_logits
from perllm.policies.agod_sac import (
    AGODConfig,
    Fns,
    Replay,
    TrainState,
    build,
    init_state,
    prng_key,
)
from perllm.policies.base import Batch, Env, F, Feedback, I, Observation, Policy

if TYPE_CHECKING:
    from perllm.scenario import Scenario
    from perllm.world.sim import World

__all__ = [
    "AGOD",
    "ENV_PRETRAIN",
    "POLICIES",
    "TRAIN_SEED_OFFSET",
    "AGODConfig",
    "Fns",
    "Params",
    "Replay",
    "TrainState",
    "build",
    "init_actor",
    "init_critic",
    "init_state",
    "q_min",
    "sample_logits",
]
ENV_PRETRAIN = "PERLLM_AGOD_PRETRAIN_EPISODES"
TRAIN_SEED_OFFSET = 10_000
_L_MAX = math.log1p(32768.0)  # token counts are normalised by log1p(32k)
_ATTACH_MAX = math.log1p(1e8)


# -- the policy ---------------------------------------------------------------------------------


class AGOD(Policy):
    name = "agod"

    def __init__(
        self, config: AGODConfig | None = None, pretrain_episodes: int | None = None
    ) -> None:
        cfg = config or AGODConfig()
        env_n = os.environ.get(ENV_PRETRAIN)
        if pretrain_episodes is not None:
            cfg = replace(cfg, pretrain_episodes=pretrain_episodes)
        elif env_n is not None:
            cfg = replace(cfg, pretrain_episodes=int(env_n))
        if cfg.pretrain_episodes < 0:
            raise ValueError("pretrain_episodes: must be >= 0")
        self.cfg = cfg
        self.train: TrainState | None = None
        self.replay: Replay | None = None
        self.explore = False  # sample actions (pre-training) instead of argmax (evaluation)
        self._nested = False
        self.pretrain_s = 0.0
        self.updates = 0
        self.last_losses = (math.nan, math.nan)

    # -- training outside the evaluation run ----------------------------------------------------
    def prepare(self, sc: Scenario, seed: int) -> None:
        if self._nested:  # our own pre-training episodes
            return
        from perllm.world.sim import simulate  # the simulator imports the policies

        t0 = time.perf_counter()
        explore, self._nested, self.explore = self.explore, True, True
        try:
            for e in range(self.cfg.pretrain_episodes):
                simulate(sc, self, seed + TRAIN_SEED_OFFSET + e)
        finally:
            self._nested, self.explore = False, explore
        self.pretrain_s = time.perf_counter() - t0

    def reset(self, env: Env, world: World | None = None) -> None:
        super().reset(env, world)
        t = env.table
        self.m, self.c = t.n_servers, t.n_classes
        self.s_dim = 3 * self.m + self.c + 5
        if self.train is None or self.replay is None or self.replay.s.shape[1] != self.s_dim:
            # Parameters persist across the runs of one policy object (pre-training ->
            # evaluation); a new system shape starts afresh.
            self.train = init_state(self.cfg, self.s_dim, self.m, env.seed)
            self.replay = Replay(self.cfg.buffer, self.s_dim, self.m)
        self.replay.new_run()
        self.fns = build(self.cfg)
        self.key = prng_key(env.seed)
        self.step = 0
        self.row_of: dict[int, tuple[int, bool]] = {}  # request -> (replay row, quality ok)
        self.cap = np.maximum(t.max_conc, 1.0)  # [C, M]
        self.bw_ref = t.link_mbps * (1.0 + t.link_noise)
        self.e_ref = energy_scale(t, env.weights)

    def state(self, batch: Batch, k: int, obs: Observation, added: F) -> NDArray[np.float32]:
        """AGOD-style state in [0, 1]: servers' load and bandwidth, then the request."""
        c = int(batch.cls[k])
        cap = self.cap[c]
        wait = (obs.waiting + added) / cap
        req = np.zeros(self.c + 5)
        req[c] = 1.0
        req[self.c :] = (
            math.log1p(batch.l_in[k]) / _L_MAX,
            math.log1p(batch.expected_out[k]) / _L_MAX,
            batch.expected_deadline[k] / (1.0 + batch.expected_deadline[k]),
            batch.min_quality[k],
            math.log1p(batch.attach[k]) / _ATTACH_MAX,
        )
        return np.concatenate(
            [
                np.minimum(obs.running / cap, 1.0),
                wait / (1.0 + wait),
                np.minimum(obs.bw_mbps / self.bw_ref, 1.0),
                req,
            ]
        ).astype(np.float32)

    def assign(self, batch: Batch, obs: Observation) -> I:
        assert self.train is not None and self.replay is not None
        mask = self.fallback(batch, self.quality_ok(batch))
        q_ok = self.quality_ok(batch)
        added = np.zeros(self.m)
        out = np.empty(len(batch), np.intp)
        for k in range(len(batch)):  # sequential: each decision sees the ones before it
            s = self.state(batch, k, obs, added)
            probs = np.asarray(
                self.fns.act(self.train.actor, s[None], mask[k][None], self.key, self.step)
            )[0]
            self.step += 1
            j = self._choose(probs, mask[k])
            out[k] = j
            added[j] += 1
            row = self.replay.add(s, mask[k], j)
            self.row_of[int(batch.idx[k])] = (row, bool(q_ok[k, j]))
        self._learn()
        return out

    def _choose(self, probs: NDArray[np.float32], mask: NDArray[np.bool_]) -> int:
        p = np.where(mask, probs.astype(np.float64), 0.0)
        if self.explore:  # Categorical(π) while training
            return int(self.rng.choice(len(p), p=p / p.sum()))
        return int(np.argmax(p))  # evaluation (eq. 17)

    def feedback(self, fb: Feedback) -> None:
        assert self.replay is not None
        for k in range(len(fb.idx)):
            row, q_ok = self.row_of.pop(int(fb.idx[k]))
            met = q_ok and fb.time[k] <= fb.deadline[k]
            e = float(fb.energy[k]) / float(self.e_ref[fb.cls[k]])
            self.replay.reward(row, 1.0 - min(e, 1.0) if met else -self.cfg.crash_penalty)

    def _learn(self) -> None:
        assert self.train is not None and self.replay is not None
        if self.replay.n_ready < self.cfg.batch:
            return
        for _ in range(self.cfg.updates_per_round):
            s, a, r, s2, m, m2 = self.replay.sample(self.cfg.batch, self.rng)
            self.train, lc, la = self.fns.update(
                self.train, s, a, r, s2, m, m2, self.key, 1_000_000_000 + self.updates
            )
            self.updates += 1
        self.last_losses = (float(lc), float(la))


POLICIES = [AGOD]
