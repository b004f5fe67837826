"""What every scenario module shares: the error type and the strict pydantic base."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ScenarioError(ValueError):
    """A scenario that cannot be loaded; the message names the file and the field."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
