"""The scheduler's view of a round: cost-model predictions from telemetry.

Shared by CS-UCB, the greedy deadline-aware baseline and the extender. Within a round,
each placement adds load to its server, so predictions are computed for every load
level a round can reach ([N, M, K]: request, server, requests already added this round)
in one vectorised pass; the super-arm assignment then only indexes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
from numpy.typing import NDArray

from perllm.contract import EnergyWeights
from perllm.costmodel import (
    ROUND,
    CostTable,
    busy_times,
    context,
    cpu_decode,
    cpu_prefill,
    download_bits,
    gpu_decode,
    gpu_prefill,
    idle_energy_saved,
    inference_energy,
    marginal_energy,
    queue_wait,
    transmission_energy,
    transmission_time,
    upload_bits,
)

F = NDArray[np.float64]

# Within-round load levels computed up front (a round of n requests: min(n, MAX_LEVELS)).
# It is no cap: a server that takes more requests in one round gets further levels,
# computed on demand (`first_level`), so every placement is predicted at its real load.
MAX_LEVELS = 16

# What a placement whose upload holds its server's link too long (`hold_rank`) loses from
# its score: more than any reward (−Ê/E_c − θ·P̂ and the exploration bonus are O(1)), less
# than an unplayed arm's lift (10⁶), so it ranks after every placement that holds no link
# and an unplayed arm is still explored first.
LINK_HOLD_RANK = 1e4


@dataclass
class RoundView:
    """Predicted D and marginal energy per request × server × load level added this round."""

    time: F  # [N, M, K]
    decode: F  # [N, M, K] the part of `time` that grows with the output length
    energy: F  # [N, M, K]
    levels: int
    # [N, M, K] `time` less the transmission: the part that does not depend on the
    # server's bandwidth (time = transmission + core, in that order)
    core: F

    def then(self, more: RoundView) -> RoundView:
        """This view followed by `more`'s levels (the next ones, computed later)."""

        def cat(a: F, b: F) -> F:
            return np.concatenate([a, b], axis=2)

        return RoundView(
            time=cat(self.time, more.time),
            decode=cat(self.decode, more.decode),
            energy=cat(self.energy, more.energy),
            levels=self.levels + more.levels,
            core=cat(self.core, more.core),
        )


def round_view(
    t: CostTable,
    w: EnergyWeights,
    cls: NDArray[np.intp],
    l_in: F,
    l_out: F,
    attach: F,
    running: F,
    waiting: F,
    bw_mbps: F,
    first_level: int | F = 0,
    n_levels: int | None = None,
) -> RoundView:
    # The cost model's formulas on the [N, M, K] round: class-and-server constants come
    # folded from `CostTable.round_coeffs` (one gather), and parts that do not depend on
    # the load level stay [N, M, 1]. Rounds are small, so the count of numpy operations,
    # not their size, is the cost (`_prefill_decode`).
    # Levels first_level .. first_level + k - 1 (default: 0 .. min(n, MAX_LEVELS) - 1).
    k = max(1, min(len(cls), MAX_LEVELS)) if n_levels is None else n_levels
    _, gpu_pre = t.typical_service_s
    rc = t.round_coeffs[:, cls, :, None]  # [P, N, M, 1]
    return view_of(rc, gpu_pre, t.rtt_s, t.e_bit, w, l_in, l_out, attach, running, waiting,
                   bw_mbps, first_level, k)  # fmt: skip


def view_of(
    rc: F,
    gpu_pre: F,
    rtt_s: F,
    e_bit: F,
    w: EnergyWeights,
    l_in: F,
    l_out: F,
    attach: F,
    running: F,
    waiting: F,
    bw_mbps: F,
    first_level: int | F,
    k: int,
) -> RoundView:
    """`round_view` on the round's gathered coefficients `rc` [P, N, M, 1] and the servers'
    constants; `first_level` per server [M] (a float array) or common to all."""
    if isinstance(first_level, np.ndarray):  # [M, K]: integers, so the sums are exact
        add = first_level[:, None] + (_LEVELS[k] if k <= MAX_LEVELS else np.arange(k, dtype=float))
    elif first_level == 0 and k <= MAX_LEVELS:
        add = _LEVELS[k]  # requests this round placed on the server before this one
    else:
        add = np.arange(first_level, first_level + k, dtype=float)
    occupied = (running + waiting)[:, None] + add  # [M, K]
    occ1 = occupied + 1
    is_gpu = rc[_GPU] > 0.5
    cap = rc[_CAP]  # [N, M, 1]
    b = np.minimum(occ1, cap)  # batch size joined, [N, M, K]
    # On a GPU each waiting request and each one placed earlier this round is prefilled
    # first (prefills are serialised); a GPU that keeps requests waiting with slots free
    # is bound by its KV cache (`kv_bound`, `queue_wait`).
    pre_w = (waiting[:, None] + add) * gpu_pre[:, None]
    kv = kv_bound(running, waiting)
    full = (kv[:, None] & (running[:, None] < cap)) & is_gpu if kv.any() else False  # [N, M, 1]
    queue = queue_wait(occ1, cap, rc[_SVC], pre_w, full, running[:, None])
    prefill, decode = _prefill_decode(rc, is_gpu, l_in, l_out, b)
    bits = (upload_bits(l_in, attach) + download_bits(l_out))[:, None, None]
    tran = transmission_time(bits, bw_mbps[:, None], rtt_s[:, None])
    e_tran = transmission_energy(e_bit[:, None], bits)
    busy_pre, busy_dec = busy_times(prefill, decode, b, is_gpu)
    e_inf = inference_energy(busy_pre, busy_dec, rc[_PFIRST], rc[_PBUSY])
    e_idle_saved = idle_energy_saved(busy_pre, busy_dec, rc[_PIDLE])
    energy = marginal_energy(w, e_tran, e_inf, e_idle_saved)
    core = queue + (prefill + decode)
    return RoundView(time=tran + core, decode=decode, energy=energy, levels=k, core=core)


def link_hold_limit(t: CostTable, factor: float) -> F:
    """[M] per server: the longest upload its link may carry without ranking after others,
    `factor` × the shortest fixed deadline (`deadline.seconds`) among the classes the
    server may run (inf where it may run none, or `factor` is inf: off). A link is a FIFO
    queue, so an upload longer than that makes such a request sent behind it miss."""
    if t.n_servers == 0 or factor == np.inf:
        return np.full(t.n_servers, np.inf)
    dl = np.array([s.requirements.deadline.seconds for s in t.services], float)
    tightest = np.where(t.allowed, dl[:, None], np.inf).min(axis=0, initial=np.inf)
    return np.asarray(factor * tightest, dtype=float)


def hold_rank(up_bits: F, bw_mbps: F, limit: F) -> F | None:
    """[N, M] what each placement's score loses because its upload alone would hold the
    server's link longer than its `limit` (`link_hold_limit`; the transmission formula
    without the RTT): `LINK_HOLD_RANK`, else 0; None where none of the round's does."""
    if not np.isfinite(limit).any():
        return None
    held = transmission_time(up_bits[:, None], bw_mbps, 0.0) > limit
    return np.where(held, LINK_HOLD_RANK, 0.0) if held.any() else None


def hold_rank_one(up_bits: float, bw_mbps: float, limit: float) -> float:
    """`hold_rank` of one placement on Python floats (the fast and pooled paths)."""
    return LINK_HOLD_RANK if transmission_time(up_bits, bw_mbps, 0.0) > limit else 0.0


def kv_bound(running: F, waiting: F) -> NDArray[np.bool_]:
    """Servers that may be bound by their KV cache: requests waiting beside running ones.
    On a GPU server with fewer running than its slots (`view_of`), the cost model takes
    the running count as its capacity (the waiting ones could not be admitted)."""
    return (waiting > 0) & (running > 0)


def _prefill_decode(rc: F, is_gpu: NDArray[np.bool_], l_in: F, l_out: F, b: F) -> tuple[F, F]:
    """`round_view`'s inference times [N, M, K] (`rc`: its gathered `round_coeffs`); the
    prefill and decode parts are called directly so that the CPU and GPU branches share
    the context term."""
    li, lo = l_in[:, None, None], l_out[:, None, None]
    ctx_kv = context(l_in, l_out)[:, None, None] * rc[_KV]
    bw = rc[_BW]
    # One kind of server only (a large fleet's groups are evaluated by kind): one branch.
    kinds = is_gpu.any(), not is_gpu.all()
    if kinds[0] and kinds[1]:
        pre_gpu, pre_cpu = gpu_prefill(li, rc[_RPF], rc[_TTFT0]), cpu_prefill(li, b, rc[_PP])
        dec_gpu = gpu_decode(lo, ctx_kv, b, bw, rc[_STEP0], rc[_FLOP])
        dec_cpu = cpu_decode(lo, ctx_kv, b, rc[_W], bw, rc[_KPP])
        pre, dec = np.where(is_gpu, pre_gpu, pre_cpu), np.where(is_gpu, dec_gpu, dec_cpu)
        return cast(F, pre), cast(F, dec)
    if kinds[0]:
        prefill = np.broadcast_to(gpu_prefill(li, rc[_RPF], rc[_TTFT0]), b.shape)
        return prefill, gpu_decode(lo, ctx_kv, b, bw, rc[_STEP0], rc[_FLOP])
    return cpu_prefill(li, b, rc[_PP]), cpu_decode(lo, ctx_kv, b, rc[_W], bw, rc[_KPP])


_LEVELS = [np.arange(k, dtype=float) for k in range(MAX_LEVELS + 1)]
_GPU, _CAP, _SVC, _W, _KV, _BW, _PP, _KPP, _RPF, _TTFT0, _STEP0, _FLOP = range(12)
_PBUSY, _PFIRST, _PIDLE = range(12, 15)
assert len(ROUND) == 15 and ROUND[_PIDLE] == "p_idle" and ROUND[_KPP] == "kappa_pp"


def energy_scale(t: CostTable, w: EnergyWeights) -> F:
    """Per class: the largest marginal energy of a typical request on any allowed idle
    server. Rewards divide energy by it, so they are comparable across classes."""
    cls = np.arange(t.n_classes)
    l_in = np.array([s.traffic.prompt_tokens for s in t.services])
    l_out = np.array([s.traffic.output_tokens for s in t.services])
    att = np.array([s.traffic.payload_bytes for s in t.services])
    m = t.n_servers
    v = round_view(t, w, cls, l_in, l_out, att, np.zeros(m), np.zeros(m), t.link_mbps)
    e = np.where(t.allowed, v.energy[:, :, 0], 0.0)
    return np.asarray(np.maximum(e.max(axis=1), 1e-3), dtype=float)
