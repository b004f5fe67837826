"""The paper's experiment: every policy on the four reference scenarios, 3 seeds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from perllm import policies
from perllm.cli import DEFAULT_POLICY_ORDER, _print_report
from perllm.cli_args import MAX_SEEDS, at_least
from perllm.experiment import run_experiment, write_plots
from perllm.scenario import REFERENCE_SCENARIOS, load_scenario


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("out/paper"))
    ap.add_argument("--seeds", type=at_least(1, int, MAX_SEEDS), default=3, help="seeds 1..N")
    args = ap.parse_args()
    names = [p for p in DEFAULT_POLICY_ORDER if p in policies.available()]
    exp = run_experiment(
        [load_scenario(s) for s in REFERENCE_SCENARIOS],
        names,
        list(range(1, args.seeds + 1)),
        bound=True,  # the hindsight bound and every policy's distance to it (docs/bound.md)
        bound_progress=print,
    )
    _print_report(exp.report, names, detail=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(exp.report, indent=2, sort_keys=True))
    for p in write_plots(exp, args.out):
        print(p)


if __name__ == "__main__":
    main()
