"""Workload: the requests of one run, drawn up front (vectorised, seeded): their arrivals
(`perllm.world.arrivals`) and the sizes drawn for them (tokens, attachment, quality floor,
deadline)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from perllm.scenario import Dist, Scenario
from perllm.world.arrivals import request_arrivals


@dataclass(frozen=True)
class Requests:
    """All requests of a run, sorted by arrival time. Columns are numpy arrays [N]."""

    arrival: NDArray[np.float64]
    cls: NDArray[np.intp]
    l_in: NDArray[np.float64]
    l_out: NDArray[np.float64]  # realised; the scheduler only knows the class mean
    attach: NDArray[np.float64]
    min_quality: NDArray[np.float64]
    deadline: NDArray[np.float64]  # realised ΔD = seconds + per_output_token_s × L_out

    def __len__(self) -> int:
        return len(self.arrival)


def draw(d: Dist, n: int, rng: np.random.Generator) -> NDArray[np.float64]:
    table = d.quantile_table()
    if table is not None:
        u = rng.random(n)
        x = np.interp(u, np.asarray(table[0], float), np.asarray(table[1], float))
    elif d.kind == "lognormal":
        assert d.mu is not None and d.sigma is not None
        x = rng.lognormal(d.mu, d.sigma, n)
    elif d.kind == "uniform":
        assert d.low is not None and d.high is not None
        x = rng.uniform(d.low, d.high, n)
    else:
        assert d.value is not None
        x = np.full(n, d.value)
    return np.asarray(np.minimum(x, d.max) if d.max else x, dtype=float)


def whole_tokens(
    l_in: NDArray[np.float64], l_out: NDArray[np.float64], context: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Drawn token counts as whole tokens, at least 1, clipped to the model's context
    (the output to half of it, the prompt to the rest)."""
    lin, lout = np.maximum(np.round(l_in), 1), np.maximum(np.round(l_out), 1)
    lout = np.minimum(lout, context // 2)
    return np.minimum(lin, context - lout), lout


def _given(
    col: NDArray[np.float64], idx: NDArray[np.intp], d: Dist, rng: np.random.Generator
) -> NDArray[np.float64]:
    """Token counts of the requests `idx`: the trace's, drawn from `d` where the trace
    gives none (NaN)."""
    x = col[idx]
    miss = np.isnan(x)
    if miss.all():
        return draw(d, len(idx), rng)
    if miss.any():
        x = x.copy()
        x[miss] = draw(d, int(miss.sum()), rng)
    return x


def generate(sc: Scenario, seed: int) -> Requests:
    rng = np.random.default_rng([seed, 0xC0FFEE])
    classes = sc.workload.classes
    t, cls, tin, tout = request_arrivals(sc, seed, rng)
    n = len(t)
    l_in, l_out = np.empty(n), np.empty(n)
    attach, qmin, dl = np.zeros(n), np.zeros(n), np.empty(n)
    cat = sc.catalogue
    for k, c in enumerate(classes):
        idx = np.flatnonzero(cls == k)
        m = len(idx)
        lin = _given(tin, idx, c.input_tokens, rng)
        lout = _given(tout, idx, c.output_tokens, rng)
        lin, lout = whole_tokens(lin, lout, cat.models[c.model].context)
        l_in[idx], l_out[idx] = lin, lout
        if c.attachment_bytes is not None:
            attach[idx] = draw(c.attachment_bytes, m, rng)
        w = np.asarray(c.min_quality.weights or [1.0] * len(c.min_quality.values), float)
        qmin[idx] = rng.choice(np.asarray(c.min_quality.values, float), size=m, p=w / w.sum())
        dl[idx] = c.deadline.seconds + c.deadline.per_output_token_s * lout
    return Requests(
        arrival=t,
        cls=cls.astype(np.intp),
        l_in=l_in,
        l_out=l_out,
        attach=attach,
        min_quality=qmin,
        deadline=dl,
    )
