"""Command-line numbers, declared once here so that every command checks them alike.

Float options are declared through `number` (or `wait_seconds`): the value must be a finite
number (`inf` would pass a `min=` alone: a thread's `Event.wait(inf)` raises OverflowError,
an infinite duration never ends), then within the option's range. Both checks are the
option's parser, so `--speed nan` says "must be a finite number", not "should be ≤ 1000":
typer checks its own `min=`/`max=` before any callback, and NaN fails any range. The range
is still shown in `--help`. (`Config` and `Prober` check the operator's `--status-interval`
and the agent's probe options again where they are used; `sweep --duration` is checked
with the sweep's other arguments.)

Ports are declared through `port` (at most 65535), seeds through `seed` (not negative:
numpy refuses a negative seed with a traceback), a number of seeds through `seed_count`
(1..`MAX_SEEDS`: `perllm sweep` set up every job before the first ran, and a million
seeds held the machine's memory before any progress was shown; `perllm simulate --seeds
1e21` was an OverflowError traceback). The bench scripts' argparse flags take `at_least`,
the same checks."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

import typer

from perllm.waits import MAX_WAIT_S

MAX_PORT = 65535
# Seeds 1..N of `perllm simulate` and `perllm sweep`: a thousand is a precise mean (the
# README's results use 3) and already hours of runs.
MAX_SEEDS = 1000


def check_number(value: float, lo: float | None = None, hi: float | None = None) -> float:
    """`value` if it is finite and within [lo, hi], else `typer.BadParameter` (a usage
    error naming the option, exit 2): the non-finite case first, whatever the range."""
    if not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number, got {value}")
    got = value if isinstance(value, int) else f"{value:g}"  # (an integer as typed)
    if lo is not None and value < lo:
        raise typer.BadParameter(f"must be ≥ {lo:g}, got {got}")
    if hi is not None and value > hi:
        raise typer.BadParameter(f"must be ≤ {hi:g}, got {got}")
    return value


def _parser(
    lo: float | None, hi: float | None, kind: type[int] | type[float] = float
) -> Callable[[Any], Any]:
    def parse(text: Any) -> Any:
        try:
            value = kind(text)
        except (TypeError, ValueError):
            what = "an integer" if kind is int else "a number"
            raise typer.BadParameter(f"{text!r} is not {what}") from None
        return check_number(value, lo, hi)

    return parse


def number(
    default: Any = ...,
    *param_decls: str,
    min: float | None = None,  # (typer's names)
    max: float | None = None,
    **kw: Any,
) -> Any:
    """`typer.Option` of a float that must be finite and within [min, max] (`check_number`);
    the rest as typer takes it."""
    return typer.Option(default, *param_decls, min=min, max=max, parser=_parser(min, max), **kw)


def wait_seconds(default: float, *param_decls: str, **kw: Any) -> Any:
    """`number` of seconds a thread or socket waits: at most `perllm.waits.MAX_WAIT_S`."""
    return number(default, *param_decls, max=MAX_WAIT_S, **kw)


def port(default: int | None, *param_decls: str, zero: bool = False, **kw: Any) -> Any:
    """`typer.Option` of a TCP port: 1..65535, or 0..65535 where `zero` (0 meaning any free
    port, or none, as the option's help says)."""
    return integer(default, *param_decls, min=0 if zero else 1, max=MAX_PORT, **kw)


def seed(default: int = 0, *param_decls: str, **kw: Any) -> Any:
    """`typer.Option` of a random seed: an integer ≥ 0."""
    return integer(default, *param_decls, min=0, **kw)


def integer(default: Any, *param_decls: str, min: int, max: int | None = None, **kw: Any) -> Any:
    """`typer.Option` of an integer within [min, max] (`check_number`'s messages)."""
    return typer.Option(
        default, *param_decls, min=min, max=max, parser=_parser(min, max, int), **kw
    )


def seed_count(default: int, *param_decls: str, **kw: Any) -> Any:
    """`typer.Option` of a number of seeds (seeds 1..N): 1 to `MAX_SEEDS`."""
    return integer(default, *param_decls, min=1, max=MAX_SEEDS, **kw)


def at_least(
    low: float, kind: type[int] | type[float] = float, high: float | None = None
) -> Callable[[str], Any]:
    """An argparse `type` for the bench scripts: a finite number of `kind` in [low, high],
    else a usage error naming the flag (exit 2), as `number` is for the typer commands."""

    def parse(text: str) -> Any:
        try:
            x = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        try:
            return check_number(x, low, high)
        except typer.BadParameter as e:
            raise argparse.ArgumentTypeError(e.message) from None

    return parse
