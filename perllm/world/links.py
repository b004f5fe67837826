"""Link bandwidth over time: nominal × U(1−noise, 1+noise) redrawn each slot (the paper's
±20 %), scaled by scenario windows (collapses) or replaced by a trace."""

from __future__ import annotations

import csv
from fnmatch import fnmatch
from typing import Any

import numpy as np
from numpy.typing import NDArray

from perllm.contract import MAX_LINK_MBPS, MIN_LINK_MBPS
from perllm.costmodel import CostTable
from perllm.scenario import Scenario, ScenarioError, Window
from perllm.world.trace import open_csv


def _targets(w: Window, names: tuple[str, ...], tiers: tuple[str, ...]) -> NDArray[np.bool_]:
    if w.servers is None:
        return np.ones(len(names), bool)
    return np.array(
        [any(w.selects(p, n, t) for p in w.servers) for n, t in zip(names, tiers, strict=True)]
    )


def nominal_matrix(sc: Scenario, t: CostTable, n_slots: int) -> NDArray[np.float64]:
    """Nominal bandwidth [slots, servers] in Mbps, before noise."""
    nominal = np.tile(t.link_mbps, (n_slots, 1))
    if sc.bandwidth.trace:
        nominal = _apply_trace(sc.bandwidth.trace, nominal, t.server_names, sc.slot_s)
    slot_t = np.arange(n_slots) * sc.slot_s
    for w in sc.bandwidth.windows:
        rows = (slot_t >= w.at_s) & (slot_t < w.until_s)
        nominal[np.ix_(rows, _targets(w, t.server_names, t.tiers))] *= w.factor
    if sc.bandwidth.windows and nominal.size:
        # (Loading checks the links' windows; a trace's values are only known here.)
        for k, j in (
            np.unravel_index(int(f(nominal)), nominal.shape) for f in (np.argmin, np.argmax)
        ):
            mbps = nominal[k, j]
            if not MIN_LINK_MBPS <= mbps <= MAX_LINK_MBPS:
                limit = (
                    f"below the {MIN_LINK_MBPS:g} Mbps (1 kbit/s) a link has at least"
                    if mbps < MIN_LINK_MBPS
                    else f"above the {MAX_LINK_MBPS:,.0f} Mbps (10 Tbit/s) a link has at most"
                )
                raise ScenarioError(
                    f"bandwidth.windows: server {t.server_names[j]!r}'s link would be "
                    f"{mbps:.3g} Mbps from {k * sc.slot_s:g} s, {limit}"
                )
    return nominal


def bandwidth_matrix(sc: Scenario, t: CostTable, n_slots: int, seed: int) -> NDArray[np.float64]:
    rng = np.random.default_rng([seed, 0xB4D])
    noise = rng.uniform(1 - t.link_noise, 1 + t.link_noise, size=(n_slots, t.n_servers))
    return nominal_matrix(sc, t, n_slots) * noise


# Rows of a bandwidth trace at most. Each is kept as a dict (~0.5 KB) until the file is
# read whole, so an unbounded file ran out of memory instead of being refused; a million
# rows is a step every 0.1 s for a day on one link, or one a slot on 100 servers for 3 h.
MAX_BANDWIDTH_ROWS = 1_000_000


def _apply_trace(
    path: str, nominal: NDArray[np.float64], names: tuple[str, ...], slot_s: float
) -> NDArray[np.float64]:
    """CSV `time_s,server,mbps`: step function per server from each row's time on."""
    with open_csv(path, "bandwidth.trace") as f:
        reader = csv.DictReader(f)
        # Spaces around a name are no part of it, as in an arrival trace's header.
        header = [c.strip() for c in reader.fieldnames or []]
        reader.fieldnames = header
        rows: list[tuple[int, dict[Any, Any]]] = []
        for row in reader:  # (a cap, not a list of any size: each row is a dict)
            if len(rows) >= MAX_BANDWIDTH_ROWS:
                raise ScenarioError(
                    f"bandwidth.trace: {path}: more than {MAX_BANDWIDTH_ROWS:,} rows (line "
                    f"{reader.line_num}); a bandwidth step per slot and server is all a run reads"
                )
            rows.append((reader.line_num, row))
    if not rows or not {"time_s", "server", "mbps"} <= set(header):
        raise ScenarioError(f"bandwidth.trace: {path} needs columns time_s,server,mbps")
    # A column or a cell the format has not was ignored unsaid (a spreadsheet's column
    # without a name may stay, empty).
    unknown = [c for c in header if c.strip() and c not in ("time_s", "server", "mbps")]
    if unknown:
        raise ScenarioError(
            f"bandwidth.trace: {path}: line 1: unknown column(s) {unknown[:10]}; the "
            "format's columns: time_s,server,mbps"
        )
    for line, row in rows:
        stray = [v for k, v in row.items() if k is None or not k.strip()]
        if any((v or "").strip() for v in _flat(stray)):
            raise ScenarioError(
                f"bandwidth.trace: {path}: line {line}: a value beyond the header's columns "
                "time_s,server,mbps"
            )
    index = {n: j for j, n in enumerate(names)}
    out = nominal.copy()
    parsed = [_trace_row(path, line, row) for line, row in rows]
    for time_s, server, mbps in sorted(parsed, key=lambda x: x[0]):
        matched = [j for n, j in index.items() if fnmatch(n, server)]
        if not matched:
            raise ScenarioError(f"bandwidth.trace: unknown server {server!r}")
        # A row before 0 holds from the start (a negative index would be the run's end).
        first = max(0, int(np.ceil(time_s / slot_s)))
        out[first:, matched] = mbps
    return out


def _flat(values: list[str | list[str] | None]) -> list[str | None]:
    """The cells of a DictReader row's stray values (its extra cells are one list)."""
    return [x for v in values for x in (v if isinstance(v, list) else [v])]


def _trace_row(path: str, line: int, row: dict[str, str | None]) -> tuple[float, str, float]:
    """(time_s, server, mbps) of one trace row; a `ScenarioError` naming the line."""
    try:
        time_s, mbps = float(row["time_s"] or ""), float(row["mbps"] or "")
        server = row["server"].strip() if row["server"] is not None else None
    except ValueError as e:
        raise ScenarioError(f"bandwidth.trace: {path}: line {line}: malformed row ({e})") from None
    if server is None or not (np.isfinite(time_s) and np.isfinite(mbps)):
        raise ScenarioError(
            f"bandwidth.trace: {path}: line {line}: needs a finite time_s, a server and a "
            "finite mbps"
        )
    if not MIN_LINK_MBPS <= mbps <= MAX_LINK_MBPS:
        raise ScenarioError(
            f"bandwidth.trace: {path}: line {line}: mbps {mbps:g} is outside "
            f"[{MIN_LINK_MBPS:g}, {MAX_LINK_MBPS:g}] (1 kbit/s to 10 Tbit/s, as a link's)"
        )
    return time_s, server, mbps
