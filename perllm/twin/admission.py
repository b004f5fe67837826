"""Requests admitted on the twin's nodes by the world model, for its OpenAI endpoints
(`perllm.twin.openai`).

A request runs through `perllm.world.server.execute` on its node's own `ServerState`
(FIFO upload on the node's link, admission into the node's slots with the (service, node)
coefficients of the cost model, prefill, decode, download): its `Timeline`. The output
length is the service's output distribution (its scenario class's, else lognormal around
the declared mean) capped by `max_tokens`. These states are not the twin's synthetic
traffic's: its metrics are not changed by these requests (and they do not see that
traffic's load). A request whose client leaves frees its slot then (`ServerState.abort`),
as a model server would, and the requests queued behind it on that node are admitted again
from that moment.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from perllm.contract import ServiceSpec
from perllm.costmodel import build_cost_table, download_bits, upload_bits
from perllm.router.request import BadRequest
from perllm.scenario import Scenario
from perllm.twin.arrivals import service_dists
from perllm.twin.fleet import server_powers
from perllm.world.server import Coeffs, Outcome, ServerState, execute
from perllm.world.sim import coeff_grid
from perllm.world.workload import draw, whole_tokens


@dataclass(frozen=True)
class Timeline:
    """Simulated seconds from arrival: first token, last token, answer complete."""

    first: float
    last: float
    done: float
    tokens: int
    prompt_tokens: int
    # Where it runs: the node's index and its admission (`NodeAdmissions.abort` frees its slot).
    server: int
    outcome: Outcome


@dataclass(eq=False)
class Admission:
    """One request on a node: what `execute` needs to admit it again (the inputs drawn at
    arrival, `ready` when its upload had arrived) and its current timeline. Until it
    starts, an abort on its node may re-admit it earlier (`NodeAdmissions.abort`)."""

    tl: Timeline
    arrival: float
    c: Coeffs
    l_in: float
    l_out: float
    bits: tuple[float, float]
    link: tuple[float, float, float]
    speed: float
    ready: float
    # Its answer waits on `wake` (in `loop`), done when `tl` moves.
    wake: asyncio.Future[None] | None = None
    loop: asyncio.AbstractEventLoop | None = None


class NodeAdmissions:
    """The twin's nodes as the world model runs the requests sent to its OpenAI endpoints:
    `admit` one arriving now, `abort` one whose client left."""

    def __init__(
        self,
        sc: Scenario,
        speed: float = 1.0,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not speed > 0:
            raise ValueError("speed: must be > 0")
        self.sc, self.speed, self.clock = sc, speed, clock
        self.t0 = clock()
        self.servers = sc.expanded_servers()
        self.node_index = {n: j for j, (n, _) in enumerate(self.servers)}
        hw = sc.catalogue.hardware
        self.states = []
        for _, s in self.servers:
            p_idle, p_busy, p_prefill = server_powers(hw[s.hardware])
            self.states.append(ServerState(p_idle, p_busy, p_prefill, hw[s.hardware].kind == "gpu"))
        # Per node: the admissions not started yet, in admission order, and the node's
        # state before the first of them (with the aborts since): an abort re-admits them
        # from there, as a model server's queue moves up when a running request leaves.
        self.queued: list[list[Admission]] = [[] for _ in self.states]
        self.base: list[ServerState | None] = [None for _ in self.states]
        self.rng = np.random.default_rng([seed, 0x0A1])
        self._tables: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.served = 0
        # Marginal energy of the requests served (J): the world model's attributed
        # inference energy plus both ways' transmission energy (idle power is not here).
        self.energy_j = 0.0

    def now(self) -> float:
        """Simulated seconds since start."""
        return (self.clock() - self.t0) * self.speed

    def _coeffs(self, spec: ServiceSpec, j: int) -> tuple[Any, bool, float]:
        key = spec.model_dump_json()
        got = self._tables.get(key)
        if got is None:
            t = build_cost_table([spec], self.servers, self.sc.catalogue)
            got = self._tables[key] = (t, coeff_grid(t)[0])
        t, grid = got
        return grid[j], bool(t.allowed[0, j]), float(t.perf_scale[j])

    def timeline(
        self, spec: ServiceSpec, node: str, l_in: float, attach: float, max_tokens: float | None
    ) -> Timeline:
        """Run one request arriving now on `node` through the world model."""
        return self.admit(spec, node, l_in, attach, max_tokens).tl

    def admit(
        self, spec: ServiceSpec, node: str, l_in: float, attach: float, max_tokens: float | None
    ) -> Admission:
        """`timeline`, with what `abort` needs."""
        j = self.node_index[node]
        c, allowed, perf = self._coeffs(spec, j)
        if not allowed:
            raise BadRequest(503, "unplaceable", f"node {node} cannot run {spec.name}")
        _, d_out, _ = service_dists(self.sc, spec)
        context = self.sc.catalogue.models[spec.model].context
        with self._lock:
            lout_draw = draw(d_out, 1, self.rng)
            if max_tokens is not None:
                lout_draw = np.minimum(lout_draw, max_tokens)
            li, lo = whole_tokens(np.array([l_in]), lout_draw, context)
            l_in_t, l_out = float(li[0]), float(lo[0])
            noise = float(self.rng.lognormal(0.0, self.sc.speed_noise))
            link = self.servers[j][1].link
            bps = link.bandwidth_mbps * 1e6
            a = self.now()
            s = self.states[j]
            self._started(j, a)
            s.observe(a)  # (drops the ended requests it keeps: they would pile up)
            bits = (float(upload_bits(l_in_t, attach)), float(download_bits(l_out)))
            hop = (bps, link.rtt_ms / 1000, link.energy_uj_per_bit * 1e-6)
            ready = s.upload(a, bits[0], bps, commit=False) + hop[1] / 2
            before = s.snapshot() if not self.queued[j] else None
            d, out, e_tran = execute(s, c, a, l_in_t, l_out, bits, hop, noise * perf)
            ad = Admission(
                _timeline(d, out, a, hop[1] / 2, l_out, l_in_t, j),
                a, c, l_in_t, l_out, bits, hop, noise * perf, ready,
            )  # fmt: skip
            if out.start > a:  # it waits for a slot: an abort before its start moves it up
                if before is not None:
                    self.base[j] = before
                self.queued[j].append(ad)
            self.served += 1
            self.energy_j += out.e_infer + e_tran
        return ad

    def _started(self, j: int, now: float) -> None:
        """The admissions on node `j` started by `now` can no longer move: into `base`."""
        q, base = self.queued[j], self.base[j]
        while q and q[0].tl.outcome.start <= now:
            assert base is not None
            self._run(base, q.pop(0))
            base.observe(now)
        if not q:
            self.base[j] = None

    @staticmethod
    def _run(s: ServerState, ad: Admission) -> tuple[float, Outcome, float]:
        """Admit `ad` on `s` again (its upload had arrived at `ready`)."""
        return execute(s, ad.c, ad.arrival, ad.l_in, ad.l_out, ad.bits, ad.link, ad.speed,
                       hold=ad.ready)  # fmt: skip

    def abort(self, ad: Admission) -> None:
        """Its client went away now: free the request's slot and KV cache on its node, as a
        model server does with a disconnected request (`ServerState.abort`), and admit the
        requests queued behind it again from now (their times were fixed when they
        arrived, with its slot taken until its end)."""
        with self._lock:
            now, j = self.now(), ad.tl.server
            self._started(j, now)
            q, base = self.queued[j], self.base[j]
            if ad in q:  # never started: it leaves the queue (its upload stays done)
                q.remove(ad)
                self.energy_j -= ad.tl.outcome.e_infer
            else:
                self.states[j].abort(ad.tl.outcome, now)
                if base is not None:
                    base.abort(ad.tl.outcome, now)
            if base is None:
                return
            live = self.states[j]
            s = base.snapshot()
            for x in q:  # in admission order, from the state before the first of them
                d, out, _ = self._run(s, x)
                self.energy_j += out.e_infer - x.tl.outcome.e_infer
                x.tl = _timeline(d, out, x.arrival, x.link[1] / 2, x.l_out, x.l_in, j)
                if x.wake is not None and x.loop is not None:
                    x.loop.call_soon_threadsafe(_wake, x.wake)
            s.link_free = live.link_free  # (the uploads happened: they stay as they were)
            live.restore(s)
            if not q:
                self.base[j] = None


def _timeline(
    d: float, out: Outcome, a: float, half: float, l_out: float, l_in: float, j: int
) -> Timeline:
    """The answer's times from `execute`'s result for a request arriving at `a`."""
    first = out.start + out.prefill - a + half
    last = out.end - a + half
    return Timeline(first, max(first, last), max(d, last), int(l_out), int(l_in), j, out)


def _wake(f: asyncio.Future[None]) -> None:
    if not f.done():
        f.set_result(None)
