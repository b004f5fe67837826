"""The components' logging set-up from their `--log-level` flag (agent, router, twin,
extender): one format, and an unknown level is a usage error naming the flag (logging's
own ValueError was a traceback)."""

from __future__ import annotations

import logging

import typer

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(level: str) -> None:
    if level.upper() not in logging.getLevelNamesMapping():
        raise typer.BadParameter(
            f"{level!r}: expected debug, info, warning or error", param_hint="--log-level"
        )
    logging.basicConfig(level=level.upper(), format=FORMAT)
