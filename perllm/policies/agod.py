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
otherwise).
"""

from __future__ import annotations

import functools
import math
import os
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpy.typing import NDArray

from perllm.estimate import energy_scale
from perllm.policies.base import Batch, Env, F, Feedback, I, Observation, Policy

if TYPE_CHECKING:
    from perllm.scenario import Scenario
    from perllm.world.sim import World

Params = Any  # a pytree of jax arrays
ENV_PRETRAIN = "PERLLM_AGOD_PRETRAIN_EPISODES"
TRAIN_SEED_OFFSET = 10_000
_L_MAX = math.log1p(32768.0)  # token counts are normalised by log1p(32k)
_ATTACH_MAX = math.log1p(1e8)


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


# -- networks (pure functions on parameter dicts) -------------------------------------------


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


def _q(p: Params, s: jax.Array) -> jax.Array:
    return _dense(p["l3"], _mish(_dense(p["l2"], _mish(_dense(p["l1"], s)))))


def q_min(critic: Params, s: jax.Array) -> jax.Array:
    return jnp.minimum(_q(critic["q1"], s), _q(critic["q2"], s))


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


@functools.lru_cache(maxsize=8)
def build(cfg: AGODConfig) -> Fns:
    sch = vp_schedule(cfg.steps, cfg.beta_min, cfg.beta_max)
    opt_a, opt_c = (
        _adam_l2(cfg.actor_lr, cfg.weight_decay),
        _adam_l2(cfg.critic_lr, cfg.weight_decay),
    )

    def act(
        actor: Params, s: jax.Array, mask: jax.Array, key: jax.Array, step: jax.Array
    ) -> jax.Array:
        return policy_dist(actor, s, mask, jax.random.fold_in(key, step), sch, cfg.t_dim)[0]

    def critic_loss(critic: Params, s: jax.Array, a: jax.Array, y: jax.Array) -> jax.Array:
        rows = jnp.arange(a.shape[0])
        q1 = _q(critic["q1"], s)[rows, a]
        q2 = _q(critic["q2"], s)[rows, a]
        return jnp.mean((q1 - y) ** 2) + jnp.mean((q2 - y) ** 2)

    def actor_loss(
        actor: Params, critic: Params, s: jax.Array, mask: jax.Array, key: jax.Array
    ) -> jax.Array:
        p, logp = policy_dist(actor, s, mask, key, sch, cfg.t_dim)
        entropy = -jnp.sum(jnp.where(mask, p * logp, 0.0), axis=-1)
        q = jax.lax.stop_gradient(jnp.where(mask, q_min(critic, s), 0.0))
        return -jnp.mean(cfg.alpha * entropy + jnp.sum(p * q, axis=-1))

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

        def soft(target: Params, online: Params) -> Params:
            return jax.tree_util.tree_map(
                lambda x, o: (1.0 - cfg.tau) * x + cfg.tau * o, target, online
            )

        return (
            TrainState(
                actor,
                critic,
                soft(st.target_actor, actor),
                soft(st.target_critic, critic),
                opt_a_state,
                opt_c_state,
            ),
            lc,
            la,
        )

    return Fns(
        act=jax.jit(act),
        update=jax.jit(update),
        critic_loss=jax.jit(critic_loss),
        opt_actor=opt_a,
        opt_critic=opt_c,
    )


def init_state(cfg: AGODConfig, s_dim: int, a_dim: int, seed: int) -> TrainState:
    fns = build(cfg)
    ka, kc = jax.random.split(jax.random.PRNGKey(seed))
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
        self.key = jax.random.PRNGKey(env.seed)
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
