"""The pooled round's scores (`pooled._Round` reads them): CS-UCB's prediction and score
for each group's representative server, per (group, level, request), computed level by level
as the round needs them (the first levels for every request, further ones a window of
requests at a time) by a compiled loop (`kernels.levels`) with the same operations as the
per-server vectorised path."""

from __future__ import annotations

import logging
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from perllm.costmodel import CostTable, download_bits, upload_bits
from perllm.csucb.index import exploration, log_t
from perllm.estimate import hold_rank, kv_bound

if TYPE_CHECKING:
    from perllm.csucb.bandit import CSUCB

log = logging.getLogger("perllm.csucb")
F = NDArray[np.float64]
I = NDArray[np.intp]  # noqa: E741

# Load levels computed up front per group for every request (the first two: the first
# request reads level 0, and a group of several servers offers level 1 after one placement).
FIRST_LEVELS = 2
# Further levels are computed for a window of the next WINDOW requests (in arrival
# order) only: a group at level a is read at that level only by the requests placed
# while it stays there, so a level computed for every request left is mostly unread.
WINDOW = 32
HEADROOM = 4  # at a window's start: levels ahead for a group placed on in the last one
_FS, _TIME, CORE, DEC, _EN = range(5)


class Scores:
    """The representatives' arrays `data` [request, quantity, column]: a column per
    (group, level) computed so far (`col[g][a]`), holding the requests (in arrival
    order) before `valid[c]` (levels grow on demand, a window at a time)."""

    def __init__(
        self, b: CSUCB, args: tuple[I, F, F, F, F, F, F, F], reps: I, cap: F | None = None
    ) -> None:
        cls, l_in, l_out, attach, min_quality, running, waiting, bw = args
        self.b, self.n = b, len(cls)
        self.cls, self.l_in, self.l_out, self.attach = cls, l_in, l_out, attach
        t = b.t.subset(reps)
        self.wait = waiting[reps]
        self.static = b.static(t, cls, min_quality)
        # per request: output-length quantiles, the deadline at l_out and at both (`cap`:
        # `CSUCB.decide`'s deadline_cap)
        self.lq = b.stats.quantile_pairs()[b.class_of[cls]]
        self.deadline, self.rhs = b.deadlines(cls, l_out, self.lq, cap)
        g = len(reps)
        # Columns are added as levels are computed (a large-fleet round uses ~14 a group,
        # 27 at most); np.empty touches no memory until written, so room for the usual
        # count saves growing (copying) the array, which `compute` still does past it.
        self.data = np.empty((self.n, 5, 16 * g + 256))
        self.used = 0
        self.col: list[list[int]] = [[] for _ in range(g)]
        self.valid: list[int] = []
        self._inputs(t, reps, running[reps], bw[reps])
        # The first levels of every group for every request, in one evaluation.
        k = min(self.n, FIRST_LEVELS)
        self.ok = self.compute(list(range(g)), [0] * g, k, 0, self.n)

    def _inputs(self, t: CostTable, reps: I, run: F, bw: F) -> None:
        """What `kernels.levels` reads: per request (`rows`), per group (`grp`), per arm
        (`post`), and the representatives' coefficients."""
        b, st = self.b, self.b.stats
        cls, l_in, l_out, attach = self.cls, self.l_in, self.l_out, self.attach
        self.coef = t.round_coeffs  # [P, class, group]
        self.static_t = np.ascontiguousarray(self.static.T)
        self.arm_cg = np.ascontiguousarray(b._arm_cj[:, reps])
        self.post = np.stack((*st.arm_posterior(), np.array(exploration_lift(b)[1])))
        self.scale = b.energy_scale[cls]
        self.l_out1 = np.maximum(l_out, 1.0)
        lq = self.lq
        self.up = upload_bits(l_in, attach)
        self.bits = self.up + download_bits(l_out)
        # [request, group] what a representative's score loses: its upload holds its link
        # (`estimate.hold_rank`; a member, less well connected, holds it at least as long)
        self.hold = hold_rank(self.up, bw, b.hold_limit[reps])
        # In the order of `kernels.L_IN` .. (rows) and `kernels.OCC` .. (groups).
        self.rows = np.stack(
            (
                l_in,
                l_out,
                self.bits,
                self.l_out1,
                lq[:, 0],
                lq[:, 1],
                self.rhs[:, 0],
                self.rhs[:, 1],
                self.deadline,
                self.scale,
            )
        )
        self.grp = np.stack(
            (
                run + self.wait,
                self.wait,
                t.typical_service_s[1],
                run,
                kv_bound(run, self.wait),
                bw,
                t.rtt_s,
                t.e_bit,
            )
        )
        w = b.w
        self.weights = _kernels().Weights(w.tran, w.infer, w.idle)  # once, not per call

    def valid_to(self, g: int, a: int) -> int:
        """Rows before which group g's level a is computed (0: not computed)."""
        cg = self.col[g]
        return self.valid[cg[a]] if a < len(cg) else 0

    def compute(self, gs: list[int], firsts: list[int], k: int, lo: int, hi: int) -> bool:
        """Levels firsts[i] .. firsts[i] + k - 1 of groups gs[i] for the rows lo .. hi - 1:
        `round_view` and `CSUCB._judge`'s operations, cell by cell (`kernels.levels`).
        False on a NaN (the round is then decided per server: what was written is not
        read)."""
        cols: list[int] = []
        for g, a in zip(gs, firsts, strict=True):
            cg = self.col[g]
            while len(cg) < a + k:
                cg.append(self.used)
                self.valid.append(0)
                self.used += 1
            cols.extend(cg[a : a + k])
        if self.used > self.data.shape[2]:
            data = np.empty((self.n, 5, 2 * self.used))
            data[:, :, : self.data.shape[2]] = self.data
            self.data = data
        kern = _kernels()
        ok = kern.levels(
            self.coef, self.cls, self.rows, self.grp, self.static_t, self.arm_cg, self.post,
            self.weights, self.b.cfg.theta, np.array(gs, np.intp),
            np.array(firsts, float), k, lo, hi, np.array(cols, np.intp), self.data,
        )  # fmt: skip
        if not ok:
            return False
        if self.hold is not None:  # (`CSUCB._judge`: the score, then less the hold)
            per_col = np.repeat(np.array(gs, np.intp), k)
            self.data[lo:hi, _FS, cols] -= self.hold[lo:hi][:, per_col]
        valid = self.valid
        for c in cols:
            if valid[c] < hi:
                valid[c] = hi
        return True


def _kernels() -> ModuleType:
    """The compiled loop (`kernels_available` first)."""
    assert _loaded is not None
    return _loaded


_loaded: ModuleType | None = None
_failed = False


def kernels_available() -> bool:
    """Whether the compiled loop is there, imported on a process's first pooled round
    (numba's import takes ~0.5 s, which a process that never pools need not pay). Where
    it cannot be imported or compiled (a broken install: numba missing, or built for
    another numpy; a numba that cannot build it), this is logged once and large fleets
    are decided per server on their candidates: the same decisions, slower."""
    global _loaded, _failed
    if _loaded is None and not _failed:
        try:
            from perllm.csucb import kernels

            kernels.warm()
        except Exception as e:  # any failure of numba's: fall back, said once
            _failed = True
            log.warning(
                "large fleets decided per server (slower, same decisions): the compiled "
                "loop is unavailable: %s: %s",
                type(e).__name__,
                e,
            )
        else:
            _loaded = kernels
    return _loaded is not None


def exploration_lift(b: CSUCB) -> tuple[list[float], list[float]]:
    st = b.stats
    return exploration(st.plays.ravel().tolist(), log_t(st.total), b.cfg.delta)
