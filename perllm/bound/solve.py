"""The two linear programs of the hindsight bound, solved with HiGHS (scipy).

1. max Σ y  (met requests) subject to the demand-bound rows: an upper bound on the
   number of requests any policy can serve within deadline and quality floor.
2. min energy subject to Σ y ≥ a target, each request placed at most once
   (Σ_j x_ij ≤ 1: a policy may shed it and admission control may reject it, and neither
   runs it), y ≤ x, and per-server busy time bounded below by its work: a lower bound on
   the energy of any run that meets at least `target` requests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from scipy.optimize import linprog

from perllm.bound.model import DemandRows, Pairs

F = NDArray[np.float64]
Progress = Callable[[str], None]

# LP answers are exact only to the solver's tolerances: the success bound is raised and
# the energy bound lowered by this relative margin (and `ABS_MARGIN` absolute) to stay valid.
SAFETY = 1e-6
ABS_MARGIN = 1e-6  # met requests, joules

# Each LP solve stops after this many seconds (HiGHS `time_limit`): an unfinished LP is
# no bound at all (`BoundError`), and a run the size limits let through can still take far
# longer than its simulation (docs/bound.md, "Limits"). Read at each solve.
SOLVE_TIME_LIMIT_S = 120.0


class BoundError(RuntimeError):
    pass


@dataclass(frozen=True)
class LP:
    """`min c·v` subject to `a_ub·v <= b_ub` and `bounds` (one [low, high] row per
    variable); `ox`/`oe`: where the energy LP's x and e variables start."""

    c: F
    a_ub: sp.csr_matrix
    b_ub: F
    bounds: F
    ox: int = 0
    oe: int = 0


@dataclass(frozen=True)
class EnergySolution:
    target_met: float
    energy_j: float  # total J over the run (lower bound)
    tran_j: float
    server_j: F  # per server, inference + idle (lower bound)
    solve_s: float


class HindsightBound:
    """Both LPs on one world; the energy LP is re-solved per success target."""

    def __init__(self, pairs: Pairs, rows: DemandRows, progress: Progress | None = None) -> None:
        self.p, self.rows = pairs, rows
        self._say = progress or (lambda _msg: None)
        self.fi, self.fj = np.nonzero(pairs.feasible)
        # A request no server may run (a class without an allowed server) has no
        # variables: unmet and unplaced, as in any run (the world runs it nowhere).
        self.ai, self.aj = np.nonzero(pairs.allowed)
        self._energy: dict[float, EnergySolution] = {}
        self.success_solve_s = 0.0
        self.method = "highs-ipm"  # the energy LP: interior point is ~4x faster here
        self.met_lp = 0.0  # the success LP's optimum as solved (targets stay below it)

    # -- 1: the most requests that can be met ------------------------------------------
    def success_lp(self) -> LP:
        """max Σ y as `min c·v, a_ub·v <= b_ub`: v = y (feasible pairs, `fi`/`fj` order)."""
        p, ny = self.p, len(self.fi)
        one = sp.csr_matrix((np.ones(ny), (self.fi, np.arange(ny))), shape=(p.n, ny))
        a = sp.vstack([one, self.rows.a], format="csr")
        b = np.concatenate([np.ones(p.n), self.rows.rhs])
        bounds = np.zeros((ny, 2))
        bounds[:, 1] = 1.0
        return LP(-np.ones(ny), a, b, bounds)

    def max_met(self) -> float:
        p, ny = self.p, len(self.fi)
        if ny == 0:
            return 0.0
        lp = self.success_lp()
        self._say(
            f"success LP: {ny:,} variables, {lp.a_ub.shape[0]:,} rows, {lp.a_ub.nnz:,} non-zeros"
        )
        t0 = time.perf_counter()
        res = _solve(lp, "highs", "success")
        self.success_solve_s = time.perf_counter() - t0
        self.met_lp = float(-res.fun)
        return min(float(p.n), self.met_lp * (1 + SAFETY) + ABS_MARGIN)

    # -- 2: the least energy at a given number of met requests ---------------------------
    def min_energy(self, target_met: float) -> EnergySolution:
        target_met = min(float(target_met), self.met_lp * (1 - SAFETY))
        key = round(target_met, 6)
        if key in self._energy:
            return self._energy[key]
        sol = self._solve_energy(target_met, self.energy_lp(target_met))
        self._energy[key] = sol
        return sol

    def energy_lp(self, target_met: float) -> LP:
        """The energy LP at `target_met` as `min c·v, a_ub·v <= b_ub`; v = y (feasible
        pairs, `fi`/`fj` order; none without a target) | x (allowed pairs, `ai`/`aj`
        order) | beta (M) | e (M)."""
        # With no target, y = 0 is optimal: leave out y and the capacity rows.
        fi, fj = (self.fi, self.fj) if target_met > 0 else (self.fi[:0], self.fj[:0])
        ny, nx, m = len(fi), len(self.ai), self.p.m
        oy, ox, ob, oe = 0, ny, ny + nx, ny + nx + m
        nv = oe + m
        blocks, rhs = self._met_rows(fi, fj, target_met, nv, oy, ox)
        blocks.append(self._busy_rows(nv, ox, ob))
        rhs.append(np.zeros(blocks[-1].shape[0]))
        e_rows, e_rhs = self._energy_rows(nv, ox, ob, oe)
        blocks.append(e_rows)
        rhs.append(e_rhs)
        # every request placed at most once
        once = sp.csr_matrix((np.ones(nx), (self.ai, ox + np.arange(nx))), shape=(self.p.n, nv))
        c = np.zeros(nv)
        c[ox : ox + nx] = self.p.e_tran[self.ai, self.aj]
        c[oe:] = 1.0
        bounds = np.zeros((nv, 2))
        bounds[:, 1] = np.inf
        bounds[: ox + nx, 1] = 1.0
        a_ub = sp.vstack([*blocks, once], format="csr")
        return LP(c, a_ub, np.concatenate([*rhs, np.ones(self.p.n)]), bounds, ox, oe)

    def _met_rows(
        self,
        fi: NDArray[np.intp],
        fj: NDArray[np.intp],
        target_met: float,
        nv: int,
        oy: int,
        ox: int,
    ) -> tuple[list[sp.csr_matrix], list[F]]:
        """The rows on the met-variables y: y_ij <= x_ij, the demand-bound capacity rows
        and Σ y >= target."""
        p, ny, nx, m = self.p, len(fi), len(self.ai), self.p.m
        blocks: list[sp.csr_matrix] = []
        rhs: list[F] = []
        # y_ij <= x_ij: the x column of each feasible pair
        xcol = np.full((p.n, m), -1, np.int64)
        xcol[self.ai, self.aj] = np.arange(nx)
        yx = sp.csr_matrix(
            (
                np.concatenate([np.ones(ny), -np.ones(ny)]),
                (
                    np.tile(np.arange(ny), 2),
                    np.concatenate([oy + np.arange(ny), ox + xcol[fi, fj]]),
                ),
            ),
            shape=(ny, nv),
        )
        blocks.append(yx)
        rhs.append(np.zeros(ny))
        if self.rows.n_intervals and ny:
            cap = sp.hstack(
                [self.rows.a, sp.csr_matrix((self.rows.n_intervals, nv - ny))], format="csr"
            )
            blocks.append(cap)
            rhs.append(self.rows.rhs)
        # Σ y >= target
        blocks.append(
            sp.csr_matrix((-np.ones(ny), (np.zeros(ny), oy + np.arange(ny))), shape=(1, nv))
        )
        rhs.append(np.array([-float(target_met)]))
        return blocks, rhs

    def _solve_energy(self, target_met: float, lp: LP) -> EnergySolution:
        """Solve the energy LP; its optimum lowered by `SAFETY`. A request left unplaced
        costs nothing: shed, it costs nothing in the world either, and rejected by
        admission control only its upload (≥ 0), so leaving it out keeps the bound valid."""
        self._say(
            f"energy LP (≥ {target_met:,.0f} met): {len(lp.c):,} variables, "
            f"{lp.a_ub.shape[0]:,} rows, {lp.a_ub.nnz:,} non-zeros"
        )
        t0 = time.perf_counter()
        res = _solve(lp, self.method, "energy")
        dt = time.perf_counter() - t0
        v, ox, oe = res.x, lp.ox, lp.oe
        tran = float(lp.c[ox:oe] @ v[ox:oe])  # (beta has no cost)
        total = max(0.0, float(res.fun) * (1 - SAFETY) - ABS_MARGIN)  # energy is never negative
        return EnergySolution(float(target_met), total, tran, v[oe:].copy(), dt)

    def _busy_rows(self, nv: int, ox: int, ob: int) -> sp.csr_matrix:
        """beta_j >= (work of the requests placed on j) / (server j's progress-rate cap),
        one row per resource: Σ_i w_ij x_ij − cap_j·beta_j <= 0."""
        p = self.p
        ai, aj = self.ai, self.aj
        gpu = p.is_gpu[aj]
        res = [
            (p.prefill_s[ai, aj], np.ones(p.m), gpu),
            (p.decode_s[ai, aj], p.gpu_decode_rate, gpu),
            (p.prefill_s[ai, aj] + p.decode_s[ai, aj], p.cpu_stream_rate, ~gpu),
            (p.compute_s[ai, aj], p.cpu_compute_rate, ~gpu),
        ]
        rows, cols, vals = [], [], []
        for r, (w, cap, applies) in enumerate(res):
            sel = applies & (w > 0)
            rows.append(r * p.m + aj[sel])
            cols.append(ox + np.flatnonzero(sel))
            vals.append(w[sel])
            servers = np.unique(aj[sel])
            rows.append(r * p.m + servers)
            cols.append(ob + servers)
            vals.append(-cap[servers])
        return sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
            shape=(len(res) * p.m, nv),
        )

    def _energy_rows(self, nv: int, ox: int, ob: int, oe: int) -> tuple[sp.csr_matrix, F]:
        """e_j >= server j's inference + idle energy at busy time >= beta_j.

        The world charges P_busy·busy + (P_prefill − P_busy)·prefill + P_idle·(H − busy)
        with the horizon H >= max(duration, busy) and the GPU prefill total exact."""
        p = self.p
        ai, aj = self.ai, self.aj
        rows: list[NDArray[np.int64]] = []
        cols: list[NDArray[np.int64]] = []
        vals: list[F] = []
        rhs: list[float] = []
        for j in range(p.m):
            mine = np.flatnonzero(aj == j)
            pre = (p.p_prefill[j] - p.p_busy[j]) * p.prefill_s[ai[mine], j] if p.is_gpu[j] else None
            pieces: list[tuple[float, float]] = [(p.p_busy[j], 0.0)]  # (slope on beta, const)
            if p.p_busy[j] >= p.p_idle[j]:
                pieces.append((p.p_busy[j] - p.p_idle[j], p.p_idle[j] * p.duration_s))
            else:  # busy <= H: the energy is at least P_busy·H >= P_busy·duration
                pieces.append((0.0, p.p_busy[j] * p.duration_s))
            for slope, const in pieces:
                r = len(rhs)
                if pre is not None:
                    rows.append(np.full(len(mine), r))
                    cols.append(ox + mine)
                    vals.append(pre)
                rows.append(np.array([r, r]))
                cols.append(np.array([ob + j, oe + j]))
                vals.append(np.array([slope, -1.0]))
                rhs.append(-const)
        a = sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
            shape=(len(rhs), nv),
        )
        return a, np.array(rhs)


def _solve(lp: LP, method: str, what: str) -> Any:
    """HiGHS on `lp` within `SOLVE_TIME_LIMIT_S`; `BoundError` unless solved to optimality
    (a stopped solve's point bounds nothing)."""
    limit = SOLVE_TIME_LIMIT_S
    res = linprog(
        lp.c,
        A_ub=lp.a_ub,
        b_ub=lp.b_ub,
        bounds=lp.bounds,
        method=method,
        options={"time_limit": limit},
    )
    if res.status == 1:
        raise BoundError(f"the {what} LP hit its time limit ({limit:g} s) unsolved")
    if res.status != 0:
        raise BoundError(f"the {what} LP failed: {res.message}")
    return res
