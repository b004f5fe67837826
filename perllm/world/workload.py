"""Workload: the requests of one run, drawn up front (vectorised, seeded)."""

from __future__ import annotations

import csv
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from perllm.scenario import Dist, Scenario, ScenarioError, Window


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


def rate_factor(windows: Sequence[Window], t: float) -> float:
    """The arrival-rate multiplier at time t: the product of the windows covering it."""
    f = 1.0
    for w in windows:
        if w.at_s <= t < w.until_s:
            f *= w.factor
    return f


def whole_tokens(
    l_in: NDArray[np.float64], l_out: NDArray[np.float64], context: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Drawn token counts as whole tokens, at least 1, clipped to the model's context
    (the output to half of it, the prompt to the rest)."""
    lin, lout = np.maximum(np.round(l_in), 1), np.maximum(np.round(l_out), 1)
    lout = np.minimum(lout, context // 2)
    return np.minimum(lin, context - lout), lout


def _arrival_times(sc: Scenario, rng: np.random.Generator) -> NDArray[np.float64]:
    a = sc.workload.arrivals
    assert a.rate_rps is not None
    # Draw in "operational time" at rate 1, then warp by the rate schedule (flash crowds).
    windows = sc.workload.rate_windows
    edges = sorted({0.0, sc.duration_s, *[w.at_s for w in windows], *[w.until_s for w in windows]})
    edges = [e for e in edges if e <= sc.duration_s]
    rates = []
    for lo, _ in itertools.pairwise(edges):
        # Window bounds are edges: a window covers the whole interval iff it covers `lo`.
        rates.append(a.rate_rps * rate_factor(windows, lo))
    cum = np.concatenate([[0.0], np.cumsum(np.diff(edges) * np.array(rates))])
    expected = cum[-1]
    n_draw = int(expected * 1.2 + 10 * np.sqrt(expected) + 50)
    if a.kind == "poisson":
        gaps = rng.exponential(1.0, n_draw)
    else:  # gamma with shape 1/cv²: mean 1, coefficient of variation cv
        k = 1.0 / a.cv**2
        gaps = rng.gamma(k, 1.0 / k, n_draw)
    op = np.cumsum(gaps)
    op = op[op < expected]
    return np.asarray(np.interp(op, cum, np.asarray(edges, float)), dtype=float)


def _trace(
    sc: Scenario,
) -> tuple[
    NDArray[np.float64], NDArray[np.float64] | None, NDArray[np.float64] | None, list[str] | None
]:
    """Read a trace CSV: `time_s[,class][,input_tokens,output_tokens]`, or the Azure format
    `TIMESTAMP,ContextTokens,GeneratedTokens` (timestamps become seconds from the first)."""
    path = sc.workload.arrivals.file
    assert path is not None
    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ScenarioError(f"workload.arrivals.file: {path} has no rows")
    cols = set(rows[0])
    if "TIMESTAMP" in cols:
        from datetime import datetime

        ts = [datetime.fromisoformat(r["TIMESTAMP"].strip()[:26]).timestamp() for r in rows]
        t = np.asarray(ts) - min(ts)
        return (
            t,
            np.array([float(r["ContextTokens"]) for r in rows]),
            np.array([float(r["GeneratedTokens"]) for r in rows]),
            None,
        )
    if "time_s" not in cols:
        raise ScenarioError(f"workload.arrivals.file: {path} needs a time_s or TIMESTAMP column")
    t = np.array([float(r["time_s"]) for r in rows])
    li = np.array([float(r["input_tokens"]) for r in rows]) if "input_tokens" in cols else None
    lo = np.array([float(r["output_tokens"]) for r in rows]) if "output_tokens" in cols else None
    classes = [r["class"] for r in rows] if "class" in cols else None
    return t, li, lo, classes


def generate(sc: Scenario, seed: int) -> Requests:
    rng = np.random.default_rng([seed, 0xC0FFEE])
    classes = sc.workload.classes
    shares = np.array([c.share for c in classes], float)
    trace_in = trace_out = None
    if sc.workload.arrivals.kind == "trace":
        t, trace_in, trace_out, names = _trace(sc)
        order = np.argsort(t, kind="stable")
        t = t[order]
        keep = t < sc.duration_s
        t = t[keep]
        if names is not None:
            index = {c.name: i for i, c in enumerate(classes)}
            unknown = sorted({n for n in names if n not in index})
            if unknown:
                raise ScenarioError(f"workload.arrivals.file: unknown class(es) {unknown}")
            cls = np.array([index[n] for n in names])[order][keep]
        else:
            cls = rng.choice(len(classes), size=len(t), p=shares / shares.sum())
        trace_in = trace_in[order][keep] if trace_in is not None else None
        trace_out = trace_out[order][keep] if trace_out is not None else None
    else:
        t = _arrival_times(sc, rng)
        cls = rng.choice(len(classes), size=len(t), p=shares / shares.sum())
    n = len(t)
    l_in, l_out = np.empty(n), np.empty(n)
    attach, qmin, dl = np.zeros(n), np.zeros(n), np.empty(n)
    cat = sc.catalogue
    for k, c in enumerate(classes):
        idx = np.flatnonzero(cls == k)
        m = len(idx)
        lin = draw(c.input_tokens, m, rng) if trace_in is None else trace_in[idx]
        lout = draw(c.output_tokens, m, rng) if trace_out is None else trace_out[idx]
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
