"""Workload: the requests of one run, drawn up front (vectorised, seeded)."""

from __future__ import annotations

import csv
import itertools
import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

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


def arrival_times(
    kind: str,
    rate_rps: float,
    cv: float,
    windows: Sequence[Window],
    duration_s: float,
    rng: np.random.Generator,
) -> NDArray[np.float64]:
    """Arrival times in [0, duration_s) of a renewal process at `rate_rps` whose rate is
    scaled by `windows`: exponential gaps (`poisson`) or gamma gaps with coefficient of
    variation `cv` (`gamma`). Gaps are drawn in "operational time" at rate 1, then the
    time axis is warped by the rate schedule (flash crowds)."""
    edges = sorted({0.0, duration_s, *[w.at_s for w in windows], *[w.until_s for w in windows]})
    edges = [e for e in edges if e <= duration_s]
    rates = []
    for lo, _ in itertools.pairwise(edges):
        # Window bounds are edges: a window covers the whole interval iff it covers `lo`.
        rates.append(rate_rps * rate_factor(windows, lo))
    cum = np.concatenate([[0.0], np.cumsum(np.diff(edges) * np.array(rates))])
    expected = cum[-1]
    n_draw = int(expected * 1.2 + 10 * np.sqrt(expected) + 50)
    op = np.cumsum(_gaps(kind, cv, n_draw, rng))
    while op[-1] < expected:  # not enough gaps (a very bursty draw): draw on
        op = np.concatenate([op, op[-1] + np.cumsum(_gaps(kind, cv, n_draw, rng))])
    op = op[op < expected]
    return np.asarray(np.interp(op, cum, np.asarray(edges, float)), dtype=float)


def _gaps(kind: str, cv: float, n: int, rng: np.random.Generator) -> NDArray[np.float64]:
    """n inter-arrival gaps of mean 1: exponential, or gamma with shape 1/cv² (CV cv)."""
    if kind == "poisson":
        return rng.exponential(1.0, n)
    k = 1.0 / cv**2
    return rng.gamma(k, 1.0 / k, n)


def _arrival_times(sc: Scenario, rng: np.random.Generator) -> NDArray[np.float64]:
    """The scenario-wide process at its full rate (every class takes a share)."""
    a = sc.workload.arrivals
    assert a.rate_rps is not None
    return arrival_times(a.kind, a.rate_rps, a.cv, sc.workload.rate_windows, sc.duration_s, rng)


Columns = tuple[
    NDArray[np.float64], NDArray[np.float64] | None, NDArray[np.float64] | None, list[str] | None
]


# Rows of one trace file at most: the columns are kept as float arrays (8 bytes a value),
# so a file of any size is read in bounded memory, or refused.
MAX_TRACE_ROWS = 10_000_000


def _columns(path: str, label: str) -> Columns:
    """A trace CSV: `time_s[,class][,input_tokens,output_tokens]` (or one headerless
    column of seconds), or the Azure format `TIMESTAMP,ContextTokens,GeneratedTokens`
    (timestamps become seconds from the first). A bad row is a `ScenarioError` naming
    the file and line."""
    try:
        # utf-8-sig: a spreadsheet's byte-order mark is no part of the first column's name.
        with Path(path).open(newline="", encoding="utf-8-sig") as f:
            return _parse(csv.reader(f), path, label)
    except OSError as e:  # removed or unreadable since the scenario was loaded
        raise ScenarioError(f"{label}: {path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ScenarioError(f"{label}: {path}: not a UTF-8 text (CSV) file") from None
    except csv.Error as e:  # a NUL byte, a quote left open
        raise ScenarioError(f"{label}: {path}: not a CSV file ({e})") from None


def _numbers(row: list[str]) -> bool:
    try:
        [float(c) for c in row]
    except ValueError:
        return False
    return True


# The columns a trace row is read from: time, input tokens, output tokens, class.
_PLAIN = ("time_s", "input_tokens", "output_tokens", "class")
_AZURE = ("TIMESTAMP", "ContextTokens", "GeneratedTokens", None)


def _header(row: list[str], path: str, label: str, line: int) -> tuple[bool, list[int | None]]:
    """(Azure format?, the index of each of `_PLAIN`'s or `_AZURE`'s columns) of a header."""
    header = [c.strip() for c in row]
    azure = "TIMESTAMP" in header
    if not azure and "time_s" not in header:
        raise ScenarioError(
            f"{label}: {path} needs a time_s or TIMESTAMP column (its header: "
            f"{','.join(header)[:120]})"
        )
    # A column the format has not was ignored, its values with it (`input_token`, a typo,
    # drew every prompt from the class's distribution instead); a repeated one, all but
    # its first. (A column without a name may stay, empty: a spreadsheet's trailing comma.)
    known = _AZURE if azure else _PLAIN
    unknown = [c for c in header if c and c not in known]
    twice = sorted({c for c in header if c and header.count(c) > 1})
    if unknown or twice:
        cols = (
            "TIMESTAMP,ContextTokens,GeneratedTokens"
            if azure
            else ("time_s[,class][,input_tokens,output_tokens]")
        )
        what = f"unknown column(s) {unknown[:10]}" if unknown else f"column(s) {twice} twice"
        raise ScenarioError(f"{label}: {path}: line {line}: {what}; the format's columns: {cols}")
    idx = [header.index(c) if c in header else None for c in (_AZURE if azure else _PLAIN)]
    if azure and None in idx[:3]:
        raise ScenarioError(
            f"{label}: {path}: the Azure format needs columns TIMESTAMP, ContextTokens and "
            "GeneratedTokens"
        )
    return azure, idx


def _parse(reader: Any, path: str, label: str) -> Columns:
    """The columns of `reader`'s rows; a file whose first row is all numbers has no header
    and one column of arrival seconds (`time_s`)."""
    idx: list[int | None] | None = None
    azure = False
    # The header's columns and those without a name (a file without one: 1 and none).
    header, width, unnamed = False, 1, frozenset[int]()
    t, li, lo = array("d"), array("d"), array("d")
    names: list[str] = []
    interned: dict[str, str] = {}  # one string a class, not one a row
    for r in reader:
        if not any(c.strip() for c in r):
            continue
        line = reader.line_num
        if idx is None:
            if not _numbers(r):
                azure, idx = _header(r, path, label, line)
                header, width = True, len(r)
                unnamed = frozenset(i for i, c in enumerate(r) if not c.strip())
                continue
            idx = [0, None, None, None]
        if len(t) >= MAX_TRACE_ROWS:
            raise ScenarioError(
                f"{label}: {path}: more than {MAX_TRACE_ROWS:,} rows (line {line}); "
                "a run replays at most that many"
            )
        if len(r) > width or unnamed:  # (a value no column reads was dropped unsaid)
            stray = [i for i, c in enumerate(r) if (i >= width or i in unnamed) and c.strip()]
            if stray:
                j = stray[0]
                where = (
                    "under a header column without a name"
                    if j < width
                    else f"beyond the header's {width} column(s)"
                    if header
                    else "beyond the one column (arrival seconds) of a file without a header"
                )
                raise ScenarioError(
                    f"{label}: {path}: line {line}: a value in cell {j + 1} "
                    f"({r[j].strip()[:40]!r}), {where}"
                )
        try:
            cell = [r[i].strip() if i is not None else None for i in idx]
        except IndexError:
            raise ScenarioError(
                f"{label}: {path}: line {line}: malformed row (only {len(r)} cells)"
            ) from None
        try:
            if azure:
                ts = datetime.fromisoformat(str(cell[0])[:26]).timestamp()
            else:
                ts = float(str(cell[0]))
            tokens = [float(c) if c is not None else None for c in cell[1:3]]
        except ValueError as e:
            raise ScenarioError(f"{label}: {path}: line {line}: malformed row ({e})") from None
        if not math.isfinite(ts):
            raise ScenarioError(f"{label}: {path}: line {line}: the time is not finite ({ts})")
        for x, col in zip(tokens, (li, lo), strict=True):
            if x is None:
                continue
            if not (math.isfinite(x) and x >= 0):
                raise ScenarioError(
                    f"{label}: {path}: line {line}: a token count is a finite number >= 0, "
                    f"got {x:g}"
                )
            col.append(x)
        t.append(ts)
        if idx[3] is not None:
            name = str(cell[3])
            names.append(interned.setdefault(name, name))
    if not t or idx is None:
        raise ScenarioError(f"{label}: {path} has no rows")
    times = np.frombuffer(t, dtype=np.float64).copy()
    if azure:
        times -= times.min()
    return (
        times,
        np.frombuffer(li, dtype=np.float64).copy() if idx[1] is not None else None,
        np.frombuffer(lo, dtype=np.float64).copy() if idx[2] is not None else None,
        names if idx[3] is not None else None,
    )


def _trace(sc: Scenario) -> Columns:
    path = sc.workload.arrivals.file
    assert path is not None
    return _columns(path, "workload.arrivals.file")


def read_classes(path: str) -> tuple[NDArray[np.float64], list[str] | None]:
    """Arrival seconds of a trace file in file order, and its `class` column (or None)."""
    t, _, _, names = _columns(path, "arrivals.file")
    return t, names


def _class_trace(sc: Scenario, k: int, path: str) -> Columns:
    """Class k's own trace: its rows (every row without a `class` column), by time,
    in [0, duration_s)."""
    name = sc.workload.classes[k].name
    t, li, lo, names = _columns(path, f"workload.classes[{k}].arrivals.file")
    rows = np.arange(len(t))
    if names is not None:
        rows = np.flatnonzero(np.array([n == name for n in names], bool))
        if not len(rows):  # (a typo in the file or the class: no arrivals, silently)
            raise ScenarioError(
                f"workload.classes[{k}].arrivals.file: {path}: no row of class {name!r} "
                f"(its classes: {sorted(set(names))[:10]})"
            )
    rows = rows[np.argsort(t[rows], kind="stable")]
    rows = rows[(t[rows] >= 0) & (t[rows] < sc.duration_s)]
    return (
        t[rows],
        li[rows] if li is not None else None,
        lo[rows] if lo is not None else None,
        None,
    )


def _nan_if_none(a: NDArray[np.float64] | None, n: int) -> NDArray[np.float64]:
    return np.full(n, np.nan) if a is None else np.asarray(a, float)


Arrivals = tuple[NDArray[np.float64], NDArray[np.intp], NDArray[np.float64], NDArray[np.float64]]


def _shared_trace(sc: Scenario, shared: list[int], rng: np.random.Generator) -> Arrivals:
    """The scenario-wide trace, for the classes `shared` that set no arrivals of their
    own. Rows whose `class` names a class with its own arrivals are skipped; without a
    `class` column, classes are drawn among `shared` by share."""
    classes = sc.workload.classes
    t, tin, tout, names = _trace(sc)
    order = np.argsort(t, kind="stable")
    # As a class's own trace: a row before 0 is no arrival of the run (it took the last
    # slot's bandwidth, index -1).
    keep = (t[order] >= 0) & (t[order] < sc.duration_s)
    rows = order[keep]
    if names is not None:
        index = {c.name: i for i, c in enumerate(classes)}
        unknown = sorted({n for n in names if n not in index})
        if unknown:
            raise ScenarioError(
                f"workload.arrivals.file: {sc.workload.arrivals.file}: unknown class(es) "
                f"{unknown[:10]}; classes: {sorted(index)}"
            )
        cls = np.array([index[n] for n in names], np.intp)[rows]
        mine = np.isin(cls, shared)
        rows, cls = rows[mine], cls[mine]
    else:
        share = np.array([classes[k].share for k in shared], float)
        pick = rng.choice(len(shared), size=len(rows), p=share / share.sum())
        cls = np.asarray(shared, np.intp)[pick]
    return (
        t[rows],
        cls,
        _nan_if_none(tin[rows] if tin is not None else None, len(rows)),
        _nan_if_none(tout[rows] if tout is not None else None, len(rows)),
    )


def _mixed_arrivals(sc: Scenario, seed: int, rng: np.random.Generator) -> Arrivals:
    """Arrivals when some classes set their own process: the scenario-wide process for
    the other classes (at their share of the rate, split among them by share), and one
    independent process per class that sets its own (its own random stream), merged by
    time. Token columns are NaN where no trace gives them."""
    wl = sc.workload
    procs = [wl.process(k) for k in range(len(wl.classes))]
    shared = [k for k, p in enumerate(procs) if p is None]
    parts: list[Arrivals] = []
    if shared and wl.arrivals.kind == "trace":
        parts.append(_shared_trace(sc, shared, rng))
    elif shared:
        a = wl.arrivals
        assert a.rate_rps is not None
        total = sum(c.share for c in wl.classes)
        share = np.array([wl.classes[k].share for k in shared], float)
        rate = a.rate_rps * float(share.sum()) / total
        t = arrival_times(a.kind, rate, a.cv, wl.rate_windows, sc.duration_s, rng)
        pick = rng.choice(len(shared), size=len(t), p=share / share.sum())
        nan = np.full(len(t), np.nan)
        parts.append((t, np.asarray(shared, np.intp)[pick], nan, nan))
    for k, p in enumerate(procs):
        if p is None:
            continue
        if p.kind == "trace":
            assert p.file is not None
            t, tin, tout, _ = _class_trace(sc, k, p.file)
        else:
            own = np.random.default_rng([seed, 0xC0FFEE, 0xC1A55, k])
            t = arrival_times(p.kind, p.rate_rps, p.cv, p.windows, sc.duration_s, own)
            tin = tout = None
        parts.append(
            (t, np.full(len(t), k, np.intp), _nan_if_none(tin, len(t)), _nan_if_none(tout, len(t)))
        )
    t = np.concatenate([q[0] for q in parts])
    order = np.argsort(t, kind="stable")
    return (
        t[order],
        np.concatenate([q[1] for q in parts])[order],
        np.concatenate([q[2] for q in parts])[order],
        np.concatenate([q[3] for q in parts])[order],
    )


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
    shares = np.array([c.share for c in classes], float)
    if any(c.arrivals is not None for c in classes):
        t, cls, tin, tout = _mixed_arrivals(sc, seed, rng)
    elif sc.workload.arrivals.kind == "trace":
        t, cls, tin, tout = _shared_trace(sc, list(range(len(classes))), rng)
    else:
        t = _arrival_times(sc, rng)
        cls = rng.choice(len(classes), size=len(t), p=shares / shares.sum())
        tin = tout = np.full(len(t), np.nan)
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
