"""The pooled round's scores (`pooled._Round` reads them): CS-UCB's prediction and score
for each group's representative server, per (group, level, request), computed level by level
as the round needs them (the first levels for every request, further ones a window of
requests at a time), with the same operations as the per-server vectorised path."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray
from scipy.special import ndtr

from perllm.costmodel import (
    context,
    download_bits,
    gpu_prefill,
    transmission_energy,
    upload_bits,
)
from perllm.csucb.index import exploration, log_t
from perllm.estimate import _LEVELS, kv_bound, view_of

if TYPE_CHECKING:
    from perllm.csucb.bandit import CSUCB

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
_GPU, _CAP, _SVC, _KV, _BW, _RPF, _TTFT0, _STEP0, _FLOP = 0, 1, 2, 4, 5, 8, 9, 10, 11
_PBUSY, _PFIRST, _PIDLE = 12, 13, 14


class Scores:
    """The representatives' arrays `data` [quantity, column, request]: a column per
    (group, level) computed so far (`col[g][a]`), holding the requests (in arrival
    order) before `valid[c]` (levels grow on demand, a window at a time). Requests are
    innermost: `compute` writes a group's levels as whole rows of it."""

    def __init__(self, b: CSUCB, args: tuple[I, F, F, F, F, F, F, F], reps: I) -> None:
        cls, l_in, l_out, attach, min_quality, running, waiting, bw = args
        self.b, self.args, self.n = b, args, len(cls)
        self.cls, self.l_in, self.l_out, self.attach = cls, l_in, l_out, attach
        t = b.t.subset(reps)
        self.arm = b._arm_cj[:, reps][cls]
        self.run, self.wait, self.bw = running[reps], waiting[reps], bw[reps]
        self.rc, self.gpu_pre = t.round_coeffs, t.typical_service_s[1]
        self.rtt, self.e_bit = t.rtt_s, t.e_bit
        self.static = b.static(t, cls, min_quality)
        self.deadline = b.deadline(cls, l_out)
        g = len(reps)
        # Columns are added as levels are computed (a large-fleet round uses ~14 a group,
        # 27 at most); np.empty touches no memory until written, so room for the usual
        # count saves growing (copying) the array, which `compute` still does past it.
        self.data = np.empty((5, 16 * g + 256, self.n))
        self.used = 0
        self.col: list[list[int]] = [[] for _ in range(g)]
        self.valid: list[int] = []
        self._inputs()
        # The first levels for every request, GPU groups and the others apart (`compute`).
        k = min(self.n, FIRST_LEVELS)
        on_gpu = [j for j in range(g) if self.gpu[j]]
        other = [j for j in range(g) if not self.gpu[j]]
        self.ok = all(self.compute(gs, [0] * len(gs), k, 0, self.n) for gs in (on_gpu, other) if gs)

    def _inputs(self) -> None:
        """The per-row inputs of `compute`."""
        b, st = self.b, self.b.stats
        cls, l_in, l_out, attach = self.cls, self.l_in, self.l_out, self.attach
        self.static_t = np.ascontiguousarray(self.static.T)
        mu_arm, sd_arm, f_arm = st.arm_posterior()
        self.mu_a, self.sd_a, self.f_a = mu_arm[self.arm], sd_arm[self.arm], f_arm[self.arm]
        self.lift_a = np.array(exploration_lift(b)[1])[self.arm]
        self.scale = b.energy_scale[cls]
        self.l_out1 = np.maximum(l_out, 1.0)
        dl_s, dl_tok = b.deadline_s[cls], b.deadline_per_token[cls]
        lq = st.quantile_pairs()[b.class_of[cls]]
        self.lq, self.rhs = lq, dl_s[:, None] + dl_tok[:, None] * lq
        # Groups of GPU servers (for every class): their levels by `_gpu_levels`, from what
        # does not depend on the load level, per (row, group), computed once here.
        gpu = (self.rc[_GPU] > 0.5).all(axis=0)
        self.gpu: list[bool] = gpu.tolist()
        self.pairs: F | None = None
        if gpu.any():
            rc = self.rc[:, cls]  # [P, N, G]
            bits = (upload_bits(l_in, attach) + download_bits(l_out))[:, None]
            pre = gpu_prefill(l_in[:, None], rc[_RPF], rc[_TTFT0])
            pairs = (
                rc[_CAP], rc[_SVC], pre,
                context(l_in, l_out)[:, None] * rc[_KV] / rc[_BW] + rc[_FLOP],
                bits / (self.bw * 1e6) + self.rtt, b.w.tran * transmission_energy(self.e_bit, bits),
                rc[_PFIRST] * pre, rc[_STEP0], rc[_PBUSY], rc[_PIDLE], self.mu_a, self.sd_a,
                self.f_a, self.lift_a,
            )  # fmt: skip
            self.pairs = np.ascontiguousarray(np.stack(pairs).transpose(0, 2, 1))  # [Q, G, N]
            self.occ = self.run + self.wait
            self.kv = kv_bound(self.run, self.wait)  # per group, for `_gpu_levels`

    def levels(self, g: int) -> int:
        return len(self.col[g])

    def valid_to(self, g: int, a: int) -> int:
        """Rows before which group g's level a is computed (0: not computed)."""
        cg = self.col[g]
        return self.valid[cg[a]] if a < len(cg) else 0

    def _gpu_levels(self, q: F, gi: I, first: F, k: int, r: slice) -> tuple[F, F, F, F]:
        """`round_view`'s time, core, decode and energy for groups of GPU servers, laid out
        [group, level, row] (rows innermost: numpy's inner loops run long, and a group's
        levels are whole rows of `data`): its operations in its order, on the per-pair
        terms computed in `_inputs` (`q`: gathered for gi, r, [Q, G', 1, R])."""
        cap, svc, pre, a, tran, wt, epre, step0, p_busy, p_idle = q[:10]
        levels = _LEVELS[k] if k < len(_LEVELS) else np.arange(k, dtype=float)
        add = first[:, None] + levels  # [G', K]
        occ1 = ((self.occ[gi][:, None] + add) + 1)[..., None]
        b = np.minimum(occ1, cap)
        pre_w = ((self.wait[gi][:, None] + add) * self.gpu_pre[gi][:, None])[..., None]
        queue = np.maximum(occ1 - cap, 0.0) * svc + pre_w
        kv = self.kv[gi]
        if kv.any():  # `view_of`: bound by its KV cache, the longer of the two waits
            run = self.run[gi][:, None, None]
            full = kv[:, None, None] & (run < cap)  # [G', 1, R]
            slot_kv = np.maximum(occ1 - run, 0.0) * svc
            queue = np.where(full, np.maximum(slot_kv, pre_w), queue)
        dec = self.l_out[r] * (step0 + b * a)
        busy_dec = dec / b
        w = self.b.w
        energy = np.maximum(
            wt + w.infer * (epre + p_busy * busy_dec) - w.idle * (p_idle * (pre + busy_dec)), 0.0
        )
        core = queue + (pre + dec)
        return tran + core, core, dec, energy

    def compute(self, gs: list[int], firsts: list[int], k: int, lo: int, hi: int) -> bool:
        """Levels firsts[i] .. firsts[i] + k - 1 of groups gs[i] for the rows lo .. hi - 1:
        `round_view` and `CSUCB._judge`'s operations, cell by cell. False on a NaN."""
        gi = np.array(gs, np.intp)
        r = slice(lo, hi)
        first = np.array(firsts, float)
        if self.pairs is not None and all(self.gpu[g] for g in gs):
            q = self.pairs[:, gi, None, r]
            time, core, dec, energy = self._gpu_levels(q, gi, first, k, r)
            mu, sd, f, lift = q[10:]
        else:
            rc = self.rc[:, self.cls[r, None], gi][..., None]  # [P, R, G', 1]
            v = view_of(
                rc, self.gpu_pre[gi], self.rtt[gi], self.e_bit[gi], self.b.w, self.l_in[r],
                self.l_out[r], self.attach[r], self.run[gi], self.wait[gi], self.bw[gi], first, k,
            )  # fmt: skip
            time, core, dec, energy = (
                x.transpose(1, 2, 0) for x in (v.time, v.core, v.decode, v.energy)
            )
            mu, sd, f, lift = (
                x[r][:, gi].T[:, None] for x in (self.mu_a, self.sd_a, self.f_a, self.lift_a)
            )
        # [G', K, R] from here; `CSUCB._judge`'s operations.
        per_tok = dec / self.l_out1[r]
        fixed = time - dec
        q_lo, q_hi = self.lq[r, 0], self.lq[r, 1]
        rhs_lo, rhs_hi = self.rhs[r, 0], self.rhs[r, 1]
        feas = (
            self.static_t[gi, None, r]
            & ((f * (fixed + per_tok * q_lo)) <= rhs_lo)
            & ((f * (fixed + per_tok * q_hi)) <= rhs_hi)
        )
        e_hat = energy * mu / self.scale[r]
        x = (self.deadline[r] / np.maximum(time, 1e-9) - mu) / sd
        mean = -e_hat - self.b.cfg.theta * (1.0 - ndtr(x))
        score = mean + lift
        if np.isnan(score).any() or np.isnan(time).any():
            return False
        cols: list[int] = []
        for g, a in zip(gs, firsts, strict=True):
            cg = self.col[g]
            while len(cg) < a + k:
                cg.append(self.used)
                self.valid.append(0)
                self.used += 1
            cols.extend(cg[a : a + k])
        if self.used > self.data.shape[1]:
            data = np.empty((5, 2 * self.used, self.n))
            data[:, : self.data.shape[1]] = self.data
            self.data = data
        at = np.array(cols, np.intp)
        parts = (np.where(feas, score, -np.inf), time, core, dec, energy)
        for i, part in enumerate(parts):  # columns group by group, each level by level
            self.data[i][at, r] = part.reshape(-1, hi - lo)
        valid = self.valid
        for c in cols:
            if valid[c] < hi:
                valid[c] = hi
        return True


def exploration_lift(b: CSUCB) -> tuple[list[float], list[float]]:
    st = b.stats
    return exploration(st.plays.ravel().tolist(), log_t(st.total), b.cfg.delta)
