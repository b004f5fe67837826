"""The relaxation's data: what each (request, server) pair needs at least, and the
demand-bound rows that cap what a server can do inside a time interval.

Everything here is a lower bound on what the world (`perllm/world/`) makes a request use,
or an upper bound on what a server can deliver; docs/bound.md proves each one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from perllm.costmodel import (
    context,
    cpu_decode,
    cpu_prefill,
    download_bits,
    gpu_decode,
    gpu_prefill,
    upload_bits,
)
from perllm.world.sim import World

F = NDArray[np.float64]
B = NDArray[np.bool_]

# A pair is deadline-feasible when its isolated time is within the deadline up to this
# relative slack: the vectorised formulas may differ from the world's scalar path in the
# last bits, and admitting a pair the world would just reject keeps the bound valid.
FEASIBILITY_SLACK = 1e-9


@dataclass(frozen=True)
class Pairs:
    """Per (request, server) minimal needs, [N, M], and per-server capacities, [M]."""

    n: int
    m: int
    duration_s: float
    arrival: F
    deadline: F
    allowed: B  # the world runs it there at all
    feasible: B  # allowed, quality floor met, and the isolated time meets the deadline
    time_alone: F  # D on an idle server and link at the slot's realised bandwidth (s)
    e_tran: F  # transmission J (exact: independent of timing)
    upload_s: F  # link seconds (FIFO per server link, at the arrival slot's bandwidth)
    prefill_s: F  # GPU: serialised prefill (exact); CPU: prefill alone (compute units)
    decode_s: F  # decode alone (batch 1, the fastest)
    compute_s: F  # CPU: socket-seconds of compute (prefill + decode at κ·pp); GPU: 0
    is_gpu: B  # [M]
    p_idle: F
    p_busy: F
    p_prefill: F
    # Upper bounds on the summed progress rates at any instant, in units of each
    # request's own batch-1 time (docs/bound.md): GPU decode, CPU streams, CPU compute.
    gpu_decode_rate: F
    cpu_stream_rate: F
    cpu_compute_rate: F


def slot_of(arrival: F, n_slots: int, slot_s: float) -> NDArray[np.intp]:
    """The slot each request is decided in, exactly as `simulate` splits arrivals."""
    bounds = np.searchsorted(arrival, np.arange(n_slots + 1) * slot_s)
    idx = np.arange(len(arrival))
    return np.asarray(np.searchsorted(bounds, idx, side="right") - 1, np.intp)


def build_pairs(world: World) -> Pairs:
    sc, t, r = world.sc, world.table, world.req
    n, m = len(r), t.n_servers
    cls = r.cls
    slot = np.minimum(slot_of(r.arrival, world.n_slots, sc.slot_s), world.n_slots - 1)
    bps = world.bw[slot] * 1e6  # [N, M]
    up = np.asarray(upload_bits(r.l_in, r.attach), float)[:, None]
    down = np.asarray(download_bits(r.l_out), float)[:, None]
    rtt = t.rtt_s[None, :]
    speed = world.speed[:, None] * t.perf_scale[None, :]
    g = {k: getattr(t, k)[cls] for k in ("is_gpu", "kv", "bw", "pp", "kappa", "r_pf")}
    g |= {k: getattr(t, k)[cls] for k in ("ttft0", "step0", "flop", "w", "allowed")}
    l_in, l_out = r.l_in[:, None], r.l_out[:, None]
    ctx_kv = context(l_in, l_out) * g["kv"]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        gpu_pre = gpu_prefill(l_in, g["r_pf"], g["ttft0"]) / speed
        gpu_dec = gpu_decode(l_out, ctx_kv, 1.0, g["bw"], g["step0"], g["flop"]) / speed
        cpu_pre = cpu_prefill(l_in, 1.0, g["pp"]) / speed
        kappa_pp = g["kappa"] * g["pp"]
        cpu_dec = cpu_decode(l_out, ctx_kv, 1.0, g["w"], g["bw"], kappa_pp) / speed
        cpu_comp = cpu_pre + l_out / kappa_pp / speed
    gpu = g["is_gpu"].astype(bool)
    allowed = g["allowed"].astype(bool)
    pre = np.where(gpu, gpu_pre, cpu_pre)
    dec = np.where(gpu, gpu_dec, cpu_dec)
    comp = np.where(gpu, 0.0, cpu_comp)
    upload_s = up / bps
    time_alone = upload_s + rtt / 2 + pre + dec + down / bps + rtt / 2
    q_ok = t.quality[cls] >= r.min_quality[:, None] - 1e-9
    feasible = allowed & q_ok & (time_alone * (1.0 - FEASIBILITY_SLACK) <= r.deadline[:, None])
    e_tran = t.e_bit[None, :] * (up + down)
    zero = np.zeros((n, m))
    pre, dec, comp, time_alone = (np.where(allowed, a, 0.0) for a in (pre, dec, comp, time_alone))
    is_gpu = np.array([s.is_gpu for s in world.servers], bool)
    return Pairs(
        n=n,
        m=m,
        duration_s=float(sc.duration_s),
        arrival=r.arrival,
        deadline=r.deadline,
        allowed=allowed,
        feasible=feasible,
        time_alone=time_alone,
        e_tran=np.where(allowed, e_tran, zero),
        upload_s=np.where(allowed, upload_s, zero),
        prefill_s=pre,
        decode_s=dec,
        compute_s=comp,
        is_gpu=is_gpu,
        p_idle=np.array([s.p_idle for s in world.servers]),
        p_busy=np.array([s.p_busy for s in world.servers]),
        p_prefill=np.array([s.p_prefill for s in world.servers]),
        **_rate_caps(world, allowed, ctx_kv),
    )


def _rate_caps(world: World, allowed: B, ctx_kv: F) -> dict[str, F]:
    """Per server, the most progress (in batch-1 seconds per second) its admitted
    requests can make together at one instant.

    A request admitted with b concurrent streams keeps the speed of batch b; among the
    requests active at an instant, the k-th admitted found at least the k-1 earlier ones
    still running, so its b ≥ k, and k ≤ the largest concurrency any class allows.
    GPU decode at batch b runs (step0 + a)/(step0 + b·a) as fast as at batch 1, with
    a = ctx·kv/bw + flop; that factor falls as a grows, so the smallest a of the server's
    requests bounds it. On a CPU each stream runs at most at its batch-1 speed (K streams)
    and the socket's compute is shared: a stream at batch b uses at most 1/b of it.
    """
    t, cls = world.table, world.req.cls
    m = t.n_servers
    gpu_rate, stream_rate, comp_rate = np.zeros(m), np.zeros(m), np.zeros(m)
    for j in range(m):
        classes = [c for c in range(t.n_classes) if t.allowed[c, j]]
        if not classes:
            continue
        k_max = int(max(t.max_conc[c, j] for c in classes))
        ks = np.arange(1, k_max + 1, dtype=float)
        stream_rate[j] = float(k_max)
        comp_rate[j] = float(np.sum(1.0 / ks))
        best = np.zeros(k_max)
        for c in classes:
            mine = (cls == c) & allowed[:, j]
            if not mine.any():
                continue
            a = float(np.min(ctx_kv[mine, j])) / t.bw[c, j] + t.flop[c, j]
            s0 = float(t.step0[c, j])
            best = np.maximum(best, (s0 + a) / (s0 + ks * a))
        gpu_rate[j] = float(best.sum())
    return {
        "gpu_decode_rate": gpu_rate,
        "cpu_stream_rate": stream_rate,
        "cpu_compute_rate": comp_rate,
    }


@dataclass(frozen=True)
class DemandRows:
    """Capacity rows over the met-variables y (one per feasible pair, `pairs` order):
    `a @ y <= rhs`."""

    a: sp.csr_matrix
    rhs: F
    n_intervals: int


def demand_rows(p: Pairs, grid_s: float, max_levels: int = 16) -> DemandRows:
    """Demand-bound rows on a dyadic interval family over a grid of `grid_s` buckets.

    Level ℓ has intervals of L = 2^ℓ buckets starting every max(1, L/2) buckets, so any
    window of up to L/2 + 1 buckets lies inside one of them. A request met on server j
    does all its work on j (upload, prefill, decode) inside [arrival, arrival + deadline],
    so on every interval the met requests whose whole window lies inside it cannot need
    more than the server delivers over the interval's length.
    """
    ii, jj = np.nonzero(p.feasible)
    kb = np.floor(p.arrival[ii] / grid_s).astype(np.int64)
    ke = np.ceil((p.arrival[ii] + p.deadline[ii]) / grid_s).astype(np.int64)
    ke = np.maximum(ke, kb + 1)
    horizon = int(ke.max()) if len(ke) else 1
    entries = _interval_entries(kb, ke, jj, _resources(p, ii, jj), p.m, horizon, grid_s, max_levels)
    if not entries.keys:
        return DemandRows(sp.csr_matrix((0, len(ii))), np.zeros(0), 0)
    key = np.concatenate(entries.keys)
    uniq, row = np.unique(key, return_inverse=True)
    rhs = np.zeros(len(uniq))
    rhs[row] = np.concatenate(entries.caps)  # the same for every entry of a row
    a = sp.csr_matrix(
        (np.concatenate(entries.vals), (row, np.concatenate(entries.cols))),
        shape=(len(uniq), len(ii)),
    )
    return DemandRows(a, rhs, len(uniq))


# (coefficient per pair, capacity per second of server j, applies to pair)
Resource = tuple[F, F, B]


def _resources(p: Pairs, ii: NDArray[np.intp], jj: NDArray[np.intp]) -> list[Resource]:
    """What a met pair (ii, jj) needs of each of its server's resources."""
    gpu = p.is_gpu[jj]
    return [
        (p.upload_s[ii, jj], np.ones(p.m), np.ones(len(ii), bool)),
        (p.prefill_s[ii, jj], np.ones(p.m), gpu),
        (p.decode_s[ii, jj], p.gpu_decode_rate, gpu),
        (p.prefill_s[ii, jj] + p.decode_s[ii, jj], p.cpu_stream_rate, ~gpu),
        (p.compute_s[ii, jj], p.cpu_compute_rate, ~gpu),
    ]


@dataclass
class _Entries:
    """Matrix entries of the demand-bound rows, keyed by (level, resource, server,
    interval); `caps` is the row's capacity, repeated per entry."""

    cols: list[NDArray[np.int64]] = field(default_factory=list)
    vals: list[F] = field(default_factory=list)
    keys: list[NDArray[np.int64]] = field(default_factory=list)
    caps: list[F] = field(default_factory=list)


def _interval_entries(
    kb: NDArray[np.int64],
    ke: NDArray[np.int64],
    jj: NDArray[np.intp],
    resources: list[Resource],
    m: int,
    horizon: int,
    grid_s: float,
    max_levels: int,
) -> _Entries:
    """Entries for every pair whose bucket window [kb, ke) lies inside an interval of the
    dyadic family, level by level until an interval spans the horizon."""
    out = _Entries()
    col = np.arange(len(jj))
    level = 0
    while level < max_levels:
        length = 1 << level
        half = max(1, length // 2)
        q_lo = -((-(ke - length)) // half)  # ceil((ke - L) / half)
        q_hi = kb // half
        for off in range(3):
            q = q_lo + off
            ok = (q <= q_hi) & (q >= 0)
            if not ok.any():
                continue
            for r_id, (coef, cap, applies) in enumerate(resources):
                sel = ok & applies & (coef > 0)
                if not sel.any():
                    continue
                key = ((level * len(resources) + r_id) * m + jj[sel]) * (horizon + 2) + q[sel]
                out.keys.append(key)
                out.cols.append(col[sel])
                out.vals.append(coef[sel])
                out.caps.append(cap[jj[sel]] * length * grid_s)
        if length >= horizon:
            break
        level += 1
    return out
