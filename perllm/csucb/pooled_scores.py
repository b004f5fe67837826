"""The pooled round's scores (`pooled._Round` reads them): CS-UCB's prediction and score
for each group's representative server, on [request, group, level], computed level by level
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
from perllm.estimate import _LEVELS, kv_bound, round_view, view_of

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
    """The representatives' arrays [quantity, request, column]: a row per request (in
    arrival order), a column per (group, level) computed so far (`col[g][a]`),
    holding the rows before `valid[c]` (levels grow on demand, a window at a time)."""

    def __init__(self, b: CSUCB, args: tuple[I, F, F, F, F, F, F, F], reps: I) -> None:
        cls, l_in, l_out, attach, _, running, waiting, bw = args
        self.b, self.args, self.n = b, args, len(cls)
        self.cls, self.l_in, self.l_out, self.attach = cls, l_in, l_out, attach
        t = b.t.subset(reps)
        self.arm = b._arm_cj[:, reps][cls]
        self.run, self.wait, self.bw = running[reps], waiting[reps], bw[reps]
        self.rc, self.gpu_pre = t.round_coeffs, t.typical_service_s[1]
        self.rtt, self.e_bit = t.rtt_s, t.e_bit
        k = min(self.n, FIRST_LEVELS)
        g = len(reps)
        v = round_view(t, b.w, cls, l_in, l_out, attach, self.run, self.wait, self.bw, 0, k)
        _, static, feas, deadline, _, score, _ = b._judge(t, self.arm, v, args)
        self.static, self.deadline = static, deadline
        self.ok = not (np.isnan(score).any() or np.isnan(v.time).any())
        self.data = np.empty((5, self.n, 4 * g * k))
        parts = (np.where(feas, score, -np.inf), v.time, v.core, v.decode, v.energy)
        for q, part in enumerate(parts):
            self.data[q, :, : g * k] = part.reshape(self.n, g * k)
        self.used = g * k
        self.col: list[list[int]] = [list(range(j * k, (j + 1) * k)) for j in range(g)]
        self.valid: list[int] = [self.n] * (g * k)
        if self.ok:  # (else the caller decides per server: nothing more is read)
            self._inputs()

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

    def _gpu_levels(self, gi: I, first: F, k: int, r: slice) -> tuple[F, F, F, F]:
        """`round_view`'s time, core, decode and energy for groups of GPU servers, laid out
        [level, group, row] (rows innermost: numpy's inner loops run long): its operations
        in its order, on the per-pair terms computed in `_inputs`."""
        assert self.pairs is not None
        cap, svc, pre, a, tran, wt, epre, step0, p_busy, p_idle = self.pairs[:10, gi, r]
        levels = _LEVELS[k] if k < len(_LEVELS) else np.arange(k, dtype=float)
        add = first + levels[:, None]  # [K, G']
        occ1 = ((self.occ[gi] + add) + 1)[..., None]
        b = np.minimum(occ1, cap)
        pre_w = ((self.wait[gi] + add) * self.gpu_pre[gi])[..., None]
        queue = np.maximum(occ1 - cap, 0.0) * svc + pre_w
        kv = self.kv[gi]
        if kv.any():  # `view_of`: bound by its KV cache, the longer of the two waits
            run = self.run[gi]
            full = kv[:, None] & (run[:, None] < cap)  # [G', R]
            slot_kv = np.maximum(occ1 - run[:, None], 0.0) * svc
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
            time, core, dec, energy = self._gpu_levels(gi, first, k, r)
            mu, sd, f, lift = self.pairs[10:, gi, r]
        else:
            rc = self.rc[:, self.cls[r, None], gi][..., None]  # [P, R, G', 1]
            v = view_of(
                rc, self.gpu_pre[gi], self.rtt[gi], self.e_bit[gi], self.b.w, self.l_in[r],
                self.l_out[r], self.attach[r], self.run[gi], self.wait[gi], self.bw[gi], first, k,
            )  # fmt: skip
            time, core, dec, energy = (
                x.transpose(2, 1, 0) for x in (v.time, v.core, v.decode, v.energy)
            )
            mu, sd, f, lift = (x[r][:, gi].T for x in (self.mu_a, self.sd_a, self.f_a, self.lift_a))
        # [K, G', R] from here; `CSUCB._judge`'s operations.
        per_tok = dec / self.l_out1[r]
        fixed = time - dec
        q_lo, q_hi = self.lq[r, 0], self.lq[r, 1]
        rhs_lo, rhs_hi = self.rhs[r, 0], self.rhs[r, 1]
        feas = (
            self.static_t[gi, r]
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
        if self.used > self.data.shape[2]:
            data = np.empty((5, self.n, 2 * self.used))
            data[:, :, : self.data.shape[2]] = self.data
            self.data = data
        at = np.array(cols, np.intp)
        parts = (np.where(feas, score, -np.inf), time, core, dec, energy)
        for q, part in enumerate(parts):  # columns group by group, each level by level
            self.data[q][r, at] = part.transpose(2, 1, 0).reshape(hi - lo, -1)
        valid = self.valid
        for c in cols:
            if valid[c] < hi:
                valid[c] = hi
        return True


def exploration_lift(b: CSUCB) -> tuple[list[float], list[float]]:
    st = b.stats
    return exploration(st.plays.ravel().tolist(), log_t(st.total), b.cfg.delta)
