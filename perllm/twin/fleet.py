"""One copy of the world's servers: the simulator's `ServerState`s plus exact energy meters.

The twin keeps several fleets (the real placement and one per counterfactual policy), all
fed the same requests. Requests run through `perllm.world.server.execute`, as in the
simulator; this module only adds meters that can be read at any time (the simulator reads
energy once, at the end).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from perllm.contract import EnergyWeights, Server
from perllm.costmodel import download_bits, server_energy, upload_bits
from perllm.profiles import HardwareInfo
from perllm.world.server import Coeffs, Outcome, ServerState, execute


class IntervalSum:
    """Length of the union of intervals added with non-decreasing starts, up to time t.

    Queries come at non-decreasing times and no interval starts before the last query,
    so intervals that ended before a query are folded into one number (O(1) amortised).
    """

    def __init__(self) -> None:
        self.done = 0.0
        self.open: deque[list[float]] = deque()

    def add(self, start: float, end: float) -> None:
        if end <= start:
            return
        if self.open and start <= self.open[-1][1]:
            self.open[-1][1] = max(self.open[-1][1], end)
        else:
            self.open.append([start, end])

    def measure(self, t: float) -> float:
        while self.open and self.open[0][1] <= t:
            s, e = self.open.popleft()
            self.done += e - s
        part = 0.0
        for s, e in self.open:
            if s >= t:
                break
            part += min(e, t) - s
        return self.done + part

    def busy_at(self, t: float) -> bool:
        return any(s <= t < e for s, e in self.open)


@dataclass
class Meter:
    """Exact cumulative energy of one server, readable at any time: `server_energy` of the
    busy and prefill time metered so far (the simulator's `ServerState.energy`)."""

    p_idle: float
    p_busy: float
    p_prefill: float
    is_gpu: bool

    def __post_init__(self) -> None:
        self.busy = IntervalSum()
        self.prefill = IntervalSum()

    def energy(self, t: float) -> tuple[float, float]:
        """(inference, idle) J over [0, t]."""
        pre = self.prefill.measure(t) if self.is_gpu else 0.0
        return server_energy(
            t, self.busy.measure(t), pre, self.is_gpu, self.p_idle, self.p_busy, self.p_prefill
        )


def server_powers(hw: HardwareInfo) -> tuple[float, float, float]:
    """(idle, busy, prefill) W of a hardware entry, as `perf_profile` derives them."""
    if hw.kind == "gpu":
        assert hw.power_decode_w is not None and hw.power_prefill_w is not None
        return hw.power_idle_w, hw.power_decode_w, hw.power_prefill_w
    assert hw.power_busy_w is not None
    return hw.power_idle_w, hw.power_busy_w, hw.power_busy_w


@dataclass(frozen=True, slots=True)
class Executed:
    time: float  # processing time D (s), as the simulator measures it
    finish: float  # arrival + D: when the user has the answer
    out: Outcome
    e_tran: float  # J
    run_start: float  # when a model server would report the request as running


class Fleet:
    """The servers of one world copy (real placement or a counterfactual)."""

    def __init__(self, servers: list[tuple[str, Server]], hardware: dict[str, HardwareInfo]):
        self.names = [n for n, _ in servers]
        self.servers = [s for _, s in servers]
        self.states: list[ServerState] = []
        self.meters: list[Meter] = []
        for _, s in servers:
            hw = hardware[s.hardware]
            idle, busy, pre = server_powers(hw)
            gpu = hw.kind == "gpu"
            self.states.append(ServerState(p_idle=idle, p_busy=busy, p_prefill=pre, is_gpu=gpu))
            self.meters.append(Meter(idle, busy, pre, gpu))

    def execute(
        self,
        j: int,
        arrival: float,
        l_in: float,
        l_out: float,
        attach: float,
        speed: float,
        coeffs: Coeffs,
        bps: float,
        latest_start: float = math.inf,
    ) -> Executed:
        """Run one request on server j as the simulator does (`perllm.world.server.execute`,
        dropped if it cannot start by `latest_start`: the scenario's admission), plus the
        meters."""
        s, srv = self.states[j], self.servers[j]
        bits = float(upload_bits(l_in, attach)), float(download_bits(l_out))
        link = (bps, srv.link.rtt_ms / 1000, srv.link.energy_uj_per_bit * 1e-6)
        pre0 = s.prefill_total
        d, out, e_tran = execute(
            s,
            coeffs,
            arrival,
            l_in,
            l_out,
            bits,
            link,
            speed * srv.perf_scale,
            latest_start=latest_start,
        )
        run_start = out.start
        if out.dropped:  # it never ran: it waited until `out.start`, then left
            return Executed(d, arrival + d, out, e_tran, run_start)
        meter = self.meters[j]
        meter.busy.add(out.start, out.end)
        pre = s.prefill_total - pre0
        if coeffs.is_gpu:
            # Serialised prefill: it ended at prefill_free and lasted `pre`.
            meter.prefill.add(s.prefill_free - pre, s.prefill_free)
            run_start = s.prefill_free - pre
        return Executed(d, arrival + d, out, e_tran, run_start)

    def energy(self, t: float, w: EnergyWeights) -> list[float]:
        """Weighted inference + idle energy per server over [0, t] (J)."""
        out = []
        for m in self.meters:
            infer, idle = m.energy(t)
            out.append(w.infer * infer + w.idle * idle)
        return out

    def power(self, j: int, t: float) -> float:
        """Instantaneous power of server j at t (W)."""
        m = self.meters[j]
        if m.is_gpu and m.prefill.busy_at(t):
            return m.p_prefill
        return m.p_busy if m.busy.busy_at(t) else m.p_idle
