"""What a demo run is: scenario, durations, speeds, where its files go."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import perllm

REPO_ROOT = Path(perllm.__file__).resolve().parents[1]
DEMO_NAMESPACE = "perllm-demo"
SYSTEM_NAMESPACE = "perllm-system"
# The twin's counterfactual policies the view compares against (perllm/twin labels).
BASELINES = ("cloud-only", "edge-only", "round-robin")


@dataclass
class DemoConfig:
    scenario: str = "demo"  # built-in scenario name or a scenario file
    duration_s: float = 180.0  # wall-clock seconds of the measured run
    speed: float = 10.0  # the twin's simulated seconds per wall-clock second
    out: Path = field(default_factory=lambda: Path("out/demo"))
    live: bool = True
    # Wall seconds from the first request on that count as warm-up (exploration) and are
    # excluded from the run's totals; None: a quarter of the duration.
    warmup_s: float | None = None
    learn_interval_s: float = 2.0  # extender: learn from Prometheus this often
    status_interval_s: float = 3.0  # operator: observed status this often
    namespace: str = DEMO_NAMESPACE
    system_namespace: str = SYSTEM_NAMESPACE
    # Manifests to apply instead of the default ones (files or folders of YAML).
    services: list[Path] = field(default_factory=list)
    sample_every_s: float = 1.0
    # The routed phase after the placement phase (perllm/demo/routed.py): arrivals over
    # this long, the rate × `burst` over their middle third, edge share per window.
    router: bool = True
    router_duration_s: float = 60.0
    burst: float = 5.0
    share_window_s: float = 5.0
    router_seed: int = 1
    settle_timeout_s: float = 20.0  # at the end: wait this long for placements to settle
    ready_timeout_s: float = 120.0

    @property
    def run_dir(self) -> Path:
        """Logs, kubeconfigs and the cluster's state of this run."""
        return self.out / "run"

    @property
    def warmup(self) -> float:
        return self.duration_s / 4 if self.warmup_s is None else self.warmup_s
