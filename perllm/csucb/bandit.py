"""The CS-UCB bandit over one `CostTable`: decides rounds, learns from completions into
an `ArmStats` that several bandits (node sets) may share."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.special import ndtr

from perllm.contract import EnergyWeights
from perllm.costmodel import CostTable, upload_bits
from perllm.csucb import config as _config
from perllm.csucb.assign import SHED, Grid, assign_arrays, assign_lists
from perllm.csucb.config import DEADLINE_CAP_ERROR, SMALL_ROUND, CSUCBConfig
from perllm.csucb.decision import Decision
from perllm.csucb.explain import ExplainContext
from perllm.csucb.explain import explain as explain_request
from perllm.csucb.fast import play
from perllm.csucb.groups import group_round, server_kinds
from perllm.csucb.index import exploration, log_t
from perllm.csucb.levels import Levels, picked
from perllm.csucb.pooled import decide_pooled
from perllm.csucb.stats import ArmStats
from perllm.csucb.tables import FastTables
from perllm.estimate import RoundView, energy_scale, hold_rank, link_hold_limit, round_view

F = NDArray[np.float64]
I = NDArray[np.intp]  # noqa: E741


class CSUCB:
    def __init__(
        self,
        table: CostTable,
        weights: EnergyWeights | None = None,
        config: CSUCBConfig | None = None,
        stats: ArmStats | None = None,
    ) -> None:
        """Without `stats` the bandit learns alone; with them it learns into and decides
        from them (their config, which `config` must then equal or omit)."""
        if stats is not None and config is not None and config != stats.cfg:
            raise ValueError("config: differs from the shared statistics' config")
        self.t = table
        self.w = weights or EnergyWeights()
        self.stats = stats or ArmStats(config)
        self.cfg = self.stats.cfg
        self.stats.add_classes(
            [s.name for s in table.services], [s.traffic.output_tokens for s in table.services]
        )
        self.stats.add_pools(table.pools)
        self.energy_scale = energy_scale(table, self.w)
        self._server_cap = np.maximum(table.max_conc.max(axis=0), 1.0)
        dls = [s.requirements.deadline for s in table.services]
        self.deadline_s = np.array([d.seconds for d in dls])
        self.deadline_per_token = np.array([d.per_output_token_s for d in dls])
        self._scale_list: list[float] = self.energy_scale.tolist()
        self.hold_limit = link_hold_limit(table, self.cfg.link_hold)  # [M] s
        self._layout = -1
        self._remap()

    def _remap(self) -> None:
        """Map the table's classes and servers to the statistics' arms (again when another
        bandit sharing them added classes or pools: flat arm indices moved)."""
        st, t = self.stats, self.t
        self._layout = st.layout
        self.class_of = np.array([st.class_index(s.name) for s in t.services], np.intp)
        self.pool_of = np.array([st.pool_index(p) for p in t.pools], np.intp)
        self._class_list: list[int] = self.class_of.tolist()
        self._pool_list: list[int] = self.pool_of.tolist()
        # Flat arm index per (class, server): one gather per round finds every pair's arm.
        self._arm_cj = self.class_of[:, None] * st.n_pools + self.pool_of
        self._arm_list: list[list[int]] = self._arm_cj.tolist()
        self._fast: FastTables | None = None  # built on first use
        self._kind = server_kinds(t, self.pool_of)

    def _current(self) -> ArmStats:
        if self._layout != self.stats.layout:
            self._remap()
        return self.stats

    # -- the shared statistics, as this bandit's table sees them --------------------------
    @property
    def pool_names(self) -> list[str]:
        return self.stats.pool_names

    @property
    def n(self) -> F:
        return self.stats.n

    @property
    def plays(self) -> F:
        return self.stats.plays

    @property
    def total(self) -> int:
        return self.stats.total

    @property
    def rounds(self) -> int:
        return self.stats.rounds

    @property
    def violations(self) -> int:
        return self.stats.violations

    def ratio_posterior(self) -> tuple[F, F]:
        """Mean and predictive sd of observed/predicted D per arm [class, pool] of the
        statistics, with the prior (1, sd0)."""
        return self.stats.ratio_posterior()

    def output_quantiles(self) -> tuple[F, F]:
        """Per class of the table: low and high output-length quantiles (tokens)."""
        lo, hi = self.stats.output_quantiles()
        return lo[self.class_of], hi[self.class_of]

    def mean_reward(self) -> F:
        return self.stats.mean_reward()

    # -- decisions ------------------------------------------------------------------------
    def candidates(self, n_requests: int, running: F, waiting: F, bw_mbps: F) -> I | None:
        """Servers worth evaluating this round, or None for all (small fleets).

        Servers of one kind with the same running and waiting requests (a group,
        `groups`) differ only in their link, and the better-connected one wins against
        the others (`assign.better`). A round of N requests uses at most N servers of a
        group, its first N in that order, so keeping the N + 1 best-connected servers of
        every group loses no decision, and an idle 1,000-node pool shrinks to N + 1
        candidates. (`decide` evaluates large fleets per group; explanations list these.)
        """
        if self.t.n_servers <= self.cfg.max_candidates:
            return None
        self._current()
        gr = group_round(self._kind, running, waiting, bw_mbps)
        pos = np.arange(len(gr.order)) - np.repeat(gr.start[:-1], gr.sizes)
        return np.sort(gr.order[pos <= n_requests])

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
        deadline_cap: F | float | None = None,
    ) -> Decision:
        """Assign one round of requests (prompt `l_in`, expected output `l_out`).

        `deadline_cap`: per request, seconds its deadline may not exceed (inf: its class's
        deadline alone), e.g. a client's tighter deadline (`perllm router`'s header); it
        tightens the constraint, the violation term and the shed rule, never loosens them.
        """
        self._current().rounds += 1
        args = (cls, l_in, l_out, attach, min_quality, running, waiting, bw_mbps)
        cap = None
        if deadline_cap is not None:  # (a scalar: every request's)
            cap = np.broadcast_to(np.asarray(deadline_cap, float), np.shape(cls))
            if not (cap > 0).all():
                raise ValueError(DEADLINE_CAP_ERROR)
        if self.pooled and not explain and len(cls) > 0:
            pooled = decide_pooled(self, args, cap)  # per group of servers, not per server
            if pooled is not None:
                return pooled
        cols = self.candidates(len(cls), running, waiting, bw_mbps)
        if cols is None and not explain and 0 < len(cls) <= SMALL_ROUND:
            lists = tuple(a.tolist() for a in args)
            got = play(self, lists, None if cap is None else cap.tolist())  # on Python floats
            if got is not None:
                return got[0].decision(*got[1][:4])
        return self._decide_arrays(args, cols, explain, cap)

    @property
    def pooled(self) -> bool:
        """Whether rounds are decided per group of servers (`decide_pooled`, the compiled
        loop): fleets larger than `max_candidates`."""
        return self.t.n_servers > self.cfg.max_candidates

    @staticmethod
    def static(t: CostTable, cls: I, min_quality: F) -> NDArray[np.bool_]:
        """[N, M] the hard constraints: the server's tier is allowed for the class and its
        variant meets the request's quality floor."""
        return t.allowed[cls] & (t.quality[cls] >= min_quality[:, None] - 1e-9)

    def deadlines(self, cls: I, l_out: F, lq: F, cap: F | None) -> tuple[F, F]:
        """Each request's deadline: [N] at its expected output length `l_out`, [N, 2] at
        both output quantiles `lq`; at most `cap` (per request) where given."""
        dl_s, dl_tok = self.deadline_s[cls], self.deadline_per_token[cls]
        deadline = dl_s + dl_tok * l_out
        rhs = dl_s[:, None] + dl_tok[:, None] * lq
        if cap is None:
            return deadline, rhs
        return np.minimum(deadline, cap), np.minimum(rhs, cap[:, None])

    def _judge(
        self,
        t: CostTable,
        arm: I,
        view: RoundView,
        args: tuple[I, F, F, F, F, F, F, F],
        cap: F | None,
        hold: F | None = None,
    ) -> tuple[F, NDArray[np.bool_], NDArray[np.bool_], F, F, F, F]:
        """Constraints and UCB scores of every (request, server, level) of a round:
        static, feasible, pessimistic D, ΔD per request, R̂, score, the arms' bonus.
        `hold` [N, M]: what the score loses where an upload holds a link (`hold_rank`)."""
        cls, _, l_out, _, min_quality = args[:5]
        st, cfg = self.stats, self.cfg
        # Rounds are small (a few requests): numpy's per-call cost, not the arithmetic,
        # dominates, so per-arm quantities are computed once per arm and gathered.
        mu_arm, sd_arm, f_arm = st.arm_posterior()
        mu_a, sd_a = mu_arm[arm][:, :, None], sd_arm[arm][:, :, None]
        f_pess = f_arm[arm][:, :, None]  # mu_a + z·sd_a
        pess = view.time * f_pess
        static = self.static(t, cls, min_quality)
        # D ≈ A + B·L_out: check the pessimistic D against ΔD at both output quantiles.
        per_tok = view.decode / np.maximum(l_out, 1.0)[:, None, None]
        fixed = view.time - view.decode
        lq = st.quantile_pairs()[self.class_of[cls]]  # [N, 2] both ends
        deadline, rhs2 = self.deadlines(cls, l_out, lq, cap)
        rhs = rhs2[:, None, None, :]
        lq3 = lq[:, None, None, :]
        # One end at a time: a trailing axis of 2 is slow to broadcast.
        feas = (
            static[:, :, None]
            & ((f_pess * (fixed + per_tok * lq3[..., 0])) <= rhs[..., 0])
            & ((f_pess * (fixed + per_tok * lq3[..., 1])) <= rhs[..., 1])
        )
        e_hat = view.energy * mu_a / self.energy_scale[cls][:, None, None]
        p_viol = 1.0 - ndtr((deadline[:, None, None] / np.maximum(view.time, 1e-9) - mu_a) / sd_a)
        mean = -e_hat - cfg.theta * p_viol
        bonus, lift = exploration(st.plays.ravel().tolist(), log_t(st.total), cfg.delta)
        # Ties (equal scores) are broken in the assignment (`assign.better`).
        score = mean + np.array(lift)[arm][:, :, None]
        if hold is not None:
            score = score - hold[:, :, None]
        return pess, static, feas, deadline, mean, score, np.array(bonus)

    def hold_rank(self, l_in: F, attach: F, bw_mbps: F, cols: I | None = None) -> F | None:
        """`estimate.hold_rank` of a round (on the candidates `cols` and their `bw_mbps`)."""
        limit = self.hold_limit if cols is None else self.hold_limit[cols]
        return hold_rank(upload_bits(l_in, attach), bw_mbps, limit)

    def _decide_arrays(
        self,
        args: tuple[I, F, F, F, F, F, F, F],
        cols: I | None,
        explain: bool,
        cap: F | None = None,
    ) -> Decision:
        cls, l_in, l_out, attach, min_quality = args[:5]
        st = self.stats
        t, arm_of, running, waiting, bw_mbps = self._servers(args, cols)
        n = len(cls)
        view = round_view(t, self.w, cls, l_in, l_out, attach, running, waiting, bw_mbps)
        arm = arm_of[cls]  # [N, M] flat arm index
        hold = self.hold_rank(l_in, attach, bw_mbps, cols)
        pess, static, feas, deadline, mean, score, bonus = self._judge(
            t, arm, view, args, cap, hold
        )
        lv = Levels(view, pess, feas, mean, score)

        def grow() -> tuple[F, F, F, F]:
            # A server took as many requests as the levels computed: the next ones, at
            # their real load (no cap), for every server (levels double).
            k = lv.view.levels
            v = round_view(t, self.w, cls, l_in, l_out, attach, running, waiting, bw_mbps, k, k)
            p2, _, f2, _, mean2, s2, _ = self._judge(t, arm, v, args, cap, hold)
            lv.extend(v, p2, f2, mean2, s2)
            return lv.pess, np.where(lv.feas, lv.score, -np.inf), lv.view.time, lv.view.decode

        fs = np.where(feas, score, -np.inf)
        g = Grid(pess, fs, view.time, view.decode, bw_mbps.tolist(), grow)
        ok = np.empty(n, bool)
        lists = not explain and not np.isnan(score).any()  # else arrays (NaN-safe, `seen`)
        backlogged = (waiting >= self.cfg.backlog_waiting).tolist()
        out = self._assign(g, static, deadline, ok, arm, lists, backlogged)
        choice, lvl_of, seen, shed, infeasible = out
        view, placed = lv.view, ~shed
        unplayed = (st.plays.ravel() == 0)[arm]  # before this round's plays
        st.record_round(arm[np.arange(n), choice][placed].tolist(), n, infeasible)
        fixed = view.time - view.decode
        per_tok = view.decode / np.maximum(l_out, 1.0)[:, None, None]
        expl = None
        if explain:
            assert seen is not None
            q_lo, q_hi = self.output_quantiles()
            x = ExplainContext(
                t, cls, min_quality, deadline, static, lv.feas, view, lv.pess, lv.mean,
                bonus[arm], unplayed, lv.score, choice, ok, seen, shed, q_lo, q_hi, fixed,
                per_tok, hold is not None and hold > 0,
            )  # fmt: skip
            expl = [explain_request(k, x, st.rounds) for k in range(n)]
        at = np.where(placed, choice, 0)
        flat = (np.arange(n) * t.n_servers + at) * view.levels + lvl_of  # (request, choice, level)
        return Decision(
            choice=choice if cols is None else np.where(placed, cols[at], SHED),
            feasible=ok,
            predicted_time=picked(view.time, flat, placed),
            predicted_energy=picked(view.energy, flat, placed),
            predicted_fixed=picked(fixed, flat, placed),
            predicted_per_token=picked(per_tok, flat, placed),
            shed=shed,
            explanations=expl,
        )

    def _assign(
        self,
        g: Grid,
        static: NDArray[np.bool_],
        deadline: F,
        ok: NDArray[np.bool_],
        arm: I,
        lists: bool,
        backlogged: list[bool],
    ) -> tuple[I, I, I | None, NDArray[np.bool_], int]:
        """`assign_lists` or `assign_arrays` (which also returns what each request saw, for
        explanations), with the expectations that shedding reads."""
        expect = None
        if self.cfg.on_infeasible == "shed":
            mu_arm, _, f_arm = self.stats.arm_posterior()
            expect = (mu_arm / f_arm)[arm]
        # Python lists beat numpy's per-call cost only while the round's array is small.
        a = (g, static, deadline, ok, expect, backlogged)
        if lists and g.feasible_score.size <= 4096:
            choice, lvl_of, shed, infeasible = assign_lists(*a)
            return choice, lvl_of, None, shed, infeasible
        return assign_arrays(*a)

    def _servers(
        self, args: tuple[I, F, F, F, F, F, F, F], cols: I | None
    ) -> tuple[CostTable, I, F, F, F]:
        """The round's servers (all, or the candidates `cols` on a large fleet): their
        table, arms [class, server], running, waiting and bandwidth."""
        running, waiting, bw_mbps = args[5:]
        if cols is None:
            return self.t, self._arm_cj, running, waiting, bw_mbps
        t, arm_of = self.t.subset(cols), self._arm_cj[:, cols]
        return t, arm_of, running[cols], waiting[cols], bw_mbps[cols]

    # -- learning -------------------------------------------------------------------------
    def update(
        self, cls: I, server: I, time: F, predicted_time: F, energy: F, deadline: F, l_out: F
    ) -> None:
        """Observe completed requests: O(1) per observation (running sums, a histogram bin)."""
        st = self._current()
        if len(cls) <= _config.SMALL_UPDATE and self._update_small(
            cls.tolist(), server.tolist(), time.tolist(), predicted_time.tolist(),
            energy.tolist(), deadline.tolist(), l_out.tolist(),
        ):  # fmt: skip
            return
        ratio = time / np.maximum(predicted_time, 1e-9)
        reward = -np.minimum(energy / self.energy_scale[cls], 2.0) - self.cfg.theta * (
            time > deadline
        )
        st.observe(self._arm_cj[cls, server], self.class_of[cls], ratio, reward, l_out)

    def _update_small(
        self,
        cls: list[int],
        server: list[int],
        time: list[float],
        predicted_time: list[float],
        energy: list[float],
        deadline: list[float],
        l_out: list[float],
    ) -> bool:
        """`update` on Python floats (`ArmStats.observe_small`); False: nothing changed."""
        scale, theta, arm, cl = self._scale_list, self.cfg.theta, self._arm_list, self._class_list
        arms, classes, ratios, rewards = [], [], [], []
        for c, j, d, p, e, dl in zip(
            cls, server, time, predicted_time, energy, deadline, strict=True
        ):
            arms.append(arm[c][j])
            classes.append(cl[c])
            ratios.append(d / max(p, 1e-9))
            rewards.append(-min(e / scale[c], 2.0) - theta * (d > dl))
        return self.stats.observe_small(arms, classes, ratios, rewards, l_out)

    # -- persistence (the shared statistics) ----------------------------------------------
    def export_state(self) -> dict[str, Any]:
        return self.stats.export_state()

    def import_state(self, state: dict[str, Any]) -> int:
        """Restore learned arms by `<service>|<pool>` key; returns how many matched a known
        service (arms of services that no longer exist are dropped)."""
        return self.stats.import_state(state)

    def dumps(self) -> str:
        return json.dumps(self.export_state(), sort_keys=True)
