"""A scenario file for tests whose arrivals come from a trace the test writes: the paper
testbed (paper-llama2-7b) with `workload.arrivals` read from `rows` (CSV text)."""

from __future__ import annotations

from pathlib import Path

import yaml

PAPER = Path(__file__).parents[2] / "perllm/scenarios/paper-llama2-7b.yaml"


def trace_scenario(tmp_path: Path, rows: str) -> Path:
    (tmp_path / "t.csv").write_text(rows)
    sc = yaml.safe_load(PAPER.read_text())
    sc["workload"]["arrivals"] = {"kind": "trace", "file": "t.csv"}
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(sc))
    return f
