"""The scheduler's view of a round: cost-model predictions from telemetry.

Shared by CS-UCB, the greedy deadline-aware baseline and the extender. Within a round,
each placement adds load to its server, so predictions are computed for every load
level a round can reach ([N, M, K]: request, server, requests already added this round)
in one vectorised pass; the super-arm assignment then only indexes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from perllm.contract import EnergyWeights
from perllm.costmodel import ROUND, CostTable, download_bits, upload_bits

F = NDArray[np.float64]

MAX_LEVELS = 16  # within-round load levels modelled exactly; beyond, the last level is reused


@dataclass
class RoundView:
    """Predicted D and marginal energy per request × server × load level added this round."""

    time: F  # [N, M, K]
    decode: F  # [N, M, K] the part of `time` that grows with the output length
    energy: F  # [N, M, K]
    levels: int


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
) -> RoundView:
    # The cost model's formulas (costmodel.predict) written out for the [N, M, K] round:
    # class-and-server constants come folded from `CostTable.round_coeffs` (one gather),
    # and parts that do not depend on the load level stay [N, M, 1]. Rounds are small, so
    # the count of numpy operations, not their size, is the cost: every operation and its
    # order match `predict`, so the floats are the same.
    n = len(cls)
    k = max(1, min(n, MAX_LEVELS))
    add = _LEVELS[k]  # requests this round placed on the server before this one
    occupied = (running + waiting)[:, None] + add  # [M, K]
    occ1 = occupied + 1
    rc = t.round_coeffs[:, cls, :, None]  # [P, N, M, 1]
    is_gpu = rc[_GPU] > 0.5
    cap = rc[_CAP]  # [N, M, 1]
    b = np.minimum(occ1, cap)  # batch size joined, [N, M, K]
    # Wait: each request ahead beyond the free slots holds a slot for about one full-batch
    # service time of the server's typical request, shared by `cap` slots; and on a GPU
    # each waiting request and each one placed earlier this round is prefilled first
    # (prefills are serialised).
    _, gpu_pre = t.typical_service_s
    queue = np.maximum(occ1 - cap, 0.0) * rc[_SVC] + ((waiting[:, None] + add) * gpu_pre[:, None])
    ctx = l_in + 0.5 * l_out
    li, lo = l_in[:, None, None], l_out[:, None, None]
    ctx_kv = ctx[:, None, None] * rc[_KV]
    bw = rc[_BW]
    # CPU (costmodel.cpu_times) and GPU (costmodel.gpu_times) prefill and decode.
    tg = np.minimum(bw / (rc[_W] + ctx_kv), rc[_KPP] / b)
    pre_cpu = li * b / rc[_PP]
    pre_gpu = rc[_TTFT0] + li / rc[_RPF]
    dec_gpu = lo * (rc[_STEP0] + b * (ctx_kv / bw + rc[_FLOP]))
    prefill = np.where(is_gpu, pre_gpu, pre_cpu)
    decode = np.where(is_gpu, dec_gpu, lo / tg)
    bits = (upload_bits(l_in, attach) + download_bits(l_out))[:, None, None]
    tran = bits / (bw_mbps * 1e6)[:, None] + t.rtt_s[:, None]
    e_tran = t.e_bit[:, None] * bits
    busy_pre = np.where(is_gpu, prefill, prefill / b)
    busy_dec = decode / b
    p_busy = rc[_PBUSY]
    e_inf = rc[_PFIRST] * busy_pre + p_busy * busy_dec
    e_idle_saved = rc[_PIDLE] * (busy_pre + busy_dec)
    energy = np.maximum(w.tran * e_tran + w.infer * e_inf - w.idle * e_idle_saved, 0.0)
    time = tran + queue + (prefill + decode)
    return RoundView(time=time, decode=decode, energy=energy, levels=k)


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
