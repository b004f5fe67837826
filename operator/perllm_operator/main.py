"""Run the operator in-process (kopf's CLI, standalone: no peering objects)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from perllm_operator import HANDLERS_MODULE
from perllm_operator.config import ENV_PROMETHEUS, ENV_STATUS_INTERVAL, Config


def kopf_args(
    namespaces: Sequence[str] = (), liveness: str | None = None, verbose: bool = False
) -> list[str]:
    args = ["run", "--standalone", "-m", HANDLERS_MODULE]
    args += [f"--namespace={ns}" for ns in namespaces] if namespaces else ["--all-namespaces"]
    if liveness:
        args.append(f"--liveness={liveness}")
    if verbose:
        args.append("--verbose")
    return args


def configure_env(prometheus: str | None = None, status_interval: float | None = None) -> Config:
    """Hand the flags to the handlers module (kopf imports it) through the environment;
    validate every setting before kopf starts, so a bad value fails fast, naming it."""
    if prometheus:
        os.environ[ENV_PROMETHEUS] = prometheus
    if status_interval is not None:
        os.environ[ENV_STATUS_INTERVAL] = f"{status_interval:g}"
    return Config.from_env()


def run(
    namespaces: Sequence[str] = (),
    liveness: str | None = None,
    verbose: bool = False,
    prometheus: str | None = None,
    status_interval: float | None = None,
) -> None:
    """Blocks until the operator stops (SIGINT/SIGTERM)."""
    configure_env(prometheus, status_interval)
    import kopf.cli

    kopf.cli.main(
        args=kopf_args(namespaces, liveness, verbose),
        prog_name="perllm operator",
        standalone_mode=True,
    )
