"""`python -m perllm_operator [--namespace NS]... [--liveness URL] [--prometheus URL]
[--status-interval S] [--verbose]` (same flags as `perllm operator`)."""

from __future__ import annotations

import argparse
import sys

from perllm_operator.config import ENV_PROMETHEUS, ConfigError
from perllm_operator.main import run


def main() -> None:
    p = argparse.ArgumentParser(prog="perllm_operator")
    p.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="watch only this namespace (repeatable; default: all)",
    )
    p.add_argument("--liveness", default=None, help="e.g. http://0.0.0.0:8080/healthz")
    p.add_argument(
        "--prometheus",
        default=None,
        help=f"Prometheus URL [{ENV_PROMETHEUS}]",
    )
    p.add_argument(
        "--status-interval",
        type=float,
        default=None,
        help="seconds between status refreshes (default 30)",
    )
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args()
    try:
        run(a.namespace, a.liveness, a.verbose, a.prometheus, a.status_interval)
    except ConfigError as e:
        sys.exit(f"perllm_operator: {e}")


if __name__ == "__main__":
    main()
