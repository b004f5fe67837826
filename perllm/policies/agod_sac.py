"""AGOD's D2SAC training: hyper-parameters, the jitted act / update functions (built once
per process and configuration) and the replay buffer of decisions. See `agod` for the
algorithm and its adaptation to placement.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpy.typing import NDArray

from perllm.policies.agod_net import (
    Params,
    Schedule,
    critic_q,
    init_actor,
    init_critic,
    policy_dist,
    q_min,
    vp_schedule,
)


@dataclass(frozen=True)
class AGODConfig:
    """D2SAC hyper-parameters: paper Table II / official main.py unless noted."""

    actor_lr: float = 1e-4
    critic_lr: float = 1e-3
    weight_decay: float = 1e-4  # PyTorch Adam weight_decay: L2 added to the gradient
    alpha: float = 0.05  # fixed entropy temperature
    tau: float = 0.005
    gamma: float = 0.95
    # Paper 512. One 512-sample step costs ~60 ms on 2 CPU cores, so a run with two
    # pre-training episodes (5,400 steps) would take ~6 min; 128 keeps it under 2 min.
    batch: int = 128
    buffer: int = 200_000  # paper 1e6; more than all transitions of pre-training + a run
    hidden: int = 256
    t_dim: int = 16
    steps: int = 5  # denoising steps T
    beta_min: float = 0.1  # "vp" schedule
    beta_max: float = 10.0
    crash_penalty: float = 2.0  # r̂_F
    updates_per_round: int = 1  # gradient steps per round (slot) once the buffer has a batch
    pretrain_episodes: int = 2  # default; PERLLM_AGOD_PRETRAIN_EPISODES overrides


class TrainState(NamedTuple):
    actor: Params
    critic: Params
    target_actor: Params
    target_critic: Params
    opt_actor: Any
    opt_critic: Any


# -- jitted act / update, built once per process and configuration ---------------------------


class Fns(NamedTuple):
    act: Any
    update: Any
    critic_loss: Any
    opt_actor: optax.GradientTransformation
    opt_critic: optax.GradientTransformation


def _adam_l2(lr: float, wd: float) -> optax.GradientTransformation:
    # torch.optim.Adam(weight_decay=wd) adds wd·θ to the gradient (not decoupled AdamW).
    return optax.chain(optax.add_decayed_weights(wd), optax.adam(lr))


def critic_loss(critic: Params, s: jax.Array, a: jax.Array, y: jax.Array) -> jax.Array:
    rows = jnp.arange(a.shape[0])
    q1 = critic_q(critic["q1"], s)[rows, a]
    q2 = critic_q(critic["q2"], s)[rows, a]
    return jnp.mean((q1 - y) ** 2) + jnp.mean((q2 - y) ** 2)


def _make_act(cfg: AGODConfig, sch: Schedule) -> Any:
    def act(
        actor: Params, s: jax.Array, mask: jax.Array, key: jax.Array, step: jax.Array
    ) -> jax.Array:
        return policy_dist(actor, s, mask, jax.random.fold_in(key, step), sch, cfg.t_dim)[0]

    return act


def _make_actor_loss(cfg: AGODConfig, sch: Schedule) -> Any:
    def actor_loss(
        actor: Params, critic: Params, s: jax.Array, mask: jax.Array, key: jax.Array
    ) -> jax.Array:
        p, logp = policy_dist(actor, s, mask, key, sch, cfg.t_dim)
        entropy = -jnp.sum(jnp.where(mask, p * logp, 0.0), axis=-1)
        q = jax.lax.stop_gradient(jnp.where(mask, q_min(critic, s), 0.0))
        return -jnp.mean(cfg.alpha * entropy + jnp.sum(p * q, axis=-1))

    return actor_loss


def _polyak(tau: float, target: Params, online: Params) -> Params:
    return jax.tree_util.tree_map(lambda x, o: (1.0 - tau) * x + tau * o, target, online)


def _make_update(
    cfg: AGODConfig,
    sch: Schedule,
    opt_a: optax.GradientTransformation,
    opt_c: optax.GradientTransformation,
) -> Any:
    actor_loss = _make_actor_loss(cfg, sch)

    def update(
        st: TrainState,
        s: jax.Array,
        a: jax.Array,
        r: jax.Array,
        s2: jax.Array,
        m: jax.Array,
        m2: jax.Array,
        key: jax.Array,
        step: jax.Array,
    ) -> tuple[TrainState, jax.Array, jax.Array]:
        k1, k2 = jax.random.split(jax.random.fold_in(key, step))
        p2, _ = policy_dist(st.target_actor, s2, m2, k1, sch, cfg.t_dim)
        v2 = jnp.sum(p2 * jnp.where(m2, q_min(st.target_critic, s2), 0.0), axis=-1)
        y = jax.lax.stop_gradient(r + cfg.gamma * v2)
        lc, gc = jax.value_and_grad(critic_loss)(st.critic, s, a, y)
        uc, opt_c_state = opt_c.update(gc, st.opt_critic, st.critic)
        critic = optax.apply_updates(st.critic, uc)
        la, ga = jax.value_and_grad(actor_loss)(st.actor, critic, s, m, k2)
        ua, opt_a_state = opt_a.update(ga, st.opt_actor, st.actor)
        actor = optax.apply_updates(st.actor, ua)
        targets = (
            _polyak(cfg.tau, st.target_actor, actor),
            _polyak(cfg.tau, st.target_critic, critic),
        )
        return TrainState(actor, critic, *targets, opt_a_state, opt_c_state), lc, la

    return update


@functools.lru_cache(maxsize=8)
def build(cfg: AGODConfig) -> Fns:
    sch = vp_schedule(cfg.steps, cfg.beta_min, cfg.beta_max)
    opt_a, opt_c = (
        _adam_l2(cfg.actor_lr, cfg.weight_decay),
        _adam_l2(cfg.critic_lr, cfg.weight_decay),
    )
    return Fns(
        act=jax.jit(_make_act(cfg, sch)),
        update=jax.jit(_make_update(cfg, sch, opt_a, opt_c)),
        critic_loss=jax.jit(critic_loss),
        opt_actor=opt_a,
        opt_critic=opt_c,
    )


def prng_key(seed: int) -> jax.Array:
    """The JAX key of a run's seed. `PRNGKey` takes a 64-bit signed integer, the world any
    non-negative one (numpy): a seed of 2**63 or more is folded into range (smaller seeds
    keep their key)."""
    return jax.random.PRNGKey(seed % 2**63)


def init_state(cfg: AGODConfig, s_dim: int, a_dim: int, seed: int) -> TrainState:
    fns = build(cfg)
    ka, kc = jax.random.split(prng_key(seed))
    actor = init_actor(ka, s_dim, a_dim, cfg.hidden, cfg.t_dim)
    critic = init_critic(kc, s_dim, a_dim, cfg.hidden)
    return TrainState(
        actor, critic, actor, critic, fns.opt_actor.init(actor), fns.opt_critic.init(critic)
    )


# -- replay buffer of decisions ---------------------------------------------------------------


class Replay:
    """Decisions in order; s' of row d is the state of row d+1 (the next decision).

    A row is a complete transition once its (delayed) reward has arrived and the next
    decision of the same run has been taken.
    """

    def __init__(self, capacity: int, s_dim: int, a_dim: int) -> None:
        self.cap = capacity
        self.s = np.zeros((capacity, s_dim), np.float32)
        self.mask = np.zeros((capacity, a_dim), bool)
        self.a = np.zeros(capacity, np.int32)
        self.r = np.zeros(capacity, np.float32)
        self.has_r = np.zeros(capacity, bool)
        self.has_next = np.zeros(capacity, bool)
        self.n_ready = 0
        self.pos = 0
        self.last = -1  # row of the previous decision of this run

    def new_run(self) -> None:
        self.last = -1

    def add(self, s: NDArray[np.float32], mask: NDArray[np.bool_], a: int) -> int:
        d = self.pos
        self.n_ready -= int(self.has_r[d] & self.has_next[d])  # overwritten transition
        self.s[d], self.mask[d], self.a[d] = s, mask, a
        self.has_r[d] = self.has_next[d] = False
        if self.last >= 0:
            self.has_next[self.last] = True
            self.n_ready += int(self.has_r[self.last])
        self.last = d
        self.pos = (d + 1) % self.cap
        return d

    def reward(self, d: int, r: float) -> None:
        self.r[d] = r
        self.has_r[d] = True
        self.n_ready += int(self.has_next[d])

    def sample(self, n: int, rng: np.random.Generator) -> tuple[NDArray[Any], ...]:
        ready = np.flatnonzero(self.has_r & self.has_next)
        d = ready[rng.integers(0, len(ready), n)]
        d2 = (d + 1) % self.cap
        return self.s[d], self.a[d], self.r[d], self.s[d2], self.mask[d], self.mask[d2]
