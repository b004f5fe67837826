"""Checks of command-line numbers that typer leaves to us. Its ranges refuse NaN, but an
option with only `min=` takes `inf` (`--timeout inf`, `--duration inf`): a thread's
`Event.wait(inf)` then raises OverflowError, an infinite duration never ends. Every float
option of the CLIs takes `callback=finite`, so that holds whatever bounds it has (and
whatever typer version parses it)."""

from __future__ import annotations

import math

import typer


def finite(value: float | None) -> float | None:
    """A typer callback: `value` if it is a finite number (or not given), else a usage
    error naming the option (exit 2)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number, got {value}")
    return value
