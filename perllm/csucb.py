"""CS-UCB: constraint-satisfying upper-confidence-bound placement (PerLLM).

Arms are keyed by (service class, server pool), a pool being the servers with the same
tier, hardware and link profile. The cost model already explains what differs between
servers of a pool (their current load and measured bandwidth), so what is left to learn,
the ratio between observed and predicted processing time and the resulting reward, is
shared by the pool. A 1,000-node fleet of a few hardware types thus has a few dozen arms
instead of tens of thousands, and a new node of a known pool starts with its pool's
experience. See docs/algorithm.md.

Each round (the requests of one slot, a super arm):
1. predict D and marginal energy for every (request, server, load level) from telemetry;
2. constraint satisfaction: keep pairs whose pessimistic D (predicted × the arm's upper
   ratio quantile; prior-dominated while samples are few) meets the deadline, whose
   variant meets the quality floor, and which the server can run at all;
3. UCB over the feasible pairs: score = R̂ + δ·sqrt(ln t / n(a)), unplayed arms first,
   with R̂ = −normalised energy − θ·P(violation);
4. assign jointly in order of fewest feasible options, then earliest deadline, adding
   each placement's load to its server; with nothing feasible, take the least-violating
   server and record the violation.
Rewards r = −ê − θ·1[D > ΔD] arrive when requests complete; updates are O(1) running sums.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.special import ndtr

from perllm.contract import EnergyWeights
from perllm.costmodel import CostTable
from perllm.estimate import RoundView, energy_scale, round_view

F = NDArray[np.float64]
I = NDArray[np.intp]  # noqa: E741

STATE_VERSION = 1
OUT_BINS = 64
QUANTILE_REFRESH = 64


@dataclass(frozen=True)
class CSUCBConfig:
    delta: float = 0.3  # exploration weight δ of the UCB bonus
    theta: float = 2.0  # violation penalty θ (in units of normalised energy)
    z: float = 1.65  # quantile of the time ratio used for feasibility (95 % one-sided)
    prior_n: float = 3.0  # pseudo-observations of the profile prior
    prior_sd: float = 0.2  # prior sd of the observed/predicted time ratio
    # Deadlines grow with the output length, which is unknown at decision time: a pair is
    # feasible only if it meets ΔD across the class's output lengths from this quantile
    # to its complement (D and ΔD are both affine in L_out, so the two ends suffice).
    output_quantile: float = 0.05
    output_prior_sigma: float = 0.9  # lognormal σ of the prior around the declared mean
    # Observations an arm remembers (exponential forgetting): load and links drift, so
    # old evidence about a pool decays; inf keeps the stationary running means.
    memory: float = 500.0
    # Above this many servers a round evaluates candidates per pool, not every server.
    max_candidates: int = 64

    def __post_init__(self) -> None:
        for k in ("delta", "theta", "z", "prior_sd"):
            if getattr(self, k) < 0:
                raise ValueError(f"{k}: must be >= 0")
        if self.prior_n <= 0:
            raise ValueError("prior_n: must be > 0")
        if self.memory < 1:
            raise ValueError("memory: must be >= 1")
        if not 0.0 < self.output_quantile < 0.5:
            raise ValueError("output_quantile: must be in (0, 0.5)")


@dataclass
class Candidate:
    node: str
    tier: str
    feasible: bool
    reason: str  # why it was excluded ("" when feasible)
    predicted_time_s: float
    pessimistic_time_s: float
    predicted_energy_j: float
    mean: float  # R̂
    bonus: float
    score: float


@dataclass
class Explanation:
    service: str
    deadline_s: float
    min_quality: float
    chosen: str
    feasible: bool  # False: nothing was feasible, least-violating choice
    round: int
    candidates: list[Candidate] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _ExplainContext:
    t: CostTable
    cls: I
    min_quality: F
    deadline: F
    static: NDArray[np.bool_]
    feas: NDArray[np.bool_]
    view: RoundView
    pess: F
    mean: F
    bonus: F
    score: F
    choice: I
    ok: NDArray[np.bool_]
    seen: I  # [N, M] each server's load level when the request was placed
    blocked: NDArray[np.bool_]  # [N, M] server out of modelled levels this round
    q_lo: F
    q_hi: F


@dataclass
class Decision:
    choice: I  # server index per request
    feasible: NDArray[np.bool_]  # a feasible server existed
    predicted_time: F  # at the expected output length
    predicted_energy: F
    # D ≈ fixed + per_token·L_out: lets feedback re-evaluate the decision-time prediction
    # at the realised output length, so the learned ratio holds the model's queueing and
    # speed errors but not the output-length lottery.
    predicted_fixed: F
    predicted_per_token: F
    explanations: list[Explanation] | None = None


class CSUCB:
    def __init__(
        self,
        table: CostTable,
        weights: EnergyWeights | None = None,
        config: CSUCBConfig | None = None,
    ) -> None:
        self.t = table
        self.w = weights or EnergyWeights()
        self.cfg = config or CSUCBConfig()
        self.pool_names = sorted(set(table.pools))
        self.pool_of = np.array([self.pool_names.index(p) for p in table.pools], np.intp)
        shape = (table.n_classes, len(self.pool_names))
        self.n = np.zeros(shape)  # observations
        self.sum_ratio = np.zeros(shape)
        self.sumsq_ratio = np.zeros(shape)
        self.sum_reward = np.zeros(shape)
        self.plays = np.zeros(shape)  # decisions (for the bonus; feedback is delayed)
        self.total = 0
        self.rounds = 0
        self.violations = 0  # rounds' requests with nothing feasible
        self.energy_scale = energy_scale(table, self.w)
        self._pool_members = [
            np.flatnonzero(self.pool_of == p) for p in range(len(self.pool_names))
        ]
        self._server_cap = np.maximum(table.max_conc.max(axis=0), 1.0)
        dls = [s.requirements.deadline for s in table.services]
        self.deadline_s = np.array([d.seconds for d in dls])
        self.deadline_per_token = np.array([d.per_output_token_s for d in dls])
        # Output-length histogram per class (log bins), seeded with a lognormal prior
        # around the declared mean: O(1) updates, quantiles by cumulative sum.
        self.out_edges = np.geomspace(1.0, 65536.0, OUT_BINS + 1)
        centres = np.sqrt(self.out_edges[1:] * self.out_edges[:-1])
        sig = self.cfg.output_prior_sigma
        means = np.array([s.traffic.output_tokens for s in table.services])
        z = (np.log(centres)[None, :] - (np.log(means)[:, None] - sig**2 / 2)) / sig
        prior = np.exp(-0.5 * z**2)
        self.out_hist = self.cfg.prior_n * prior / prior.sum(axis=1, keepdims=True)
        # Derived from the learned state; recomputed after the next update.
        self._posterior: tuple[F, F] | None = None
        self._quantiles: tuple[F, F] | None = None
        self._since_quantiles = 0

    # -- learned statistics -------------------------------------------------------------
    def ratio_posterior(self) -> tuple[F, F]:
        """Mean and predictive sd of observed/predicted D per arm, with the prior (1, sd0)."""
        if self._posterior is None:
            self._posterior = self._ratio_posterior()
        return self._posterior

    def _ratio_posterior(self) -> tuple[F, F]:
        n0, sd0 = self.cfg.prior_n, self.cfg.prior_sd
        nn = n0 + self.n
        mu = (n0 + self.sum_ratio) / nn
        var = (n0 * (sd0**2 + 1.0) + self.sumsq_ratio) / nn - mu**2
        sd = np.sqrt(np.maximum(var, 1e-6)) * np.sqrt(1.0 + 1.0 / nn)
        return mu, sd

    def output_quantiles(self) -> tuple[F, F]:
        """Per class: low and high output-length quantiles (tokens)."""
        # Quantiles move slowly: refresh them every QUANTILE_REFRESH observations.
        if self._quantiles is None or self._since_quantiles >= QUANTILE_REFRESH:
            self._quantiles = self._output_quantiles()
            self._since_quantiles = 0
        return self._quantiles

    def _output_quantiles(self) -> tuple[F, F]:
        cdf = np.cumsum(self.out_hist, axis=1)
        cdf /= cdf[:, -1:]
        q = self.cfg.output_quantile
        lo = np.argmax(cdf >= q, axis=1)
        hi = np.argmax(cdf >= 1.0 - q, axis=1)
        return self.out_edges[lo], self.out_edges[hi + 1]

    def mean_reward(self) -> F:
        return np.divide(self.sum_reward, self.n, out=np.zeros_like(self.n), where=self.n > 0)

    # -- decisions ------------------------------------------------------------------------
    def candidates(self, n_requests: int, running: F, waiting: F, bw_mbps: F) -> I | None:
        """Servers worth evaluating this round, or None for all (small fleets).

        Servers of one pool with the same load differ only in their link: the one with more
        bandwidth is at least as fast at the same energy. A round of N requests uses at
        most N servers, so keeping the N + 1 best-connected servers of every (pool, load)
        group loses no decision, and an idle 1,000-node pool shrinks to N + 1 candidates.
        """
        if self.t.n_servers <= self.cfg.max_candidates:
            return None
        load = running + waiting
        order = np.lexsort((-bw_mbps, load, self.pool_of))
        group = np.stack([self.pool_of[order], load[order]])
        new = np.ones(len(order), bool)
        new[1:] = (group[:, 1:] != group[:, :-1]).any(axis=0)
        start = np.maximum.accumulate(np.where(new, np.arange(len(order)), 0))
        rank = np.arange(len(order)) - start
        return np.sort(order[rank <= n_requests])

    def decide(
        self,
        cls: I,
        l_in: F,
        l_out: F,
        attach: F,
        min_quality: F,
        running: F,
        waiting: F,
        bw_mbps: F,
        explain: bool = False,
    ) -> Decision:
        """Assign one round of requests (prompt `l_in`, expected output `l_out`)."""
        cfg = self.cfg
        self.rounds += 1
        cols = self.candidates(len(cls), running, waiting, bw_mbps)
        if cols is None:
            t, pool_of = self.t, self.pool_of
        else:  # a large fleet: decide among the candidates only
            t, pool_of = self.t.subset(cols), self.pool_of[cols]
            running, waiting, bw_mbps = running[cols], waiting[cols], bw_mbps[cols]
        n, m = len(cls), t.n_servers
        view = round_view(t, self.w, cls, l_in, l_out, attach, running, waiting, bw_mbps)
        mu, sd = self.ratio_posterior()
        arm = (cls[:, None], pool_of[None, :])  # [N, M] arm index
        mu_a, sd_a = mu[arm][:, :, None], sd[arm][:, :, None]
        f_pess = mu_a + cfg.z * sd_a
        pess = view.time * f_pess
        static = t.allowed[cls] & (t.quality[cls] >= min_quality[:, None] - 1e-9)  # [N, M]
        dl_s, dl_tok = self.deadline_s[cls], self.deadline_per_token[cls]
        deadline = dl_s + dl_tok * l_out  # at the expected output length
        dl = deadline[:, None, None]
        # D ≈ A + B·L_out: check the pessimistic D against ΔD at both output quantiles.
        per_tok = view.decode / np.maximum(l_out, 1.0)[:, None, None]
        fixed = view.time - view.decode
        q_lo, q_hi = self.output_quantiles()
        lq = np.stack((q_lo[cls], q_hi[cls]), axis=-1)[:, None, None, :]  # both ends at once
        meets = (
            f_pess[..., None] * (fixed[..., None] + per_tok[..., None] * lq)
            <= dl_s[:, None, None, None] + dl_tok[:, None, None, None] * lq
        ).all(axis=-1)
        feas = static[:, :, None] & meets
        e_hat = view.energy * mu_a / self.energy_scale[cls][:, None, None]
        p_viol = 1.0 - ndtr((dl / np.maximum(view.time, 1e-9) - mu_a) / sd_a)
        mean = -e_hat - cfg.theta * p_viol
        plays = self.plays[arm]
        log_t = math.log(self.total + 2.0)
        bonus = np.where(plays > 0, cfg.delta * np.sqrt(log_t / np.maximum(plays, 1.0)), 0.0)
        # Unplayed arms first; among them the cheapest.
        score = np.where((plays == 0)[:, :, None], 1e6 + mean, mean + bonus[:, :, None])
        # Among equal scores (servers of a pool at the same load) prefer the faster: a rank
        # term far below any meaningful score gap, resolvable next to the 1e6 offset.
        speed_rank = np.argsort(np.argsort(view.time, axis=1), axis=1)
        score = score - 1e-8 * speed_rank
        # Super arm: fewest feasible options, then earliest deadline, go first.
        order = np.lexsort((deadline, feas[:, :, 0].sum(axis=1)))
        added = np.zeros(m, np.intp)
        ar = np.arange(m)
        choice = np.empty(n, np.intp)
        lvl_of = np.empty(n, np.intp)  # load level each request saw when placed
        # For explanations: every server's level, and round-capacity exclusions, as seen by
        # each request when it was placed.
        seen = np.empty((n, m), np.intp) if explain else None
        blocked = np.zeros((n, m), bool) if explain else None
        ok = np.empty(n, bool)
        k_max = view.levels - 1
        feasible_score = np.where(feas, score, -np.inf)
        full = False  # some server has used up the modelled load levels this round
        for k in order:
            lvl = np.minimum(added, k_max)
            if seen is not None and blocked is not None:
                seen[k] = lvl
                blocked[k] = added > k_max
            row = feasible_score[k, ar, lvl]
            if full:
                # Past the modelled load levels a server's prediction would stop growing: it
                # is no candidate for the rest of the round (else a round piles onto it).
                row[added > k_max] = -np.inf
            j = int(row.argmax())
            if row[j] > -np.inf:
                ok[k] = True
            else:
                # Least violating: smallest pessimistic overshoot among servers that can run
                # the request; quality floors count before time.
                over = pess[k, ar, lvl] / deadline[k] + (added > k_max) * 1e3
                qgap = np.maximum(min_quality[k] - t.quality[cls[k]], 0.0) * 1e3
                j = int(np.argmin(np.where(t.allowed[cls[k]], over + qgap, np.inf)))
                ok[k] = False
                self.violations += 1
            choice[k] = j
            lvl_of[k] = lvl[j]
            added[j] += 1
            full = full or added[j] > k_max
        np.add.at(self.plays, (cls, pool_of[choice]), 1)
        self.total += n
        rows = np.arange(n)
        expl = None
        if explain:
            assert seen is not None and blocked is not None
            q_lo, q_hi = self.output_quantiles()
            ctx = _ExplainContext(
                t,
                cls,
                min_quality,
                deadline,
                static,
                feas,
                view,
                pess,
                mean,
                bonus,
                score,
                choice,
                ok,
                seen,
                blocked,
                q_lo,
                q_hi,
            )
            expl = [self._explain(k, ctx) for k in range(n)]
        return Decision(
            choice=choice if cols is None else cols[choice],
            feasible=ok,
            predicted_time=view.time[rows, choice, lvl_of],
            predicted_energy=view.energy[rows, choice, lvl_of],
            predicted_fixed=fixed[rows, choice, lvl_of],
            predicted_per_token=per_tok[rows, choice, lvl_of],
            explanations=expl,
        )

    def _explain(self, k: int, x: _ExplainContext) -> Explanation:
        t = x.t
        cls, min_quality, deadline, static = x.cls, x.min_quality, x.deadline, x.static
        time, pess, energy, mean, bonus, score = (
            x.view.time,
            x.pess,
            x.view.energy,
            x.mean,
            x.bonus,
            x.score,
        )
        choice, ok = x.choice, x.ok
        c = int(cls[k])
        cands = []
        for j in range(t.n_servers):
            lv = int(x.seen[k, j])
            if not t.allowed[c, j]:
                svc = t.services[c]
                reason = (
                    f"tier {t.tiers[j]} not allowed"
                    if t.tiers[j] not in svc.allowed_tiers
                    else "model variant does not fit in memory"
                )
            elif not static[k, j]:
                reason = f"quality {t.quality[c, j]:.3f} < floor {min_quality[k]:.3f}"
            elif x.blocked[k, j]:
                reason = f"no room this round: {lv + 1} requests already placed on it"
            elif not x.feas[k, j, lv]:
                reason = (
                    f"deadline {deadline[k]:.2f}s: est. {time[k, j, lv]:.2f}s "
                    f"(pessimistic {pess[k, j, lv]:.2f}s; must hold for "
                    f"{x.q_lo[c]:.0f}-{x.q_hi[c]:.0f} output tokens)"
                )
            else:
                reason = ""
            cands.append(
                Candidate(
                    node=t.server_names[j],
                    tier=t.tiers[j],
                    feasible=reason == "",
                    reason=reason,
                    predicted_time_s=float(time[k, j, lv]),
                    pessimistic_time_s=float(pess[k, j, lv]),
                    predicted_energy_j=float(energy[k, j, lv]),
                    mean=float(mean[k, j, lv]),
                    bonus=float(bonus[k, j]),
                    score=float(score[k, j, lv]),
                )
            )
        return Explanation(
            service=t.services[c].name,
            deadline_s=float(deadline[k]),
            min_quality=float(min_quality[k]),
            chosen=t.server_names[int(choice[k])],
            feasible=bool(ok[k]),
            round=self.rounds,
            candidates=cands,
        )

    # -- learning -------------------------------------------------------------------------
    def update(
        self, cls: I, server: I, time: F, predicted_time: F, energy: F, deadline: F, l_out: F
    ) -> None:
        """Observe completed requests: O(1) per observation (running sums, a histogram bin)."""
        shape = self.n.shape
        arm = cls * shape[1] + self.pool_of[server]  # flat arm index
        ratio = time / np.maximum(predicted_time, 1e-9)
        reward = -np.minimum(energy / self.energy_scale[cls], 2.0) - self.cfg.theta * (
            time > deadline
        )
        size = self.n.size
        counts = np.bincount(arm, minlength=size).reshape(shape)
        if np.isfinite(self.cfg.memory):
            decay = (1.0 - 1.0 / self.cfg.memory) ** counts
            for acc in (self.n, self.sum_ratio, self.sumsq_ratio, self.sum_reward):
                acc *= decay
        self.n += counts
        self.sum_ratio += np.bincount(arm, ratio, size).reshape(shape)
        self.sumsq_ratio += np.bincount(arm, ratio**2, size).reshape(shape)
        self.sum_reward += np.bincount(arm, reward, size).reshape(shape)
        b = np.clip(np.searchsorted(self.out_edges, l_out, side="right") - 1, 0, OUT_BINS - 1)
        ob = self.out_hist.shape[1]
        self.out_hist += np.bincount(cls * ob + b, minlength=self.out_hist.size).reshape(
            self.out_hist.shape
        )
        self._posterior = None
        self._since_quantiles += len(cls)

    # -- persistence ----------------------------------------------------------------------
    def export_state(self) -> dict[str, Any]:
        arms = {}
        for c, svc in enumerate(self.t.services):
            for p, pool in enumerate(self.pool_names):
                if self.plays[c, p] or self.n[c, p]:
                    arms[f"{svc.name}|{pool}"] = {
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
            "outputs": {
                svc.name: self.out_hist[c].tolist() for c, svc in enumerate(self.t.services)
            },
        }

    def import_state(self, state: dict[str, Any]) -> int:
        """Restore learned arms by key; returns how many matched this table (others are
        services or pools that no longer exist and are dropped)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"state version {state.get('version')!r} != {STATE_VERSION}")
        index = {
            f"{s.name}|{p}": (c, k)
            for c, s in enumerate(self.t.services)
            for k, p in enumerate(self.pool_names)
        }
        matched = 0
        for key, a in state.get("arms", {}).items():
            if key in index:
                c, k = index[key]
                self.n[c, k], self.sum_ratio[c, k] = a["n"], a["sum_ratio"]
                self.sumsq_ratio[c, k], self.sum_reward[c, k] = a["sumsq_ratio"], a["sum_reward"]
                self.plays[c, k] = a["plays"]
                matched += 1
        for c, svc in enumerate(self.t.services):
            hist = state.get("outputs", {}).get(svc.name)
            if hist is not None and len(hist) == OUT_BINS:
                self.out_hist[c] = np.asarray(hist, float)
        self._posterior = self._quantiles = None
        self.total = int(state.get("total", 0))
        self.rounds = int(state.get("rounds", 0))
        self.violations = int(state.get("violations", 0))
        return matched

    def dumps(self) -> str:
        return json.dumps(self.export_state(), sort_keys=True)
