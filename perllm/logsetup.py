"""The components' logging set-up from their `--log-level` flag (agent, router, twin,
extender): one format, and an unknown level is a usage error naming the flag (logging's
own ValueError was a traceback)."""

from __future__ import annotations

import logging

import typer

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The levels both logging and uvicorn know (the extender and the router hand the flag to
# uvicorn, which has no `warn`, `fatal` or `notset`, and logging no `trace`); the chart's
# values schema offers exactly these for `extender.logLevel`.
LEVELS = ("critical", "error", "warning", "info", "debug")


def configure(level: str) -> None:
    if level.lower() not in LEVELS:
        raise typer.BadParameter(
            f"{level!r}: expected {', '.join(LEVELS[:-1])} or {LEVELS[-1]}",
            param_hint="--log-level",
        )
    logging.basicConfig(level=level.upper(), format=FORMAT)
