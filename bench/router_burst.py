"""Per-request routing against per-pod placement under a burst (issue #13), side by side.

The demo's `chat` service with a ×5 burst: the same requests, in real time, sent

- through `perllm router` over one edge replica (L4) and one cloud replica (A100),
- to the edge replica alone (per-pod placement: where the extender puts `chat` in the
  demo; every request goes where its pod is),
- to the cloud replica alone (cloud-only),

each arm against fresh replicas: the twin's OpenAI endpoints (`perllm.twin.openai`), timed
by the world model at speed 1. Reported per arm: deadline attainment (the client's clock
against `seconds + per_output_token_s × tokens`), latency percentiles, and the marginal
energy per request the world model attributes (inference + transmission; idle power is
the same whichever way requests go and is left out).

    .venv/bin/python bench/router_burst.py --json out/router_burst.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from perllm.load import plan, replay
from perllm.router.app import Router
from perllm.router.config import parse_config
from perllm.router.serving import serving
from perllm.scenario import Scenario, load_scenario
from perllm.scenario.workload import Window
from perllm.twin.openai import TwinOpenAI

EDGE, CLOUD = "edge-gpu-1", "cloud"


def burst_scenario(factor: float, at_s: float, until_s: float) -> Scenario:
    sc = load_scenario("demo")
    wl = sc.workload.model_copy(
        update={"rate_windows": [Window(at_s=at_s, until_s=until_s, factor=factor)]}
    )
    return sc.model_copy(update={"workload": wl})


def backends(sc: Scenario, url: str) -> list[dict[str, Any]]:
    servers = dict(sc.expanded_servers())
    return [
        {
            "name": f"chat-{n}",
            "url": f"{url}/pods/default/chat-{n}",
            "tier": servers[n].tier.value,
            "hardware": servers[n].hardware,
            "link": servers[n].link.model_dump(),
        }
        for n in (EDGE, CLOUD)
    ]


async def measure(name: str, target: str, planned: list[Any], horizon: float) -> dict[str, Any]:
    """Replay `planned` against `target` (a router, or one replica's endpoint)."""
    rep = await replay(target, planned, max_duration_s=horizon, timeout_s=60)
    return {
        "arm": name,
        "requests": rep.sent,
        "ok": rep.ok,
        "attainment": rep.attainment,
        "latency_s": rep.latency_s,
        "tiers": rep.tiers,
        "backends": rep.backends,
    }


async def arm(
    name: str, sc: Scenario, planned: list[Any], seed: int, horizon: float
) -> dict[str, Any]:
    twin = TwinOpenAI.standalone(sc, speed=1.0, seed=seed)
    async with serving(twin) as url:
        if name == "router":
            cfg = parse_config(
                {"scenario": sc.name, "service_class": "chat", "backends": backends(sc, url)}
            )
            router = Router(cfg)
            async with serving(router) as rurl:
                row = await measure(name, rurl, planned, horizon)
            await router.aclose()
        else:
            node = EDGE if name == "edge pod alone" else CLOUD
            row = await measure(name, f"{url}/pods/default/chat-{node}", planned, horizon)
    return row | {"j_per_request": twin.energy_j / max(twin.served, 1)}


def table(rows: list[dict[str, Any]]) -> str:
    out = [f"{'arm':<16} {'n':>4} {'attain':>7} {'p50 s':>6} {'p99 s':>6} {'J/req':>7}  tiers"]
    for r in rows:
        lat = r["latency_s"]
        tiers = ", ".join(f"{k} {100 * v:.0f}%" for k, v in r["tiers"].items() if k != "-")
        out.append(
            f"{r['arm']:<16} {r['requests']:>4} {100 * r['attainment']:>6.1f}% "
            f"{lat.get('p50', 0):>6.2f} {lat.get('p99', 0):>6.2f} {r['j_per_request']:>7.1f}  "
            f"{tiers}"
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=90.0, help="arrivals over this long")
    ap.add_argument("--burst", type=float, default=5.0, help="rate factor of the burst")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    at, until = a.seconds / 3, 2 * a.seconds / 3
    sc = burst_scenario(a.burst, at, until)
    planned = [p for p in plan(sc, a.seed, 1.0, 100_000, ["chat"]) if p.at < a.seconds]
    print(f"{len(planned)} chat requests over {a.seconds:g} s, x{a.burst:g} from {at:g} to "
          f"{until:g} s", file=sys.stderr)  # fmt: skip
    rows = []
    for name in ("router", "edge pod alone", "cloud pod alone"):
        print(f"-- {name}", file=sys.stderr)
        rows.append(asyncio.run(arm(name, sc, planned, a.seed, a.seconds + 5)))
    print(table(rows))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(
            json.dumps({"burst": a.burst, "seconds": a.seconds, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
