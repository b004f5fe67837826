"""A `CostTable` and its arms as Python lists, for the small-round path (`fast`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from perllm.costmodel import ROUND, CostTable

F = NDArray[np.float64]
I = NDArray[np.intp]  # noqa: E741


@dataclass(slots=True)
class Coef:
    """One (class, server) pair's `CostTable.round_coeffs` as Python floats."""

    is_gpu: bool
    max_conc: float
    svc_per_slot: float
    w: float
    kv: float
    bw: float
    pp: float
    kappa_pp: float
    r_pf: float
    ttft0: float
    step0: float
    flop: float
    p_busy: float
    p_first: float
    p_idle: float


@dataclass
class FastTables:
    """A table (and the arms of its pairs) as Python lists: [class][server], per server."""

    coef: list[list[Coef]]
    allowed: list[list[bool]]
    quality: list[list[float]]
    arm: list[list[int]]  # flat arm index in the shared statistics
    rtt: list[float]
    e_bit: list[float]
    gpu_pre: list[float]
    dl_s: list[float]
    dl_tok: list[float]
    scale: list[float]  # energy scale per class
    hold_limit: list[float]  # per server: `estimate.link_hold_limit`

    @classmethod
    def of(cls, t: CostTable, arm: I, dl_s: F, dl_tok: F, scale: F, hold: F) -> FastTables:
        rc = t.round_coeffs
        assert ROUND[0] == "is_gpu"
        coef = [
            [Coef(bool(rc[0, c, j] > 0.5), *rc[1:, c, j].tolist()) for j in range(t.n_servers)]
            for c in range(t.n_classes)
        ]
        return cls(
            coef=coef,
            allowed=t.allowed.tolist(),
            quality=t.quality.tolist(),
            arm=arm.tolist(),
            rtt=t.rtt_s.tolist(),
            e_bit=t.e_bit.tolist(),
            gpu_pre=t.typical_service_s[1].tolist(),
            dl_s=dl_s.tolist(),
            dl_tok=dl_tok.tolist(),
            scale=scale.tolist(),
            hold_limit=hold.tolist(),
        )
