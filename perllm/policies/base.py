"""The one interface every placement policy implements (CS-UCB, baselines, clairvoyant greedy)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from numpy.typing import NDArray

from perllm.contract import EnergyWeights
from perllm.costmodel import CostTable

if TYPE_CHECKING:
    from perllm.scenario import Scenario
    from perllm.world.sim import World

F = NDArray[np.float64]
I = NDArray[np.intp]  # noqa: E741

SHED = -1  # the choice that rejects a request: it is never run, and fails


@dataclass(frozen=True)
class Env:
    """What a policy knows about the system before the run starts."""

    table: CostTable
    weights: EnergyWeights
    slot_s: float
    expected_out: F  # [C] declared mean output tokens per class
    deadline_s: F  # [C] fixed part of ΔD
    deadline_per_token: F  # [C] TPOT part of ΔD
    seed: int


@dataclass(frozen=True)
class Batch:
    """The requests of one round (one slot). Output lengths are not known yet."""

    idx: I
    arrival: F
    cls: I
    l_in: F
    attach: F
    min_quality: F
    expected_out: F
    expected_deadline: F  # ΔD at the expected output length

    def __len__(self) -> int:
        return len(self.idx)


@dataclass(frozen=True)
class Observation:
    """Telemetry at the start of a round, as a cluster would expose it."""

    now: float
    slot: int
    running: F  # [M] requests in service (vllm:num_requests_running)
    waiting: F  # [M] requests queued (vllm:num_requests_waiting)
    kv_used: F  # [M] KV bytes in use
    bw_mbps: F  # [M] last measured link bandwidth (one slot old)


@dataclass(frozen=True)
class Feedback:
    """Outcomes of completed requests, delivered when they complete."""

    idx: I
    cls: I
    server: I
    time: F  # observed processing time D
    deadline: F  # realised ΔD
    predicted_time: F  # the cost model's D for the realised prompt/output, at admission
    energy: F  # weighted marginal energy (J)
    l_in: F
    l_out: F


class Policy(ABC):
    """A placement policy: assigns each request of a round to a server index."""

    name: ClassVar[str]
    #: Needs the world's hidden state (only the clairvoyant greedy policy).
    hindsight: ClassVar[bool] = False

    def reset(self, env: Env, world: World | None = None) -> None:
        self.env = env
        self.world = world
        t = env.table
        self.rng = np.random.default_rng([env.seed, 7])
        # Static feasibility [C, M]: the server may run the class at all.
        self.allowed = t.allowed

    @abstractmethod
    def assign(self, batch: Batch, obs: Observation) -> I:
        """Server index for each request of `batch`; `SHED` (-1) rejects the request
        (never run, a failure reported apart from late ones, no feedback)."""

    def feedback(self, fb: Feedback) -> None:  # noqa: B027 - learning is optional
        """Observe completed requests (learning policies override)."""

    def release_times(self, batch: Batch, obs: Observation) -> F | None:
        """Earliest admission time (s) per request of the round `assign` just placed.

        Asked by the world right after `assign(batch, obs)`. None (the default): admit on
        arrival. A hold keeps the request in its server's queue (deferred batching).
        """
        return None

    def prepare(self, sc: Scenario, seed: int) -> None:  # noqa: B027 - training is optional
        """Called once before a run of scenario `sc` with evaluation seed `seed`.

        Policies that train in the simulator do it here, on other seeds only.
        """

    def quality_ok(self, batch: Batch) -> NDArray[np.bool_]:
        """[N, M]: static constraints plus the request's quality floor."""
        t = self.env.table
        return self.allowed[batch.cls] & (t.quality[batch.cls] >= batch.min_quality[:, None] - 1e-9)

    def fallback(
        self, batch: Batch, mask: NDArray[np.bool_], wider: NDArray[np.bool_] | None = None
    ) -> NDArray[np.bool_]:
        """Rows of `mask` with no option fall back to `wider`, then to every statically
        allowed server."""
        for alt in (wider, self.allowed[batch.cls]):
            empty = ~mask.any(axis=1)
            if alt is None or not empty.any():
                continue
            mask = mask.copy()
            mask[empty] = alt[empty]
        return mask
