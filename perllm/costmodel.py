"""Cost model: processing time and energy of a request on a server.

    D = D_queue + D_tran + D_infer,   D_infer = prefill + decode
    E = ω_tran·E_tran + ω_infer·E_infer + ω_idle·E_idle

One implementation serves both the world model (the truth, scalar per request) and the
CS-UCB predictor (vectorised over requests × servers): every formula below works on
Python floats and on numpy arrays alike. Coefficients come from `profiles.PerfProfile`
gathered into a `CostTable` indexed by (service class, server).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from functools import cached_property
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from perllm.contract import EnergyWeights, Server, ServiceSpec
from perllm.profiles import Catalogue, perf_profile

F = NDArray[np.float64]
# A float or an array: the formulas below broadcast, so one implementation serves the
# scalar world model and the vectorised predictor.
Num = Any

# Wire size of text (CALIBRATION §6.4): ≈4 bytes per token, +20 % JSON/HTTP overhead.
BYTES_PER_TOKEN = 4.0
WIRE_OVERHEAD = 1.2


def upload_bits(prompt_tokens: Num, attachment_bytes: Num) -> Num:
    return 8.0 * (prompt_tokens * BYTES_PER_TOKEN * WIRE_OVERHEAD + attachment_bytes)


def download_bits(output_tokens: Num) -> Num:
    return 8.0 * output_tokens * BYTES_PER_TOKEN * WIRE_OVERHEAD


def cpu_times(
    l_in: Num,
    l_out: Num,
    b: Num,
    w: Num,
    kv: Num,
    bw: Num,
    pp: Num,
    kappa: Num,
) -> tuple[Num, Num]:
    """(prefill, decode) seconds on a CPU server running `b` streams (llama.cpp).

    Prefill shares the cores with the other b-1 streams; decode is memory-bound at
    bw/(W + ctx·kv) per stream until the socket turns compute-bound at κ·pp in total.
    """
    ctx = l_in + 0.5 * l_out
    mem, compute = bw / (w + ctx * kv), kappa * pp / b
    # Builtin min on floats (the world model's per-request path): same value, no numpy call.
    scalar = not isinstance(mem, np.ndarray) and not isinstance(compute, np.ndarray)
    tg = min(mem, compute) if scalar else np.minimum(mem, compute)
    return l_in * b / pp, l_out / tg


def gpu_times(
    l_in: Num,
    l_out: Num,
    b: Num,
    kv: Num,
    bw: Num,
    r_pf: Num,
    ttft0: Num,
    step0: Num,
    flop: Num,
) -> tuple[Num, Num]:
    """(prefill, decode) seconds on a GPU server with `b` sequences in the batch (vLLM)."""
    ctx = l_in + 0.5 * l_out
    return ttft0 + l_in / r_pf, l_out * (step0 + b * (ctx * kv / bw + flop))


def attributed_power_time(
    prefill: Num,
    decode: Num,
    b: Num,
    is_gpu: Num,
    p_busy: Num,
    p_prefill: Num,
) -> Num:
    """Inference energy (J) attributed to one request.

    CPU: the socket's busy power is shared by the b concurrent streams. GPU: prefill runs
    alone at prefill power; decode steps are shared by the b sequences of the batch.
    """
    if not isinstance(is_gpu, np.ndarray):  # one request: only its own branch
        if is_gpu:
            return p_prefill * prefill + p_busy * decode / b
        return p_busy * (prefill + decode) / b
    cpu = p_busy * (prefill + decode) / b
    gpu = p_prefill * prefill + p_busy * decode / b
    return np.where(is_gpu, gpu, cpu)


def busy_times(prefill: Num, decode: Num, b: Num, is_gpu: Num) -> tuple[Num, Num]:
    """(prefill, decode) busy seconds attributed to one request among `b` concurrent ones:
    a GPU prefill runs alone, a CPU prefill shares the cores; decode is shared."""
    if not isinstance(is_gpu, np.ndarray):
        return (prefill if is_gpu else prefill / b), decode / b
    return np.where(is_gpu, prefill, prefill / b), decode / b


def inference_energy(busy_pre: Num, busy_dec: Num, p_first: Num, p_busy: Num) -> Num:
    """Inference J attributed to a request: its busy prefill time at `p_first` (prefill
    power on GPUs, busy power on CPUs) plus its share of decode at busy power."""
    return p_first * busy_pre + p_busy * busy_dec


def idle_energy_saved(busy_pre: Num, busy_dec: Num, p_idle: Num) -> Num:
    """Idle energy is P_idle·(T − busy): a placement lowers it by the busy time it adds."""
    return p_idle * (busy_pre + busy_dec)


def marginal_energy(w: EnergyWeights, e_tran: Num, e_inf: Num, e_idle_saved: Num) -> Num:
    """Weighted energy (J) a placement adds to the objective, never below 0."""
    e = w.tran * e_tran + w.infer * e_inf - w.idle * e_idle_saved
    if isinstance(e, np.ndarray):
        return np.maximum(e, 0.0)
    return 0.0 if e < 0.0 else e


COEFFS = (
    "is_gpu",
    "w",
    "kv",
    "bw",
    "pp",
    "kappa",
    "r_pf",
    "ttft0",
    "step0",
    "flop",
    "max_conc",
    "p_busy",
    "p_prefill",
    "p_idle",
)


# Columns of `CostTable.round_coeffs`.
ROUND = (
    "is_gpu",
    "max_conc",
    "svc_per_slot",  # typical full-batch service time / slots: a queued request's hold
    "w",
    "kv",
    "bw",
    "pp",
    "kappa_pp",
    "r_pf",
    "ttft0",
    "step0",
    "flop",
    "p_busy",
    "p_first",  # power while a request's prefill runs: prefill power on GPUs, busy on CPUs
    "p_idle",
)


@dataclass(frozen=True)
class CostTable:
    """Performance and power coefficients for every (service class, server) pair, [C, M].

    `allowed` folds in the static constraints (tier allowed, a variant exists, the
    weights fit in memory); `quality` is the quality of the variant a server would run.
    """

    services: tuple[ServiceSpec, ...]
    server_names: tuple[str, ...]
    tiers: tuple[str, ...]
    pools: tuple[str, ...]  # identical hardware + tier + link profile: arms share experience
    is_gpu: NDArray[np.bool_]
    allowed: NDArray[np.bool_]
    quality: F
    w: F
    kv: F
    bw: F
    pp: F
    kappa: F
    r_pf: F
    ttft0: F
    step0: F
    flop: F
    max_conc: F
    kv_budget: F
    p_busy: F
    p_prefill: F
    p_idle: F
    # per server [M]
    link_mbps: F
    link_noise: F
    rtt_s: F
    e_bit: F
    perf_scale: F  # world truth only

    @cached_property
    def stacked(self) -> F:
        """[C, M, P] coefficients in `COEFFS` order: one gather per round instead of P."""
        return np.stack([getattr(self, k).astype(float) for k in COEFFS], axis=-1)

    @cached_property
    def round_coeffs(self) -> F:
        """[P, C, M] the coefficients a round's prediction reads, in `ROUND` order, with the
        class-and-server constants of its formulas folded in (same operations, same floats):
        one gather per round, each coefficient contiguous. See `estimate.round_view`."""
        svc, _ = self.typical_service_s
        cols = {
            "is_gpu": self.is_gpu.astype(float),
            "max_conc": self.max_conc,
            "svc_per_slot": svc[None, :] / np.maximum(self.max_conc, 1.0),
            "w": self.w,
            "kv": self.kv,
            "bw": self.bw,
            "pp": self.pp,
            "kappa_pp": self.kappa * self.pp,
            "r_pf": self.r_pf,
            "ttft0": self.ttft0,
            "step0": self.step0,
            "flop": self.flop,
            "p_busy": self.p_busy,
            "p_first": np.where(self.is_gpu, self.p_prefill, self.p_busy),
            "p_idle": self.p_idle,
        }
        return np.stack([np.asarray(cols[k], dtype=float) for k in ROUND])

    @cached_property
    def typical_service_s(self) -> tuple[F, F]:
        """([M], [M]) for a server's typical request (traffic-weighted over the classes it
        can run): its full-batch service time, i.e. how long a request ahead in the queue
        holds its slot; and its GPU prefill time, i.e. how long it holds the GPU's
        serialised prefill (0 on CPUs, where prefill shares the cores instead)."""
        cls = np.arange(self.n_classes)
        l_in = np.array([s.traffic.prompt_tokens for s in self.services])
        l_out = np.array([s.traffic.output_tokens for s in self.services])
        g = Gathered(self, cls)
        pre, dec = infer_times(g, l_in, l_out, g.max_conc)
        svc, gpu_pre = (pre + dec)[:, :, 0], np.where(self.is_gpu, pre[:, :, 0], 0.0)
        rate = np.array([max(s.traffic.rate_rps, 1e-9) for s in self.services])[:, None]
        w = np.where(self.allowed, rate, 0.0)
        norm = np.maximum(w.sum(axis=0), 1e-12)
        has = w.sum(axis=0) > 0
        mean_svc = np.where(has, (w * svc).sum(axis=0) / norm, svc.max(axis=0))
        mean_pre = np.where(has, (w * gpu_pre).sum(axis=0) / norm, gpu_pre.max(axis=0))
        return np.asarray(mean_svc, dtype=float), np.asarray(mean_pre, dtype=float)

    def subset(self, cols: NDArray[np.intp]) -> CostTable:
        """The table restricted to servers `cols` (candidate pruning on large fleets)."""
        per_pair = {
            f.name: getattr(self, f.name)[:, cols]
            for f in fields(self)
            if isinstance(getattr(self, f.name), np.ndarray) and getattr(self, f.name).ndim == 2
        }
        per_server = {
            f.name: getattr(self, f.name)[cols]
            for f in fields(self)
            if isinstance(getattr(self, f.name), np.ndarray) and getattr(self, f.name).ndim == 1
        }
        idx = cols.tolist()
        sub = replace(
            self,
            server_names=tuple(self.server_names[j] for j in idx),
            tiers=tuple(self.tiers[j] for j in idx),
            pools=tuple(self.pools[j] for j in idx),
            **per_pair,
            **per_server,
        )
        # The derived tables are per server column, so the subset's are the parent's
        # columns (the same floats): sliced from the parent, computed once, instead of
        # recomputed for every pruned round (the extender prunes on every decision).
        svc, pre = self.typical_service_s
        sub.__dict__["typical_service_s"] = (svc[cols], pre[cols])
        sub.__dict__["round_coeffs"] = self.round_coeffs[:, :, cols]
        return sub

    @property
    def n_classes(self) -> int:
        return len(self.services)

    @property
    def n_servers(self) -> int:
        return len(self.server_names)


def build_cost_table(
    services: Sequence[ServiceSpec], servers: Sequence[tuple[str, Server]], catalogue: Catalogue
) -> CostTable:
    c, m = len(services), len(servers)
    arrays = {k: np.zeros((c, m)) for k in (*COEFFS[1:], "quality", "kv_budget")}
    is_gpu = np.zeros((c, m), bool)
    allowed = np.zeros((c, m), bool)
    for j, (_, srv) in enumerate(servers):
        hw = catalogue.hardware[srv.hardware]
        for i, svc in enumerate(services):
            variant = svc.variant_for(srv.tier)
            model = catalogue.models[svc.model]
            is_gpu[i, j] = hw.kind == "gpu"
            arrays["p_idle"][i, j] = hw.power_idle_w
            if variant is None or srv.tier not in svc.allowed_tiers:
                arrays["max_conc"][i, j] = 1  # keeps formulas finite; `allowed` rules it out
                arrays["pp"][i, j] = arrays["r_pf"][i, j] = arrays["bw"][i, j] = 1.0
                arrays["kappa"][i, j] = arrays["w"][i, j] = 1.0
                continue
            prof = perf_profile(model, variant.precision, hw)
            allowed[i, j] = prof.fits
            arrays["quality"][i, j] = (
                variant.quality if variant.quality is not None else prof.quality
            )
            for k, v in (
                ("w", prof.weights_bytes),
                ("kv", prof.kv_bytes),
                ("bw", prof.bw),
                ("pp", prof.pp or 1.0),
                ("kappa", prof.kappa or 1.0),
                ("r_pf", prof.r_pf or 1.0),
                ("ttft0", prof.ttft0),
                ("step0", prof.step0),
                ("flop", prof.per_seq_flop_s),
                ("max_conc", prof.max_conc),
                ("kv_budget", prof.kv_budget_bytes),
                ("p_busy", prof.p_busy),
                ("p_prefill", prof.p_prefill),
            ):
                arrays[k][i, j] = v
    links = [s.link for _, s in servers]
    return CostTable(
        services=tuple(services),
        server_names=tuple(n for n, _ in servers),
        tiers=tuple(s.tier.value for _, s in servers),
        pools=tuple(f"{s.tier.value}/{s.hardware}/{s.link.bandwidth_mbps:g}" for _, s in servers),
        is_gpu=is_gpu,
        allowed=allowed,
        link_mbps=np.array([li.bandwidth_mbps for li in links]),
        link_noise=np.array([li.noise for li in links]),
        rtt_s=np.array([li.rtt_ms / 1000 for li in links]),
        e_bit=np.array([li.energy_uj_per_bit * 1e-6 for li in links]),
        perf_scale=np.array([s.perf_scale for _, s in servers]),
        **arrays,
    )


@dataclass
class Prediction:
    """Predicted outcome of each request on each server, [N, M]."""

    time: F  # processing time D
    tran_time: F
    queue_time: F
    infer_time: F
    decode_time: F
    energy: F  # weighted marginal energy (J): what a placement adds to the objective
    energy_attributed: F  # E_tran + attributed inference energy (J), unweighted


class Gathered:
    """The class rows of a round's requests, [N, M, 1] per coefficient (one fancy index)."""

    def __init__(self, t: CostTable, cls: NDArray[np.intp]) -> None:
        rows = t.stacked[cls]
        for k, name in enumerate(COEFFS):
            setattr(self, name, rows[:, :, k, None])
        self.is_gpu = rows[:, :, 0, None] > 0.5

    is_gpu: NDArray[np.bool_]
    w: F
    kv: F
    bw: F
    pp: F
    kappa: F
    r_pf: F
    ttft0: F
    step0: F
    flop: F
    max_conc: F
    p_busy: F
    p_prefill: F
    p_idle: F


def infer_times(g: Gathered, l_in: F, l_out: F, b: F) -> tuple[F, F]:
    """(prefill, decode) of a round's requests on every server at batch size `b`.

    `b` is [N, M, K] (K load levels); results are [N, M, K].
    """
    li, lo = l_in[:, None, None], l_out[:, None, None]
    pc, dc = cpu_times(li, lo, b, g.w, g.kv, g.bw, g.pp, g.kappa)
    pg, dg = gpu_times(li, lo, b, g.kv, g.bw, g.r_pf, g.ttft0, g.step0, g.flop)
    return cast(F, np.where(g.is_gpu, pg, pc)), cast(F, np.where(g.is_gpu, dg, dc))


def predict(
    t: CostTable,
    g: Gathered,
    weights: EnergyWeights,
    l_in: F,
    l_out: F,
    attach: F,
    conc: F,
    queue_s: F,
    bw_mbps: F,
) -> Prediction:
    """Predict D and E for requests (prompt, expected output, attachment) on all servers.

    `conc` [N, M, K] is the batch size a request would join at each of K load levels,
    `queue_s` [N, M, K] its expected wait before admission, `bw_mbps` [M] the link
    bandwidth estimate. Results are [N, M, K].
    """
    b = np.minimum(conc, g.max_conc)
    prefill, decode = infer_times(g, l_in, l_out, b)
    bits = (upload_bits(l_in, attach) + download_bits(l_out))[:, None, None]
    tran = bits / (bw_mbps[None, :, None] * 1e6) + t.rtt_s[None, :, None]
    infer = prefill + decode
    e_tran = t.e_bit[None, :, None] * bits
    # Busy time attributed to the request (as `attributed_power_time`, vectorised once for
    # both powers): prefill alone on a GPU, shared by the b streams on a CPU; decode shared.
    busy_pre = np.where(g.is_gpu, prefill, prefill / b)
    busy_dec = decode / b
    e_inf = np.where(g.is_gpu, g.p_prefill, g.p_busy) * busy_pre + g.p_busy * busy_dec
    # Idle energy is P_idle·(T − busy): a placement lowers it by the busy time it adds.
    e_idle_saved = g.p_idle * (busy_pre + busy_dec)
    marginal = np.maximum(
        weights.tran * e_tran + weights.infer * e_inf - weights.idle * e_idle_saved, 0.0
    )
    return Prediction(
        time=tran + queue_s + infer,
        tran_time=tran,
        queue_time=queue_s,
        infer_time=infer,
        decode_time=decode,
        energy=marginal,
        energy_attributed=e_tran + e_inf,
    )
