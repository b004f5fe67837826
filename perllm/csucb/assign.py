"""The super-arm assignment: a round's requests in their arrival order (the order a
server's FIFO queue runs them, so a request's load level counts exactly the requests
placed ahead of it there), each to its best feasible server at the load that server has
by then; with none feasible, the documented rule (`CSUCBConfig.on_infeasible`): the
least-late server that meets the request's hard constraints (tiers, memory, quality
floor), or shedding the request."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

F = NDArray[np.float64]
I = NDArray[np.intp]  # noqa: E741

SHED = -1  # the choice of a shed request: no server


def least_late(pess: Sequence[float], deadline: float, hard_ok: Sequence[bool]) -> int:
    """With nothing feasible: the server with the smallest pessimistic overshoot
    `pess/ΔD` among those meeting the request's hard constraints (tier, memory, quality
    floor), which are never traded for time; `SHED` when no server meets them. numpy's
    argmin over the same values: the first minimum, or the first NaN."""
    least, j = math.inf, SHED
    for jj, ok in enumerate(hard_ok):
        if not ok:
            continue
        v = pess[jj] / deadline
        if v != v:
            return jj
        if v < least or j == SHED:
            least, j = v, jj
    return j


def better(v: float, time: float, bw: float, best: float, b_time: float, b_bw: float) -> bool:
    """The choice rule on one candidate against the best so far, visited in server order:
    the higher score; among equal scores the shorter predicted time, then the
    better-connected server, then (by visiting order) the lower index. Every term is the
    candidate's own, so removing another candidate never changes how two compare (and
    within a group of servers differing only in bandwidth the best-connected wins)."""
    return v > best or (
        v == best and v != -math.inf and (time < b_time or (time == b_time and bw > b_bw))
    )


@dataclass
class Grid:
    """A round's [request, server, level] arrays, grown by `grow` (more load levels) when
    a server takes more requests than the levels computed so far: no level cap."""

    pess: F
    feasible_score: F
    time: F  # predicted time: the tie-break after the score
    decode: F  # its decode part: how long the request holds its slot (`hopeless`)
    bw: list[float]  # per server: the tie-break after the time
    grow: Callable[[], tuple[F, F, F, F]]  # the arrays with twice the levels

    @property
    def levels(self) -> int:
        return int(self.pess.shape[2])

    def ensure(self, level: int) -> bool:
        """Grow until `level` is computed; True if the arrays changed."""
        grew = False
        while level >= self.levels:
            self.pess, self.feasible_score, self.time, self.decode = self.grow()
            grew = True
        return grew


# How far past ΔD a request's expected time must be before `shed` rejects it. ΔD grows
# with the realised output length, which is unknown at decision time: at the reference
# load a request expected just past its ΔD at the declared length still made it most of
# the time (shedding those cost 0.4 points on paper-llama2-7b), while under overload the
# queue puts hopeless requests far past it.
SHED_SLACK = 0.5
# The margin on a backlogged server (`CSUCBConfig.backlog_waiting`) for a request that
# would hold its slot (its decode) longer than the margin itself, `SHED_SLACK`·ΔD: the
# requests queued behind it wait that long for the slot, more than the lateness the
# margin tolerates for it. A short hold (a 40-token code completion) keeps the margin.
BACKLOG_SLACK = 0.0


def hopeless(
    pess: float, expect: float, deadline: float, backlogged: bool = False, hold: float = 0.0
) -> bool:
    """Late even in expectation, by more than `SHED_SLACK` of ΔD (`BACKLOG_SLACK` on a
    backlogged server when its `hold`, the decode time, exceeds `SHED_SLACK`·ΔD): the
    pessimistic time scaled back to the arm's mean ratio (`expect` = μ_ρ/(μ_ρ + z·σ_ρ))."""
    margin = SHED_SLACK * deadline
    slack = BACKLOG_SLACK if backlogged and hold > margin else SHED_SLACK
    return pess * expect > deadline * (1.0 + slack)


def fallback(
    pess: list[float],
    deadline: float,
    hard_ok: list[bool],
    expect: F | None,
    backlogged: list[bool],
    hold: list[float],
) -> int:
    """With nothing feasible: `least_late`, or `SHED` where no server meets the hard
    constraints or (`expect` [M] given: the shed rule) the request is hopeless there
    (`backlogged` and `hold` [M]: per server, see `hopeless`)."""
    j = least_late(pess, deadline, hard_ok)
    if (
        j != SHED
        and expect is not None
        and hopeless(pess[j], float(expect[j]), deadline, backlogged[j], hold[j])
    ):
        return SHED
    return j


def assign_lists(
    g: Grid,
    static: NDArray[np.bool_],
    deadline: F,
    ok: NDArray[np.bool_],
    expect: F | None,
    backlogged: list[bool],
) -> tuple[I, I, NDArray[np.bool_], int]:
    """`assign_arrays` on Python lists, for a round's few requests: the same choices
    without numpy's per-call cost. Scores must hold no NaN (comparisons would differ from
    numpy's argmax). `expect` [N, M] (μ/(μ + zσ) per pair) when hopeless requests are
    shed, with `backlogged` [M] per server (`hopeless`). Returns each request's server
    (`SHED`: none) and load level, the shed mask and the requests with nothing feasible."""
    n, m = g.feasible_score.shape[:2]
    fs, tm, bw = g.feasible_score.tolist(), g.time.tolist(), g.bw
    added = [0] * m
    choice = np.empty(n, np.intp)
    lvl_of = np.zeros(n, np.intp)
    shed = np.zeros(n, bool)
    infeasible = 0
    for k in range(n):
        if g.ensure(max(added)):
            fs, tm = g.feasible_score.tolist(), g.time.tolist()
        row, t_row = fs[k], tm[k]
        best, b_time, b_bw, j = -math.inf, math.inf, -math.inf, -1
        for jj in range(m):
            a = added[jj]
            v = row[jj][a]
            if v >= best and better(v, t_row[jj][a], bw[jj], best, b_time, b_bw):
                best, b_time, b_bw, j = v, t_row[jj][a], bw[jj], jj
        ok[k] = j >= 0
        if j < 0:
            infeasible += 1
            p_row, d_row = g.pess[k], g.decode[k]
            pess = [float(p_row[jj, a]) for jj, a in enumerate(added)]
            hold = [float(d_row[jj, a]) for jj, a in enumerate(added)]
            ex = None if expect is None else expect[k]
            j = fallback(pess, float(deadline[k]), static[k].tolist(), ex, backlogged, hold)
            if j == SHED:
                choice[k], shed[k] = SHED, True
                continue
        choice[k], lvl_of[k] = j, added[j]
        added[j] += 1
    return choice, lvl_of, shed, infeasible


def assign_arrays(
    g: Grid,
    static: NDArray[np.bool_],
    deadline: F,
    ok: NDArray[np.bool_],
    expect: F | None,
    backlogged: list[bool],
) -> tuple[I, I, I, NDArray[np.bool_], int]:
    """The assignment in numpy, recording what explanations need: every server's load
    level as each request saw it when it was placed."""
    n, m = g.feasible_score.shape[:2]
    added = np.zeros(m, np.intp)
    ar = np.arange(m)
    choice = np.empty(n, np.intp)
    lvl_of = np.zeros(n, np.intp)  # load level each request saw when placed
    seen = np.empty((n, m), np.intp)
    shed = np.zeros(n, bool)
    infeasible = 0
    for k in range(n):
        g.ensure(int(added.max()))
        seen[k] = added
        row = g.feasible_score[k, ar, added]
        j = int(row.argmax())
        if row[j] > -np.inf:
            tied = np.flatnonzero(row == row[j])
            if len(tied) > 1:  # the tie-break (`better`): time, then bandwidth, then index
                t_row = g.time[k, tied, added[tied]].tolist()
                j = min(
                    zip(t_row, tied.tolist(), strict=True),
                    key=lambda p: (p[0], -g.bw[p[1]], p[1]),
                )[1]
            ok[k] = True
        else:
            ok[k] = False
            infeasible += 1
            pess, hold = g.pess[k, ar, added].tolist(), g.decode[k, ar, added].tolist()
            ex = None if expect is None else expect[k]
            j = fallback(pess, float(deadline[k]), static[k].tolist(), ex, backlogged, hold)
            if j == SHED:
                choice[k], shed[k] = SHED, True
                continue
        choice[k] = j
        lvl_of[k] = added[j]
        added[j] += 1
    return choice, lvl_of, seen, shed, infeasible
