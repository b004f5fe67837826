"""Prometheus metrics of the extender, in a registry of their own (one per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    # One declaration per metric, nothing else: longer than 60 lines, no logic to split.
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "perllm_extender_decision_seconds",
            "Time to decide one pod (filter/prioritize).",
            ["verb"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
        )
        self.feasible = Histogram(
            "perllm_extender_feasible_nodes",
            "Feasible candidate nodes per PerLLM pod (only the chosen one passes the filter).",
            registry=self.registry,
            buckets=(0, 1, 2, 4, 8, 16, 32, 64, 128),
        )
        self.decisions = Counter(
            "perllm_extender_decisions",
            "Decisions for PerLLM pods.",
            ["verb"],
            registry=self.registry,
        )
        self.violations = Counter(
            "perllm_extender_violations",
            "PerLLM pods with no feasible node (placed on the least-violating one).",
            registry=self.registry,
        )
        self.passthrough = Counter(
            "perllm_extender_passthrough",
            "Requests for pods without the perllm.io/service label.",
            ["verb"],
            registry=self.registry,
        )
        self.errors = Counter(
            "perllm_extender_bad_requests",
            "Requests answered 4xx.",
            registry=self.registry,
        )
        # -- what decisions cost and risk -------------------------------------------------
        self.constraint_violations = Counter(
            "perllm_extender_constraint_violations",
            "Decisions placed on a node that "
            "violates a constraint (nothing was feasible), by the constraint violated.",
            ["constraint"],
            registry=self.registry,
        )
        self.exclusions = Counter(
            "perllm_extender_exclusions",
            "Candidate nodes filtered out, by constraint "
            "(deadline, quality, tier, memory, capacity, unmodelled).",
            ["constraint"],
            registry=self.registry,
        )
        self.exploration = Counter(
            "perllm_extender_exploration",
            "Decisions whose chosen arm was unplayed or won "
            "by its UCB bonus over a better-mean feasible node.",
            registry=self.registry,
        )
        self.regret = Counter(
            "perllm_extender_estimated_regret",
            "Sum over decisions of (best feasible "
            "predicted mean reward - chosen one), in CS-UCB reward units (normalised "
            "energy + theta x P(violation)); an estimate from the model, not observed.",
            registry=self.registry,
        )
        self.staleness = Gauge(
            "perllm_extender_telemetry_staleness_seconds",
            "Seconds since the last good "
            "Prometheus answer (+Inf: never, or no Prometheus configured).",
            registry=self.registry,
        )
        self.publish_failures = Counter(
            "perllm_extender_publish_failures",
            "Failed publications of decisions to the LLMService (status patch or Event).",
            ["what"],
            registry=self.registry,
        )
        self.learning_updates = Counter(
            "perllm_extender_learning_updates",
            "Observations fed to CS-UCB updates.",
            registry=self.registry,
        )
        self.state_saves = Counter(
            "perllm_extender_state_saves",
            "Saves of the learned state, by result.",
            ["result"],
            registry=self.registry,
        )
        self.state_bytes = Gauge(
            "perllm_extender_state_bytes",
            "Size of the last saved learned state (a ConfigMap holds at most 1 MiB; the "
            "extender keeps it within its budget, 900 KiB by default).",
            registry=self.registry,
        )
        self.state_left_out = Gauge(
            "perllm_extender_state_services_left_out",
            "Services left out of the last save to stay within the state budget.",
            registry=self.registry,
        )
        self.learned_services = Gauge(
            "perllm_extender_learned_services",
            "Services with learned state in memory (deleted ones expire after a grace period).",
            registry=self.registry,
        )
