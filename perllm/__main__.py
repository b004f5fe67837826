"""`python -m perllm` and the `perllm` command (pyproject's entry point `main`)."""

from __future__ import annotations

import importlib
import sys


def run(module: str, prog_name: str) -> None:
    """Import `module` and run its typer `app`. Ctrl-C while the modules load (about a
    second, before any command runs) was a KeyboardInterrupt traceback: one line, exit
    130, as an interrupted command (`cli_outputs.OneLineInterrupt`). The imports stay
    here, after the handler is set, so startup is no slower."""
    try:
        app = importlib.import_module(module).app
        app(prog_name=prog_name)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        raise SystemExit(130) from None


def main() -> None:
    run("perllm.cli", "perllm")


if __name__ == "__main__":
    main()
