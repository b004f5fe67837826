"""Live telemetry for decisions: a snapshot refreshed in the background from Prometheus.

Decisions never query Prometheus: they read `Telemetry.snapshot`, an immutable object the
refresher replaces every `interval_s`. What is unknown (no Prometheus, no series for a
node, a value older than `max_age_s`) falls back to the profile prior: the node's nominal
link bandwidth (its annotation) and zero load.

The queries of a refresh are `perllm.telemetry.queries.snapshot()`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from perllm.contract import Server
from perllm.telemetry import names, queries
from perllm.telemetry.prom import Answer
from perllm_extender.periodic import Periodic

log = logging.getLogger("perllm.extender.telemetry")


class QueryClient(Protocol):
    """What the extender needs of `perllm.telemetry.prom.Prometheus` (tests pass stubs)."""

    def query(self, promql: str) -> Answer | None: ...


@dataclass(frozen=True)
class Snapshot:
    """Telemetry at one refresh. Values per query carry the time of the query they came
    from (`at`), so a value served from the client's last-good cache ages visibly."""

    bandwidth_mbps: Mapping[str, float] = field(default_factory=dict)  # by node
    gpu_power_w: Mapping[str, float] = field(default_factory=dict)  # by node
    cpu_power_w: Mapping[str, float] = field(default_factory=dict)  # by node
    running: Mapping[str, float] = field(default_factory=dict)  # by "namespace/pod"
    waiting: Mapping[str, float] = field(default_factory=dict)
    latency_s: Mapping[str, float] = field(default_factory=dict)  # mean e2e, by pod
    node_running: Mapping[str, float] = field(default_factory=dict)  # pods summed per node
    node_waiting: Mapping[str, float] = field(default_factory=dict)
    at: Mapping[str, float] = field(default_factory=dict)  # query field -> time.time()
    refreshed: float = 0.0  # time.time() of the refresh (0: never)

    def usable(self, what: str, max_age_s: float, now: float | None = None) -> bool:
        """Read within `max_age_s`; a time ahead of `now` (the clock was set back since)
        is of unknown age: not usable (a stale value passed as fresh for the jump's size)."""
        t = self.at.get(what)
        return t is not None and 0.0 <= (now or time.time()) - t <= max_age_s

    def to_dict(self, max_age_s: float) -> dict[str, Any]:
        nodes: dict[str, dict[str, float | None]] = {}
        for n in {
            *self.bandwidth_mbps,
            *self.gpu_power_w,
            *self.cpu_power_w,
            *self.node_running,
            *self.node_waiting,
        }:
            nodes[n] = {
                "bandwidth_mbps": self.bandwidth_mbps.get(n),
                "gpu_power_w": self.gpu_power_w.get(n),
                "cpu_power_w": self.cpu_power_w.get(n),
                "running": self.node_running.get(n, 0.0),
                "waiting": self.node_waiting.get(n, 0.0),
            }
        pods = {
            p: {
                "running": self.running.get(p, 0.0),
                "waiting": self.waiting.get(p, 0.0),
                "latency_s": self.latency_s.get(p),
            }
            for p in {*self.running, *self.waiting, *self.latency_s}
        }
        now = time.time()
        return {
            "refreshed": self.refreshed or None,
            "ages_s": {k: round(now - v, 3) for k, v in self.at.items()},
            "usable": {k: self.usable(k, max_age_s, now) for k in self.at},
            "nodes": nodes,
            "pods": pods,
        }


class Telemetry:
    """The background refresher. `pod_node(namespace/pod) -> node | None` places pods on
    nodes (the pod informer, else the extender's own decisions) to sum their load per node.
    """

    def __init__(
        self,
        prom: QueryClient | None,
        *,
        interval_s: float = 2.0,
        max_age_s: float = 60.0,
        latency_window: str = "1m",
        pod_node: Callable[[str], str | None] | None = None,
    ) -> None:
        self.prom = prom
        self.interval_s = interval_s
        self.max_age_s = max_age_s
        self.latency_window = latency_window
        self.pod_node = pod_node or (lambda _p: None)
        self.snapshot = Snapshot()
        self.last_success: float | None = None  # time.time() of the last fresh answer
        # time.monotonic() of it: staleness survives the wall clock being set back
        self._success_mono: float | None = None
        self.last_error: str | None = None if prom is not None else "no Prometheus configured"
        self.refreshes = 0
        self._loop = Periodic(
            "perllm-telemetry", self.refresh, lambda: self.interval_s, immediate=True
        )
        self._refresh_lock = threading.Lock()

    # -- one refresh --------------------------------------------------------------------
    def refresh(self) -> Snapshot:
        """Query everything once and publish a new snapshot (callers: the loop, tests,
        `POST /telemetry/refresh`). Never raises: a failing query keeps what it had."""
        with self._refresh_lock:
            old, prom = self.snapshot, self.prom
            if prom is None:
                return old
            at = dict(old.at)
            errors: list[str] = []
            got: dict[str, Answer] = {}
            for what, promql in queries.snapshot(self.latency_window).items():
                try:
                    ans = prom.query(promql)
                except Exception as e:  # a stub or client bug must not kill the loop
                    ans = None
                    errors.append(f"{what}: {type(e).__name__}: {e}")
                if ans is None:
                    errors.append(what)
                    continue
                got[what], at[what] = ans, ans.at
                if ans.fresh:
                    self.last_success = ans.at
                    self._success_mono = time.monotonic()
                else:
                    errors.append(what)
            snap = self._snapshot(old, got, at)
            self.snapshot = snap  # one reference assignment: readers never see a mix
            self.refreshes += 1
            why = getattr(getattr(prom, "health", None), "last_error", None)
            self.last_error = (
                None
                if not errors
                else (
                    f"queries failed ({', '.join(sorted(set(errors)))})"
                    + (f": {why}" if why else "")
                )
            )
            return snap

    def _snapshot(self, old: Snapshot, got: dict[str, Answer], at: dict[str, float]) -> Snapshot:
        """The new snapshot from this refresh's answers; a field without one keeps `old`'s."""
        run, wait = got.get("running"), got.get("waiting")
        running = run.by_pair() if run is not None else dict(old.running)
        waiting = wait.by_pair() if wait is not None else dict(old.waiting)
        node_running: dict[str, float] = {}
        node_waiting: dict[str, float] = {}
        for per_pod, per_node in ((running, node_running), (waiting, node_waiting)):
            for p, v in per_pod.items():
                n = self.pod_node(p)
                if n is not None:
                    per_node[n] = per_node.get(n, 0.0) + max(v, 0.0)
        at["load"] = min(at.get("running", 0.0), at.get("waiting", 0.0))
        bw, gpu, cpu, lat = (got.get(k) for k in ("bandwidth", "gpu_power", "cpu_power", "latency"))
        return Snapshot(
            bandwidth_mbps={n: v / 1e6 for n, v in bw.by(names.NODE).items() if v > 0}
            if bw is not None
            else old.bandwidth_mbps,
            gpu_power_w=gpu.by_any(names.DCGM_HOST_LABELS) if gpu is not None else old.gpu_power_w,
            cpu_power_w=cpu.by(names.NODE) if cpu is not None else old.cpu_power_w,
            running=running,
            waiting=waiting,
            latency_s=lat.by_pair() if lat is not None else old.latency_s,
            node_running=node_running,
            node_waiting=node_waiting,
            at=at,
            refreshed=time.time(),
        )

    def inputs(
        self, servers: Sequence[Server], prior_bw: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """running, waiting, bandwidth per server from the latest snapshot (priors when
        unknown or stale)."""
        m = len(servers)
        snap, now = self.snapshot, time.time()
        names_ = [s.name for s in servers]
        bw = prior_bw.copy()
        if snap.usable("bandwidth", self.max_age_s, now) and snap.bandwidth_mbps:
            got = snap.bandwidth_mbps
            bw = np.array([got.get(n, p) for n, p in zip(names_, prior_bw.tolist(), strict=True)])
        running, waiting = np.zeros(m), np.zeros(m)
        if snap.usable("load", self.max_age_s, now):
            nr, nw = snap.node_running, snap.node_waiting
            if nr:
                running = np.array([nr.get(n, 0.0) for n in names_])
            if nw:
                waiting = np.array([nw.get(n, 0.0) for n in names_])
        return running, waiting, bw

    def staleness_s(self, now: float | None = None) -> float:
        """Seconds since the last good Prometheus answer (inf: never); on the monotonic
        clock (`now`: a time.monotonic() reading): after the wall clock was set back an
        hour, an outage read as fresh for that hour."""
        if self._success_mono is None:
            return math.inf
        return max(0.0, (now or time.monotonic()) - self._success_mono)

    def degraded(self) -> str | None:
        """Why decisions run (partly) on priors, or None."""
        if self.prom is None:
            return "no Prometheus configured: decisions use profile priors"
        if self._success_mono is None:
            return f"no telemetry yet: {self.last_error or 'not refreshed'}"
        if self.staleness_s() > self.max_age_s:
            return (
                f"telemetry stale ({self.staleness_s():.0f}s > {self.max_age_s:g}s): "
                f"{self.last_error or ''}; decisions use profile priors"
            )
        return self.last_error

    # -- the loop ------------------------------------------------------------------------
    def start(self) -> None:
        if self.prom is not None:
            self._loop.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._loop.stop(timeout)
