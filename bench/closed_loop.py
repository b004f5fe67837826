"""The closed loop, longer: `perllm demo` on the demo scenario, then its numbers.

The same run as tests/e2e/test_closed_loop.py (local control plane, Prometheus, twin,
extender, operator, the demo LLMServices) for longer: by default 300 s of wall time at twin
speed x10 (~3,000 simulated seconds), the first 60 s excluded as warm-up. Prints deadline
attainment and joules per request of the actual placements and of each counterfactual
baseline (overall and per service) and writes demo.json and demo.png into --out.

    .venv/bin/python bench/closed_loop.py --out out/closed_loop
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from perllm.demo.config import DemoConfig
from perllm.demo.observe import OURS
from perllm.demo.run import run_demo
from perllm.demo.view import joules, pct


def per_service(summary: dict[str, object]) -> Table:
    services = summary["services"]
    assert isinstance(services, dict)
    pols = list(summary["policies"]) if isinstance(summary["policies"], dict) else [OURS]
    t = Table(title="per service (after warm-up): attainment / J per request", title_justify="left")
    t.add_column("service")
    t.add_column("placement")
    for p in pols:
        t.add_column("PerLLM" if p == OURS else p, justify="right")
    placements = summary.get("placements") or {}
    assert isinstance(placements, dict)
    for svc, by in services.items():
        pl = placements.get(svc) or {}
        t.add_row(
            svc,
            f"{pl.get('tier', '—')} {','.join(pl.get('nodes') or [])}",
            *(
                f"{pct(by[p]['attainment'])} / {joules(by[p]['j_per_request'])}"
                for p in pols
                if p in by
            ),
        )
    return t


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--scenario", default="demo")
    ap.add_argument("--duration", type=float, default=300.0, help="wall-clock seconds")
    ap.add_argument("--speed", type=float, default=10.0, help="twin: simulated s per s")
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds excluded")
    ap.add_argument("--out", type=Path, default=Path("out/closed_loop"))
    a = ap.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 160)
    res = run_demo(
        DemoConfig(
            scenario=a.scenario,
            duration_s=a.duration,
            speed=a.speed,
            out=a.out,
            live=False,
            warmup_s=a.warmup,
            router=False,  # the placement loop only: the routed phase is router_burst.py's
        ),
        console,
    )
    if res.samples:
        console.print(per_service(res.summary))
    pols = res.summary.get("policies") or {}
    ours = pols.get(OURS, {})
    for p, r in pols.items():
        if p != OURS and ours.get("j_per_request") and r.get("j_per_request"):
            saved = 1 - ours["j_per_request"] / r["j_per_request"]
            console.print(
                f"PerLLM vs {p}: {100 * saved:+.1f} % energy saved per request, "
                f"attainment {pct(ours['attainment'])} vs {pct(r['attainment'])}"
            )
    return 1 if res.error or res.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
