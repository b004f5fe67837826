"""The sweep curves (docs/sweep.md): every default policy against load (4-24 req/s) and
cloud link bandwidth (300 down to 3 Mbps) on the paper's testbed (paper-llama2-7b) and the
edge-GPU testbed (edge-gpu), 3 seeds, full scenario duration, with the hindsight bound.

    .venv/bin/python bench/sweep.py --out out/sweep              # the full sweep
    .venv/bin/python bench/sweep.py --seeds 1 --duration 300 \\
        --load 4,8,16,24 --cloud-mbps 300,30,3 \\
        -p perllm -p cloud-only -p fineinfer -p clairvoyant-greedy  # the reduced one

Every option is passed on to `perllm sweep`, whose defaults this only fills in.
"""

from __future__ import annotations

import sys

from perllm.sweep.cli import DEFAULT_CLOUD_MBPS, DEFAULT_LOADS, DEFAULT_SCENARIOS


def argv(args: list[str]) -> list[str]:
    """`perllm sweep` arguments: the issue's defaults unless `args` sets them."""
    out = ["sweep", *args]
    given = {a.split("=", 1)[0] for a in args if a.startswith("--")}  # --seeds 1, --seeds=1
    if not given & {"--load", "--load-x", "--cloud-mbps"}:
        out += ["--load", DEFAULT_LOADS, "--cloud-mbps", DEFAULT_CLOUD_MBPS]
    if "--seeds" not in given:
        out += ["--seeds", "3"]
    if "--out" not in given:
        out += ["--out", "out/sweep"]
    if not any(not a.startswith("-") for a in _positional(args)):
        out += DEFAULT_SCENARIOS
    return out


def _positional(args: list[str]) -> list[str]:
    """Arguments that are not options or option values (the scenarios)."""
    flags = {"--bound", "--no-bound"}
    pos, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a.startswith("-"):
            skip = a not in flags and "=" not in a
        else:
            pos.append(a)
    return pos


def main() -> None:
    from perllm.cli import app

    app(argv(sys.argv[1:]), prog_name="bench/sweep.py")


if __name__ == "__main__":
    main()
