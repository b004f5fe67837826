"""The cost model's coefficients: performance and power per (service class, server).

Coefficients come from `profiles.PerfProfile`, gathered into a `CostTable` indexed by
(service class, server); the formulas that read them are in `formulas`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import cached_property
from typing import cast

import numpy as np
from numpy.typing import NDArray

from perllm.contract import Server, ServiceSpec
from perllm.costmodel.formulas import cpu_times, gpu_times
from perllm.profiles import Catalogue, perf_profile

F = NDArray[np.float64]

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
        l_in = np.array([s.traffic.prompt_tokens for s in self.services])
        l_out = np.array([s.traffic.output_tokens for s in self.services])
        pre, dec = _times(self, l_in[:, None], l_out[:, None], self.max_conc)
        svc, gpu_pre = pre + dec, np.where(self.is_gpu, pre, 0.0)
        rate = np.array([max(s.traffic.rate_rps, 1e-9) for s in self.services])[:, None]
        w = np.where(self.allowed, rate, 0.0)
        norm = np.maximum(w.sum(axis=0), 1e-12)
        has = w.sum(axis=0) > 0
        mean_svc = np.where(has, (w * svc).sum(axis=0) / norm, svc.max(axis=0))
        mean_pre = np.where(has, (w * gpu_pre).sum(axis=0) / norm, gpu_pre.max(axis=0))
        return np.asarray(mean_svc, dtype=float), np.asarray(mean_pre, dtype=float)

    def subset(self, cols: NDArray[np.intp]) -> CostTable:
        """The table restricted to servers `cols` (candidate pruning on large fleets)."""
        cols = np.asarray(cols, dtype=np.intp)
        per_pair, per_server = self._array_fields
        idx = cols.tolist()
        # Every field as `dataclasses.replace` would set it, without its per-call field
        # introspection and __init__ (this runs on every pruned round).
        state = dict(self.__dict__)
        for name in ("stacked", "round_coeffs", "typical_service_s", "_array_fields"):
            state.pop(name, None)
        state.update(
            server_names=tuple(self.server_names[j] for j in idx),
            tiers=tuple(self.tiers[j] for j in idx),
            pools=tuple(self.pools[j] for j in idx),
        )
        for name in per_pair:
            state[name] = np.take(getattr(self, name), cols, axis=1)
        for name in per_server:
            state[name] = np.take(getattr(self, name), cols)
        # The derived tables are per server column, so the subset's are the parent's
        # columns (the same floats): sliced from the parent, computed once, instead of
        # recomputed for every pruned round (the extender prunes on every decision).
        svc, pre = self.typical_service_s
        state["typical_service_s"] = (np.take(svc, cols), np.take(pre, cols))
        state["round_coeffs"] = np.take(self.round_coeffs, cols, axis=2)
        state["_array_fields"] = (per_pair, per_server)
        sub = object.__new__(CostTable)
        sub.__dict__.update(state)
        return sub

    @cached_property
    def _array_fields(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Names of the per-(class, server) and the per-server array fields."""
        arrays = [
            (f.name, getattr(self, f.name))
            for f in fields(self)
            if isinstance(getattr(self, f.name), np.ndarray)
        ]
        return (
            tuple(k for k, a in arrays if a.ndim == 2),
            tuple(k for k, a in arrays if a.ndim == 1),
        )

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
            for k, v in dict(
                w=prof.weights_bytes,
                kv=prof.kv_bytes,
                bw=prof.bw,
                pp=prof.pp or 1.0,
                kappa=prof.kappa or 1.0,
                r_pf=prof.r_pf or 1.0,
                ttft0=prof.ttft0,
                step0=prof.step0,
                flop=prof.per_seq_flop_s,
                max_conc=prof.max_conc,
                kv_budget=prof.kv_budget_bytes,
                p_busy=prof.p_busy,
                p_prefill=prof.p_prefill,
            ).items():
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


def _times(t: CostTable, l_in: F, l_out: F, b: F) -> tuple[F, F]:
    """(prefill, decode) [C, M] of each class's requests on every server at batch size `b`."""
    pc, dc = cpu_times(l_in, l_out, b, t.w, t.kv, t.bw, t.pp, t.kappa)
    pg, dg = gpu_times(l_in, l_out, b, t.kv, t.bw, t.r_pf, t.ttft0, t.step0, t.flop)
    return cast(F, np.where(t.is_gpu, pg, pc)), cast(F, np.where(t.is_gpu, dg, dc))
