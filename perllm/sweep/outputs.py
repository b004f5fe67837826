"""A sweep's files: `<out>/<sweep>.json`, `.csv` (one row per point and policy) and `.png`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from perllm.sweep.metrics import BOUND_METRICS, METRICS
from perllm.sweep.run import SweepResult


def csv_columns() -> list[str]:
    cols = ["sweep", "scenario", "axis", "value", "policy", "seeds", "duration_s", "requests"]
    cols.append("seeds_without_requests")
    for m in METRICS:
        if m.key in BOUND_METRICS:
            continue
        cols += [m.key, f"{m.key}_std"]
    return [
        *cols,
        "bound_seeds",
        "bound_success_rate",
        "bound_energy_j_per_service",
        *BOUND_METRICS,
        "energy_ratio_inf_seeds",
    ]


def write_outputs(res: SweepResult, out: Path) -> list[Path]:
    """`<out>/<sweep>.json`, `.csv` (one row per point and policy) and `.png`."""
    from perllm import plots

    out.mkdir(parents=True, exist_ok=True)
    data = res.to_dict()
    jp = out / f"{res.sweep.name}.json"
    jp.write_text(json.dumps(data, indent=1) + "\n")
    cp = out / f"{res.sweep.name}.csv"
    with cp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=csv_columns(), extrasaction="ignore")
        w.writeheader()
        for row in res.rows():  # not JSON's: an infinite energy ratio is written inf
            w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    pp = plots.sweep_curves(data, out / f"{res.sweep.name}.png")
    return [jp, cp, pp]
