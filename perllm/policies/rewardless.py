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
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from numpy.typing import NDArray
from scipy.special import digamma, log_ndtr

from perllm.estimate import MAX_LEVELS
from perllm.policies.base import Batch, Env, F, Feedback, I, Observation, Policy

if TYPE_CHECKING:
    from perllm.world.sim import World

F32 = NDArray[np.float32]
PAPER_ACCURACY = {"edge": 0.1892, "cloud": 0.1159}  # HumanEval pass@100, paper Table I


@dataclass(frozen=True)
class RGConfig:
    """Planner and model settings: Tschantz et al. defaults unless noted (He et al. give none)."""

    ensemble: int = 10
    hidden: int = 32  # Tschantz 200; a scalar target from ~20 inputs, and < 200 µs a round
    iters: int = 5  # CEM optimisation iterations
    candidates: int = 500
    top: int = 50
    expl_scale: float = 1.0
    lr: float = 1e-3
    adam_eps: float = 1e-8
    grad_clip: float = 1000.0
    batch: int = 50
    min_logvar: float = -5.0
    max_logvar: float = -1.0
    episode: int = 100  # He et al.: 100 tasks per episode; the model is refit after each
    seed_episodes: int = 5  # random actions until this many episodes of data exist
    # Adam steps per refit. Tschantz runs 100 epochs over the whole buffer, which grows
    # without bound in a continuing simulation; a fixed budget keeps a run to seconds.
    fit_steps: int = 50
    buffer: int = 50_000
    accuracy: Literal["quality", "paper"] = "quality"


def _sigmoid(x: F32) -> F32:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * x)), np.float32)


class Ensemble:
    """B Gaussian MLPs predicting a scalar (mean, variance), trained with Adam (numpy)."""

    def __init__(self, cfg: RGConfig, d: int, rng: np.random.Generator) -> None:
        self.cfg = cfg
        b, h = cfg.ensemble, cfg.hidden
        dims = [d, h, h, h, 2]
        self.w: list[F32] = []
        self.b: list[F32] = []
        for i, o in itertools.pairwise(dims):
            lim = math.sqrt(6.0 / (i + o))  # xavier uniform, zero biases (Tschantz)
            self.w.append(rng.uniform(-lim, lim, (b, i, o)).astype(np.float32))
            self.b.append(np.zeros((b, 1, o), np.float32))
        self.m = [np.zeros_like(p) for p in self.w + self.b]
        self.v = [np.zeros_like(p) for p in self.w + self.b]
        self.t = 0
        self.x_mu, self.x_sd = np.zeros(d, np.float32), np.ones(d, np.float32)
        self.y_mu, self.y_sd = 0.0, 1.0

    def _forward(self, x: F32) -> tuple[F32, F32, F32, list[F32], list[F32]]:
        acts, pre = [x], []
        h = x
        for w, b in zip(self.w[:-1], self.b[:-1], strict=True):
            z = h @ w + b
            pre.append(z)
            h = z * _sigmoid(z)  # swish
            acts.append(h)
        o = h @ self.w[-1] + self.b[-1]
        s = _sigmoid(o[..., 1])
        logvar = self.cfg.min_logvar + (self.cfg.max_logvar - self.cfg.min_logvar) * s
        return o[..., 0], logvar, s, acts, pre

    def predict(self, x: F32) -> tuple[F32, F32]:
        """Per member, mean and variance of the target for rows `x` [P, d]: [B, P] each."""
        xn = ((x - self.x_mu) / self.x_sd)[None]
        mu, logvar, *_ = self._forward(xn)
        return (
            (mu * self.y_sd + self.y_mu).astype(np.float32),
            (np.exp(logvar) * self.y_sd**2).astype(np.float32),
        )

    def loss(self, x: F32, y: F32, cens: NDArray[np.bool_]) -> float:
        """The training loss on raw rows, summed over members (see `_loss`)."""
        mu, logvar, *_ = self._forward(((x - self.x_mu) / self.x_sd)[None])
        yn = ((y - self.y_mu) / self.y_sd).astype(np.float32)
        value, _, _ = _loss(mu, logvar, yn[None], cens[None])
        return float(value.mean(axis=-1).sum())

    def fit(self, x: F32, y: F32, cens: NDArray[np.bool_], rng: np.random.Generator) -> None:
        """Refresh the normaliser from the buffer, then `fit_steps` Adam steps; each
        member draws its own minibatch."""
        self.x_mu = x.mean(axis=0)
        self.x_sd = np.maximum(x.std(axis=0), 1e-6).astype(np.float32)
        self.y_mu, self.y_sd = float(y.mean()), max(float(y.std()), 1e-6)
        xn = (x - self.x_mu) / self.x_sd
        yn = ((y - self.y_mu) / self.y_sd).astype(np.float32)
        for _ in range(self.cfg.fit_steps):
            ix = rng.integers(0, len(x), (self.cfg.ensemble, min(self.cfg.batch, len(x))))
            self._step(xn[ix], yn[ix], cens[ix])

    def _step(self, x: F32, y: F32, cens: NDArray[np.bool_]) -> None:
        cfg = self.cfg
        mu, logvar, s, acts, pre = self._forward(x)
        n = x.shape[1]
        _, g_mu, g_logvar = _loss(mu, logvar, y, cens)
        d_mu, d_logvar = g_mu / n, g_logvar / n
        d_o = np.stack([d_mu, d_logvar * (cfg.max_logvar - cfg.min_logvar) * s * (1 - s)], -1)
        gw: list[F32] = [np.empty(0, np.float32)] * len(self.w)
        gb: list[F32] = [np.empty(0, np.float32)] * len(self.b)
        delta = d_o.astype(np.float32)
        for li in range(len(self.w) - 1, -1, -1):
            gw[li] = acts[li].transpose(0, 2, 1) @ delta
            gb[li] = delta.sum(axis=1, keepdims=True)
            if li > 0:
                dh = delta @ self.w[li].transpose(0, 2, 1)
                z = pre[li - 1]
                sg = _sigmoid(z)
                delta = (dh * sg * (1.0 + z * (1.0 - sg))).astype(np.float32)
        grads = gw + gb
        norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads))
        scale = min(1.0, cfg.grad_clip / (norm + 1e-6))
        self.t += 1
        b1, b2 = 0.9, 0.999
        lr_t = cfg.lr * math.sqrt(1 - b2**self.t) / (1 - b1**self.t)
        params = self.w + self.b
        for p, g, m, v in zip(params, grads, self.m, self.v, strict=True):
            g = g * scale
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            p -= (lr_t * m / (np.sqrt(v) + cfg.adam_eps)).astype(np.float32)


def _loss(mu: F32, logvar: F32, y: F32, cens: NDArray[np.bool_]) -> tuple[F32, F32, F32]:
    """Per-sample loss and its gradients in (mean, log-variance).

    Observed: Tschantz's (μ − y)²/σ² + log σ² (twice the Gaussian NLL up to a constant).
    Right-censored at y (abandoned task): −2·log P(Y > y) = −2·log Φ(−z), z = (y − μ)/σ.
    """
    inv_var = np.exp(-logvar)
    diff = mu - y
    z = -diff * np.exp(-0.5 * logvar)
    log_surv = log_ndtr(-z)
    hazard = np.exp(-0.5 * z * z - 0.5 * math.log(2 * math.pi) - log_surv)  # φ(z)/Φ(−z)
    value = np.where(cens, -2.0 * log_surv, diff**2 * inv_var + logvar)
    g_mu = np.where(cens, -2.0 * hazard * np.exp(-0.5 * logvar), 2.0 * diff * inv_var)
    g_logvar = np.where(cens, -hazard * z, 1.0 - diff**2 * inv_var)
    return (value.astype(np.float32), g_mu.astype(np.float32), g_logvar.astype(np.float32))


def info_gain(var: F32, samples: F32) -> F32:
    """Tschantz's InformationGain for a scalar prediction: k-NN (k = 3) entropy of the B
    member samples minus the members' mean Gaussian entropy. Inputs [B, P]; out [P]."""
    b = samples.shape[0]
    k = 3
    dist = np.abs(samples.T[:, :, None] - samples.T[:, None, :])  # [P, B, B], self incl.
    rho = np.maximum(np.partition(dist, k - 1, axis=-1)[..., k - 1], 1e-15)
    h_mix = (
        math.log(b - 1)
        - float(digamma(k))
        + math.log(2.0)  # unit ball volume, d = 1
        + np.log(rho).sum(axis=-1) / b
        + 0.5
    )
    h_avg = np.mean(0.5 * np.log(2 * math.pi * math.e * np.maximum(var, 1e-8)), axis=0)
    return np.asarray(h_mix - h_avg, np.float32)


def guidance(log_latency: F32, deadline: F, accuracy: F) -> F:
    """rg = tc·(1/L + P) per member sample, averaged over members (Tschantz's reward term).

    `log_latency` [B, ...], `deadline` and `accuracy` broadcast to its trailing shape."""
    lat = np.exp(log_latency.astype(np.float64))
    tc = lat <= deadline
    return np.asarray(np.mean(np.where(tc, 1.0 / lat + accuracy, 0.0), axis=0), float)


def cem(score: F, support: NDArray[np.bool_], cfg: RGConfig, rng: np.random.Generator) -> I:
    """CEM over joint assignments of a round; `score` [N, M, K] is a task's r1 + r2 on a
    server given how many earlier tasks of the round went there. Returns [N] servers."""
    n, m, k_lv = score.shape
    q = support / support.sum(axis=1, keepdims=True)
    flat = score.ravel()
    base = (np.arange(n) * m * k_lv)[None, :]
    top = min(cfg.top, cfg.candidates)
    for _ in range(cfg.iters):
        if np.all(q.max(axis=1) == 1.0):  # degenerate: every candidate is the same plan
            break
        a = _sample(q, cfg.candidates, rng)  # [J, N]
        lvl = np.zeros_like(a)
        for k in range(1, n):  # earlier tasks of the candidate on the same server
            lvl[:, k] = (a[:, :k] == a[:, k : k + 1]).sum(axis=1)
        ret = flat[base + a * k_lv + np.minimum(lvl, k_lv - 1)].sum(axis=1)
        best = a[np.argpartition(-ret, top - 1)[:top]]
        counts = np.bincount((best + np.arange(n) * m).ravel(), minlength=n * m)
        q = counts.reshape(n, m) / top
    return np.asarray(np.argmax(q, axis=1), np.intp)


def _sample(q: F, j: int, rng: np.random.Generator) -> NDArray[np.intp]:
    """[J, N] draws from the categorical rows of q [N, M] (inverse CDF, vectorised)."""
    cdf = np.cumsum(q, axis=1)
    last = q.shape[1] - 1 - np.argmax(q[:, ::-1] > 0, axis=1)  # last action with mass
    cdf[np.arange(q.shape[1])[None, :] >= last[:, None]] = 1.0  # no draw past it
    u = rng.random((j, q.shape[0]))
    return np.asarray((u[:, :, None] >= cdf[None]).sum(axis=-1), np.intp)


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
            choice = _sample(support / support.sum(axis=1, keepdims=True), 1, self.rng)[0]
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
