"""RewardlessGuidance's planner parts (see `rewardless` for the method and its adaptation):
the settings, the ensemble generative model (numpy Gaussian MLPs with Adam, censored
likelihood), the objective terms (information gain, rewardless guidance) and the CEM
search over a round's joint assignments.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from scipy.special import digamma, log_ndtr

from perllm.policies.base import F, I

F32 = NDArray[np.float32]


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
        a = sample_categorical(q, cfg.candidates, rng)  # [J, N]
        lvl = np.zeros_like(a)
        for k in range(1, n):  # earlier tasks of the candidate on the same server
            lvl[:, k] = (a[:, :k] == a[:, k : k + 1]).sum(axis=1)
        ret = flat[base + a * k_lv + np.minimum(lvl, k_lv - 1)].sum(axis=1)
        best = a[np.argpartition(-ret, top - 1)[:top]]
        counts = np.bincount((best + np.arange(n) * m).ravel(), minlength=n * m)
        q = counts.reshape(n, m) / top
    return np.asarray(np.argmax(q, axis=1), np.intp)


def sample_categorical(q: F, j: int, rng: np.random.Generator) -> NDArray[np.intp]:
    """[J, N] draws from the categorical rows of q [N, M] (inverse CDF, vectorised)."""
    cdf = np.cumsum(q, axis=1)
    last = q.shape[1] - 1 - np.argmax(q[:, ::-1] > 0, axis=1)  # last action with mass
    cdf[np.arange(q.shape[1])[None, :] >= last[:, None]] = 1.0  # no draw past it
    u = rng.random((j, q.shape[0]))
    return np.asarray((u[:, :, None] >= cdf[None]).sum(axis=-1), np.intp)
