"""AGOD's networks: the ε-network of the diffusion actor, the twin critics, and the
reverse diffusion chain over action logits (VP schedule). Pure functions on parameter
dicts; `agod_sac` jits and trains them, `agod` is the policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from perllm.policies.base import F

Params = Any  # a pytree of jax arrays


def _linear(key: jax.Array, fan_in: int, fan_out: int) -> dict[str, jax.Array]:
    """PyTorch nn.Linear initialisation: U(±1/sqrt(fan_in)) for weights and biases."""
    kw, kb = jax.random.split(key)
    bound = 1.0 / math.sqrt(fan_in)
    return {
        "w": jax.random.uniform(kw, (fan_in, fan_out), jnp.float32, -bound, bound),
        "b": jax.random.uniform(kb, (fan_out,), jnp.float32, -bound, bound),
    }


def _dense(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    return x @ p["w"] + p["b"]


def _mish(x: jax.Array) -> jax.Array:
    return x * jnp.tanh(jax.nn.softplus(x))


def init_actor(key: jax.Array, s_dim: int, a_dim: int, hidden: int, t_dim: int) -> Params:
    """ε-network of the AGOD code (diffusion/model.py::MLP)."""
    k = jax.random.split(key, 5)
    return {
        "t1": _linear(k[0], t_dim, 2 * t_dim),
        "t2": _linear(k[1], 2 * t_dim, t_dim),
        "l1": _linear(k[2], a_dim + t_dim + s_dim, hidden),
        "l2": _linear(k[3], hidden, hidden),
        "l3": _linear(k[4], hidden, a_dim),
    }


def init_critic(key: jax.Array, s_dim: int, a_dim: int, hidden: int) -> Params:
    """Twin state-only critics with one output per action (DoubleCritic)."""
    out: dict[str, Params] = {}
    for name, kk in zip(("q1", "q2"), jax.random.split(key), strict=True):
        k = jax.random.split(kk, 3)
        out[name] = {
            "l1": _linear(k[0], s_dim, hidden),
            "l2": _linear(k[1], hidden, hidden),
            "l3": _linear(k[2], hidden, a_dim),
        }
    return out


def _time_embedding(t: jax.Array, dim: int) -> jax.Array:
    half = dim // 2
    freq = jnp.exp(-jnp.arange(half, dtype=jnp.float32) * (math.log(10000.0) / (half - 1)))
    e = t[:, None] * freq[None, :]
    return jnp.concatenate([jnp.sin(e), jnp.cos(e)], axis=-1)


def _eps(p: Params, x: jax.Array, t: jax.Array, s: jax.Array, t_dim: int) -> jax.Array:
    te = _dense(p["t2"], _mish(_dense(p["t1"], _time_embedding(t, t_dim))))
    h = _mish(_dense(p["l1"], jnp.concatenate([x, te, s], axis=-1)))
    h = _mish(_dense(p["l2"], h))
    return jnp.tanh(_dense(p["l3"], h))


def critic_q(p: Params, s: jax.Array) -> jax.Array:
    return _dense(p["l3"], _mish(_dense(p["l2"], _mish(_dense(p["l1"], s)))))


def q_min(critic: Params, s: jax.Array) -> jax.Array:
    return jnp.minimum(critic_q(critic["q1"], s), critic_q(critic["q2"], s))


@dataclass(frozen=True)
class Schedule:
    """Reverse-process coefficients of the VP schedule (code: diffusion/helpers.py)."""

    sqrt_recip: tuple[float, ...]
    sqrt_recipm1: tuple[float, ...]
    coef1: tuple[float, ...]
    coef2: tuple[float, ...]
    sigma: tuple[float, ...]  # exp(0.5·log β̃_t), log clipped at 1e-20; unused at t = 0


def vp_schedule(steps: int, b_min: float, b_max: float) -> Schedule:
    t = np.arange(1, steps + 1)
    alpha = np.exp(-b_min / steps - 0.5 * (b_max - b_min) * (2 * t - 1) / steps**2)
    beta = 1.0 - alpha
    ac = np.cumprod(alpha)
    ac_prev = np.concatenate([[1.0], ac[:-1]])
    post_var = beta * (1.0 - ac_prev) / (1.0 - ac)
    return Schedule(
        sqrt_recip=_floats(np.sqrt(1.0 / ac)),
        sqrt_recipm1=_floats(np.sqrt(1.0 / ac - 1)),
        coef1=_floats(beta * np.sqrt(ac_prev) / (1.0 - ac)),
        coef2=_floats((1.0 - ac_prev) * np.sqrt(alpha) / (1.0 - ac)),
        sigma=_floats(np.exp(0.5 * np.log(np.maximum(post_var, 1e-20)))),
    )


def _floats(a: F) -> tuple[float, ...]:
    return tuple(float(v) for v in a)


def sample_logits(
    actor: Params, s: jax.Array, key: jax.Array, sch: Schedule, t_dim: int
) -> jax.Array:
    """x_0 of the reverse chain (p_sample_loop); differentiable in the actor parameters."""
    a_dim = actor["l3"]["b"].shape[0]
    keys = jax.random.split(key, len(sch.coef1) + 1)
    x = jax.random.normal(keys[-1], (s.shape[0], a_dim), jnp.float32)
    for i in reversed(range(len(sch.coef1))):
        t = jnp.full((s.shape[0],), float(i), jnp.float32)
        x0 = sch.sqrt_recip[i] * x - sch.sqrt_recipm1[i] * _eps(actor, x, t, s, t_dim)
        x = sch.coef1[i] * x0 + sch.coef2[i] * x
        if i > 0:  # no noise at the last step
            x = x + sch.sigma[i] * jax.random.normal(keys[i], x.shape, jnp.float32)
    return x


def policy_dist(
    actor: Params, s: jax.Array, mask: jax.Array, key: jax.Array, sch: Schedule, t_dim: int
) -> tuple[jax.Array, jax.Array]:
    """(probabilities, log-probabilities) of softmax(x_0) over the unmasked actions."""
    x0 = jnp.where(mask, sample_logits(actor, s, key, sch, t_dim), -1e9)
    logp = jax.nn.log_softmax(x0, axis=-1)
    return jnp.exp(logp), logp
