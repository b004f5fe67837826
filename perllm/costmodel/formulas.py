"""Every time and energy formula of the cost model, each in one function.

    D = D_queue + D_tran + D_infer,   D_infer = prefill + decode
    E = ω_tran·E_tran + ω_infer·E_infer + ω_idle·E_idle

The world model (the truth, scalar per request), the CS-UCB predictor (vectorised over
requests × servers × load levels, and compiled per cell on large fleets:
`perllm.csucb.kernels`) and the twin's meters call these. Each works on Python floats and
on numpy arrays alike; where a branch or a minimum is needed it goes through `where`,
`minimum` or `maximum`, which take the builtin form on floats (no numpy call on the
per-request path, the same floats) and which the compiled kernels replace by scalar
operations with numpy's rule (they stand in for the vectorised predictor; a NaN wins).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from perllm.contract import EnergyWeights

# A float or an array: the formulas broadcast.
Num = Any

# Wire size of text: ≈4 bytes per token, +20 % JSON/HTTP overhead.
BYTES_PER_TOKEN = 4.0
WIRE_OVERHEAD = 1.2


def where(cond: Num, a: Num, b: Num) -> Num:
    """np.where; on a scalar condition, `a if cond else b`."""
    if isinstance(cond, np.ndarray):
        return np.where(cond, a, b)
    return a if cond else b


def minimum(a: Num, b: Num) -> Num:
    """np.minimum; on floats, the builtin min."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.minimum(a, b)
    return min(a, b)


def maximum(a: Num, b: Num) -> Num:
    """np.maximum; on floats, `b if a < b else a` (a NaN `a` is kept, as numpy keeps it)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.maximum(a, b)
    return b if a < b else a


def upload_bits(prompt_tokens: Num, attachment_bytes: Num) -> Num:
    return 8.0 * (prompt_tokens * BYTES_PER_TOKEN * WIRE_OVERHEAD + attachment_bytes)


def download_bits(output_tokens: Num) -> Num:
    return 8.0 * output_tokens * BYTES_PER_TOKEN * WIRE_OVERHEAD


def transmission_energy(e_bit: Num, bits: Num) -> Num:
    """J to move `bits` over a link costing `e_bit` J per bit (upload and download)."""
    return e_bit * bits


def transmission_time(bits: Num, bw_mbps: Num, rtt_s: Num) -> Num:
    """The predictor's D_tran (s): the request's bits over the link, plus its round trip."""
    return bits / (bw_mbps * 1e6) + rtt_s


def queue_wait(occ1: Num, cap: Num, svc: Num, pre_w: Num, kv_full: Num, running: Num) -> Num:
    """The predictor's D_queue (s) for a request joining a server as its `occ1`-th: each
    request ahead beyond the free slots holds a slot for `svc` (the typical request's
    full-batch service time shared by the slots), and on a GPU the prefills ahead,
    `pre_w`, run first (serialised). A GPU bound by its KV cache (`kv_full`) holds its
    `running` requests, not `cap`, and its waiting ones wait for a slot and for the
    prefills at once: the longer of the two, not their sum."""
    slot = maximum(occ1 - where(kv_full, running, cap), 0.0) * svc
    return where(kv_full, maximum(slot, pre_w), slot + pre_w)


def context(l_in: Num, l_out: Num) -> Num:
    """Mean context length over the decode: the KV cache read per step grows with it."""
    return l_in + 0.5 * l_out


def cpu_prefill(l_in: Num, b: Num, pp: Num) -> Num:
    """CPU prefill (s): the cores are shared with the other b-1 streams (llama.cpp)."""
    return l_in * b / pp


def cpu_decode(l_out: Num, ctx_kv: Num, b: Num, w: Num, bw: Num, kappa_pp: Num) -> Num:
    """CPU decode (s): memory-bound at bw/(W + ctx·kv) per stream until the socket turns
    compute-bound at κ·pp tokens/s in total, shared by the b streams."""
    return l_out / minimum(bw / (w + ctx_kv), kappa_pp / b)


def gpu_prefill(l_in: Num, r_pf: Num, ttft0: Num) -> Num:
    """GPU prefill (s): a fixed start-up plus the prompt at the prefill rate (vLLM)."""
    return ttft0 + l_in / r_pf


def gpu_decode(l_out: Num, ctx_kv: Num, b: Num, bw: Num, step0: Num, flop: Num) -> Num:
    """GPU decode (s): each step reads the KV cache and computes for the b sequences."""
    return l_out * (step0 + b * (ctx_kv / bw + flop))


def cpu_times(
    l_in: Num, l_out: Num, b: Num, w: Num, kv: Num, bw: Num, pp: Num, kappa: Num
) -> tuple[Num, Num]:
    """(prefill, decode) seconds on a CPU server running `b` streams."""
    ctx_kv = context(l_in, l_out) * kv
    return cpu_prefill(l_in, b, pp), cpu_decode(l_out, ctx_kv, b, w, bw, kappa * pp)


def gpu_times(
    l_in: Num, l_out: Num, b: Num, kv: Num, bw: Num, r_pf: Num, ttft0: Num, step0: Num, flop: Num
) -> tuple[Num, Num]:
    """(prefill, decode) seconds on a GPU server with `b` sequences in the batch."""
    ctx_kv = context(l_in, l_out) * kv
    return gpu_prefill(l_in, r_pf, ttft0), gpu_decode(l_out, ctx_kv, b, bw, step0, flop)


def busy_times(prefill: Num, decode: Num, b: Num, is_gpu: Num) -> tuple[Num, Num]:
    """(prefill, decode) busy seconds attributed to one request among `b` concurrent ones:
    a GPU prefill runs alone, a CPU prefill shares the cores; decode is shared."""
    return where(is_gpu, prefill, prefill / b), decode / b


def inference_energy(busy_pre: Num, busy_dec: Num, p_first: Num, p_busy: Num) -> Num:
    """Inference J attributed to a request: its busy prefill time at `p_first` (prefill
    power on GPUs, busy power on CPUs) plus its share of decode at busy power."""
    return p_first * busy_pre + p_busy * busy_dec


def idle_energy_saved(busy_pre: Num, busy_dec: Num, p_idle: Num) -> Num:
    """Idle energy is P_idle·(T − busy): a placement lowers it by the busy time it adds."""
    return p_idle * (busy_pre + busy_dec)


def marginal_energy(w: EnergyWeights, e_tran: Num, e_inf: Num, e_idle_saved: Num) -> Num:
    """Weighted energy (J) a placement adds to the objective, never below 0."""
    return maximum(w.tran * e_tran + w.infer * e_inf - w.idle * e_idle_saved, 0.0)


def server_energy(
    horizon: float,
    busy: float,
    prefill: float,
    is_gpu: bool,
    p_idle: float,
    p_busy: float,
    p_prefill: float,
) -> tuple[float, float]:
    """(inference, idle) J of a server over [0, horizon], exact for its busy time `busy`
    of which `prefill` ran a GPU's serialised prefill at prefill power."""
    infer = p_busy * busy
    if is_gpu:
        infer += (p_prefill - p_busy) * prefill
    return infer, p_idle * max(horizon - busy, 0.0)
