"""Trace files of arrivals: the CSV formats a scenario's `arrivals.file` may name, read
into columns (arrival seconds, token counts, class) in bounded memory."""

from __future__ import annotations

import csv
import math
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from numpy.typing import NDArray

from perllm.scenario import ScenarioError

Columns = tuple[
    NDArray[np.float64], NDArray[np.float64] | None, NDArray[np.float64] | None, list[str] | None
]


# Rows of one trace file at most: the columns are kept as float arrays (8 bytes a value),
# so a file of any size is read in bounded memory, or refused.
MAX_TRACE_ROWS = 10_000_000


def read_columns(path: str, label: str) -> Columns:
    """A trace CSV: `time_s[,class][,input_tokens,output_tokens]` (or one headerless
    column of seconds), or the Azure format `TIMESTAMP,ContextTokens,GeneratedTokens`
    (timestamps become seconds from the first). A bad row is a `ScenarioError` naming
    the file and line."""
    with open_csv(path, label) as f:
        return _parse(csv.reader(f), path, label)


@contextmanager
def open_csv(path: str, label: str) -> Iterator[TextIO]:
    """A trace file opened for a `csv` reader (arrival and bandwidth traces alike); what
    fails reading it, a `ScenarioError` naming `label` and the file."""
    try:
        # utf-8-sig: a spreadsheet's byte-order mark is no part of the first column's name.
        with Path(path).open(newline="", encoding="utf-8-sig") as f:
            yield f
    except OSError as e:  # removed or unreadable since the scenario was loaded
        raise ScenarioError(f"{label}: {path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ScenarioError(f"{label}: {path}: not a UTF-8 text (CSV) file") from None
    except csv.Error as e:  # a NUL byte, a quote left open
        raise ScenarioError(f"{label}: {path}: not a CSV file ({e})") from None


def _numbers(row: list[str]) -> bool:
    """A row of numbers (its empty cells aside: a spreadsheet's trailing comma), no header."""
    try:
        [float(c) for c in row if c.strip()]
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


def read_classes(path: str) -> tuple[NDArray[np.float64], list[str] | None]:
    """Arrival seconds of a trace file in file order, and its `class` column (or None)."""
    t, _, _, names = read_columns(path, "arrivals.file")
    return t, names
