"""Learning: observed latency and energy of placed pods become CS-UCB updates.

`Learner` remembers every placed pod (service, node, the decision-time prediction per
candidate node, deadline) and every `interval_s` turns its observed mean latency, output
length and energy per request into `LatencyObservation`s for `apply` (the scheduler's
`CSUCB.update()`). The observed time is compared with the decision-time prediction
re-evaluated at the observed output length (`realised_prediction`), as the simulator's
policy does. One observation per pod per pass, only when the pod served requests in the
window; pods that are gone are forgotten. A pod replaced under its name (a StatefulSet's:
a new uid) is learned from only once a whole window has passed since its decision, since
the series are per (namespace, pod) and the window held its predecessor's. At most
`max_tracked` pods are tracked (each with at most `decision.EXPLAIN_LIMIT` candidate
predictions), the oldest dropped first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from perllm.contract import Server, ServiceSpec
from perllm.csucb import realised_prediction
from perllm.telemetry import names, queries
from perllm.telemetry.prom import Answer
from perllm_extender.periodic import Periodic

if TYPE_CHECKING:
    from perllm_extender.decision import DecisionEvent
    from perllm_extender.pods import PodIndex
    from perllm_extender.telemetry import QueryClient, Snapshot

log = logging.getLogger("perllm.extender.learning")


@dataclass(frozen=True)
class Predicted:
    """A candidate's decision-time prediction: time = fixed_s + per_token_s · L_out."""

    time_s: float  # at the expected output length
    energy_j: float
    fixed_s: float
    per_token_s: float

    def at(self, l_out: float) -> float:
        """The predicted time at the realised output length."""
        return float(realised_prediction(self.fixed_s, self.per_token_s, l_out))


def predictions(explanation: dict[str, Any]) -> dict[str, Predicted]:
    """Per candidate node of an `Explanation.to_dict()`: its prediction."""
    return {
        c["node"]: Predicted(
            float(c["predicted_time_s"]),
            float(c["predicted_energy_j"]),
            float(c["predicted_fixed_s"]),
            float(c["predicted_per_token_s"]),
        )
        for c in explanation.get("candidates", [])
    }


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
    predicted: dict[str, Predicted]  # per candidate node, at decision
    decided_at: float = field(default_factory=time.time)
    # another pod had this name within a window of the decision: learned from only once a
    # whole window has passed since
    replaced: bool = False
    last_seen: float = field(default_factory=time.time)
    observations: int = 0

    @classmethod
    def of(cls, ev: DecisionEvent) -> Placement | None:
        """The placement a decision made; None when it placed nothing."""
        d = ev.decision
        if d.chosen is None or not d.explanation:
            return None
        return cls(
            ev.key, ev.uid, ev.namespace, ev.skey, ev.spec, ev.servers, d.chosen,
            predictions(d.explanation),
        )  # fmt: skip


@dataclass(frozen=True)
class LatencyObservation:
    """What one pod did in a learning window, against what was predicted for it."""

    placement: Placement
    server: int  # index in placement.servers
    time_s: float
    predicted_s: float
    energy_j: float
    deadline_s: float
    l_out: float
    energy_source: str  # service | pod-cpu | node-power | predicted


def _per(ans: Answer | None, inner: str = names.POD) -> dict[str, float]:
    """value per "namespace/<inner>" of an answer (none: empty)."""
    return ans.by_pair(names.NAMESPACE, inner) if ans is not None else {}


class Learner:
    """Tracks placements and feeds observations to `apply(observations)` (the scheduler's
    update under its lock)."""

    def __init__(
        self,
        prom: QueryClient | None,
        apply: Callable[[list[LatencyObservation]], int],
        *,
        pods: PodIndex | None = None,
        snapshot: Callable[[], Snapshot | None] | None = None,
        is_gpu: Callable[[Server], bool] | None = None,
        interval_s: float = 15.0,
        window: str = "1m",
        forget_after_s: float = 600.0,
        max_tracked: int = 100_000,
        max_age_s: float = 60.0,
    ) -> None:
        """`max_age_s`: the oldest node power (and running count) of `snapshot` used to
        estimate a request's energy; older (Prometheus down for a while) falls back to
        the decision's prediction, as decisions fall back to priors."""
        self.prom, self.apply, self.pods = prom, apply, pods
        self.max_age_s = max_age_s
        self.snapshot = snapshot or (lambda: None)
        self.is_gpu = is_gpu or (lambda _s: True)
        self.interval_s, self.window = interval_s, window
        self.forget_after_s, self.max_tracked = forget_after_s, max_tracked
        self.window_s = queries.window_seconds(window)
        self.tracked: dict[str, Placement] = {}
        # namespace/pod -> when a placed pod of that name was last tracked, kept one window:
        # a new pod under the name within it shares (namespace, pod) series with that one
        self._ended: dict[str, float] = {}
        self.updates = 0
        self.passes = 0
        self._lock = threading.Lock()
        self._loop = Periodic("perllm-learning", self.learn_once, lambda: self.interval_s)

    def record(self, p: Placement) -> None:
        with self._lock:
            old = self.tracked.get(p.key)
            if old is not None and old.uid != p.uid:
                self._end(p.key, p.decided_at)
            ended = self._ended.get(p.key)
            if ended is not None and p.decided_at - ended < self.window_s:
                # the window still holds the predecessor's requests (its node, its load)
                p.replaced = True
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
                    self._end(key, now)
                    if self.pods is not None and not self.pods.informed:
                        self.pods.remove(key)  # the index holds only our guesses: bound it

    def _end(self, key: str, at: float) -> None:
        """Under the lock: a placed pod of this name ended (bounded: one window, at most
        `max_tracked` names)."""
        self._ended.pop(key, None)
        self._ended[key] = at
        while self._ended and (
            len(self._ended) > self.max_tracked
            or at - next(iter(self._ended.values())) >= self.window_s
        ):
            self._ended.pop(next(iter(self._ended)))

    def observe(self) -> list[LatencyObservation]:
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
        pod_energy = {k: v for k, v in _per(answers["pod_energy"]).items() if v > 0}
        snap = self.snapshot()
        out: list[LatencyObservation] = []
        with self._lock:
            placements = list(self.tracked.values())
        for p in placements:
            if p.key in lat or p.key in rate:
                p.last_seen = now
            t_obs = lat.get(p.key)
            if p.replaced and now - p.decided_at < self.window_s:
                continue  # the window still reaches back to the predecessor of the name
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
            pred = p.predicted[node]
            pred_e = pred.energy_j
            l_out = tokens.get(p.key) or float(p.spec.traffic.output_tokens)
            pred_t = pred.at(l_out)  # the decision's prediction at the realised length
            e, src = energy.get(f"{p.namespace}/{p.spec.name}"), "service"
            gpu = self.is_gpu(p.servers[idx])
            if e is None and not gpu:
                # a CPU server: the package energy Kepler attributes to this pod is its
                # inference energy (on a GPU server it is only the host's share)
                e, src = pod_energy.get(p.key), "pod-cpu"
            if (
                e is None
                and snap is not None
                and snap.usable("gpu_power" if gpu else "cpu_power", self.max_age_s, now)
            ):
                power = (snap.gpu_power_w if gpu else snap.cpu_power_w).get(node)
                if power is not None and power > 0:
                    # node power shared by the requests in flight on it (as many as the
                    # load query last said, while that is fresh; else one)
                    fresh_load = snap.usable("load", self.max_age_s, now)
                    running = snap.node_running.get(node, 0.0) if fresh_load else 0.0
                    conc = max(1.0, running)
                    e, src = power * t_obs / conc, "node-power"
            if e is None:
                e, src = pred_e, "predicted"
            dl = p.spec.requirements.deadline
            out.append(
                LatencyObservation(
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
