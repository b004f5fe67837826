"""Simulator speed: services scheduled per second of wall time.

CS-UCB on the reference scenario (target ≥ 20,000/s) and on the 1,000-server scenario,
with cloud-only measured in the same run as a floor (the world model's own cost). A rate
is a whole `simulate` call (world construction, every round's decision, the world model
and the learning feedback) divided into the services it scheduled; what a process does
once (imports, compiling) is outside the clock. Each seed runs
`--repeat` times; the table shows the median and the best rate over all runs, since a
shared machine only ever slows a run down.

`--profile N` prints, per scenario and policy, the N functions with the most cumulative
time over the runs (cProfile: the rates it prints are slowed down by the profiler);
`--duration S` shortens the scenarios to S seconds of simulated time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import time
from pathlib import Path

from perllm import policies
from perllm.cli_args import at_least
from perllm.scenario import load_scenario
from perllm.world.sim import simulate

SCENARIOS = ("paper-llama2-7b", "large-fleet")


def rate(
    scenario: str,
    policy: str,
    seeds: list[int],
    repeat: int = 1,
    duration_s: float | None = None,
    profile: cProfile.Profile | None = None,
) -> dict[str, float]:
    sc = load_scenario(scenario)
    if duration_s is not None:
        sc = sc.model_copy(update={"duration_s": duration_s})
    rates, services, success = [], 0, []
    # Outside the clock, as imports are: one simulated second first, so that what a
    # process does once (numba's compiled loop for large fleets, loaded from its disk
    # cache or compiled) is in no rate.
    simulate(sc.model_copy(update={"duration_s": 1.0}), policies.make(policy), seeds[0])
    for seed in seeds:
        for _ in range(repeat):
            # Made outside the clock: the first `make` imports every policy module (AGOD
            # imports JAX, seconds), which is no part of a simulation.
            pol = policies.make(policy)
            t0 = time.perf_counter()
            if profile is not None:
                profile.enable()
            r = simulate(sc, pol, seed)
            if profile is not None:
                profile.disable()
            wall = time.perf_counter() - t0
            rates.append(len(r.time) / wall)
        services += len(r.time)
        success.append(float(r.met.mean()))
    return {
        "services_per_s": statistics.median(rates),
        "best_services_per_s": max(rates),
        "services": services,
        "success_rate": statistics.mean(success),
        "runs": len(rates),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    count = at_least(1, int)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--seeds", type=count, default=3)
    ap.add_argument("--fleet-seeds", type=count, default=1)
    ap.add_argument("--repeat", type=count, default=1, help="runs per seed")
    ap.add_argument("--scenario", action="append", choices=SCENARIOS, help="default: both")
    ap.add_argument(
        "--duration",
        type=at_least(1, float),  # as `perllm simulate --duration`
        help="simulated seconds, at least 1 (default: the scenario's)",
    )
    ap.add_argument("--profile", type=count, metavar="N", help="print the N costliest functions")
    args = ap.parse_args()
    scenarios = args.scenario or list(SCENARIOS)
    rows = []
    for scenario in scenarios:
        seeds = args.seeds if scenario == "paper-llama2-7b" else args.fleet_seeds
        for policy in ("perllm", "cloud-only"):
            prof = cProfile.Profile() if args.profile else None
            res = rate(
                scenario, policy, list(range(1, seeds + 1)), args.repeat, args.duration, prof
            )
            rows.append({"scenario": scenario, "policy": policy, **res})
            print(
                f"{scenario:18s} {policy:12s} {res['services_per_s']:>10,.0f} services/s median "
                f"(best {res['best_services_per_s']:,.0f}; {res['runs']} runs, "
                f"{res['services']} services, success {100 * res['success_rate']:.1f} %)",
                flush=True,
            )
            if prof is not None:
                out = io.StringIO()
                pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(args.profile)
                print(out.getvalue(), flush=True)
    for scenario in scenarios:
        a = next(r for r in rows if r["scenario"] == scenario and r["policy"] == "perllm")
        b = next(r for r in rows if r["scenario"] == scenario and r["policy"] == "cloud-only")
        print(
            f"{scenario}: CS-UCB runs at {a['services_per_s'] / b['services_per_s']:.2f}× "
            "the speed of cloud-only (same run)"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
