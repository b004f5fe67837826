"""Learning: observed latency and energy of placed pods become CS-UCB updates.

`ArmStore` holds each service's learned state (CS-UCB `export_state()` format: arms keyed
`<service>|<pool>`). The extender keeps one CSUCB per (service, candidate node set), since
kube-scheduler's in-tree filters change the set; each syncs from the store before use and
writes back after, so everything learned about a pool carries across node sets, bandwidth
changes and restarts (the store is what `state.py` persists). Key: `namespace/service@model`
(a new model invalidates the learned time ratios; a new deadline does not).

`Learner` remembers every placed pod (service, node, predicted time and energy at decision,
deadline) and every `interval_s` turns its observed mean latency, output length and energy
per request into `CSUCB.update()`. One observation per pod per pass, only when the pod
served requests in the window; pods that are gone are forgotten.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from perllm.contract import Server, ServiceSpec
from perllm.csucb import CSUCB
from perllm.telemetry import names, queries
from perllm.telemetry.prom import Answer
from perllm_extender.periodic import Periodic

if TYPE_CHECKING:
    from perllm_extender.pods import PodIndex
    from perllm_extender.telemetry import QueryClient, Snapshot

log = logging.getLogger("perllm.extender.learning")


def service_key(namespace: str, spec: ServiceSpec) -> str:
    return f"{namespace}/{spec.name}@{spec.model}"


class ArmStore:
    """Learned state per service key, with a generation counter so a CSUCB re-imports only
    when another one has learned something since it last synced.

    Exporting a CSUCB costs more than a small decision, so `push` only records which CSUCB
    holds the service's freshest state; it is exported when another CSUCB of the service
    needs it, or for persistence (`export`). Share the scheduler's (reentrant) lock so an
    export never reads a CSUCB in the middle of a decision.
    """

    def __init__(self, lock: threading.RLock | None = None) -> None:
        self._states: dict[str, dict[str, Any]] = {}
        self._gen: dict[str, int] = {}
        self._owner: dict[str, CSUCB] = {}  # the CSUCB ahead of _states[skey]
        self._lock = lock or threading.RLock()

    def _materialize(self, skey: str) -> None:
        b = self._owner.pop(skey, None)
        if b is None:
            return
        st = b.export_state()
        old = self._states.get(skey)
        if old is not None:  # pools this CSUCB does not have keep what was learned
            st["arms"] = {**old.get("arms", {}), **st["arms"]}
            st["outputs"] = {**old.get("outputs", {}), **st["outputs"]}
        self._states[skey] = st

    def pull(self, skey: str, b: CSUCB, seen: int) -> int:
        """Bring `b` up to the service's state; returns the generation it now has."""
        with self._lock:
            gen = self._gen.get(skey, 0)
            if gen == seen or self._owner.get(skey) is b:
                return gen
            self._materialize(skey)
            st = self._states.get(skey)
            if st is not None:
                b.import_state(st)
            return gen

    def push(self, skey: str, b: CSUCB) -> int:
        """`b` (synced by `pull` before it changed) now holds the service's state."""
        with self._lock:
            if self._owner.get(skey) not in (None, b):
                self._materialize(skey)
            self._owner[skey] = b
            gen = self._gen.get(skey, 0) + 1
            self._gen[skey] = gen
            return gen

    def export(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            for k in list(self._owner):
                self._materialize(k)
            return dict(self._states)

    def load(self, states: dict[str, dict[str, Any]]) -> None:
        with self._lock:
            for k, st in states.items():
                self._owner.pop(k, None)
                self._states[k] = st
                self._gen[k] = self._gen.get(k, 0) + 1

    def __len__(self) -> int:
        with self._lock:
            return len(self._states.keys() | self._owner.keys())


@dataclass
class Placement:
    """A pod the extender placed, with what it predicted for each candidate node."""

    key: str  # namespace/pod
    uid: str
    namespace: str
    skey: str
    spec: ServiceSpec
    servers: tuple[Server, ...]
    node: str  # chosen (the informer's binding wins when it differs)
    predicted: dict[str, tuple[float, float]]  # node -> (time s, energy J) at decision
    decided_at: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.time)
    observations: int = 0


@dataclass(frozen=True)
class Observation:
    placement: Placement
    server: int  # index in placement.servers
    time_s: float
    predicted_s: float
    energy_j: float
    deadline_s: float
    l_out: float
    energy_source: str  # service | node-power | predicted


def _per(ans: Answer | None, inner: str = names.POD) -> dict[str, float]:
    """value per "namespace/<inner>" of an answer (none: empty)."""
    return ans.by_pair(names.NAMESPACE, inner) if ans is not None else {}


class Learner:
    """Tracks placements and feeds observations to `apply(observations)` (the scheduler's
    update under its lock)."""

    def __init__(
        self,
        prom: QueryClient | None,
        apply: Callable[[list[Observation]], int],
        *,
        pods: PodIndex | None = None,
        snapshot: Callable[[], Snapshot | None] | None = None,
        is_gpu: Callable[[Server], bool] | None = None,
        interval_s: float = 15.0,
        window: str = "1m",
        forget_after_s: float = 600.0,
        max_tracked: int = 100_000,
    ) -> None:
        self.prom, self.apply, self.pods = prom, apply, pods
        self.snapshot = snapshot or (lambda: None)
        self.is_gpu = is_gpu or (lambda _s: True)
        self.interval_s, self.window = interval_s, window
        self.forget_after_s, self.max_tracked = forget_after_s, max_tracked
        self.tracked: dict[str, Placement] = {}
        self.updates = 0
        self.passes = 0
        self._lock = threading.Lock()
        self._loop = Periodic("perllm-learning", self.learn_once, lambda: self.interval_s)

    def record(self, p: Placement) -> None:
        with self._lock:
            self.tracked[p.key] = p
            while len(self.tracked) > self.max_tracked:
                self.tracked.pop(next(iter(self.tracked)))

    def _forget_gone(self, now: float) -> None:
        with self._lock:
            for key, p in list(self.tracked.items()):
                if self.pods is not None and self.pods.informed:
                    info = self.pods.get(key)
                    gone = info is None or info.uid != p.uid
                else:  # no informer: a pod silent for long is taken as gone
                    gone = now - p.last_seen > self.forget_after_s
                if gone:
                    del self.tracked[key]
                    if self.pods is not None and not self.pods.informed:
                        self.pods.remove(key)  # the index holds only our guesses: bound it

    def observe(self) -> list[Observation]:
        """Query once and build the observations of this pass (no update)."""
        now = time.time()
        self._forget_gone(now)
        if self.prom is None:
            return []
        q = queries.learning(self.window)
        answers: dict[str, Answer | None] = {}
        for k, promql in q.items():
            try:
                a = self.prom.query(promql)
            except Exception as exc:
                log.warning("learning query %s failed: %s", k, exc)
                a = None
            answers[k] = a if a is not None and a.fresh else None  # never re-learn a stale one
        if answers["latency"] is None:
            return []
        lat, rate, tokens = (_per(answers[k]) for k in ("latency", "rate", "tokens"))
        energy = {k: v for k, v in _per(answers["energy"], names.SERVICE).items() if v > 0}
        snap = self.snapshot()
        out: list[Observation] = []
        with self._lock:
            placements = list(self.tracked.values())
        for p in placements:
            if p.key in lat or p.key in rate:
                p.last_seen = now
            t_obs = lat.get(p.key)
            if t_obs is None or t_obs <= 0 or rate.get(p.key, 1.0) <= 0:
                continue  # no requests in the window: nothing to learn
            node = p.node
            if self.pods is not None:
                info = self.pods.get(p.key)
                if info is not None and info.bound and info.uid == p.uid and info.node:
                    node = info.node
            idx = next((i for i, s in enumerate(p.servers) if s.name == node), None)
            if idx is None or node not in p.predicted:
                continue  # bound outside the decision's candidates: no prediction for it
            pred_t, pred_e = p.predicted[node]
            tr = p.spec.traffic
            l_out = tokens.get(p.key) or float(tr.output_tokens)
            e, src = energy.get(f"{p.namespace}/{p.spec.name}"), "service"
            if e is None and snap is not None:
                power = (snap.gpu_power_w if self.is_gpu(p.servers[idx]) else snap.cpu_power_w).get(
                    node
                )
                if power is not None and power > 0:
                    # node power shared by the requests in flight on it
                    conc = max(1.0, snap.node_running.get(node, 0.0))
                    e, src = power * t_obs / conc, "node-power"
            if e is None:
                e, src = pred_e, "predicted"
            dl = p.spec.requirements.deadline
            out.append(
                Observation(
                    p, idx, t_obs, pred_t, e, dl.seconds + dl.per_output_token_s * l_out, l_out, src
                )
            )
            p.observations += 1
        return out

    def learn_once(self) -> tuple[int, int]:
        """One pass: (observations applied, pods tracked)."""
        obs = self.observe()
        n = self.apply(obs) if obs else 0
        self.updates += n
        self.passes += 1
        return n, len(self.tracked)

    def start(self) -> None:
        self._loop.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._loop.stop(timeout)
