"""RewardlessGuidance: active-inference offloading (He, Fang, Yu, Leung, IEEE TMC 2024).

The agent plans with the cross-entropy method (CEM) over candidate policies scored by
  r1: the expected information gain of an ensemble generative model (epistemic value),
  r2: the rewardless guidance rg = tc·(1/L + P) (eq. 11): tc = 1 if the task completes
      within t_max, L its end-to-end latency (s), P the prediction accuracy where it runs.
The planner follows the reference implementation the paper builds on (Tschantz et al.,
"Reinforcement Learning through Active Inference", github.com/alec-tschantz/rl-inference):
an ensemble of probabilistic MLPs (swish, 3 hidden layers, log-variance squashed into
[-5, -1], Gaussian NLL, Adam), information gain = entropy of the ensemble's sample mixture
(k-NN estimator, k = 3) minus the members' mean Gaussian entropy, reward term = mean over
members, CEM keeping the top candidates and refitting the sampling distribution.

Adaptation to edge-cloud placement (docs/baselines.md):
- the generative model predicts log end-to-end latency of a request on a server from the
  server's state (remaining slots, bandwidth estimate, KV use), the action (server
  one-hot) and the task (lengths, attachment, class); it learns online from `Feedback`;
- a candidate policy assigns the round's requests in arrival order (Tschantz's plan
  horizon = the tasks of the round): each placement adds load that later ones see; its
  return sums r1 + r2 of every task, with r2 from each member's sampled latency;
- the action is discrete, so CEM samples from a categorical per task (uniform over the
  servers that satisfy the static constraints and the quality floor) and refits it to the
  frequencies of the top candidates; the final distribution's mode is executed;
- t_max = each request's own deadline (the paper's 15 s was its deadline); as in the
  paper a task not done by t_max is abandoned, i.e. the agent records it as not completed
  (latency > time waited so far) as soon as t_max has passed, rather than waiting for
  the world to finish it (an overloaded server would return no feedback for the rest of
  the run); the ensemble fits such right-censored observations with the censored
  Gaussian likelihood −log P(L > waited);
- P = quality of the model variant the server runs (normalised, in [0, 1]) in place of
  pass@100; `accuracy="paper"` uses the paper's per-site values (edge 0.1892, cloud 0.1159);
- like the paper's method it has no energy term.
Before the model is first fitted it acts at random (Tschantz's seed episodes).

The model, the objective terms and CEM live in `rewardless_plan`; this module is the policy.
"""

from __future__ import annotations

import heapq
import math
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from perllm.estimate import MAX_LEVELS
from perllm.policies.base import Batch, Env, F, Feedback, I, Observation, Policy
from perllm.policies.rewardless_plan import (
    F32,
    Ensemble,
    RGConfig,
    cem,
    guidance,
    info_gain,
    sample_categorical,
)

if TYPE_CHECKING:
    from perllm.world.sim import World

__all__ = [
    "F32",
    "PAPER_ACCURACY",
    "POLICIES",
    "Ensemble",
    "RGConfig",
    "RewardlessGuidance",
    "cem",
    "guidance",
    "info_gain",
]

PAPER_ACCURACY = {"edge": 0.1892, "cloud": 0.1159}  # HumanEval pass@100, paper Table I


# Model rows and input floats scored at once (the ensemble's activations and the k-NN
# distances grow with the rows, the inputs with rows × d); larger rounds go in groups.
SCORE_ROWS = 1 << 17
FEATURE_FLOATS = 1 << 26


def _rows(batch: Batch, rows: slice) -> Batch:
    """The requests `rows` of a round."""
    if rows == slice(None):
        return batch
    return Batch(
        idx=batch.idx[rows],
        arrival=batch.arrival[rows],
        cls=batch.cls[rows],
        l_in=batch.l_in[rows],
        attach=batch.attach[rows],
        min_quality=batch.min_quality[rows],
        expected_out=batch.expected_out[rows],
        expected_deadline=batch.expected_deadline[rows],
    )


class RewardlessGuidance(Policy):
    name = "rewardless-guidance"

    def __init__(self, config: RGConfig | None = None) -> None:
        self.cfg = config or RGConfig()

    def reset(self, env: Env, world: World | None = None) -> None:
        super().reset(env, world)
        t, cfg = env.table, self.cfg
        self.m, self.c = t.n_servers, t.n_classes
        self.d = self.m + 4 + 3 + self.c
        self.model = Ensemble(cfg, self.d, np.random.default_rng([env.seed, 11]))
        self.fitted = False
        self.x = np.zeros((cfg.buffer, self.d), np.float32)
        self.y = np.zeros(cfg.buffer, np.float32)
        self.cens = np.zeros(cfg.buffer, bool)  # abandoned: the latency exceeds y
        self.n_seen = 0  # samples ever added (ring buffer position = n_seen % buffer)
        self.next_fit = cfg.seed_episodes * cfg.episode
        self.pending: dict[int, tuple[F32, float]] = {}  # request -> (model input, arrival)
        self.expiry: list[tuple[float, int]] = []  # (arrival + t_max, request), a heap
        self.cap = np.maximum(t.max_conc, 1.0)
        self.kv_budget = np.where(np.isfinite(t.kv_budget), t.kv_budget, 0.0)
        if cfg.accuracy == "paper":
            per_site = np.array([PAPER_ACCURACY[tier] for tier in t.tiers])
            self.accuracy = np.broadcast_to(per_site, t.quality.shape)
        else:
            self.accuracy = t.quality

    def features(
        self, batch: Batch, obs: Observation, levels: int, rows: slice = slice(None)
    ) -> F32:
        """Model inputs [N, M, K, d] for every request (of `rows`) × server × within-round
        load level."""
        batch = _rows(batch, rows)
        n, m, c = len(batch), self.m, self.c
        cap = self.cap[batch.cls][:, :, None]  # [N, M, 1]
        add = np.arange(levels, dtype=float)[None, None, :]
        occ = ((obs.running + obs.waiting)[None, :, None] + add) / cap
        kv = self.kv_budget[batch.cls]
        kv_frac = np.divide(obs.kv_used[None, :], kv, out=np.zeros_like(kv), where=kv > 0)
        x = np.zeros((n, m, levels, self.d), np.float32)
        x[..., :m] = np.eye(m)[None, :, None, :]
        x[..., m] = np.minimum(occ, 1.0)  # share of the slots in use (1 − remaining compute)
        x[..., m + 1] = np.log1p(np.maximum(occ - 1.0, 0.0))  # queue beyond the slots
        x[..., m + 2] = (obs.bw_mbps / self.env.table.link_mbps)[None, :, None]
        x[..., m + 3] = kv_frac[:, :, None]
        task = np.stack(
            [np.log1p(batch.l_in), np.log1p(batch.expected_out), np.log1p(batch.attach)], axis=1
        )
        x[..., m + 4 : m + 7] = task[:, None, None, :]
        x[..., m + 7 :] = np.eye(c)[batch.cls][:, None, None, :]
        return x

    def assign(self, batch: Batch, obs: Observation) -> I:
        self._abandon(obs.now)
        n = len(batch)
        support = self.fallback(batch, self.quality_ok(batch))
        levels = max(1, min(n, MAX_LEVELS))
        chunks = self._chunks(n, levels)
        if self.fitted:
            score = self.score_round(batch, obs, levels, support, chunks)
            choice = cem(score, support, self.cfg, self.rng)
        else:  # seed phase: uniform over the allowed servers
            uniform = support / support.sum(axis=1, keepdims=True)
            choice = sample_categorical(uniform, 1, self.rng)[0]
        seen = np.zeros(self.m, np.intp)
        for rows in chunks:  # remember the input each request was decided on
            x = self.features(batch, obs, levels, rows)
            for k in range(rows.start, rows.stop):
                j, i, arr = int(choice[k]), int(batch.idx[k]), float(batch.arrival[k])
                self.pending[i] = (x[k - rows.start, j, min(seen[j], levels - 1)].copy(), arr)
                heapq.heappush(self.expiry, (arr + float(batch.expected_deadline[k]), i))
                seen[j] += 1
        return choice

    def _chunks(self, n: int, levels: int) -> list[slice]:
        """Requests in groups whose model inputs [n_g, M, K, d] stay within `SCORE_ROWS`
        rows and `FEATURE_FLOATS` floats (one group unless the fleet is large: a
        1,000-server fleet's inputs for a round would take ~10 GB at once)."""
        per = self.m * levels  # model rows per request
        step = max(1, min(SCORE_ROWS // per, FEATURE_FLOATS // (per * self.d)))
        return [slice(a, min(a + step, n)) for a in range(0, n, step)]

    def score_round(
        self,
        batch: Batch,
        obs: Observation,
        levels: int,
        support: NDArray[np.bool_],
        chunks: list[slice],
    ) -> F:
        """r1 + r2 per [N, M, K] from one ensemble rollout, group by group (`_chunks`);
        the rollout's noise is drawn for the whole round at once, so the groups change
        nothing but the memory used."""
        if len(chunks) == 1:
            return self.score(self.features(batch, obs, levels), batch, support)
        n, per = len(batch), self.m * levels
        z = self.rng.standard_normal((self.cfg.ensemble, n * per)).astype(np.float32)
        out = np.empty((n, self.m, levels))
        for rows in chunks:
            x = self.features(batch, obs, levels, rows)
            zc = z[:, rows.start * per : rows.stop * per]
            out[rows] = self.score(x, _rows(batch, rows), support[rows], zc)
        return out

    def score(self, x: F32, batch: Batch, support: NDArray[np.bool_], z: F32 | None = None) -> F:
        """r1 + r2 per [N, M, K] from one ensemble rollout (noise `z` [B, P], drawn here
        when not given)."""
        shape = x.shape[:-1]
        mean, var = self.model.predict(x.reshape(-1, self.d))
        if z is None:
            z = self.rng.standard_normal(mean.shape).astype(np.float32)
        samples = (mean + np.sqrt(var) * z).astype(np.float32)  # [B, P] sampled log latency
        r1 = info_gain(var, samples).reshape(shape)
        acc = np.where(support, self.accuracy[batch.cls], 0.0)[:, :, None]
        dl = batch.expected_deadline[:, None, None]
        r2 = guidance(samples.reshape(-1, *shape), dl, acc)
        return np.asarray(self.cfg.expl_scale * r1 + r2, float)

    def _abandon(self, now: float) -> None:
        """Tasks past t_max are abandoned: observed as not completed, latency > t_max."""
        while self.expiry and self.expiry[0][0] < now:
            i = heapq.heappop(self.expiry)[1]
            entry = self.pending.pop(i, None)
            if entry is not None:
                self._observe(entry[0], now - entry[1], censored=True)

    def feedback(self, fb: Feedback) -> None:
        for k in range(len(fb.idx)):
            entry = self.pending.pop(int(fb.idx[k]), None)
            if entry is not None:  # else already recorded as abandoned
                self._observe(entry[0], float(fb.time[k]), censored=False)

    def _observe(self, x: F32, latency: float, censored: bool) -> None:
        cfg = self.cfg
        row = self.n_seen % cfg.buffer
        self.x[row] = x
        self.y[row] = math.log(max(latency, 1e-3))
        self.cens[row] = censored
        self.n_seen += 1
        if self.n_seen >= self.next_fit:  # an episode of new data: refit the model
            size = min(self.n_seen, cfg.buffer)
            self.model.fit(self.x[:size], self.y[:size], self.cens[:size], self.rng)
            self.fitted = True
            self.next_fit = self.n_seen + cfg.episode


POLICIES = [RewardlessGuidance]
