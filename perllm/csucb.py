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
from perllm.estimate import energy_scale, round_view

F = NDArray[np.float64]
I = NDArray[np.intp]  # noqa: E741

STATE_VERSION = 1


@dataclass(frozen=True)
class CSUCBConfig:
    delta: float = 0.3  # exploration weight δ of the UCB bonus
    theta: float = 2.0  # violation penalty θ (in units of normalised energy)
    z: float = 1.65  # quantile of the time ratio used for feasibility (95 % one-sided)
    prior_n: float = 3.0  # pseudo-observations of the profile prior
    prior_sd: float = 0.2  # prior sd of the observed/predicted time ratio

    def __post_init__(self) -> None:
        for k in ("delta", "theta", "z", "prior_sd"):
            if getattr(self, k) < 0:
                raise ValueError(f"{k}: must be >= 0")
        if self.prior_n <= 0:
            raise ValueError("prior_n: must be > 0")


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
class Decision:
    choice: I  # server index per request
    feasible: NDArray[np.bool_]  # a feasible server existed
    predicted_time: F
    predicted_energy: F
    explanations: list[Explanation] | None = None


class CSUCB:
    def __init__(
        self, table: CostTable, weights: EnergyWeights, config: CSUCBConfig | None = None
    ) -> None:
        self.t = table
        self.w = weights
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
        self.energy_scale = energy_scale(table, weights)

    # -- learned statistics -------------------------------------------------------------
    def ratio_posterior(self) -> tuple[F, F]:
        """Mean and predictive sd of observed/predicted D per arm, with the prior (1, sd0)."""
        n0, sd0 = self.cfg.prior_n, self.cfg.prior_sd
        nn = n0 + self.n
        mu = (n0 + self.sum_ratio) / nn
        var = (n0 * (sd0**2 + 1.0) + self.sumsq_ratio) / nn - mu**2
        sd = np.sqrt(np.maximum(var, 1e-6)) * np.sqrt(1.0 + 1.0 / nn)
        return mu, sd

    def mean_reward(self) -> F:
        return np.divide(self.sum_reward, self.n, out=np.zeros_like(self.n), where=self.n > 0)

    # -- decisions ------------------------------------------------------------------------
    def decide(
        self,
        cls: I,
        l_in: F,
        l_out: F,
        attach: F,
        min_quality: F,
        deadline: F,
        running: F,
        waiting: F,
        bw_mbps: F,
        explain: bool = False,
    ) -> Decision:
        """Assign one round of requests (expected output `l_out`, expected deadline)."""
        t, cfg = self.t, self.cfg
        n, m = len(cls), t.n_servers
        self.rounds += 1
        view = round_view(t, self.w, cls, l_in, l_out, attach, running, waiting, bw_mbps)
        mu, sd = self.ratio_posterior()
        arm = (cls[:, None], self.pool_of[None, :])  # [N, M] arm index
        mu_a, sd_a = mu[arm][:, :, None], sd[arm][:, :, None]
        pess = view.time * (mu_a + cfg.z * sd_a)
        static = t.allowed[cls] & (t.quality[cls] >= min_quality[:, None] - 1e-9)  # [N, M]
        dl = deadline[:, None, None]
        feas = static[:, :, None] & (pess <= dl)
        e_hat = view.energy * mu_a / self.energy_scale[cls][:, None, None]
        p_viol = 1.0 - ndtr((dl / np.maximum(view.time, 1e-9) - mu_a) / sd_a)
        mean = -e_hat - cfg.theta * p_viol
        plays = self.plays[arm]
        log_t = math.log(self.total + 2.0)
        bonus = np.where(plays > 0, cfg.delta * np.sqrt(log_t / np.maximum(plays, 1.0)), 0.0)
        # Unplayed arms first; among them the cheapest.
        score = np.where((plays == 0)[:, :, None], 1e6 + mean, mean + bonus[:, :, None])
        # Super arm: fewest feasible options, then earliest deadline, go first.
        order = np.lexsort((deadline, feas[:, :, 0].sum(axis=1)))
        added = np.zeros(m, np.intp)
        ar = np.arange(m)
        choice = np.empty(n, np.intp)
        lvl_of = np.empty(n, np.intp)  # load level each request saw when placed
        ok = np.empty(n, bool)
        k_max = view.levels - 1
        for k in order:
            lvl = np.minimum(added, k_max)
            row_feas = feas[k, ar, lvl]
            if row_feas.any():
                j = int(np.argmax(np.where(row_feas, score[k, ar, lvl], -np.inf)))
                ok[k] = True
            else:
                # Least violating: smallest pessimistic overshoot among servers that can run
                # the request; quality floors count before time.
                over = pess[k, ar, lvl] / deadline[k]
                qgap = np.maximum(min_quality[k] - t.quality[cls[k]], 0.0) * 1e3
                j = int(np.argmin(np.where(t.allowed[cls[k]], over + qgap, np.inf)))
                ok[k] = False
                self.violations += 1
            choice[k] = j
            lvl_of[k] = lvl[j]
            added[j] += 1
        np.add.at(self.plays, (cls, self.pool_of[choice]), 1)
        self.total += n
        rows = np.arange(n)
        expl = None
        if explain:
            expl = [
                self._explain(
                    int(k),
                    cls,
                    min_quality,
                    deadline,
                    static,
                    view.time,
                    pess,
                    view.energy,
                    mean,
                    bonus,
                    score,
                    choice,
                    ok,
                    lvl_of,
                )
                for k in range(n)
            ]
        return Decision(
            choice=choice,
            feasible=ok,
            predicted_time=view.time[rows, choice, lvl_of],
            predicted_energy=view.energy[rows, choice, lvl_of],
            explanations=expl,
        )

    def _explain(
        self,
        k: int,
        cls: I,
        min_quality: F,
        deadline: F,
        static: NDArray[np.bool_],
        time: F,
        pess: F,
        energy: F,
        mean: F,
        bonus: F,
        score: F,
        choice: I,
        ok: NDArray[np.bool_],
        lvl_of: I,
    ) -> Explanation:
        t = self.t
        c = int(cls[k])
        lv = int(lvl_of[k])
        cands = []
        for j in range(t.n_servers):
            if not t.allowed[c, j]:
                svc = t.services[c]
                reason = (
                    f"tier {t.tiers[j]} not allowed"
                    if t.tiers[j] not in svc.allowed_tiers
                    else "model variant does not fit in memory"
                )
            elif not static[k, j]:
                reason = f"quality {t.quality[c, j]:.3f} < floor {min_quality[k]:.3f}"
            elif pess[k, j, lv] > deadline[k]:
                reason = (
                    f"deadline {deadline[k]:.2f}s: est. {time[k, j, lv]:.2f}s "
                    f"(pessimistic {pess[k, j, lv]:.2f}s)"
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
    def update(self, cls: I, server: I, time: F, predicted_time: F, energy: F, deadline: F) -> None:
        """Observe completed requests: O(1) per observation (running sums)."""
        arm = (cls, self.pool_of[server])
        ratio = time / np.maximum(predicted_time, 1e-9)
        reward = -np.minimum(energy / self.energy_scale[cls], 2.0) - self.cfg.theta * (
            time > deadline
        )
        np.add.at(self.n, arm, 1.0)
        np.add.at(self.sum_ratio, arm, ratio)
        np.add.at(self.sumsq_ratio, arm, ratio**2)
        np.add.at(self.sum_reward, arm, reward)

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
        self.total = int(state.get("total", 0))
        self.rounds = int(state.get("rounds", 0))
        self.violations = int(state.get("violations", 0))
        return matched

    def dumps(self) -> str:
        return json.dumps(self.export_state(), sort_keys=True)
