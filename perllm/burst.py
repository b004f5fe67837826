"""Per-request routing against per-pod placement under a burst, on the same requests
(issue #13): what `bench/router_burst.py` and the demo's routed phase share.

A scenario's `chat` class with a ×N rate window, sent in real time to three arms, each
against fresh replicas served by the twin (`perllm.twin.openai`, timed by the world model
at speed 1):

- `router`: `perllm router` over one edge replica and one cloud replica (per request);
- `edge pod alone`: per-pod placement, every request goes where its pod is (the extender
  puts `chat` on an edge L4 in the demo);
- `cloud pod alone`: cloud-only.

Per arm: deadline attainment (the client's clock against `seconds + per_output_token_s ×
tokens`), latency percentiles, the share of requests per tier, and the marginal energy per
request the world model attributes (inference + transmission; idle power is the same
whichever way requests go and is left out).

`simulate_arm` replays an arm in simulated time instead (no HTTP, no wall clock): the
router's own decisions and learning over the same twin replicas, each request timed by the
world model as the twin times it. What it measures is CS-UCB's behaviour alone; the
real-time runs add only the harness's timing (issue #13: they agree to ~10 ms a request).
"""

from __future__ import annotations

import heapq
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from perllm.load import Planned, plan, replay
from perllm.load_report import Outcome, Report, summarise
from perllm.router.app import Router
from perllm.router.config import parse_config
from perllm.router.feedback import Feedback
from perllm.router.request import parse
from perllm.router.serving import serving
from perllm.scenario import Scenario, load_scenario
from perllm.scenario.workload import Window
from perllm.twin.openai import TwinOpenAI, pod_url, static_pods

SERVICE = "chat"
NAMESPACE = "default"  # where TwinOpenAI.standalone serves its pods
ROUTER, EDGE_ALONE, CLOUD_ALONE = "router", "edge pod alone", "cloud pod alone"
ARMS = (ROUTER, EDGE_ALONE, CLOUD_ALONE)


@dataclass(frozen=True)
class Burst:
    """`seconds` of arrivals, the rate × `factor` over the middle third."""

    seconds: float
    factor: float = 5.0

    @property
    def at_s(self) -> float:
        return self.seconds / 3

    @property
    def until_s(self) -> float:
        return 2 * self.seconds / 3


def burst_scenario(burst: Burst, scenario: str = "demo") -> Scenario:
    sc = load_scenario(scenario)
    win = Window(at_s=burst.at_s, until_s=burst.until_s, factor=burst.factor)
    wl = sc.workload.model_copy(update={"rate_windows": [win]})
    return sc.model_copy(update={"workload": wl})


def planned_requests(sc: Scenario, burst: Burst, seed: int) -> list[Planned]:
    return [p for p in plan(sc, seed, 1.0, 100_000, [SERVICE]) if p.at < burst.seconds]


class NoReplicaNodes(ValueError):
    """The scenario has no edge node or no cloud node that can run `SERVICE`."""


def replica_nodes(sc: Scenario, edge: str | None = None) -> tuple[str, str]:
    """(edge node, cloud node) for the two replicas: `edge` if it can run chat (where the
    extender put it), else the first edge node that can; the first cloud node that can."""
    tiers = {n: s.tier.value for n, s in sc.expanded_servers()}
    can = [n for (_, pod), (cls, n) in static_pods(sc, NAMESPACE).items() if cls == SERVICE]
    edges = [n for n in can if tiers[n] == "edge"]
    clouds = [n for n in can if tiers[n] == "cloud"]
    if not edges or not clouds:
        raise NoReplicaNodes(f"{sc.name}: {SERVICE} needs an edge and a cloud node that can run it")
    return (edge if edge in edges else edges[0]), clouds[0]


def backends(sc: Scenario, url: str, nodes: tuple[str, str]) -> list[dict[str, Any]]:
    servers = dict(sc.expanded_servers())
    return [
        {
            "name": f"{SERVICE}-{n}",
            "url": pod_url(url, NAMESPACE, f"{SERVICE}-{n}"),
            "tier": servers[n].tier.value,
            "hardware": servers[n].hardware,
            "link": servers[n].link.model_dump(),
        }
        for n in nodes
    ]


@dataclass
class Arm:
    """One arm's requests so far (a live view reads them while it runs) and its result."""

    name: str
    outcomes: list[Outcome] = field(default_factory=list)
    # (planned arrival, tier) of each request once its answer has started: where it went
    decided: list[tuple[float, str]] = field(default_factory=list)
    router: Router | None = None
    twin: TwinOpenAI | None = None
    row: dict[str, Any] | None = None

    @property
    def own_tier(self) -> str:
        """A lone pod's tier ("-" for the router: its decision header says, per request)."""
        return {EDGE_ALONE: "edge", CLOUD_ALONE: "cloud"}.get(self.name, "-")

    def started(self, p: Planned, decision: dict[str, str]) -> None:
        self.decided.append((p.at, decision.get("tier") or self.own_tier))

    def inflight(self, sent: int) -> dict[str, int]:
        """Requests in flight per tier (the router's own count; a lone pod's: sent − done)."""
        if self.router is not None:
            out = {"edge": 0, "cloud": 0}
            for b, n in zip(self.router.backends, self.router.inflight, strict=True):
                out[b.tier.value] = out.get(b.tier.value, 0) + n
            return out
        return {self.own_tier: max(sent - len(self.outcomes), 0)}

    @property
    def j_per_request(self) -> float | None:
        tw = self.twin
        return None if tw is None or not tw.served else tw.energy_j / tw.served


async def measure(arm: Arm, target: str, planned: list[Planned], horizon: float) -> dict[str, Any]:
    """Replay `planned` against `target` (a router, or one replica's endpoint)."""
    rep: Report = await replay(
        target,
        planned,
        max_duration_s=horizon,
        # a whole request (not one read): a lone edge replica's queue under the burst
        # holds requests for ~60-70 s; one never answered still ends the arm
        timeout_s=300,
        on_done=arm.outcomes.append,
        on_start=arm.started,
    )
    return _row(arm, rep)


def _row(arm: Arm, rep: Report) -> dict[str, Any]:
    return {
        "arm": arm.name,
        "requests": rep.sent,
        "ok": rep.ok,
        "attainment": rep.attainment,
        "latency_s": rep.latency_s,
        "tiers": rep.tiers,
        "backends": rep.backends,
    }


# the twin's URL -> the router arm's router, closed when the context ends
RouterSession = Callable[[str], AbstractAsyncContextManager[Router]]


async def run_arm(
    arm: Arm,
    sc: Scenario,
    planned: list[Planned],
    nodes: tuple[str, str],
    seed: int,
    horizon: float,
    scenario: str = "demo",
    *,
    twin: TwinOpenAI | None = None,
    pods: tuple[str, str] | None = None,
    namespace: str = NAMESPACE,
    router: RouterSession | None = None,
) -> dict[str, Any]:
    """One arm against fresh twin replicas; `arm.row` (also returned) holds its figures.
    `scenario`: the router's (a built-in name or a file, as `load_scenario` takes it).

    By default the replicas are `chat-<node>` in `NAMESPACE` of a fresh standalone twin
    (`seed`) and the router arm's router is over those two (`static_router`). Else `twin`
    (fresh, serving the pods), `pods` (edge, cloud) in `namespace`, and `router`: given the
    twin's URL, the router arm's router as an async context (it closes the router)."""
    arm.twin = twin if twin is not None else TwinOpenAI.standalone(sc, speed=1.0, seed=seed)
    edge_pod, cloud_pod = pods or (f"{SERVICE}-{nodes[0]}", f"{SERVICE}-{nodes[1]}")
    async with serving(arm.twin) as url:
        if arm.name == ROUTER:
            session = (router or partial(static_router, sc, nodes=nodes, scenario=scenario))(url)
            async with session as arm.router, serving(arm.router) as rurl:
                row = await measure(arm, rurl, planned, horizon)
        else:
            pod = edge_pod if arm.name == EDGE_ALONE else cloud_pod
            row = await measure(arm, pod_url(url, namespace, pod), planned, horizon)
    arm.row = row | {"j_per_request": arm.j_per_request}
    return arm.row


@asynccontextmanager
async def static_router(
    sc: Scenario, url: str, *, nodes: tuple[str, str], scenario: str = "demo"
) -> AsyncIterator[Router]:
    """`perllm router` over the replicas on `nodes` of the twin at `url` (`backends`)."""
    r = Router(router_config(sc, url, nodes, scenario))
    try:
        yield r
    finally:
        await r.aclose()


def router_config(sc: Scenario, url: str, nodes: tuple[str, str], scenario: str = "demo") -> Any:
    return parse_config(
        {"scenario": scenario, "service_class": SERVICE, "backends": backends(sc, url, nodes)}
    )


def simulate_arm(
    arm: Arm,
    sc: Scenario,
    planned: list[Planned],
    nodes: tuple[str, str],
    seed: int,
    scenario: str = "demo",
) -> dict[str, Any]:
    """`run_arm` in simulated time: every request decided when it arrives (the router arm:
    `Router.ticket` with the router's in-flight backlogs, told of each first token and
    learning at each completion, in order, as `perllm router` is), timed on fresh twin
    replicas by the world model (the twin's `timeline`, with its draws in the same order),
    nothing sent over HTTP."""
    clock = [0.0]
    arm.twin = tw = TwinOpenAI.standalone(sc, speed=1.0, seed=seed, clock=lambda: clock[0])
    spec = {s.name: s for s in sc.services()}[SERVICE]
    dl = spec.requirements.deadline
    router = Router(router_config(sc, "http://simulated", nodes, scenario))
    members = router.members if arm.name == ROUTER else None
    feedback = Feedback(dl.seconds, dl.per_output_token_s)
    alone = nodes[0] if arm.name == EDGE_ALONE else nodes[1]
    tier = {b.name.removeprefix(f"{SERVICE}-"): b.tier.value for b in router.backends}
    # (when, order, an end (else a first token), ticket, backend, key, D, output tokens)
    events: list[tuple[float, int, bool, Any, str, int, float, float]] = []
    for i, p in enumerate(planned):
        clock[0] = p.at
        while events and events[0][0] <= p.at:
            t, _, ended, ticket, name, key, d, tokens = heapq.heappop(events)
            if not ended:
                router.backlog(name).prefilled(key, t)
                continue
            router.backlog(name).done(key, t, prefilled=True)
            assert members is not None
            feedback.learn(members, ticket, d, tokens)
        req = parse(json.dumps(p.body).encode(), True)
        node, ticket = alone, None
        if members is not None:
            ticket = router.ticket(members, req, p.at)
            node = members.names[ticket.server].removeprefix(f"{SERVICE}-")
        tl = tw.timeline(spec, node, req.prompt_tokens, req.attach_bytes, req.max_tokens)
        met = tl.done <= p.deadline_s + p.per_token_s * tl.tokens
        name, where = (f"{SERVICE}-{node}", tier[node]) if ticket is not None else ("", "")
        arm.started(p, {"tier": where} if where else {})  # a lone pod: no decision header
        arm.outcomes.append(Outcome(p.cls, 200, tl.done, tl.first, tl.tokens, met, name, where,
                                    at=p.at))  # fmt: skip
        if ticket is not None:
            key = router.backlog(name).add(p.at, ticket)
            ev = (ticket, name, key, tl.done, tl.tokens)
            heapq.heappush(events, (p.at + tl.first, 2 * i, False, *ev))
            heapq.heappush(events, (p.at + tl.done, 2 * i + 1, True, *ev))
    end = max((p.at + o.latency_s for p, o in zip(planned, arm.outcomes, strict=True)), default=0)
    arm.row = _row(arm, summarise("simulated", arm.outcomes, end)) | {
        "j_per_request": arm.j_per_request
    }
    return arm.row


def window(arm: Arm, lo: float, hi: float) -> dict[str, Any]:
    """The requests sent in [lo, hi): how many are placed so far (`n`), the share of them
    at the edge and in the cloud; how many are answered so far, the attainment among them."""
    tiers = [tier for at, tier in arm.decided if lo <= at < hi]
    n = len(tiers)
    done = [o.met for o in arm.outcomes if lo <= o.at < hi]
    return {
        "t": [lo, hi],
        "n": n,
        "edge": tiers.count("edge") / n if n else None,
        "cloud": tiers.count("cloud") / n if n else None,
        "answered": len(done),
        "attainment": sum(done) / len(done) if done else None,
    }


def shares(arm: Arm, window_s: float, until_s: float) -> list[dict[str, Any]]:
    """`window` per window of arrival times [k·w, (k+1)·w) up to `until_s`."""
    out = []
    k = 0
    while k * window_s < until_s:
        out.append(window(arm, k * window_s, min((k + 1) * window_s, until_s)))
        k += 1
    return out


def cloud_share(arm: Arm, lo: float, hi: float) -> float | None:
    """The cloud's share of the requests sent in [lo, hi) placed so far."""
    share: float | None = window(arm, lo, hi)["cloud"]
    return share


def phases(arm: Arm, burst: Burst) -> dict[str, float | None]:
    """The cloud's share before, during and after the burst (by arrival time)."""
    return {
        "before": cloud_share(arm, 0.0, burst.at_s),
        "burst": cloud_share(arm, burst.at_s, burst.until_s),
        "after": cloud_share(arm, burst.until_s, burst.seconds),
    }


def table(rows: list[dict[str, Any]]) -> str:
    out = [f"{'arm':<16} {'n':>4} {'attain':>7} {'p50 s':>6} {'p99 s':>6} {'J/req':>7}  tiers"]
    for r in rows:
        lat = r["latency_s"]
        tiers = ", ".join(f"{k} {100 * v:.0f}%" for k, v in r["tiers"].items() if k != "-")
        out.append(
            f"{r['arm']:<16} {r['requests']:>4} {100 * r['attainment']:>6.1f}% "
            f"{lat.get('p50', 0):>6.2f} {lat.get('p99', 0):>6.2f} "
            f"{r['j_per_request'] or 0:>7.1f}  {tiers}"
        )
    return "\n".join(out)
