"""Command-line numbers: float options are declared through `number` (or `wait_seconds`),
so the checks that typer leaves to us are written once. typer's ranges refuse NaN, but an
option with only `min=` takes `inf` (`--timeout inf`, `--duration inf`): a thread's
`Event.wait(inf)` then raises OverflowError, an infinite duration never ends. (The
operator's `--status-interval`, the agent's probe options and `sweep --duration` are
checked where they are used: `Config`, `Prober`, the sweep's own argument check.)"""

from __future__ import annotations

import math
from typing import Any

import typer

from perllm.waits import MAX_WAIT_S


def finite(value: float | None) -> float | None:
    """A typer callback: `value` if it is a finite number (or not given), else a usage
    error naming the option (exit 2)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number, got {value}")
    return value


def number(default: Any = ..., *param_decls: str, **kw: Any) -> Any:
    """`typer.Option` of a float that must be finite (`finite`); the rest as typer takes it."""
    return typer.Option(default, *param_decls, callback=finite, **kw)


def wait_seconds(default: float, *param_decls: str, **kw: Any) -> Any:
    """`number` of seconds a thread or socket waits: at most `perllm.waits.MAX_WAIT_S`."""
    return number(default, *param_decls, max=MAX_WAIT_S, **kw)
