"""`CSUCB.decide` on a large fleet: scored per group of servers, not per server.

Servers of a group (`groups`) differ only in their bandwidth, which enters a prediction
only through the transmission time: time = transmission + core, where the core (queue,
prefill, decode) and the energy are the group's. So the round is predicted and scored
on [request, group, level] for each group's representative (its best-connected server),
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
from itertools import chain
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray
from scipy.special import ndtr

from perllm.costmodel import download_bits, upload_bits
from perllm.csucb.assign import SHED, better, hopeless
from perllm.csucb.decision import Decision
from perllm.csucb.groups import Groups, group_round
from perllm.csucb.index import exploration, log_t
from perllm.estimate import RoundView, round_view

if TYPE_CHECKING:
    from perllm.csucb.bandit import CSUCB

F = NDArray[np.float64]
I = NDArray[np.intp]  # noqa: E741

# Load levels computed up front per group, more on demand (times GROWTH): no level cap.
FIRST_LEVELS = 2
WIDE_LEVELS = 8  # for groups of servers that batch more requests than this
GROWTH = 2
_FS, _TIME, _CORE, _DEC, _EN = range(5)


class _Scores:
    """The representatives' arrays [quantity, request, column], a column per (group,
    level) computed so far (`col[g][a]`); a group's levels grow on demand."""

    def __init__(self, b: CSUCB, args: tuple[I, F, F, F, F, F, F, F], reps: I) -> None:
        cls, _, _, _, _, running, waiting, bw = args
        self.b, self.args, self.n = b, args, len(cls)
        self.t = b.t.subset(reps)
        self.arm = b._arm_cj[:, reps][cls]
        self.run, self.wait, self.bw = running[reps], waiting[reps], bw[reps]
        self.col: list[list[int]] = [[] for _ in reps]
        self.data = np.empty((5, self.n, 0))
        self.used = 0  # columns of `data` filled (it is allocated ahead, doubling)
        k = min(self.n, FIRST_LEVELS)
        groups = np.arange(len(reps))
        v, static, feas, deadline, score = self._score(groups, 0, k)
        self.static, self.deadline, self.feas0 = static, deadline, feas[:, :, 0]
        self.ok = self._add(groups.tolist(), v, feas, score)

    def _score(
        self, groups: I, first: int, k: int, rows: I | None = None
    ) -> tuple[RoundView, NDArray[np.bool_], NDArray[np.bool_], F, F]:
        args = self.args
        if rows is not None:
            c, li, lo, att, mq = (a[rows] for a in self.args[:5])
            args = (c, li, lo, att, mq, *self.args[5:])  # type: ignore[assignment]
        cls, l_in, l_out, attach = args[:4]
        t = self.t if len(groups) == len(self.col) else self.t.subset(groups)
        run, wait, bw = self.run[groups], self.wait[groups], self.bw[groups]
        arm = self.arm[:, groups] if rows is None else self.arm[rows][:, groups]
        v = round_view(t, self.b.w, cls, l_in, l_out, attach, run, wait, bw, first, k)
        _, static, feas, deadline, _, score, _ = self.b._judge(t, arm, v, args)
        return v, static, feas, deadline, score

    def _add(
        self, gs: list[int], v: RoundView, feas: NDArray[np.bool_], score: F, rows: I | None = None
    ) -> bool:
        if np.isnan(score).any() or np.isnan(v.time).any():
            return False
        c0, k = self.used, v.levels
        self.used += len(gs) * k
        if self.used > self.data.shape[2]:
            data = np.empty((5, self.n, 2 * self.used))
            data[:, :, :c0] = self.data[:, :, :c0]
            self.data = data
        parts = (np.where(feas, score, -np.inf), v.time, v.core, v.decode, v.energy)
        if rows is None:
            new = self.data[:, :, c0 : self.used].reshape(5, self.n, len(gs), k)
            for q, part in enumerate(parts):
                new[q] = part
        else:  # only the requests still to be placed: the others never read these columns
            for q, part in enumerate(parts):
                self.data[q, rows, c0 : self.used] = part.reshape(len(rows), -1)
        for i, g in enumerate(gs):
            self.col[g].extend(range(c0 + i * k, c0 + (i + 1) * k))
        return True

    def levels(self, g: int) -> int:
        return len(self.col[g])

    def grow(self, gs: list[int], to: int, rest: list[int] | None = None) -> bool:
        """Compute levels up to `to` of groups `gs` (all with the same count so far), for
        requests `rest` (default: all); False on a NaN."""
        first = self.levels(gs[0])
        rows = None if rest is None else np.array(rest, np.intp)
        v, _, feas, _, score = self._score(np.array(gs, np.intp), first, to - first, rows)
        return self._add(gs, v, feas, score, rows)


def decide_pooled(b: CSUCB, args: tuple[I, F, F, F, F, F, F, F]) -> Decision | None:
    """The round's decision, or None (nothing changed) where a NaN or an unusable
    bandwidth would make the per-group bound unsound: the caller decides per server."""
    running, waiting, bw_mbps = args[5:]
    if not np.isfinite(bw_mbps).all() or (bw_mbps <= 0).any():
        return None
    gr = group_round(b._kind, running, waiting, bw_mbps)
    sc = _Scores(b, args, gr.reps)
    n = len(args[0])
    # Batching servers (GPUs) take many requests each: their first levels up front.
    wide = [g for g, c in enumerate(b._server_cap[gr.reps].tolist()) if c > WIDE_LEVELS]
    if not sc.ok or (wide and n > FIRST_LEVELS and not sc.grow(wide, min(n, WIDE_LEVELS))):
        return None
    r = _Round(b, args, sc, gr, wide)
    return r.decision() if r.run() else None


Option = tuple[int, int, int, int]  # (group, level, server, column of `_Scores.data`)


class _Round:
    """A pooled round's placements: the options still open (per group, its first server
    at each level present), scored from the representatives' columns, exactly where a
    non-representative could win."""

    def __init__(
        self,
        b: CSUCB,
        args: tuple[I, F, F, F, F, F, F, F],
        sc: _Scores,
        gr: Groups,
        wide: list[int],
    ) -> None:
        cls, l_in, l_out, attach = args[:4]
        st = b.stats
        self.b, self.sc, self.wide, self.cls, self.l_out = b, sc, wide, cls, l_out
        n = self.n = len(cls)
        self.order: list[int] = np.lexsort((sc.deadline, sc.feas0 @ gr.sizes)).tolist()
        # Per request and server: what the exact score of a non-representative needs.
        mu_arm, sd_arm, f_arm = (a.ravel().tolist() for a in st.arm_posterior())
        self.mu_arm, self.f_arm = mu_arm, f_arm
        self.arm_l: list[list[int]] = sc.arm.tolist()
        self.static_l: list[list[bool]] = sc.static.tolist()
        self.deadline: list[float] = sc.deadline.tolist()
        self.bw: list[float] = args[7].tolist()
        self.members: list[int] = gr.order.tolist()
        self.first: list[int] = gr.start[:-1].tolist()
        self._exact_in = (
            (upload_bits(l_in, attach) + download_bits(l_out)).tolist(),
            b.t.rtt_s.tolist(),
            np.maximum(l_out, 1.0).tolist(),
            st.quantile_pairs()[b.class_of[cls]].tolist(),
            b.deadline_s[cls].tolist(),
            b.deadline_per_token[cls].tolist(),
            b.energy_scale[cls].tolist(),
            sd_arm,
            b.cfg.theta,
            _lift(b)[1],
        )
        self.shed_rule = b.cfg.on_infeasible == "shed"
        # Per group: [level, servers at it], levels descending (non-increasing along the order).
        self.at: list[list[list[int]]] = [[[0, s]] for s in gr.sizes.tolist()]
        self.per_group = [self.group_options(g) for g in range(len(gr.reps))]
        self.choice, self.lvl_of, self.col_of = [0] * n, [0] * n, [0] * n
        self.ok, self.shed = [False] * n, [False] * n
        self.times = [math.nan] * n
        self.infeasible = 0

    def group_options(self, g: int) -> list[Option]:
        """Group g's options: its first server at each level present."""
        out, pos, cg, members = [], self.first[g], self.sc.col[g], self.members
        for a, cnt in self.at[g]:
            out.append((g, a, members[pos], cg[a]))
            pos += cnt
        return out

    def options(self) -> tuple[list[Option], I]:
        out = list(chain.from_iterable(self.per_group))
        return out, np.fromiter((o[3] for o in out), np.intp, len(out))

    def exact(self, k: int, g: int, s: int, c: int) -> tuple[float, float, float]:
        """Server s of group g (column c: its level) for request k: time, score (−inf
        where infeasible), pessimistic time; the vectorised path's operations."""
        bits, rtt, l_out1, lq, dl_s, dl_tok, scale, sd_arm, theta, lift = self._exact_in
        core, dec, en = self.sc.data[_CORE:, k, c].tolist()
        time = (bits[k] / (self.bw[s] * 1e6) + rtt[s]) + core
        arm = self.arm_l[k][g]
        f = self.f_arm[arm]
        if not self.static_l[k][g]:
            return time, -math.inf, time * f
        fixed, per_tok = time - dec, dec / l_out1[k]
        q_lo, q_hi = lq[k]
        if not (
            f * (fixed + per_tok * q_lo) <= dl_s[k] + dl_tok[k] * q_lo
            and f * (fixed + per_tok * q_hi) <= dl_s[k] + dl_tok[k] * q_hi
        ):
            return time, -math.inf, time * f
        mu = self.mu_arm[arm]
        e_hat = en * mu / scale[k]
        x = (self.deadline[k] / (time if time > 1e-9 else 1e-9) - mu) / sd_arm[arm]
        return time, -e_hat - theta * float(1.0 - ndtr(x)) + lift[arm], time * f

    def run(self) -> bool:
        """Place every request in order; False on a NaN (nothing recorded)."""
        n, order = self.n, self.order
        opts, cols = self.options()
        for i, k in enumerate(order):
            bs, bo, b_time = self.best(k, opts, cols)
            if bs >= 0:
                self.ok[k] = True
            else:  # nothing feasible
                self.infeasible += 1
                bs, bo, b_time = self.least_late(k, opts)
                if bs < 0:
                    self.choice[k], self.shed[k] = SHED, True
                    continue
            bg, ba, _, bc = opts[bo]
            self.choice[k], self.lvl_of[k], self.col_of[k], self.times[k] = bs, ba, bc, b_time
            _take(self.at[bg], ba)
            if i + 1 < n:
                if not self.reopen(bg, ba, order[i + 1 :]):
                    return False
                opts, cols = self.options()
        return True

    def best(self, k: int, opts: list[Option], cols: I) -> tuple[int, int, float]:
        """Request k's best feasible option (`assign.better`): server, option, time; server
        -1 where none is feasible. A representative's bound is exact; another server's
        score is computed only where the bound could still win."""
        u_row, t_row = self.sc.data[:2, k, cols].tolist()
        members, first, bw = self.members, self.first, self.bw
        best, b_time, b_bw = -math.inf, math.inf, -math.inf
        bs = bo = -1
        for o, (g, _, s, c) in enumerate(opts):
            u = u_row[o]
            if u >= best and u != -math.inf:
                if s == members[first[g]]:
                    v, tt = u, t_row[o]
                else:
                    tt, v, _ = self.exact(k, g, s, c)
                if better(v, tt, bw[s], best, b_time, b_bw) or (
                    v == best and tt == b_time and bw[s] == b_bw and s < bs
                ):
                    best, b_time, b_bw, bs, bo = v, tt, bw[s], s, o
        return bs, bo, b_time

    def least_late(self, k: int, opts: list[Option]) -> tuple[int, int, float]:
        """`assign.least_late` over every group's options: server, option, time; server -1
        where the request is shed (none allowed, or hopeless under the shed rule)."""
        stk, dl = self.static_l[k], self.deadline[k]
        least, lp, b_time = math.inf, math.nan, math.inf
        bs = bo = -1
        for o, (g, _, s, c) in enumerate(opts):
            if not stk[g]:
                continue
            tt, _, p = self.exact(k, g, s, c)
            v = p / dl
            if bs < 0 or v < least or (v == least and s < bs):
                least, lp, b_time, bs, bo = v, p, tt, s, o
        if bs >= 0 and self.shed_rule:
            arm = self.arm_l[k][opts[bo][0]]
            if hopeless(lp, self.mu_arm[arm] / self.f_arm[arm], dl):
                return -1, -1, b_time
        return bs, bo, b_time

    def reopen(self, bg: int, ba: int, rest: list[int]) -> bool:
        """Group bg's options after a placement at level ba; its next levels (and those of
        the other batching groups at as many levels: they fill alike) computed for the
        requests `rest` where it reached the last one computed. False on a NaN."""
        sc = self.sc
        if ba + 1 >= sc.levels(bg):
            lv = sc.levels(bg)
            gs = [bg, *(g for g in self.wide if g != bg and sc.levels(g) == lv)]
            if not sc.grow(gs, GROWTH * lv, rest):
                return False
            for g in gs:
                self.per_group[g] = self.group_options(g)
        self.per_group[bg] = self.group_options(bg)
        return True

    def decision(self) -> Decision:
        """Record the round's plays; its `Decision`."""
        b, n, data = self.b, self.n, self.sc.data
        placed = [k for k in range(n) if not self.shed[k]]
        arm_cj, cl, choice = b._arm_list, self.cls.tolist(), self.choice
        b.stats.record_round([arm_cj[cl[k]][choice[k]] for k in placed], n, self.infeasible)
        energy, decode = [math.nan] * n, [math.nan] * n
        for k in placed:
            decode[k], energy[k] = data[_DEC:, k, self.col_of[k]].tolist()
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


def _lift(b: CSUCB) -> tuple[list[float], list[float]]:
    st = b.stats
    return exploration(st.plays.ravel().tolist(), log_t(st.total), b.cfg.delta)


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
