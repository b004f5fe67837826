"""One server of the world model: its uplink, its FIFO admission and its energy meter.

A server admits requests in arrival order while it has a free slot (CPU: llama.cpp
parallel slots; GPU: vLLM sequences, also bounded by the KV-cache budget). A request's
speed is fixed at admission from the batch it joins (fluid approximation: later arrivals
do not slow it retroactively). GPU prefills are serialised; decode is shared.
Pure-Python scalar code on purpose: it runs once per request on the hot path.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field, replace

from perllm.costmodel import (
    busy_times,
    cpu_times,
    gpu_times,
    idle_energy_saved,
    inference_energy,
    server_energy,
    transmission_energy,
)


@dataclass(slots=True)
class Coeffs:
    """Scalar coefficients of one (class, server) pair, taken from the `CostTable`."""

    is_gpu: bool
    w: float
    kv: float
    bw: float
    pp: float
    kappa: float
    r_pf: float
    ttft0: float
    step0: float
    flop: float
    max_conc: int
    kv_budget: float
    p_busy: float
    p_prefill: float
    p_idle: float


@dataclass(slots=True)
class Outcome:
    start: float
    end: float
    conc: int
    prefill: float
    decode: float
    e_infer: float  # attributed inference energy (J)
    e_idle_saved: float  # idle energy the placement displaced (J)
    # Not admitted: it could not start by its latest start (admission control); start and
    # end are when it was dropped, and it holds no slot.
    dropped: bool = False


@dataclass
class ServerState:
    p_idle: float
    p_busy: float
    p_prefill: float
    is_gpu: bool
    link_free: float = 0.0
    prefill_free: float = 0.0
    last_start: float = 0.0
    # min-heap of (end, kv bytes, start) of admitted, unfinished requests
    active: list[tuple[float, float, float]] = field(default_factory=list)
    # (start, end, kv) of every admitted request not known to be finished: what a model
    # server reports (admission pops finished-by-then entries from `active` early)
    inflight: list[tuple[float, float, float]] = field(default_factory=list)
    kv_used: float = 0.0
    busy: float = 0.0
    busy_until: float = 0.0
    prefill_total: float = 0.0
    served: int = 0

    def upload(self, at: float, bits: float, bps: float, commit: bool = True) -> float:
        """FIFO transfer on this server's link; returns when the payload has arrived."""
        start = at if at > self.link_free else self.link_free
        arrived = start + bits / bps
        if commit:
            self.link_free = arrived
        return arrived

    def admit(
        self,
        ready: float,
        l_in: float,
        l_out: float,
        c: Coeffs,
        speed: float,
        commit: bool = True,
        latest_start: float = math.inf,
    ) -> Outcome:
        """Admit a request that is ready at `ready` (s); `speed` scales the profile rates.
        One that could only start after `latest_start` is dropped at that moment (or on
        arrival, if later): it never runs and leaves the queue as it found it."""
        heap = list(self.active) if not commit else self.active
        kv_need = (l_in + l_out) * c.kv if c.is_gpu else 0.0
        t, kv_used, popped = self._slot(heap, ready, kv_need, c)
        if t > latest_start:
            if commit:
                for x in popped:
                    heapq.heappush(heap, x)
            at = ready if ready > latest_start else latest_start
            return Outcome(at, at, 0, 0.0, 0.0, 0.0, 0.0, dropped=True)
        out, pre = self._run(t, len(heap) + 1, l_in, l_out, c, speed)
        if commit:
            self._commit(heap, t, out, pre, kv_used + kv_need, kv_need, c.is_gpu)
        return out

    def _slot(
        self, heap: list[tuple[float, float, float]], ready: float, kv_need: float, c: Coeffs
    ) -> tuple[float, float, list[tuple[float, float, float]]]:
        """When a request ready at `ready` gets a slot: not before the last start (FIFO),
        once the requests ended by then have left `heap` and as many more as concurrency and
        the KV budget need. Returns (start, KV in use without it, the entries popped)."""
        t = ready if ready > self.last_start else self.last_start
        kv_used = self.kv_used
        popped: list[tuple[float, float, float]] = []  # restored if the request is dropped
        while heap and heap[0][0] <= t:
            popped.append(heapq.heappop(heap))
            kv_used -= popped[-1][1]
        while heap and (len(heap) >= c.max_conc or kv_used + kv_need > c.kv_budget):
            popped.append(heapq.heappop(heap))
            end0, kv0, _ = popped[-1]
            kv_used -= kv0
            if end0 > t:
                t = end0
        return t, kv_used, popped

    def _run(
        self, t: float, b: int, l_in: float, l_out: float, c: Coeffs, speed: float
    ) -> tuple[Outcome, float]:
        """The request started at `t` in a batch of `b`: its outcome and its prefill time."""
        if c.is_gpu:
            pre, dec = gpu_times(l_in, l_out, b, c.kv, c.bw, c.r_pf, c.ttft0, c.step0, c.flop)
            pre, dec = pre / speed, dec / speed
            pstart = t if t > self.prefill_free else self.prefill_free
            end = pstart + pre + dec
            pre_wall = pstart + pre - t
        else:
            pre, dec = cpu_times(l_in, l_out, b, c.w, c.kv, c.bw, c.pp, c.kappa)
            pre, dec = pre / speed, dec / speed
            end = t + pre + dec
            pre_wall = pre
        busy_pre, busy_dec = busy_times(pre, dec, b, c.is_gpu)
        e_inf = inference_energy(
            busy_pre, busy_dec, c.p_prefill if c.is_gpu else c.p_busy, c.p_busy
        )
        e_idle = idle_energy_saved(busy_pre, busy_dec, c.p_idle)
        return Outcome(t, float(end), b, float(pre_wall), float(dec), e_inf, e_idle), pre

    def _commit(
        self,
        heap: list[tuple[float, float, float]],
        t: float,
        out: Outcome,
        pre: float,
        kv_used: float,
        kv_need: float,
        is_gpu: bool,
    ) -> None:
        """Book the admitted request: slot, KV, serialised prefill, busy time."""
        heapq.heappush(heap, (out.end, kv_need, t))
        # A model server reports a request as running once its prefill starts; until
        # then (slot or serialised-prefill wait) it is waiting (vLLM semantics).
        self.inflight.append((t + out.prefill - pre if is_gpu else t, out.end, kv_need))
        self.kv_used = kv_used
        self.last_start = t
        if is_gpu:
            self.prefill_free = t + out.prefill
            self.prefill_total += float(pre)
        if t >= self.busy_until:
            self.busy += out.end - t
        elif out.end > self.busy_until:
            self.busy += out.end - self.busy_until
        self.busy_until = max(self.busy_until, out.end)
        self.served += 1

    def abort(self, out: Outcome, at: float) -> None:
        """The client of an admitted request went away at `at`: like a model server (vLLM
        aborts a disconnected request, llama.cpp cancels its slot) it frees the slot and
        the KV cache then, so admissions after `at` can start earlier (one already queued
        behind it keeps its start, fixed at its admission). What it already booked
        (busy time, serialised prefill, energy) stays: the work done until `at` is not
        known apart from the rest. Only the twin calls it; the simulator's clients wait."""
        if out.dropped or at >= out.end:
            return
        for i, (end, kv, start) in enumerate(self.active):
            if end == out.end and start == out.start:
                self.active[i] = (at, kv, start)
                heapq.heapify(self.active)
                break
        # (not in the heap: a later admission took its slot from its end, and the requests
        # admitted since keep their times, fixed at admission; what it still reports goes)
        for i, (run, end, kv) in enumerate(self.inflight):
            if end == out.end:
                self.inflight[i] = (run, at, kv)
                break

    def observe(self, now: float) -> tuple[int, int, float]:
        """(running, waiting, kv bytes in use) at `now`: what a model server's metrics show."""
        if not self.inflight:  # an idle server (the common case at the edge)
            return 0, 0, 0.0
        inflight = self.inflight = [x for x in self.inflight if x[1] > now]
        running = waiting = 0
        kv = 0.0
        for start, _, k in inflight:
            if start > now:
                waiting += 1
            else:
                running += 1
                kv += k
        return running, waiting, kv

    def snapshot(self) -> ServerState:
        """A copy to roll back dry runs (clairvoyant greedy places a round on scratch)."""
        return replace(self, active=list(self.active), inflight=list(self.inflight))

    def restore(self, snap: ServerState) -> None:
        self.__dict__.update(
            replace(snap, active=list(snap.active), inflight=list(snap.inflight)).__dict__
        )

    def energy(self, horizon: float) -> tuple[float, float]:
        """(inference, idle) energy over [0, horizon] in J: exact for the FIFO busy intervals."""
        return server_energy(
            horizon,
            self.busy,
            self.prefill_total,
            self.is_gpu,
            self.p_idle,
            self.p_busy,
            self.p_prefill,
        )


def execute(
    s: ServerState,
    c: Coeffs,
    arrival: float,
    l_in: float,
    l_out: float,
    bits: tuple[float, float],
    link: tuple[float, float, float],
    speed: float,
    hold: float = 0.0,
    commit: bool = True,
    latest_start: float = math.inf,
) -> tuple[float, Outcome, float]:
    """Run one request on server `s`: upload FIFO on its link, half the RTT to the server,
    admission no earlier than `hold` (s), the answer's download and the other half RTT.

    `bits` is (upload, download), `link` (bit/s, RTT s, J per bit), `speed` the factor on
    the profile rates. Returns (processing time D from `arrival`, outcome, transmission J).
    The simulator and the twin both run requests through here. A request that cannot
    start by `latest_start` is dropped (`Outcome.dropped`): D is when the client hears of
    it, and only the upload was transmitted.
    """
    up, down = bits
    bps, rtt, e_bit = link
    ready = s.upload(arrival, up, bps, commit) + rtt / 2
    if hold > ready:
        ready = hold
    out = s.admit(ready, l_in, l_out, c, speed, commit=commit, latest_start=latest_start)
    if out.dropped:
        return out.end + rtt / 2 - arrival, out, transmission_energy(e_bit, up)
    d = out.end + down / bps + rtt / 2 - arrival
    return d, out, transmission_energy(e_bit, up + down)
