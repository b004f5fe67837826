"""A round's decision, and the prediction that feedback compares outcomes against."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from perllm.csucb.explain import Explanation

F = NDArray[np.float64]
I = NDArray[np.intp]  # noqa: E741
Num = TypeVar("Num", float, F)


@dataclass
class Decision:
    choice: I  # server index per request; `assign.SHED` (-1) where shed
    feasible: NDArray[np.bool_]  # a feasible server existed
    predicted_time: F  # at the expected output length
    predicted_energy: F
    # D ≈ fixed + per_token·L_out: lets feedback re-evaluate the decision-time prediction
    # at the realised output length (`realised_prediction`).
    predicted_fixed: F
    predicted_per_token: F
    # Rejected, not placed: nothing was feasible and `on_infeasible` is "shed", or no
    # server meets the request's tiers and quality floor. Predictions are NaN there.
    shed: NDArray[np.bool_]
    explanations: list[Explanation] | None = None


def realised_prediction(fixed: Num, per_token: Num, l_out: Num) -> Num:
    """The decision-time prediction of D at the realised output length. Feedback divides
    the observed time by it, so the learned ratio holds the model's queueing and speed
    errors but not the output-length lottery."""
    return fixed + per_token * l_out
