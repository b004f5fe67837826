"""The super-arm assignment: a round's requests in a given order, each to its best
feasible server at the load that server has by then, else to the least violating one."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from perllm.costmodel import CostTable

F = NDArray[np.float64]
I = NDArray[np.intp]  # noqa: E741

# Added per unit of violation that outranks time: a server past the round's modelled load
# levels, a quality floor missed (per unit of quality).
_OUTRANK = 1e3


def least_violating(
    pess: Sequence[float],
    blocked: Sequence[bool],
    deadline: float,
    quality: Sequence[float],
    allowed: Sequence[bool],
    min_quality: float,
) -> int:
    """With nothing feasible: the server with the smallest pessimistic overshoot of the
    deadline among those that can run the request at all, quality floors counting before
    time. numpy's argmin over the same values: the first minimum, or the first NaN."""
    least, j = math.inf, 0
    for jj, ok in enumerate(allowed):
        if not ok:
            continue
        over = pess[jj] / deadline + (_OUTRANK if blocked[jj] else 0.0)
        v = over + max(min_quality - quality[jj], 0.0) * _OUTRANK
        if v != v:
            return jj
        if v < least:
            least, j = v, jj
    return j


def assign_lists(
    t: CostTable,
    cls: I,
    min_quality: F,
    deadline: F,
    pess: F,
    feasible_score: F,
    order: I,
    k_max: int,
    ok: NDArray[np.bool_],
) -> tuple[I, I, int]:
    """`assign_arrays` on Python lists, for a round's few requests: the same choices
    without numpy's per-call cost. Scores must hold no NaN (comparisons would differ from
    numpy's argmax). Returns each request's server and load level, and the violations."""
    n, m = feasible_score.shape[:2]
    fs = feasible_score.tolist()
    added = [0] * m
    choice = np.empty(n, np.intp)
    lvl_of = np.empty(n, np.intp)
    violations = 0
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
            c, p_row = int(cls[k]), pess[k].tolist()
            j = least_violating(
                [p_row[jj][min(a, k_max)] for jj, a in enumerate(added)],
                [a > k_max for a in added],
                float(deadline[k]),
                t.quality[c].tolist(),
                t.allowed[c].tolist(),
                float(min_quality[k]),
            )
            violations += 1
        choice[k], lvl_of[k] = j, min(added[j], k_max)
        added[j] += 1
    return choice, lvl_of, violations


def assign_arrays(
    t: CostTable,
    cls: I,
    min_quality: F,
    deadline: F,
    pess: F,
    feasible_score: F,
    order: I,
    k_max: int,
    ok: NDArray[np.bool_],
) -> tuple[I, I, I, NDArray[np.bool_], int]:
    """The assignment in numpy, recording what explanations need: every server's load
    level and round-capacity exclusion as each request saw them when it was placed."""
    n, m = feasible_score.shape[:2]
    added = np.zeros(m, np.intp)
    ar = np.arange(m)
    choice = np.empty(n, np.intp)
    lvl_of = np.empty(n, np.intp)  # load level each request saw when placed
    seen = np.empty((n, m), np.intp)
    blocked = np.zeros((n, m), bool)
    violations = 0
    full = False  # some server has used up the modelled load levels this round
    for k in order:
        lvl = np.minimum(added, k_max)
        seen[k] = lvl
        blocked[k] = added > k_max
        row = feasible_score[k, ar, lvl]
        if full:
            # Past the modelled load levels a server's prediction would stop growing: it
            # is no candidate for the rest of the round (else a round piles onto it).
            row[blocked[k]] = -np.inf
        j = int(row.argmax())
        if row[j] > -np.inf:
            ok[k] = True
        else:
            c = int(cls[k])
            j = least_violating(
                pess[k, ar, lvl].tolist(),
                blocked[k].tolist(),
                float(deadline[k]),
                t.quality[c].tolist(),
                t.allowed[c].tolist(),
                float(min_quality[k]),
            )
            ok[k] = False
            violations += 1
        choice[k] = j
        lvl_of[k] = lvl[j]
        added[j] += 1
        full = full or added[j] > k_max
    return choice, lvl_of, seen, blocked, violations
