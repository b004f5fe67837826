"""What CS-UCB learns, keyed by service class NAME and pool NAME, independent of any
`CostTable`: several bandits (one per candidate node set in the extender) can learn into
and decide from one `ArmStats`. Flat arm index = class · n_pools + pool; adding a class
or a pool moves flat indices, which `layout` announces to the bandits that cached them.

Per arm (class, pool): running sums of the observed/predicted time ratio, its square and
the reward, with exponential forgetting, and decision counts (`plays`, for the bonus: feedback
is delayed). Per class: an output-length histogram on log bins seeded with a lognormal
prior around the declared mean (O(1) updates, quantiles by cumulative sum).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
from numpy.typing import NDArray

from perllm.csucb.config import OUT_BINS, QUANTILE_REFRESH, STATE_VERSION, CSUCBConfig

F = NDArray[np.float64]
I = NDArray[np.intp]  # noqa: E741

OUT_EDGES: F = np.geomspace(1.0, 65536.0, OUT_BINS + 1)
_OUT_EDGES_LIST: list[float] = OUT_EDGES.tolist()
_ACCUMULATORS = ("n", "sum_ratio", "sumsq_ratio", "sum_reward", "plays")


class ArmStats:
    def __init__(self, config: CSUCBConfig | None = None) -> None:
        self.cfg = config or CSUCBConfig()
        self.class_names: list[str] = []
        self.pool_names: list[str] = []
        self._class_index: dict[str, int] = {}
        self._pool_index: dict[str, int] = {}
        self.n = np.zeros((0, 0))  # observations (decayed)
        self.sum_ratio = np.zeros((0, 0))
        self.sumsq_ratio = np.zeros((0, 0))
        self.sum_reward = np.zeros((0, 0))
        self.plays = np.zeros((0, 0))  # decisions
        self.out_hist = np.zeros((0, OUT_BINS))
        self.total = 0  # requests decided
        self.rounds = 0
        self.violations = 0  # requests with nothing feasible
        self.layout = 0  # bumped when classes or pools are added
        self.generation = 0  # bumped on every change of the learned values
        # (1 − 1/memory)^k by numpy's own power (Python's pow differs in the last bit).
        self._decay_pow: F | None = (
            np.power(1.0 - 1.0 / self.cfg.memory, np.arange(4096, dtype=np.intp))
            if np.isfinite(self.cfg.memory)
            else None
        )
        self._invalidate()

    # -- layout ---------------------------------------------------------------------------
    @property
    def n_pools(self) -> int:
        return len(self.pool_names)

    def class_index(self, name: str) -> int:
        return self._class_index[name]

    def pool_index(self, name: str) -> int:
        return self._pool_index[name]

    def add_classes(self, names: Sequence[str], mean_output_tokens: Sequence[float]) -> None:
        """Add the classes not known yet, with the output-length prior around each mean."""
        new = [(s, m) for s, m in zip(names, mean_output_tokens, strict=True)]
        new = [(s, m) for s, m in dict(new).items() if s not in self._class_index]
        if not new:
            return
        centres = np.sqrt(OUT_EDGES[1:] * OUT_EDGES[:-1])
        sig = self.cfg.output_prior_sigma
        means = np.array([m for _, m in new], float)
        z = (np.log(centres)[None, :] - (np.log(means)[:, None] - sig**2 / 2)) / sig
        prior = np.exp(-0.5 * z**2)
        hist = self.cfg.prior_n * prior / prior.sum(axis=1, keepdims=True)
        self.out_hist = np.concatenate([self.out_hist, hist])
        for acc in _ACCUMULATORS:
            a = getattr(self, acc)
            setattr(self, acc, np.concatenate([a, np.zeros((len(new), a.shape[1]))]))
        for s, _ in new:
            self._class_index[s] = len(self.class_names)
            self.class_names.append(s)
        self._relayout()

    def add_pools(self, names: Iterable[str]) -> None:
        """Add the pools not known yet (in sorted order), with no experience."""
        new = sorted({p for p in names if p not in self._pool_index})
        if not new:
            return
        for acc in _ACCUMULATORS:
            a = getattr(self, acc)
            setattr(self, acc, np.concatenate([a, np.zeros((a.shape[0], len(new)))], axis=1))
        for p in new:
            self._pool_index[p] = len(self.pool_names)
            self.pool_names.append(p)
        self._relayout()

    def _relayout(self) -> None:
        self.layout += 1
        self._invalidate()

    def _invalidate(self) -> None:
        """Forget everything derived from the learned values."""
        self.generation += 1
        self._posterior: tuple[F, F] | None = None
        self._per_arm: tuple[F, F, F] | None = None  # flat mu, sd, pessimistic factor
        self._per_arm_list: tuple[list[float], list[float], list[float]] | None = None
        self._quantiles: tuple[F, F] | None = None
        self._lq: F | None = None  # [C, 2] both output quantiles
        self._lq_list: list[list[float]] = []
        self._since_quantiles = 0

    # -- derived statistics ---------------------------------------------------------------
    def ratio_posterior(self) -> tuple[F, F]:
        """Mean and predictive sd of observed/predicted D per arm, with the prior (1, sd0)."""
        if self._posterior is None:
            n0, sd0 = self.cfg.prior_n, self.cfg.prior_sd
            nn = n0 + self.n
            mu = (n0 + self.sum_ratio) / nn
            var = (n0 * (sd0**2 + 1.0) + self.sumsq_ratio) / nn - mu**2
            sd = np.sqrt(np.maximum(var, 1e-6)) * np.sqrt(1.0 + 1.0 / nn)
            self._posterior = mu, sd
        return self._posterior

    def arm_posterior(self) -> tuple[F, F, F]:
        """Flat per arm: posterior mean and sd of the time ratio, and the pessimistic
        factor mean + z·sd that feasibility multiplies predictions by."""
        if self._per_arm is None or self._posterior is None:
            mu, sd = self.ratio_posterior()
            self._per_arm = (mu.ravel(), sd.ravel(), (mu + self.cfg.z * sd).ravel())
        return self._per_arm

    def arm_posterior_lists(self) -> tuple[list[float], list[float], list[float]]:
        """`arm_posterior` as Python lists (kept current arm by arm by `observe_small`)."""
        if self._per_arm_list is None:
            mu, sd, f = self.arm_posterior()
            self._per_arm_list = (mu.tolist(), sd.tolist(), f.tolist())
        return self._per_arm_list

    def output_quantiles(self) -> tuple[F, F]:
        """Per class: low and high output-length quantiles (tokens)."""
        # Quantiles move slowly: refresh them every QUANTILE_REFRESH observations.
        if self._quantiles is None or self._since_quantiles >= QUANTILE_REFRESH:
            cdf = np.cumsum(self.out_hist, axis=1)
            cdf /= cdf[:, -1:]
            q = self.cfg.output_quantile
            lo = np.argmax(cdf >= q, axis=1)
            hi = np.argmax(cdf >= 1.0 - q, axis=1)
            self._quantiles = OUT_EDGES[lo], OUT_EDGES[hi + 1]
            self._lq = np.stack(self._quantiles, axis=-1)
            self._lq_list = self._lq.tolist()
            self._since_quantiles = 0
        return self._quantiles

    def quantile_pairs(self) -> F:
        """[C, 2]: both output quantiles per class (refreshed when due)."""
        self.output_quantiles()
        assert self._lq is not None
        return self._lq

    def quantile_pair_lists(self) -> list[list[float]]:
        self.output_quantiles()
        return self._lq_list

    def mean_reward(self) -> F:
        return np.divide(self.sum_reward, self.n, out=np.zeros_like(self.n), where=self.n > 0)

    # -- learning -------------------------------------------------------------------------
    def record_round(self, arms: Iterable[int], n_requests: int, violations: int) -> None:
        """A decided round: one play per request's arm."""
        pf = self.plays.reshape(-1)
        for a in arms:
            pf[a] += 1
        self.total += n_requests
        self.violations += violations
        self.generation += 1

    def observe(self, arm: I, cls: I, ratio: F, reward: F, l_out: F) -> None:
        """Observations by flat arm and class: O(1) each (running sums, a histogram bin)."""
        shape, size = self.n.shape, self.n.size
        counts = np.bincount(arm, minlength=size).reshape(shape)
        if np.isfinite(self.cfg.memory):
            decay = (1.0 - 1.0 / self.cfg.memory) ** counts
            for acc in (self.n, self.sum_ratio, self.sumsq_ratio, self.sum_reward):
                acc *= decay
        self.n += counts
        self.sum_ratio += np.bincount(arm, ratio, size).reshape(shape)
        self.sumsq_ratio += np.bincount(arm, ratio**2, size).reshape(shape)
        self.sum_reward += np.bincount(arm, reward, size).reshape(shape)
        b = np.clip(np.searchsorted(OUT_EDGES, l_out, side="right") - 1, 0, OUT_BINS - 1)
        ob = self.out_hist.shape[1]
        self.out_hist += np.bincount(cls * ob + b, minlength=self.out_hist.size).reshape(
            self.out_hist.shape
        )
        self._posterior = self._per_arm = self._per_arm_list = None
        self._since_quantiles += len(cls)
        self.generation += 1

    def observe_small(
        self,
        arm: Sequence[int],
        cls: Sequence[int],
        ratio: Sequence[float],
        reward: Sequence[float],
        l_out: Sequence[float],
    ) -> bool:
        """`observe` for a few observations on Python floats, touching only the arms and
        bins observed: the same sums in the same order (bincount's), so the same floats.
        False (nothing changed) where that would not hold: a non-finite output length, or
        more observations of one arm than the decay table covers."""
        arms: dict[int, list[float]] = {}  # arm -> [count, Σ ratio, Σ ratio², Σ reward]
        bins: dict[int, int] = {}
        ob = self.out_hist.shape[1]
        for a, c, r, w, lo in zip(arm, cls, ratio, reward, l_out, strict=True):
            if not math.isfinite(lo):
                return False
            acc = arms.setdefault(a, [0, 0.0, 0.0, 0.0])
            acc[0] += 1
            acc[1] += r
            acc[2] += r * r
            acc[3] += w
            b = min(max(bisect.bisect_right(_OUT_EDGES_LIST, lo) - 1, 0), OUT_BINS - 1)
            bins[c * ob + b] = bins.get(c * ob + b, 0) + 1
        decay = self._decay_pow
        if decay is not None and max(int(a[0]) for a in arms.values()) >= len(decay):
            return False
        n, sr = self.n.reshape(-1), self.sum_ratio.reshape(-1)
        ss, rw = self.sumsq_ratio.reshape(-1), self.sum_reward.reshape(-1)
        for a, (count, s_ratio, s_sq, s_rew) in arms.items():
            if decay is not None:
                f = decay[int(count)]
                n[a], sr[a], ss[a], rw[a] = n[a] * f, sr[a] * f, ss[a] * f, rw[a] * f
            n[a] += count
            sr[a] += s_ratio
            ss[a] += s_sq
            rw[a] += s_rew
        hist = self.out_hist.reshape(-1)
        for k, count in bins.items():
            hist[k] += count
        self._posterior = self._per_arm = None
        if self._per_arm_list is not None:  # refresh the observed arms only
            mu_l, sd_l, f_l = self._per_arm_list
            n0, sd0, z = self.cfg.prior_n, self.cfg.prior_sd, self.cfg.z
            for a in arms:
                # `ratio_posterior` for one arm, operation for operation.
                nn = n0 + float(n[a])
                mu = (n0 + float(sr[a])) / nn
                var = (n0 * (sd0**2 + 1.0) + float(ss[a])) / nn - mu * mu
                sd = math.sqrt(max(var, 1e-6)) * math.sqrt(1.0 + 1.0 / nn)
                mu_l[a], sd_l[a], f_l[a] = mu, sd, mu + z * sd
        self._since_quantiles += len(cls)
        self.generation += 1
        return True

    # -- persistence ----------------------------------------------------------------------
    def export_state(self) -> dict[str, Any]:
        arms = {}
        for c, svc in enumerate(self.class_names):
            for p, pool in enumerate(self.pool_names):
                if self.plays[c, p] or self.n[c, p]:
                    arms[f"{svc}|{pool}"] = {
                        "n": self.n[c, p],
                        "sum_ratio": self.sum_ratio[c, p],
                        "sumsq_ratio": self.sumsq_ratio[c, p],
                        "sum_reward": self.sum_reward[c, p],
                        "plays": self.plays[c, p],
                    }
        return {
            "version": STATE_VERSION,
            "total": self.total,
            "rounds": self.rounds,
            "violations": self.violations,
            "config": asdict(self.cfg),
            "arms": arms,
            # Learned output-length histograms per service (prior included).
            "outputs": {svc: self.out_hist[c].tolist() for c, svc in enumerate(self.class_names)},
        }

    def import_state(self, state: dict[str, Any]) -> int:
        """Restore learned arms by key; returns how many matched a known class. Pools not
        seen yet are added (a node set may bring them later); arms of unknown classes are
        dropped (services that no longer exist)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"state version {state.get('version')!r} != {STATE_VERSION}")
        known = [
            (svc, pool, a)
            for key, a in state.get("arms", {}).items()
            for svc, _, pool in [key.rpartition("|")]
            if svc in self._class_index
        ]
        self.add_pools(pool for _, pool, _ in known)
        for svc, pool, a in known:
            c, k = self._class_index[svc], self._pool_index[pool]
            self.n[c, k], self.sum_ratio[c, k] = a["n"], a["sum_ratio"]
            self.sumsq_ratio[c, k], self.sum_reward[c, k] = a["sumsq_ratio"], a["sum_reward"]
            self.plays[c, k] = a["plays"]
        for c, svc in enumerate(self.class_names):
            hist = state.get("outputs", {}).get(svc)
            if hist is not None and len(hist) == OUT_BINS:
                self.out_hist[c] = np.asarray(hist, float)
        self._invalidate()
        self.total = int(state.get("total", 0))
        self.rounds = int(state.get("rounds", 0))
        self.violations = int(state.get("violations", 0))
        return len(known)
