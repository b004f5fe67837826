"""Distributions of a scenario: token lengths, attachment sizes (`Dist`), quality floors
(`Choice`), and the Azure-trace presets; `dist_mean` is what a service declares."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from perllm.contract import Number
from perllm.scenario.base import Strict

# Token-length distributions. Presets are quantile tables computed from the public Azure
# LLM inference trace 2023 (calibration study §6.1); resampling their inverse CDF keeps the
# multi-modal shape better than a lognormal fit.
AZURE_PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    # probabilities, token counts (p0 and p100 from min/max of the trace)
    "azure-conv-input": (
        (0, 0.10, 0.25, 0.50, 0.75, 0.90, 0.99, 1),
        (2, 207, 396, 1020, 1189, 2734, 4142, 14050),
    ),
    "azure-conv-output": (
        (0, 0.10, 0.25, 0.50, 0.75, 0.90, 0.99, 1),
        (1, 54, 85, 129, 395, 424, 601, 1000),
    ),
    "azure-code-input": (
        (0, 0.10, 0.25, 0.50, 0.75, 0.90, 0.99, 1),
        (3, 147, 578, 1469, 2744, 5188, 7436, 7437),
    ),
    "azure-code-output": (
        (0, 0.10, 0.25, 0.50, 0.75, 0.90, 0.99, 1),
        (1, 7, 9, 13, 24, 55, 251, 1899),
    ),
}


class Dist(Strict):
    """A positive distribution: `preset`, `lognormal`, `uniform`, `constant` or `quantiles`."""

    kind: Literal["preset", "lognormal", "uniform", "constant", "quantiles"]
    name: str | None = Field(default=None, description="Preset name (kind: preset).")
    mu: Number | None = None
    sigma: Annotated[float, Field(strict=True, ge=0)] | None = None
    low: Annotated[float, Field(strict=True, ge=0)] | None = None
    high: Annotated[float, Field(strict=True, ge=0)] | None = None
    value: Annotated[float, Field(strict=True, ge=0)] | None = None
    probs: list[Number] | None = None
    values: list[Number] | None = None
    max: Annotated[float, Field(strict=True, gt=0)] | None = Field(
        default=None, description="Clip draws here."
    )

    @model_validator(mode="after")
    def _params(self) -> Dist:
        need = {
            "preset": ("name",),
            "lognormal": ("mu", "sigma"),
            "uniform": ("low", "high"),
            "constant": ("value",),
            "quantiles": ("probs", "values"),
        }[self.kind]
        missing = [k for k in need if getattr(self, k) is None]
        if missing:
            raise ValueError(f"kind {self.kind} needs {', '.join(missing)}")
        # A parameter of another kind was ignored: `{kind: lognormal, ..., low: 10}` drew
        # below 10 without a word.
        for k in ("name", "mu", "sigma", "low", "high", "value", "probs", "values"):
            if k not in need and getattr(self, k) is not None:
                takes = ", ".join(need)
                raise ValueError(f"{k}: not a parameter of kind {self.kind} (it takes {takes})")
        if self.kind == "quantiles" and any(x < 0 for x in self.values or []):
            raise ValueError("values: each >= 0 (a length or a size)")
        if self.kind == "preset" and self.name not in AZURE_PRESETS:
            raise ValueError(f"name: unknown preset {self.name!r}; known: {sorted(AZURE_PRESETS)}")
        if (
            self.kind == "uniform"
            and self.low is not None
            and self.high is not None
            and self.high < self.low
        ):
            raise ValueError("high: must be >= low")
        if self.kind == "quantiles":
            p, v = self.probs or [], self.values or []
            if (
                len(p) != len(v)
                or len(p) < 2
                or p[0] != 0
                or p[-1] != 1
                or any(b < a for a, b in itertools.pairwise(p))
                or any(b < a for a, b in itertools.pairwise(v))
            ):
                raise ValueError(
                    "probs/values: equal length, probs rising from 0 to 1, values non-decreasing"
                )
        return self

    def quantile_table(self) -> tuple[Sequence[float], Sequence[float]] | None:
        if self.kind == "preset":
            assert self.name is not None
            return AZURE_PRESETS[self.name]
        if self.kind == "quantiles":
            assert self.probs is not None and self.values is not None
            return self.probs, self.values
        return None


class Choice(Strict):
    """A discrete distribution over values (e.g. quality floors)."""

    values: list[Number] = Field(min_length=1)
    weights: list[Annotated[float, Field(strict=True, ge=0)]] | None = None

    @model_validator(mode="after")
    def _weights(self) -> Choice:
        if self.weights is not None and (
            len(self.weights) != len(self.values) or sum(self.weights) <= 0
        ):
            raise ValueError("weights: one non-negative weight per value, not all zero")
        return self


def dist_mean(d: Dist) -> float:
    """Mean of a distribution, clipped at `max` as its draws are (what a service would
    declare as its expected traffic)."""
    import numpy as np

    c = d.max
    if d.kind == "constant":
        assert d.value is not None
        return d.value if c is None else min(d.value, c)
    if d.kind == "uniform":
        assert d.low is not None and d.high is not None
        return _clipped_linear_mean(np.array([0.0, 1.0]), np.array([d.low, d.high]), c)
    if d.kind == "lognormal":
        assert d.mu is not None and d.sigma is not None
        with np.errstate(over="ignore"):  # inf: the contract refuses it, naming the field
            m = float(np.exp(d.mu + d.sigma**2 / 2))
        if c is None:
            return m
        if d.sigma == 0:
            return min(m, c)
        # E[min(X, c)] = E[X; X < c] + c·P(X >= c), X = exp(N(mu, sigma²))
        z = (math.log(c) - d.mu) / d.sigma
        # (in logs: exp(mu + sigma²/2) alone may overflow where its product does not)
        tail = _phi(z - d.sigma)
        below = math.exp(d.mu + d.sigma**2 / 2 + math.log(tail)) if tail > 0 else 0.0
        return below + c * (1 - _phi(z))
    table = d.quantile_table()
    assert table is not None
    return _clipped_linear_mean(np.asarray(table[0], float), np.asarray(table[1], float), c)


def dist_min(d: Dist) -> float:
    """The smallest value a distribution draws (clipped at `max` as its draws are)."""
    if d.kind == "constant":
        assert d.value is not None
        low = d.value
    elif d.kind == "uniform":
        assert d.low is not None
        low = d.low
    elif d.kind == "lognormal":
        assert d.mu is not None and d.sigma is not None
        low = math.exp(d.mu) if d.sigma == 0 else 0.0  # (rng.lognormal(mu, 0) is e^mu)
    else:
        table = d.quantile_table()
        assert table is not None
        low = table[1][0]
    return low if d.max is None else min(low, d.max)


def _phi(x: float) -> float:
    """The standard normal CDF."""
    return 0.5 * math.erfc(-x / math.sqrt(2))


def _clipped_linear_mean(p: Any, v: Any, c: float | None) -> float:
    """The mean of min(V, c) for V with a piecewise-linear inverse CDF through (p, v)."""
    import numpy as np

    if c is None or c >= v[-1]:
        return float(np.sum(np.diff(p) * (v[1:] + v[:-1]) / 2))
    total = 0.0
    for p0, p1, v0, v1 in zip(p[:-1], p[1:], v[:-1], v[1:], strict=True):
        if v1 <= c:
            total += (p1 - p0) * (v0 + v1) / 2
        elif v0 >= c:
            total += (p1 - p0) * c
        else:  # the segment crosses c at fraction f of its probability
            f = (c - v0) / (v1 - v0)
            total += (p1 - p0) * (f * (v0 + c) / 2 + (1 - f) * c)
    return float(total)
