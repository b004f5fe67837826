"""One membership of the router's backends: what a request is decided, proxied and
learned in. `Router.set_backends` replaces it while requests are in flight; a request
keeps the one it was decided in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from perllm.router.config import Backend
from perllm.router.decision import Decider
from perllm.router.metrics import BackendMetrics
from perllm.router.upstream import Pool
from perllm.secrets import SecretFile


@dataclass
class Members:
    """One membership of the backends and the decider over exactly them."""

    backends: list[Backend]
    names: list[str]
    decider: Decider
    pools: list[Pool]
    bw: np.ndarray[Any, np.dtype[np.float64]]
    metrics: list[BackendMetrics]
    tokens: list[SecretFile | None]  # credentials sent to each backend (remote tiers)


def decider_key(b: Backend) -> tuple[Any, ...]:
    """What makes a new decider necessary (bandwidth alone does not)."""
    return (b.name, b.url, b.tier, b.hardware, b.link, b.model, b.token_file, b.ca_file)
