"""A vectorised round's arrays over its load levels (`CSUCB._decide_arrays`), grown on
demand, and what the decision reads from them."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from perllm.estimate import RoundView

F = NDArray[np.float64]
I = NDArray[np.intp]  # noqa: E741


class Levels:
    """A round's arrays over the load levels computed so far (grown on demand)."""

    def __init__(self, view: RoundView, pess: F, feas: NDArray[np.bool_], mean: F, score: F):
        self.view, self.pess, self.feas, self.mean, self.score = view, pess, feas, mean, score

    def extend(self, v: RoundView, pess: F, feas: NDArray[np.bool_], mean: F, score: F) -> None:
        self.view = self.view.then(v)
        self.pess = np.concatenate([self.pess, pess], axis=2)
        self.feas = np.concatenate([self.feas, feas], axis=2)
        self.mean = np.concatenate([self.mean, mean], axis=2)
        self.score = np.concatenate([self.score, score], axis=2)


def picked(a: F, flat: I, placed: NDArray[np.bool_]) -> F:
    """[N, M, K] `a` at each placed request's (server, level) `flat`; NaN where shed."""
    return np.where(placed, a.ravel()[flat], np.nan)
