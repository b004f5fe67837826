"""What every scenario module shares: the error type and the strict pydantic base."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ScenarioError(ValueError):
    """A scenario that cannot be loaded; the message names the file and the field."""


class Strict(BaseModel):
    # Finite numbers only: an infinite duration, rate or window end cannot be simulated.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
