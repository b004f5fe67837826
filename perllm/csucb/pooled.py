"""`CSUCB.decide` on a large fleet: scored per group of servers, not per server.

Servers of a group (`groups`) differ only in their bandwidth, which enters a prediction
only through the transmission time: time = transmission + core, where the core (queue,
prefill, decode) and the energy are the group's. So the round is predicted and scored
per (request, group, level) for each group's representative (its best-connected server),
which bounds every member from above: a member's score at a level is at most the
representative's there. The assignment keeps, per group, how many of its servers sit
at each load level; as placements only ever take a level's first server in the group's
order, its servers' levels stay non-increasing along that order, and the option "group
g at level a" is its first server at level a. That server's score is computed exactly
(its own transmission time, same operations as the vectorised path) only where the
bound could still win, so the decision is the per-server rule's (`assign.better`), at a
cost that grows with the groups, not the servers.
"""

from __future__ import annotations

import math
from itertools import chain, compress
from typing import TYPE_CHECKING

import numpy as np
from scipy.special import ndtr

from perllm.costmodel import transmission_time
from perllm.csucb.assign import SHED, better, hopeless
from perllm.csucb.decision import Decision
from perllm.csucb.groups import Groups, group_round
from perllm.csucb.pooled_scores import (
    CORE,
    DEC,
    HEADROOM,
    WINDOW,
    F,
    I,
    Scores,
    exploration_lift,
    kernels_available,
)
from perllm.estimate import hold_rank_one

if TYPE_CHECKING:
    from perllm.csucb.bandit import CSUCB


def decide_pooled(
    b: CSUCB, args: tuple[I, F, F, F, F, F, F, F], cap: F | None = None
) -> Decision | None:
    """The round's decision, or None (nothing changed) where a NaN or an unusable
    bandwidth would make the per-group bound unsound, or where the compiled loop is
    missing (`kernels_available`): the caller decides per server."""
    running, waiting, bw_mbps = args[5:]
    if not np.isfinite(bw_mbps).all() or (bw_mbps <= 0).any() or not kernels_available():
        return None
    gr = group_round(b._kind, running, waiting, bw_mbps)
    sc = Scores(b, args, gr.reps, cap)
    if not sc.ok:
        return None
    r = _Round(b, args, sc, gr)
    return r.decision() if r.run() else None


# (group, level, server, column of `Scores.data`, whether the server is the group's
# representative: its bound is its exact score)
Option = tuple[int, int, int, int, bool]


class _Round:
    """A pooled round's placements, request by request in arrival order (`assign`): the
    options still open (per group, its first server at each level present), scored from
    the representatives' columns, exactly where a non-representative could win."""

    def __init__(
        self, b: CSUCB, args: tuple[I, F, F, F, F, F, F, F], sc: Scores, gr: Groups
    ) -> None:
        cls, l_out = args[0], args[2]
        st = b.stats
        self.b, self.sc, self.cls, self.l_out = b, sc, cls, l_out
        n = self.n = len(cls)
        # Per request and server: what the exact score of a non-representative needs.
        mu_arm, sd_arm, f_arm = (a.ravel().tolist() for a in st.arm_posterior())
        self.mu_arm, self.f_arm = mu_arm, f_arm
        # Per class and group: the arm (a request's is its class's).
        self.arm_cg: list[list[int]] = sc.arm_cg.tolist()
        self.cls_l: list[int] = cls.tolist()
        self.static_l: list[list[bool]] = sc.static.tolist()
        self.deadline: list[float] = sc.deadline.tolist()
        self.bw: list[float] = args[7].tolist()
        self.members: list[int] = gr.order.tolist()
        self.first: list[int] = gr.start[:-1].tolist()
        self._exact_in = (
            sc.bits.tolist(),
            b.t.rtt_s.tolist(),
            sc.l_out1.tolist(),
            sc.lq.tolist(),
            sc.rhs.tolist(),
            sc.scale.tolist(),
            sd_arm,
            b.cfg.theta,
            exploration_lift(b)[1],
            sc.up.tolist(),
            b.hold_limit.tolist(),
        )
        self.shed_rule = b.cfg.on_infeasible == "shed"
        # Per group: [level, servers at it], levels descending (non-increasing along the order).
        n_groups = len(gr.reps)
        self.at: list[list[list[int]]] = [[[0, s]] for s in gr.sizes.tolist()]
        self.placed_in_window = [0] * n_groups
        self.end = min(WINDOW, n)  # the window's end (rows); the first levels hold every row
        self.per_group = [self.group_options(g) for g in range(n_groups)]
        self._flatten()
        self.choice, self.lvl_of, self.col_of = [0] * n, [0] * n, [0] * n
        self.ok, self.shed = [False] * n, [False] * n
        self.times = [math.nan] * n
        self.infeasible = 0

    def group_options(self, g: int) -> list[Option]:
        """Group g's options: its first server at each level present."""
        out, pos, cg, members = [], self.first[g], self.sc.col[g], self.members
        for a, cnt in self.at[g]:
            out.append((g, a, members[pos], cg[a], pos == self.first[g]))
            pos += cnt
        return out

    def _flatten(self) -> None:
        self.opts: list[Option] = list(chain.from_iterable(self.per_group))
        self.cols = np.fromiter((o[3] for o in self.opts), np.intp, len(self.opts))
        self.rep_flags = [o[4] for o in self.opts]
        self.offset = [0] * len(self.per_group)
        o = 0
        for g, opts in enumerate(self.per_group):
            self.offset[g] = o
            o += len(opts)

    def _refresh(self, g: int) -> None:
        new = self.group_options(g)
        old = self.per_group[g]
        self.per_group[g] = new
        if len(new) != len(old):
            self._flatten()
            return
        o = self.offset[g]
        self.opts[o : o + len(new)] = new
        for i, opt in enumerate(new):
            self.cols[o + i] = opt[3]

    def exact(self, p: int, g: int, s: int, c: int) -> tuple[float, float, float]:
        """Server s of group g (column c: its level) for request p: time,
        score (−inf where infeasible), pessimistic time; the vectorised path's operations."""
        bits, rtt, l_out1, lq, rhs, scale, sd_arm, theta, lift, up, limit = self._exact_in
        core, dec, en = self.sc.data[p, CORE:, c].tolist()
        time = transmission_time(bits[p], self.bw[s], rtt[s]) + core
        arm = self.arm_cg[self.cls_l[p]][g]
        f = self.f_arm[arm]
        if not self.static_l[p][g]:
            return time, -math.inf, time * f
        fixed, per_tok = time - dec, dec / l_out1[p]
        q_lo, q_hi = lq[p]
        rhs_lo, rhs_hi = rhs[p]
        if not (f * (fixed + per_tok * q_lo) <= rhs_lo and f * (fixed + per_tok * q_hi) <= rhs_hi):
            return time, -math.inf, time * f
        mu = self.mu_arm[arm]
        e_hat = en * mu / scale[p]
        x = (self.deadline[p] / (time if time > 1e-9 else 1e-9) - mu) / sd_arm[arm]
        hold = hold_rank_one(up[p], self.bw[s], limit[s])
        return time, -e_hat - theta * float(1.0 - ndtr(x)) + lift[arm] - hold, time * f

    def run(self) -> bool:
        """Place every request in arrival order; False on a NaN (nothing recorded)."""
        n = self.n
        for p in range(n):
            if p == self.end and not self.window(p):
                return False
            opts = self.opts
            bs, bo, b_time = self.best(p, opts)
            if bs >= 0:
                self.ok[p] = True
            else:  # nothing feasible
                self.infeasible += 1
                bs, bo, b_time = self.least_late(p, opts)
                if bs < 0:
                    self.choice[p], self.shed[p] = SHED, True
                    continue
            bg, ba, _, bc, _ = opts[bo]
            self.choice[p], self.lvl_of[p], self.col_of[p], self.times[p] = bs, ba, bc, b_time
            _take(self.at[bg], ba)
            self.placed_in_window[bg] += 1
            if p + 1 < n and not self.reopen(bg, ba, p + 1):
                return False
        return True

    def best(self, p: int, opts: list[Option]) -> tuple[int, int, float]:
        """Request p's best feasible option (`assign.better`): server, option, time; server
        -1 where none is feasible. A representative's bound is exact; another server's
        score is computed only where the bound could still win: at least the best
        representative's (the rule is a total order, so the options left out lose)."""
        u_row, t_row = self.sc.data[p, :2].take(self.cols, axis=1).tolist()
        bound = max(compress(u_row, self.rep_flags), default=-math.inf)
        bw = self.bw
        best, b_time, b_bw = -math.inf, math.inf, -math.inf
        bs = bo = -1
        for o, u in enumerate(u_row):
            if u >= bound and u >= best and u != -math.inf:
                g, _, s, c, rep = opts[o]
                if rep:
                    v, tt = u, t_row[o]
                else:
                    tt, v, _ = self.exact(p, g, s, c)
                if better(v, tt, bw[s], best, b_time, b_bw) or (
                    v == best and tt == b_time and bw[s] == b_bw and s < bs
                ):
                    best, b_time, b_bw, bs, bo = v, tt, bw[s], s, o
        return bs, bo, b_time

    def least_late(self, p: int, opts: list[Option]) -> tuple[int, int, float]:
        """`assign.least_late` over every group's options: server, option, time; server -1
        where the request is shed (none allowed, or hopeless under the shed rule)."""
        stk, dl = self.static_l[p], self.deadline[p]
        least, lp, b_time = math.inf, math.nan, math.inf
        bs = bo = -1
        for o, (g, _, s, c, _) in enumerate(opts):
            if not stk[g]:
                continue
            tt, _, pess = self.exact(p, g, s, c)
            v = pess / dl
            if bs < 0 or v < least or (v == least and s < bs):
                least, lp, b_time, bs, bo = v, pess, tt, s, o
        if bs >= 0 and self.shed_rule:
            g, c = opts[bo][0], opts[bo][3]
            arm = self.arm_cg[self.cls_l[p]][g]
            backlogged = bool(self.sc.wait[g] >= self.b.cfg.backlog_waiting)
            hold = float(self.sc.data[p, DEC, c])  # the decode: not the link's, exact
            if hopeless(lp, self.mu_arm[arm] / self.f_arm[arm], dl, backlogged, hold):
                return -1, -1, b_time
        return bs, bo, b_time

    def reopen(self, g: int, a: int, p: int) -> bool:
        """Group g's options after a placement at level a, for the rows from p on: level
        a + 1 computed for the rest of the window where it is not (as many levels as the
        window has rows left: no more are reachable in it). False on a NaN."""
        sc = self.sc
        if sc.valid_to(g, a + 1) <= p:
            if p >= self.end:
                return True  # the next window (`window`) computes it and the options
            if not sc.compute([g], [a + 1], self.end - p, p, self.end):
                return False
        self._refresh(g)
        return True

    def window(self, p: int) -> bool:
        """The next window of rows from p: every group's levels present (and, for a group
        placed on in the last window, HEADROOM levels above) computed for its rows, in
        one evaluation. False on a NaN."""
        sc, end = self.sc, min(p + WINDOW, self.n)
        gs, firsts, ks = [], [], []
        for g, levels in enumerate(self.at):
            top = levels[0][0] + min(self.placed_in_window[g], HEADROOM)
            need = [a for a, _ in levels if sc.valid_to(g, a) < end]
            need += [a for a in range(levels[0][0] + 1, top + 1) if sc.valid_to(g, a) < end]
            if need:
                lo = min(need)
                gs.append(g)
                firsts.append(lo)
                ks.append(max(need) - lo + 1)
        self.end = end
        self.placed_in_window = [0] * len(self.at)
        if gs and not sc.compute(gs, firsts, max(ks), p, end):
            return False
        self.per_group = [self.group_options(g) for g in range(len(self.at))]
        self._flatten()
        return True

    def decision(self) -> Decision:
        """Record the round's plays; its `Decision`."""
        b, n, data = self.b, self.n, self.sc.data
        placed = [k for k in range(n) if not self.shed[k]]
        arm_cj, cl, choice = b._arm_list, self.cls_l, self.choice
        b.stats.record_round([arm_cj[cl[k]][choice[k]] for k in placed], n, self.infeasible)
        energy, decode = [math.nan] * n, [math.nan] * n
        for k in placed:
            decode[k], energy[k] = data[k, DEC:, self.col_of[k]].tolist()
        time = np.array(self.times)
        dec = np.array(decode)
        return Decision(
            choice=np.array(choice, np.intp),
            feasible=np.array(self.ok, bool),
            predicted_time=time,
            predicted_energy=np.array(energy),
            predicted_fixed=time - dec,
            predicted_per_token=dec / np.maximum(self.l_out, 1.0),
            shed=np.array(self.shed, bool),
        )


def _take(levels: list[list[int]], a: int) -> None:
    """A server of the group moves from level a to a + 1 (its first at level a)."""
    i = next(i for i, (lv, _) in enumerate(levels) if lv == a)
    if i > 0 and levels[i - 1][0] == a + 1:
        levels[i - 1][1] += 1
    else:
        levels.insert(i, [a + 1, 1])
        i += 1
    levels[i][1] -= 1
    if levels[i][1] == 0:
        del levels[i]
