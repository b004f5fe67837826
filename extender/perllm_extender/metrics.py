"""Prometheus metrics of the extender, in a registry of their own (one per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "perllm_extender_decision_seconds", "Time to decide one pod (filter/prioritize).",
            ["verb"], registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
        )
        self.feasible = Histogram(
            "perllm_extender_feasible_nodes", "Nodes passing the filter per PerLLM pod.",
            registry=self.registry, buckets=(0, 1, 2, 4, 8, 16, 32, 64, 128),
        )
        self.decisions = Counter(
            "perllm_extender_decisions", "Decisions for PerLLM pods.", ["verb"],
            registry=self.registry,
        )
        self.violations = Counter(
            "perllm_extender_violations", "PerLLM pods with no feasible node "
            "(placed on the least-violating one).", registry=self.registry,
        )
        self.passthrough = Counter(
            "perllm_extender_passthrough", "Requests for pods without the perllm.io/service "
            "label.", ["verb"], registry=self.registry,
        )
        self.errors = Counter(
            "perllm_extender_bad_requests", "Requests answered 4xx.", registry=self.registry,
        )
