"""The demo's routed phase (issue #13): `perllm router` in front of an edge and a cloud
replica of the demo's `chat` service, a workload with a ×5 burst replayed through it, and
at the same time the same requests to the edge replica alone (per-pod placement: the node
where the extender put `chat`) and to the cloud replica alone (cloud-only). Each arm has
fresh replicas of its own, served in this process by the twin (`perllm.burst`), so the
three run side by side without sharing queues; the cluster is stopped by then.

The view shows the router's edge share per few-second window of arrivals (the burst
overflowing to the cloud), requests in flight per tier and attainment so far per arm.
"""

from __future__ import annotations

import asyncio
import bisect
import signal
import threading
import time
from typing import Any

from rich.console import Console
from rich.live import Live

from perllm.burst import (
    ARMS,
    SERVICE,
    Arm,
    Burst,
    burst_scenario,
    phases,
    planned_requests,
    replica_nodes,
    run_arm,
    shares,
)
from perllm.demo.config import DemoConfig
from perllm.demo.routed_view import progress_line, render_routed

DRAIN_S = 5.0  # sending stops at the burst's end plus this; answers still running finish


def chat_edge(placements: dict[str, Any]) -> str | None:
    """The edge node the extender chose for `chat` in the placement phase, if any."""
    pl = placements.get(SERVICE) or {}
    return str(pl["chosen"]) if pl.get("tier") == "edge" and pl.get("chosen") else None


def routed_summary(
    arms: list[Arm], burst: Burst, nodes: tuple[str, str], requests: int, window_s: float
) -> dict[str, Any]:
    """What `demo.json` holds of the routed phase: each finished arm's figures with the
    cloud's share before, during and after the burst, and per window of arrivals."""
    return {
        "service": SERVICE,
        "seconds": burst.seconds,
        "burst": {"factor": burst.factor, "at_s": burst.at_s, "until_s": burst.until_s},
        "nodes": {"edge": nodes[0], "cloud": nodes[1]},
        "requests": requests,
        "window_s": window_s,
        "arms": {a.name: a.row | {"cloud_share": phases(a, burst)} for a in arms if a.row},
        "windows": {a.name: shares(a, window_s, burst.seconds) for a in arms},
    }


def _cancel_on_sigterm() -> None:
    """SIGTERM cancels the phase as asyncio.run does on Ctrl-C: the arms' servers stop
    from the outside in, instead of an exception raised wherever the loop happens to be
    (which leaves uvicorn logging each request it was serving)."""
    if threading.current_thread() is threading.main_thread():
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)


def routed_nodes(config: DemoConfig, edge: str | None = None) -> tuple[str, str]:
    """(edge node, cloud node) of the routed phase's replicas (`replica_nodes`: `edge`,
    where the extender put chat, if it can run it); `NoReplicaNodes` where the scenario
    has no edge or no cloud node for chat (the phase is then skipped)."""
    sc = burst_scenario(Burst(config.router_duration_s, config.burst), config.scenario)
    return replica_nodes(sc, edge)


def run_routed(config: DemoConfig, console: Console, nodes: tuple[str, str]) -> dict[str, Any]:
    """Run the routed phase over replicas on `nodes` (`routed_nodes`) for
    `config.router_duration_s` of arrivals (plus the answers still running then); its
    summary (`routed_summary`)."""
    burst = Burst(config.router_duration_s, config.burst)
    sc = burst_scenario(burst, config.scenario)
    planned = planned_requests(sc, burst, config.router_seed)
    hw = {n: s.hardware for n, s in sc.expanded_servers()}
    console.print(
        f"[cyan]demo[/cyan] routed phase: {len(planned)} {SERVICE} requests over "
        f"{burst.seconds:g} s, x{burst.factor:g} from {burst.at_s:g} to {burst.until_s:g} s; "
        f"router over {nodes[0]} ({hw[nodes[0]]}) and {nodes[1]} ({hw[nodes[1]]}), against "
        "each replica alone on the same requests",
        highlight=False,
    )
    arms = [Arm(n) for n in ARMS]
    ats = [p.at for p in planned]

    async def main() -> None:
        horizon = burst.seconds + DRAIN_S
        t0 = time.monotonic()
        _cancel_on_sigterm()
        tasks = [
            asyncio.create_task(
                run_arm(a, sc, planned, nodes, config.router_seed, horizon, config.scenario)
            )
            for a in arms
        ]
        live = Live(console=console, refresh_per_second=2) if config.live else None
        next_line = 0.0
        if live is not None:
            live.start()
        try:
            while True:
                t = time.monotonic() - t0
                sent = bisect.bisect_right(ats, t)
                if live is not None:
                    live.update(render_routed(arms, t, sent, len(planned), burst, nodes,
                                              config.share_window_s))  # fmt: skip
                elif t >= next_line:
                    next_line = t + 10
                    console.print(
                        progress_line(arms, t, sent, burst, config.share_window_s),
                        highlight=False,
                    )
                done, _ = await asyncio.wait(tasks, timeout=0.5)
                if len(done) == len(tasks):
                    break
            for task in tasks:
                task.result()  # an arm's error ends the phase with it
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if live is not None:
                live.stop()

    prev = signal.getsignal(signal.SIGTERM)
    try:
        asyncio.run(main())
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None  # SIGTERM: the demo's one path with Ctrl-C
    finally:
        signal.signal(signal.SIGTERM, prev)
    return routed_summary(arms, burst, nodes, len(planned), config.share_window_s)
