"""The pooled round's per-cell loop, compiled with numba (`pooled_scores.Scores.compute`).

A large-fleet round evaluates load levels a few groups at a time, thousands of times a
run: as numpy expressions each evaluation cost ~75 array operations (~130 µs), whatever
its size. Here one call walks the cells once (~2 µs a call, a few tens of ns a cell),
calling the cost model's own formulas (`perllm.costmodel.formulas`, compiled as they
are: their `where`/`minimum`/`maximum` become scalar operations with numpy's NaN rule)
and `round_view`'s queue and `CSUCB._judge`'s score in numpy's order on float64 (no
fast-math: no reassociation, no fused multiply-add). `ndtr` is scipy's own compiled
function. So the scores are the vectorised path's bit for bit (`tests/unit/test_pooled.py`).

The loop is cached on disk (numba's `cache=True`: in `NUMBA_CACHE_DIR` where set, as the
image does, else next to the source, else the user's cache directory), and dropped when
the formulas compiled into it change (`_drop_stale_cache`); where nothing is writable it is
compiled once per process (a few seconds). `warm` builds it before a first round uses it.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import llvmlite.binding
import numba
import numpy as np
import scipy.special.cython_special as cython_special
from numba.extending import get_cython_function_address, overload

from perllm.costmodel import ROUND, formulas

# Row quantities (`rows[i, request]`) and group quantities (`grp[i, group]`).
L_IN, L_OUT, BITS, L_OUT1, LQ_LO, LQ_HI, RHS_LO, RHS_HI, DEADLINE, SCALE = range(10)
OCC, WAIT, GPU_PRE, RUN, KV, BW_MBPS, RTT, E_BIT = range(8)


# `round_coeffs` rows (`coef[i, class, group]`), by name.
_GPU, _CAP, _SVC, _W, _KV, _BW, _PP, _KPP, _RPF, _TTFT0, _STEP0, _FLOP, _PBUSY, _PFIRST, _PIDLE = (
    ROUND.index(name)
    for name in (
        "is_gpu", "max_conc", "svc_per_slot", "w", "kv", "bw", "pp", "kappa_pp", "r_pf",
        "ttft0", "step0", "flop", "p_busy", "p_first", "p_idle",
    )
)  # fmt: skip


class Weights(NamedTuple):
    """`EnergyWeights` as compiled code reads it (`formulas.marginal_energy`'s w)."""

    tran: float
    infer: float
    idle: float


def _scipy_ndtr() -> Any:
    """scipy.special.ndtr's float64 C function, callable from compiled code. Found by the
    signature scipy's Cython module exports (its fused-type names are not an API)."""
    capi: dict[str, object] = cython_special.__pyx_capi__
    get_name = _capsule_name()
    for key, capsule in capi.items():
        if re.fullmatch(r"(__pyx_fuse_\d+)?ndtr", key) and get_name(capsule).startswith(
            b"double (double,"
        ):
            address = get_cython_function_address("scipy.special.cython_special", key)
            llvmlite.binding.add_symbol("perllm_scipy_ndtr", address)
            sig = numba.types.float64(numba.types.float64, numba.types.intc)
            return numba.types.ExternalFunction("perllm_scipy_ndtr", sig)
    raise ImportError("scipy.special.cython_special exports no float64 ndtr")


def _capsule_name() -> Callable[[object], bytes]:
    get = ctypes.pythonapi.PyCapsule_GetName
    get.restype, get.argtypes = ctypes.c_char_p, [ctypes.py_object]
    return lambda capsule: get(capsule) or b""


_ndtr = _scipy_ndtr()


def _jit(f: Callable[..., Any]) -> Any:
    # numpy's error model: a division by zero gives inf or NaN, as in the vectorised path
    # (a NaN sends the round to it), instead of raising ZeroDivisionError mid-round.
    try:
        return numba.njit(cache=True, error_model="numpy")(f)
    except RuntimeError:  # numba: "no locator available" (nowhere writable to cache)
        return numba.njit(error_model="numpy")(f)


@overload(formulas.where)
def _where(cond: Any, a: Any, b: Any) -> Any:
    def scalar(cond: Any, a: Any, b: Any) -> Any:
        return a if cond else b

    return scalar


# The compiled formulas stand in for their numpy form (`view_of`'s), so a NaN wins as in
# np.minimum / np.maximum (the builtin forms on floats keep their own rule: only the
# world model calls those, and on finite numbers all agree). `levels` and `_judge` call
# them too.
@overload(formulas.minimum)
def _minimum(a: Any, b: Any) -> Any:
    def scalar(a: Any, b: Any) -> Any:
        return a if a != a or a <= b else b  # a NaN b fails a <= b

    return scalar


@overload(formulas.maximum)
def _maximum(a: Any, b: Any) -> Any:
    def scalar(a: Any, b: Any) -> Any:
        return a if a != a or a >= b else b

    return scalar


# The formulas, compiled as they are. Not cached on their own: numba would check them
# against formulas.py only, not against the overloads above; they live compiled inside
# `levels`, whose cache covers both (`_drop_stale_cache`).
def _formula(f: Callable[..., Any]) -> Any:
    return numba.njit(error_model="numpy")(f)


_context = _formula(formulas.context)
_gpu_prefill, _gpu_decode = _formula(formulas.gpu_prefill), _formula(formulas.gpu_decode)
_cpu_prefill, _cpu_decode = _formula(formulas.cpu_prefill), _formula(formulas.cpu_decode)
_transmission_energy = _formula(formulas.transmission_energy)
_transmission_time = _formula(formulas.transmission_time)
_queue_wait = _formula(formulas.queue_wait)
_busy_times = _formula(formulas.busy_times)
_inference_energy = _formula(formulas.inference_energy)
_idle_energy_saved = _formula(formulas.idle_energy_saved)
_marginal_energy = _formula(formulas.marginal_energy)


@_jit
def _judge(
    time: float, core: float, dec: float, energy: float, mu: float, sd: float, f: float,
    lift: float, static: bool, rows: Any, p: int, theta: float, data: Any, c: int,
) -> bool:  # fmt: skip
    """`CSUCB._judge`'s operations for one cell, written to column c of `data` for
    request p; True where the score or the time is NaN."""
    per_tok = dec / rows[L_OUT1, p]
    fixed = time - dec
    feas = (
        static
        and f * (fixed + per_tok * rows[LQ_LO, p]) <= rows[RHS_LO, p]
        and f * (fixed + per_tok * rows[LQ_HI, p]) <= rows[RHS_HI, p]
    )
    e_hat = energy * mu / rows[SCALE, p]
    x = (rows[DEADLINE, p] / formulas.maximum(time, 1e-9) - mu) / sd
    if feas:
        score = (-e_hat - theta * (1.0 - _ndtr(x, 0))) + lift
        data[p, 0, c] = score
    else:  # -inf; NaN where the score would be (ndtr is finite on a number)
        score = -e_hat + lift if x == x else x
        data[p, 0, c] = -np.inf
    data[p, 1, c] = time
    data[p, 2, c] = core
    data[p, 3, c] = dec
    data[p, 4, c] = energy
    return score != score or time != time


@_jit
def levels(
    coef: Any, cls: Any, rows: Any, grp: Any, static_t: Any, arm: Any, post: Any, w: Weights,
    theta: float, gi: Any, first: Any, k: int, lo: int, hi: int, cols: Any, data: Any,
) -> bool:  # fmt: skip
    """Levels first[j] .. first[j] + k - 1 of the groups gi[j] (their representatives)
    for the requests lo .. hi - 1: `round_view`'s prediction (`view_of`, cell by cell)
    and `_judge`, into columns cols[j * k + i] of `data`. `coef`: the representatives'
    `round_coeffs` [P, class, group]; `arm` [class, group]: the arm; `post` [4, arm]: its
    posterior mean, sd, pessimistic factor and exploration lift. False on a NaN."""
    nan = False
    for j in range(gi.shape[0]):
        g = gi[j]
        occ, wait, gpu_pre, run = grp[OCC, g], grp[WAIT, g], grp[GPU_PRE, g], grp[RUN, g]
        kv, bw, rtt, e_bit = grp[KV, g] > 0.5, grp[BW_MBPS, g], grp[RTT, g], grp[E_BIT, g]
        for p in range(lo, hi):
            q = cls[p]
            l_in, l_out, bits = rows[L_IN, p], rows[L_OUT, p], rows[BITS, p]
            is_gpu, cap, svc = coef[_GPU, q, g] > 0.5, coef[_CAP, q, g], coef[_SVC, q, g]
            ctx_kv = _context(l_in, l_out) * coef[_KV, q, g]
            tran = _transmission_time(bits, bw, rtt)
            e_tran = _transmission_energy(e_bit, bits)
            a = arm[q, g]
            mu, sd, f, lift = post[0, a], post[1, a], post[2, a], post[3, a]
            for i in range(k):
                add = first[j] + float(i)
                occ1 = (occ + add) + 1.0
                b = formulas.minimum(occ1, cap)
                pre_w = (wait + add) * gpu_pre
                queue = _queue_wait(occ1, cap, svc, pre_w, kv and run < cap and is_gpu, run)
                if is_gpu:
                    pre = _gpu_prefill(l_in, coef[_RPF, q, g], coef[_TTFT0, q, g])
                    dec = _gpu_decode(
                        l_out, ctx_kv, b, coef[_BW, q, g], coef[_STEP0, q, g], coef[_FLOP, q, g]
                    )
                else:
                    pre = _cpu_prefill(l_in, b, coef[_PP, q, g])
                    dec = _cpu_decode(
                        l_out, ctx_kv, b, coef[_W, q, g], coef[_BW, q, g], coef[_KPP, q, g]
                    )
                busy_pre, busy_dec = _busy_times(pre, dec, b, is_gpu)
                p_first, p_busy = coef[_PFIRST, q, g], coef[_PBUSY, q, g]
                e_inf = _inference_energy(busy_pre, busy_dec, p_first, p_busy)
                e_idle = _idle_energy_saved(busy_pre, busy_dec, coef[_PIDLE, q, g])
                energy = _marginal_energy(w, e_tran, e_inf, e_idle)
                core = queue + (pre + dec)
                time = tran + core
                nan |= _judge(
                    time, core, dec, energy, mu, sd, f, lift, static_t[g, p], rows, p, theta,
                    data, cols[j * k + i],
                )  # fmt: skip
    return not nan


def warm() -> None:
    """`levels` compiled (or loaded from the cache) for the argument types
    `Scores.compute` passes, on one cell: a failure shows here, where the caller can fall
    back, not in a round."""
    levels(
        np.ones((len(ROUND), 1, 1)), np.zeros(1, np.intp), np.ones((10, 1)), np.ones((8, 1)),
        np.ones((1, 1), bool), np.zeros((1, 1), np.intp), np.ones((4, 1)),
        Weights(1.0, 1.0, 1.0), 1.0, np.zeros(1, np.intp), np.zeros(1), 1, 0, 1,
        np.zeros(1, np.intp), np.empty((1, 5, 1)),
    )  # fmt: skip


def _deps_digest() -> str:
    """What `levels` holds compiled from outside this file: the formulas and ROUND's order."""
    return hashlib.sha256((inspect.getsource(formulas) + repr(ROUND)).encode()).hexdigest()


def _drop_stale_cache() -> None:
    """numba invalidates a cached function when its own file changes, not when a function
    it calls from another file does (a documented limit): `levels` has the cost model's
    formulas compiled into it, so its cached code is dropped when they change (a marker
    beside numba's cache holds their digest). Without caching there is nothing to drop."""
    cache = getattr(levels, "_cache", None)
    path = getattr(cache, "cache_path", None)
    if cache is None or path is None:
        return
    marker, digest = Path(path) / "kernels.levels.deps", _deps_digest()
    try:
        if marker.read_text() == digest:
            return
    except OSError:
        pass
    cache.flush()
    with contextlib.suppress(OSError):  # read-only: numba then caches elsewhere or not at all
        marker.write_text(digest)


_drop_stale_cache()
