"""Arrival processes of the world's workload: when each request arrives and of which
class (renewal processes warped by rate windows, trace replay, per-class processes)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from perllm.scenario import Scenario, ScenarioError, Window
from perllm.world.trace import Columns, read_columns


def rate_factor(windows: Sequence[Window], t: float) -> float:
    """The arrival-rate multiplier at time t: the product of the windows covering it."""
    f = 1.0
    for w in windows:
        if w.at_s <= t < w.until_s:
            f *= w.factor
    return f


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


def _trace(sc: Scenario) -> Columns:
    path = sc.workload.arrivals.file
    assert path is not None
    return read_columns(path, "workload.arrivals.file")


def _class_trace(sc: Scenario, k: int, path: str) -> Columns:
    """Class k's own trace: its rows (every row without a `class` column), by time,
    in [0, duration_s)."""
    name = sc.workload.classes[k].name
    t, li, lo, names = read_columns(path, f"workload.classes[{k}].arrivals.file")
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


def request_arrivals(sc: Scenario, seed: int, rng: np.random.Generator) -> Arrivals:
    """Every request's arrival time and class, and the trace's token counts (NaN where no
    trace gives them), by time: the scenario-wide process (or trace), or that mixed with
    the classes' own (`_mixed_arrivals`)."""
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
    return t, cls, tin, tout
