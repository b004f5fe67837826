"""Run the operator in-process: standalone kopf (no peering objects) on a registry and
memo built from the settings."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import kopf

from perllm_operator.config import Config
from perllm_operator.registry import build


def run_options(namespaces: Sequence[str] = (), liveness: str | None = None) -> dict[str, Any]:
    """`kopf.run` keywords besides the registry and memo: no namespace means all."""
    return {
        "standalone": True,
        "clusterwide": not namespaces,
        "namespaces": tuple(namespaces),
        "liveness_endpoint": liveness,
    }


def run(
    namespaces: Sequence[str] = (),
    liveness: str | None = None,
    verbose: bool = False,
    prometheus: str | None = None,
    status_interval: float | None = None,
    env: Mapping[str, str] | None = None,
) -> None:
    """Blocks until the operator stops (SIGINT/SIGTERM). Every setting is validated before
    kopf starts, so a bad value fails fast, naming it; `env` defaults to the process's."""
    config = Config.load(os.environ if env is None else env, prometheus, status_interval)
    op = build(config)
    # As kopf's CLI does: INFO (DEBUG with --verbose), messages prefixed with their object.
    kopf.configure(verbose=verbose, log_prefix=True)
    kopf.run(registry=op.registry, memo=op.memo, **run_options(namespaces, liveness))
