"""The outcome of one simulated run (`RunResult`): per-request outcomes, per-server energy."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from perllm.world.workload import Requests

F = NDArray[np.float64]


# Why a run's success, energy per service and failure shares are undefined (None): a run
# shorter than one arrival, or a trace whose rows all lie past its end, has no request.
NO_REQUESTS = "no request arrived"


@dataclass
class RunResult:
    """Per-request outcomes and per-server energy of one run."""

    scenario: str
    policy: str
    seed: int
    duration_s: float
    requests: Requests
    server: NDArray[np.intp]
    time: F  # processing time D
    met: NDArray[np.bool_]  # deadline and quality floor met
    quality_ok: NDArray[np.bool_]
    finish: F  # absolute completion time
    e_tran: F  # per request (J)
    e_infer_attr: F  # per request, attributed (J)
    cost: F  # weighted marginal energy per request (J): the per-round objective
    energy_infer_j: F  # per server, exact (J)
    energy_idle_j: F  # per server (J)
    horizon_s: float  # when the last request completed (or the scenario ended)
    wall_s: float
    server_names: tuple[str, ...]
    tiers: tuple[str, ...]
    class_names: tuple[str, ...]
    models: tuple[str, ...]  # model per class
    # Failures that never ran, apart from late ones (`met` is False for both): shed by the
    # policy (server -1, D 0, no energy), or dropped by the world's admission control
    # (`admission` mode; D is when the client heard of it; only the upload was spent).
    shed: NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, bool))
    rejected: NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, bool))
    admission: str = "none"
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def energy_breakdown_j(self) -> dict[str, float]:
        return {
            "tran": float(self.e_tran.sum()),
            "infer": float(self.energy_infer_j.sum()),
            "idle": float(self.energy_idle_j.sum()),
        }
