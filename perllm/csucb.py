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

import bisect
import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.special import ndtr

from perllm.contract import EnergyWeights
from perllm.costmodel import ROUND, CostTable, download_bits, upload_bits
from perllm.estimate import MAX_LEVELS, RoundView, energy_scale, round_view

F = NDArray[np.float64]
I = NDArray[np.intp]  # noqa: E741

STATE_VERSION = 1
OUT_BINS = 64
QUANTILE_REFRESH = 64
SMALL_UPDATE = 32  # observations per update handled on Python floats
SMALL_ROUND = 16  # requests per round decided on Python floats (small fleets; measured)


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
        """`dataclasses.asdict(self)` without its deep copy of every scalar (a third of a
        200-node extender decision went there)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "candidates"}
        d["candidates"] = [dict(vars(c)) for c in self.candidates]
        return d


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


@dataclass(slots=True)
class _Coef:
    """One (class, server) pair's `CostTable.round_coeffs` as Python floats."""

    is_gpu: bool
    max_conc: float
    svc_per_slot: float
    w: float
    kv: float
    bw: float
    pp: float
    kappa_pp: float
    r_pf: float
    ttft0: float
    step0: float
    flop: float
    p_busy: float
    p_first: float
    p_idle: float


@dataclass
class _SmallTables:
    """The table as Python lists for `_decide_small`: [class][server] and per server."""

    coef: list[list[_Coef]]
    allowed: list[list[bool]]
    quality: list[list[float]]
    arm: list[list[int]]
    rtt: list[float]
    e_bit: list[float]
    gpu_pre: list[float]
    dl_s: list[float]
    dl_tok: list[float]


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
        # Flat arm index per (class, server): one gather per round finds every pair's arm.
        self._arm_cj = np.arange(table.n_classes)[:, None] * len(self.pool_names) + self.pool_of
        # Python-side copies for the small-round paths (`_update_small`).
        self._pool_list: list[int] = self.pool_of.tolist()
        self._edges_list: list[float] = []
        self._scale_list: list[float] = []
        # (1 − 1/memory)^k by numpy's own power (Python's pow differs in the last bit).
        self._decay_pow: F | None = (
            np.power(1.0 - 1.0 / self.cfg.memory, np.arange(4096, dtype=np.intp))
            if np.isfinite(self.cfg.memory)
            else None
        )
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
        self._edges_list = self.out_edges.tolist()
        self._scale_list = self.energy_scale.tolist()
        # Derived from the learned state; recomputed after the next update.
        self._posterior: tuple[F, F] | None = None
        self._per_arm: tuple[F, F, F] | None = None  # flat mu, sd, pessimistic factor
        self._quantiles: tuple[F, F] | None = None
        self._lq: F | None = None  # [C, 2] both output quantiles
        # Python-side copies for the small-round path (`_decide_small`).
        self._small: _SmallTables | None = None
        self._per_arm_list: tuple[list[float], list[float], list[float]] | None = None
        self._lq_list: list[list[float]] = []
        self._since_quantiles = 0

    # -- learned statistics -------------------------------------------------------------
    def ratio_posterior(self) -> tuple[F, F]:
        """Mean and predictive sd of observed/predicted D per arm, with the prior (1, sd0)."""
        if self._posterior is None:
            self._posterior = self._ratio_posterior()
        return self._posterior

    def _arm_stats(self) -> tuple[F, F, F]:
        """Flat per arm: posterior mean and sd of the time ratio, and the pessimistic
        factor mean + z·sd that feasibility multiplies predictions by."""
        if self._per_arm is None or self._posterior is None:
            mu, sd = self.ratio_posterior()
            self._per_arm = (mu.ravel(), sd.ravel(), (mu + self.cfg.z * sd).ravel())
        return self._per_arm

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
            self._lq = np.stack(self._quantiles, axis=-1)
            self._lq_list = self._lq.tolist()
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
        if cols is None and not explain and 0 < len(cls) <= SMALL_ROUND:
            small = self._decide_small(
                cls, l_in, l_out, attach, min_quality, running, waiting, bw_mbps
            )
            if small is not None:
                return small
        if cols is None:
            t, arm_of = self.t, self._arm_cj
        else:  # a large fleet: decide among the candidates only
            t, arm_of = self.t.subset(cols), self._arm_cj[:, cols]
            running, waiting, bw_mbps = running[cols], waiting[cols], bw_mbps[cols]
        n, m = len(cls), t.n_servers
        view = round_view(t, self.w, cls, l_in, l_out, attach, running, waiting, bw_mbps)
        # Rounds are small (a few requests): numpy's per-call cost, not the arithmetic,
        # dominates, so per-arm quantities are computed once per arm and gathered.
        mu_arm, sd_arm, f_arm = self._arm_stats()
        arm = arm_of[cls]  # [N, M] flat arm index
        mu_a, sd_a = mu_arm[arm][:, :, None], sd_arm[arm][:, :, None]
        f_pess = f_arm[arm][:, :, None]  # mu_a + z·sd_a
        pess = view.time * f_pess
        static = t.allowed[cls] & (t.quality[cls] >= min_quality[:, None] - 1e-9)  # [N, M]
        dl_s, dl_tok = self.deadline_s[cls], self.deadline_per_token[cls]
        deadline = dl_s + dl_tok * l_out  # at the expected output length
        # D ≈ A + B·L_out: check the pessimistic D against ΔD at both output quantiles.
        per_tok = view.decode / np.maximum(l_out, 1.0)[:, None, None]
        fixed = view.time - view.decode
        q_lo, q_hi = self.output_quantiles()
        assert self._lq is not None
        lq = self._lq[cls]  # [N, 2] both ends at once
        lq4 = lq[:, None, None, :]
        ends = (f_pess[..., None] * (fixed[..., None] + per_tok[..., None] * lq4)) <= (
            dl_s[:, None] + dl_tok[:, None] * lq
        )[:, None, None, :]
        feas = static[:, :, None] & ends[..., 0] & ends[..., 1]
        e_hat = view.energy * mu_a / self.energy_scale[cls][:, None, None]
        p_viol = 1.0 - ndtr((deadline[:, None, None] / np.maximum(view.time, 1e-9) - mu_a) / sd_a)
        mean = -e_hat - cfg.theta * p_viol
        plays_arm = self.plays.ravel()
        log_t = math.log(self.total + 2.0)
        bonus_arm = np.where(
            plays_arm > 0, cfg.delta * np.sqrt(log_t / np.maximum(plays_arm, 1.0)), 0.0
        )
        # Unplayed arms first (1e6 lifts them above any played arm); among them the cheapest.
        lift = np.where(plays_arm == 0, 1e6, bonus_arm)[arm]
        score = mean + lift[:, :, None]
        # Among equal scores (servers of a pool at the same load) prefer the faster: a rank
        # term far below any meaningful score gap, resolvable next to the 1e6 offset.
        speed_rank = np.argsort(np.argsort(view.time, axis=1), axis=1)
        score = score - 1e-8 * speed_rank
        # Super arm: fewest feasible options, then earliest deadline, go first.
        order = np.lexsort((deadline, feas[:, :, 0].sum(axis=1)))
        k_max = view.levels - 1
        feasible_score = np.where(feas, score, -np.inf)
        ok = np.empty(n, bool)
        seen: I | None = None
        blocked: NDArray[np.bool_] | None = None
        # Python lists beat numpy's per-call cost only while the round's array is small.
        if not explain and feasible_score.size <= 4096 and not np.isnan(score).any():
            choice, lvl_of = self._assign_small(
                t, cls, min_quality, deadline, pess, feasible_score, order, k_max, ok
            )
        else:
            # For explanations: every server's level, and round-capacity exclusions, as seen
            # by each request when it was placed.
            choice, lvl_of, seen, blocked = self._assign_full(
                t, cls, min_quality, deadline, pess, feasible_score, order, k_max, ok, explain
            )
        pf = self.plays.reshape(-1)
        for a in arm[np.arange(n), choice].tolist():
            pf[a] += 1
        self.total += n
        flat = (np.arange(n) * m + choice) * view.levels + lvl_of  # (request, choice, level)
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
                bonus_arm[arm],
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
            predicted_time=view.time.ravel()[flat],
            predicted_energy=view.energy.ravel()[flat],
            predicted_fixed=fixed.ravel()[flat],
            predicted_per_token=per_tok.ravel()[flat],
            explanations=expl,
        )

    def _decide_small(
        self,
        cls: I,
        l_in: F,
        l_out: F,
        attach: F,
        min_quality: F,
        running: F,
        waiting: F,
        bw_mbps: F,
    ) -> Decision | None:
        """`decide` for a round of a few requests on a small fleet, on Python floats.

        Most rounds hold 1-4 requests, and the vectorised path then pays numpy's per-call
        cost about a hundred times for a few dozen numbers. Here every formula of
        `estimate.round_view` and `decide` is evaluated with the same operations in the same
        order (so the same floats), and only where the assignment looks: each request's row
        of servers at the load levels present when it is placed. The normal CDF and ties in
        the speed rank go through the same numpy/scipy calls as the vectorised path. Returns
        None, having changed nothing, where that equivalence is not guaranteed (a NaN).
        """
        cfg, tab = self.cfg, self._small_tables()
        n, m = len(cls), self.t.n_servers
        k_max = max(1, min(n, MAX_LEVELS)) - 1
        mu_l, sd_l, f_l = self._arm_lists()
        log_t = math.log(self.total + 2.0)
        delta, theta = cfg.delta, cfg.theta
        lift = [
            1e6 if p == 0 else (delta * math.sqrt(log_t / max(p, 1.0)) if p > 0 else 0.0)
            for p in self.plays.ravel().tolist()
        ]
        lq = self._lq_list
        wt, wi, wid = self.w.tran, self.w.infer, self.w.idle
        occ = [r + w for r, w in zip(running.tolist(), waiting.tolist(), strict=True)]
        wait = waiting.tolist()
        bwbps = [b * 1e6 for b in bw_mbps.tolist()]
        rtt, e_bit, gpu_pre, scale = tab.rtt, tab.e_bit, tab.gpu_pre, self._scale_list
        cl, mq_l = cls.tolist(), min_quality.tolist()
        # Per request: the level-independent part of every server's prediction.
        req = []
        for c, li, lo, att, mq in zip(
            cl, l_in.tolist(), l_out.tolist(), attach.tolist(), mq_l, strict=True
        ):
            ctx = li + 0.5 * lo
            bits = upload_bits(li, att) + download_bits(lo)
            q_lo, q_hi = lq[c]
            dl_s, dl_tok = tab.dl_s[c], tab.dl_tok[c]
            per_server = []
            for j, (co, ok_j, q_j, arm) in enumerate(
                zip(tab.coef[c], tab.allowed[c], tab.quality[c], tab.arm[c], strict=True)
            ):
                ctx_kv = ctx * co.kv
                if co.is_gpu:
                    part = co.ttft0 + li / co.r_pf, ctx_kv / co.bw + co.flop
                else:
                    part = co.bw / (co.w + ctx_kv), 0.0
                per_server.append(
                    (
                        co,
                        ok_j and q_j >= mq - 1e-9,  # static constraints
                        part,
                        bits / bwbps[j] + rtt[j],  # transmission time
                        e_bit[j] * bits,
                        arm,
                    )
                )
            req.append(
                (
                    li,
                    lo,
                    max(lo, 1.0),
                    dl_s + dl_tok * lo,  # ΔD at the expected output length
                    q_lo,
                    q_hi,
                    dl_s + dl_tok * q_lo,
                    dl_s + dl_tok * q_hi,
                    scale[c],
                    per_server,
                )
            )
        # Entries (request, server, level) -> [time, decode, fixed, per-token, feasible,
        # energy, score without the speed rank (−inf where infeasible)], made on demand.
        # Rows (request, load level) of entries per server: [time, decode, fixed,
        # per-token, feasible, energy, score without the speed rank (−inf if infeasible)],
        # made on demand.
        rows: dict[tuple[int, int], list[Any]] = {}

        def row(k: int, a: int) -> list[Any]:
            r = rows.get((k, a))
            if r is None:
                r = rows[k, a] = [None] * m
            return r

        def energy_of(co: _Coef, e_tran: float, busy_pre: float, dec: float, b: float) -> float:
            """The weighted marginal energy (as `round_view`)."""
            busy_dec = dec / b
            e_inf = co.p_first * busy_pre + co.p_busy * busy_dec
            e_idle = co.p_idle * (busy_pre + busy_dec)
            energy: float = wt * e_tran + wi * e_inf - wid * e_idle
            return 0.0 if energy < 0.0 else energy

        def make(keys: list[tuple[int, int, int]]) -> bool:
            """Fill the entries `keys`; one normal-CDF call for all. False on a NaN. The
            parts only a chosen server needs (energy, fixed and per-token time) wait for
            `complete` on servers that are not feasible."""
            feasible = []
            args = []
            rk: list[Any] = []
            ka: tuple[int, int] | None = None
            for k, j, a in keys:
                if (k, a) != ka:
                    ka, rk = (k, a), row(k, a)
                li, lo, lo1, dl, q_lo, q_hi, rhs_lo, rhs_hi, sc, per_server = req[k]
                co, static, part, tran, e_tran, arm = per_server[j]
                occ1 = (occ[j] + a) + 1
                cap = co.max_conc
                b = occ1 if occ1 <= cap else cap
                # max(x, 0.0) written out (numpy's and builtin max's value; no call)
                ahead = occ1 - cap
                queue = (0.0 if ahead < 0.0 else ahead) * co.svc_per_slot + (wait[j] + a) * gpu_pre[
                    j
                ]
                if co.is_gpu:
                    pre, dec = part[0], lo * (co.step0 + b * part[1])
                    busy_pre = pre
                else:
                    comp = co.kappa_pp / b
                    pre, dec = li * b / co.pp, lo / (part[0] if part[0] <= comp else comp)
                    busy_pre = pre / b
                time = tran + queue + (pre + dec)
                if time != time:
                    return False
                if not static:
                    rk[j] = [time, dec, None, None, False, None, -math.inf, busy_pre, b]
                    continue
                fixed, per_tok, f = time - dec, dec / lo1, f_l[arm]
                if (
                    f * (fixed + per_tok * q_lo) <= rhs_lo
                    and f * (fixed + per_tok * q_hi) <= rhs_hi
                ):
                    energy = energy_of(co, e_tran, busy_pre, dec, b)
                    e = [time, dec, fixed, per_tok, True, energy, -math.inf, busy_pre, b]
                    feasible.append((e, arm, energy * mu_l[arm] / sc))
                    args.append((dl / (1e-9 if time < 1e-9 else time) - mu_l[arm]) / sd_l[arm])
                else:
                    e = [time, dec, fixed, per_tok, False, None, -math.inf, busy_pre, b]
                rk[j] = e
            if args:
                # One value: the ufunc on a scalar (same loop, same value, less wrapping).
                p_viol = (
                    [float(1.0 - ndtr(args[0]))]
                    if len(args) == 1
                    else (1.0 - ndtr(np.array(args))).tolist()
                )
                for (e, arm, e_hat), pv in zip(feasible, p_viol, strict=True):
                    raw = -e_hat - theta * pv + lift[arm]
                    if raw != raw:
                        return False
                    e[6] = raw
            return True

        def time_only(k: int, j: int, a: int) -> float:
            """D of request k on server j at level a (as in `make`, without the rest)."""
            li, lo = req[k][0], req[k][1]
            co, _, part, tran, _, _ = req[k][9][j]
            occ1 = (occ[j] + a) + 1
            cap = co.max_conc
            b = occ1 if occ1 <= cap else cap
            ahead = occ1 - cap
            queue = (0.0 if ahead < 0.0 else ahead) * co.svc_per_slot + (wait[j] + a) * gpu_pre[j]
            if co.is_gpu:
                pre, dec = part[0], lo * (co.step0 + b * part[1])
            else:
                comp = co.kappa_pp / b
                pre, dec = li * b / co.pp, lo / (part[0] if part[0] <= comp else comp)
            time: float = tran + queue + (pre + dec)
            return time

        def speed_rank(k: int, a: int) -> list[int] | None:
            """Each server's position in the argsort of request k's times at level a.
            Without ties any sort agrees; with ties, numpy's own (unstable) argsort."""
            r = row(k, a)
            times = [time_only(k, j, a) if r[j] is None else r[j][0] for j in range(m)]
            if any(map(math.isnan, times)):
                return None
            if len(set(times)) == m:
                by_speed = sorted(range(m), key=times.__getitem__)
            else:
                by_speed = np.argsort(np.array(times)).tolist()
            rank = [0] * m
            for pos, j in enumerate(by_speed):
                rank[j] = pos
            return rank

        if not make([(k, j, 0) for k in range(n) for j in range(m)]):
            return None
        # Super arm: fewest feasible options, then earliest deadline, go first (lexsort).
        nfeas = [sum(e[4] for e in rows[k, 0]) for k in range(n)]
        order = sorted(range(n), key=lambda k: (nfeas[k], req[k][3]))
        added = [0] * m
        choice, lvl_of, ok = [0] * n, [0] * n, [False] * n
        violations = 0
        # The speed rank moves scores by at most 1e-8·(m − 1): a larger lead (with room for
        # rounding) decides without it; closer calls rank exactly as the vectorised path.
        for k in order:
            present = {a: row(k, a) for a in set(added) if a <= k_max}
            todo = [(k, j, a) for j, a in enumerate(added) if a <= k_max and present[a][j] is None]
            if todo and not make(todo):
                return None
            best = second = -math.inf
            j = -1
            for jj, a in enumerate(added):
                if a <= k_max:
                    v = present[a][jj][6]
                    if v > best:
                        best, second, j = v, best, jj
                    elif v > second:
                        second = v
            gap = 2e-8 * m + 4e-14 * abs(best)  # the rank's reach, with room for rounding
            if j >= 0 and best - second <= gap:
                j = self._equal_score_winner(present, added, best, gap, k_max)
            if j == -2:  # a close call: rank exactly
                ranks = {}
                for a in present:
                    r = speed_rank(k, a)
                    if r is None:
                        return None
                    ranks[a] = r
                best, j = -math.inf, -1
                for jj, a in enumerate(added):
                    if a <= k_max:
                        e = present[a][jj]
                        if e[4]:
                            v = e[6] - 1e-8 * ranks[a][jj]
                            if v > best:
                                best, j = v, jj
            if j < 0:
                # Least violating: smallest pessimistic overshoot among servers that can
                # run the request; quality floors count before time.
                c, dl, mq = cl[k], req[k][3], mq_l[k]
                todo = [(k, jj, min(a, k_max)) for jj, a in enumerate(added)]
                if not make([(k, jj, a) for k, jj, a in todo if row(k, a)[jj] is None]):
                    return None
                least, j = math.inf, 0
                for jj, a in enumerate(added):
                    if not tab.allowed[c][jj]:
                        continue
                    pess = rows[k, min(a, k_max)][jj][0] * f_l[tab.arm[c][jj]]
                    over = pess / dl + (1e3 if a > k_max else 0.0)
                    v = over + max(mq - tab.quality[c][jj], 0.0) * 1e3
                    if v < least:
                        least, j = v, jj
                violations += 1
            else:
                ok[k] = True
            choice[k], lvl_of[k] = j, min(added[j], k_max)
            added[j] += 1
        self.violations += violations
        pf = self.plays.reshape(-1)
        for k in range(n):
            pf[tab.arm[cl[k]][choice[k]]] += 1
        self.total += n
        picked = [rows[k, lvl_of[k]][choice[k]] for k in range(n)]
        for k, e in enumerate(picked):
            if e[5] is None:  # complete a server chosen without being feasible
                co, _, _, _, e_tran, _ = req[k][9][choice[k]]
                e[2], e[3] = e[0] - e[1], e[1] / req[k][2]
                e[5] = energy_of(co, e_tran, e[7], e[1], e[8])
        time, energy, fixed, per_tok = np.array(
            [
                [e[0] for e in picked],
                [e[5] for e in picked],
                [e[2] for e in picked],
                [e[3] for e in picked],
            ]
        )
        return Decision(
            choice=np.array(choice, np.intp),
            feasible=np.array(ok, bool),
            predicted_time=time,
            predicted_energy=energy,
            predicted_fixed=fixed,
            predicted_per_token=per_tok,
        )

    @staticmethod
    def _equal_score_winner(
        present: dict[int, list[Any]], added: list[int], best: float, gap: float, k_max: int
    ) -> int:
        """The common close call: every server within `gap` of the best score has exactly
        the best score and sits at the same load level (servers of one pool, say). The
        speed rank then orders them as their predicted times do, so with distinct times
        the fastest wins, as with the full rank; its index, or -2 where the full rank must
        decide (the rank's 1e-8 steps stay far above rounding for |score| < 4e6)."""
        if abs(best) >= 4e6:
            return -2
        tied: list[int] = []
        level = -1
        for jj, a in enumerate(added):
            if a <= k_max:
                v = present[a][jj][6]
                if v >= best - gap:
                    if v != best or (level >= 0 and a != level):
                        return -2
                    level = a
                    tied.append(jj)
        row = present[level]
        times = [row[jj][0] for jj in tied]
        if len(set(times)) != len(times):
            return -2
        return tied[times.index(min(times))]

    def _small_tables(self) -> _SmallTables:
        if self._small is None:
            t = self.t
            rc = t.round_coeffs
            assert ROUND[0] == "is_gpu"
            coef = [
                [_Coef(bool(rc[0, c, j] > 0.5), *rc[1:, c, j].tolist()) for j in range(t.n_servers)]
                for c in range(t.n_classes)
            ]
            self._small = _SmallTables(
                coef=coef,
                allowed=t.allowed.tolist(),
                quality=t.quality.tolist(),
                arm=self._arm_cj.tolist(),
                rtt=t.rtt_s.tolist(),
                e_bit=t.e_bit.tolist(),
                gpu_pre=t.typical_service_s[1].tolist(),
                dl_s=self.deadline_s.tolist(),
                dl_tok=self.deadline_per_token.tolist(),
            )
        return self._small

    def _arm_lists(self) -> tuple[list[float], list[float], list[float]]:
        if self._per_arm_list is None:  # kept current by `_update_small`
            mu, sd, f = self._arm_stats()
            self._per_arm_list = (mu.tolist(), sd.tolist(), f.tolist())
        self.output_quantiles()  # refresh `_lq_list` when due
        return self._per_arm_list

    def _assign_small(
        self,
        t: CostTable,
        cls: I,
        min_quality: F,
        deadline: F,
        pess: F,
        feasible_score: F,
        order: I,
        k_max: int,
        ok: NDArray[np.bool_],
    ) -> tuple[I, I]:
        """`_assign_full` on Python lists, for a round's few requests: the same choices
        (first best feasible server, else the least violating) without numpy's per-call
        cost. Scores must hold no NaN (comparisons would differ from numpy's argmax)."""
        n, m = feasible_score.shape[:2]
        fs = feasible_score.tolist()
        added = [0] * m
        choice = np.empty(n, np.intp)
        lvl_of = np.empty(n, np.intp)
        for k in order.tolist():
            row = fs[k]
            best, j = -math.inf, -1
            for jj in range(m):
                a = added[jj]
                # Past the modelled load levels a server is no candidate for the rest of
                # the round (else a round piles onto it).
                if a <= k_max:
                    v = row[jj][a]
                    if v > best:
                        best, j = v, jj
            ok[k] = j >= 0
            if j < 0:
                # Least violating: smallest pessimistic overshoot among servers that can
                # run the request; quality floors count before time.
                c = int(cls[k])
                p_row, q_row, a_row = pess[k].tolist(), t.quality[c].tolist(), t.allowed[c]
                dl, mq = float(deadline[k]), float(min_quality[k])
                least, j = math.inf, 0
                for jj in range(m):
                    if not a_row[jj]:
                        continue
                    a = added[jj]
                    over = p_row[jj][min(a, k_max)] / dl + (1e3 if a > k_max else 0.0)
                    v = over + max(mq - q_row[jj], 0.0) * 1e3
                    if v < least:
                        least, j = v, jj
                self.violations += 1
            choice[k], lvl_of[k] = j, min(added[j], k_max)
            added[j] += 1
        return choice, lvl_of

    def _assign_full(
        self,
        t: CostTable,
        cls: I,
        min_quality: F,
        deadline: F,
        pess: F,
        feasible_score: F,
        order: I,
        k_max: int,
        ok: NDArray[np.bool_],
        explain: bool,
    ) -> tuple[I, I, I | None, NDArray[np.bool_] | None]:
        """The super-arm assignment in numpy, recording what explanations need."""
        n, m = feasible_score.shape[:2]
        added = np.zeros(m, np.intp)
        ar = np.arange(m)
        choice = np.empty(n, np.intp)
        lvl_of = np.empty(n, np.intp)  # load level each request saw when placed
        seen = np.empty((n, m), np.intp) if explain else None
        blocked = np.zeros((n, m), bool) if explain else None
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
        return choice, lvl_of, seen, blocked

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
        if len(cls) <= SMALL_UPDATE and self._update_small(
            cls, server, time, predicted_time, energy, deadline, l_out
        ):
            return
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
        self._posterior = self._per_arm = self._per_arm_list = None
        self._since_quantiles += len(cls)

    def _update_small(
        self, cls: I, server: I, time: F, predicted_time: F, energy: F, deadline: F, l_out: F
    ) -> bool:
        """`update` for a few observations on Python floats, touching only the arms and bins
        observed: the same sums in the same order (bincount's), so the same floats. False
        (nothing changed) where that would not hold: a non-finite output length, or more
        observations of one arm than the decay table covers."""
        n_pools = self.n.shape[1]
        pool, scale, edges = self._pool_list, self._scale_list, self._edges_list
        theta = self.cfg.theta
        arms: dict[int, list[float]] = {}  # arm -> [count, Σ ratio, Σ ratio², Σ reward]
        bins: dict[int, int] = {}
        ob = self.out_hist.shape[1]
        for c, j, d, p, e, dl, lo in zip(
            cls.tolist(),
            server.tolist(),
            time.tolist(),
            predicted_time.tolist(),
            energy.tolist(),
            deadline.tolist(),
            l_out.tolist(),
            strict=True,
        ):
            if not math.isfinite(lo):
                return False
            ratio = d / max(p, 1e-9)
            reward = -min(e / scale[c], 2.0) - theta * (d > dl)
            acc = arms.setdefault(c * n_pools + pool[j], [0, 0.0, 0.0, 0.0])
            acc[0] += 1
            acc[1] += ratio
            acc[2] += ratio * ratio
            acc[3] += reward
            b = min(max(bisect.bisect_right(edges, lo) - 1, 0), OUT_BINS - 1)
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
                # `_ratio_posterior` for one arm, operation for operation.
                nn = n0 + float(n[a])
                mu = (n0 + float(sr[a])) / nn
                var = (n0 * (sd0**2 + 1.0) + float(ss[a])) / nn - mu * mu
                sd = math.sqrt(max(var, 1e-6)) * math.sqrt(1.0 + 1.0 / nn)
                mu_l[a], sd_l[a], f_l[a] = mu, sd, mu + z * sd
        self._since_quantiles += len(cls)
        return True

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
        self._posterior = self._quantiles = self._per_arm = self._per_arm_list = None
        self.total = int(state.get("total", 0))
        self.rounds = int(state.get("rounds", 0))
        self.violations = int(state.get("violations", 0))
        return matched

    def dumps(self) -> str:
        return json.dumps(self.export_state(), sort_keys=True)
