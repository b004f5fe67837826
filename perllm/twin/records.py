"""What the twin records: requests, per-service counters, model-server stats, completions."""

from __future__ import annotations

from dataclasses import dataclass, field

from perllm.telemetry.names import VLLM_LATENCY_BUCKETS

SvcKey = tuple[str, str]  # (namespace, LLMService name)
PodKey = tuple[str, str]  # (namespace, pod name)
# Requests drawn per service and slot at most: every request runs on every fleet, so an
# absurd declared rate would otherwise stall the twin (and its /metrics) for minutes.
MAX_REQUESTS_PER_SLOT = 1000


@dataclass
class Counts:
    """Per service (or per counterfactual policy and service): counters of completions."""

    requests: int = 0
    met: int = 0
    energy_j: float = 0.0  # weighted energy attributed to the service (J)


@dataclass
class PodStats:
    """What a model server in the pod would export (vLLM names)."""

    service: SvcKey
    node: int
    model: str
    buckets: list[int] = field(default_factory=lambda: [0] * len(VLLM_LATENCY_BUCKETS))
    latency_sum: float = 0.0
    count: int = 0
    success: int = 0
    prompt_tokens: float = 0.0
    generation_tokens: float = 0.0
    # (arrival, running from, end) of requests not finished yet
    inflight: list[tuple[float, float, float]] = field(default_factory=list)

    def load(self, t: float) -> tuple[int, int]:
        """(running, waiting) at t."""
        self.inflight = [x for x in self.inflight if x[2] > t]
        running = sum(1 for a, r, _ in self.inflight if r <= t)
        waiting = sum(1 for a, r, _ in self.inflight if a <= t < r)
        return running, waiting

    def observe(self, latency: float) -> None:
        for k, b in enumerate(VLLM_LATENCY_BUCKETS):
            if latency <= b:
                self.buckets[k] += 1
        self.latency_sum += latency
        self.count += 1


@dataclass(frozen=True)
class Request:
    arrival: float
    service: SvcKey
    l_in: float
    l_out: float
    attach: float
    deadline: float
    speed: float  # the world's per-request speed noise (× the server's perf_scale)


@dataclass(order=True)
class Done:
    finish: float
    seq: int
    fleet: str = field(compare=False)
    service: SvcKey = field(compare=False)
    server: int = field(compare=False)  # -1: could not run; -2: deadline-expiry marker
    met: bool = field(compare=False)
    e_tran: float = field(compare=False)
    e_infer: float = field(compare=False)  # attributed inference energy (J), for sharing
    # The pod instance that served it (not its name: a pod re-created under the same name
    # on another node starts from zero, as a new model server does)
    pod: PodStats | None = field(compare=False, default=None)
    latency: float = field(compare=False, default=0.0)
    l_in: float = field(compare=False, default=0.0)
    l_out: float = field(compare=False, default=0.0)
    # A request is counted (requests, deadline met) once its outcome is known: when it
    # completes, or when its deadline passes first; its energy and the model server's
    # metrics are booked when it completes. `counted` marks the second event of a late one.
    counted: bool = field(compare=False, default=False)
