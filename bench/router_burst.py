"""Per-request routing against per-pod placement under a burst (issue #13), side by side.

The demo's `chat` service with a ×5 burst: the same requests, in real time, sent

- through `perllm router` over one edge replica (L4) and one cloud replica (A100),
- to the edge replica alone (per-pod placement: where the extender puts `chat` in the
  demo; every request goes where its pod is),
- to the cloud replica alone (cloud-only),

one arm after the other, each against fresh replicas: the twin's OpenAI endpoints
(`perllm.twin.openai`), timed by the world model at speed 1. Reported per arm: deadline
attainment, latency percentiles, and the marginal energy per request the world model
attributes (`perllm.burst`, which `perllm demo`'s routed phase shares; the demo runs the
three arms at once). `--simulated`: the same arms in simulated time (`simulate_arm`: the
router's decisions and learning, the world model's timings, no HTTP and no wall clock; a
second), which separates what CS-UCB does from the harness's timing.

    .venv/bin/python bench/router_burst.py --json out/router_burst.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from perllm.burst import (
    ARMS,
    Arm,
    Burst,
    burst_scenario,
    planned_requests,
    replica_nodes,
    run_arm,
    simulate_arm,
    table,
)
from perllm.cli_args import at_least


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # as `perllm demo`'s routed phase: a burst multiplies the rate by at least 1
    ap.add_argument("--seconds", type=at_least(1), default=90.0, help="arrivals over this long")
    ap.add_argument("--burst", type=at_least(1), default=5.0, help="rate factor of the burst")
    ap.add_argument("--seed", type=at_least(0, int), default=1)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--simulated", action="store_true", help="in simulated time, not real")
    a = ap.parse_args()
    burst = Burst(a.seconds, a.burst)
    sc = burst_scenario(burst)
    planned = planned_requests(sc, burst, a.seed)
    nodes = replica_nodes(sc)
    print(f"{len(planned)} chat requests over {a.seconds:g} s, x{a.burst:g} from "
          f"{burst.at_s:g} to {burst.until_s:g} s; replicas on {nodes[0]} and {nodes[1]}",
          file=sys.stderr)  # fmt: skip
    rows = []
    for name in ARMS:
        print(f"-- {name}", file=sys.stderr)
        if a.simulated:
            rows.append(simulate_arm(Arm(name), sc, planned, nodes, a.seed))
        else:
            rows.append(asyncio.run(run_arm(Arm(name), sc, planned, nodes, a.seed, a.seconds + 5)))
    print(table(rows))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(
            json.dumps(
                {"burst": a.burst, "seconds": a.seconds, "simulated": a.simulated, "rows": rows},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
