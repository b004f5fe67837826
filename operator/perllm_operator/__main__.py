"""`python -m perllm_operator [--namespace NS]... [--liveness URL] [--verbose]`."""

from __future__ import annotations

import argparse

from perllm_operator.main import run


def main() -> None:
    p = argparse.ArgumentParser(prog="perllm_operator")
    p.add_argument("--namespace", "-n", action="append", default=[],
                   help="watch only this namespace (repeatable; default: all)")
    p.add_argument("--liveness", default=None, help="e.g. http://0.0.0.0:8080/healthz")
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args()
    run(a.namespace, a.liveness, a.verbose)


if __name__ == "__main__":
    main()
