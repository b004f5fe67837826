"""The per-operator state the handlers share, carried in kopf's `memo`.

`registry.build` makes one `State` per operator and puts it in the root memo; kopf gives
every handler a shallow copy of that memo, so all of them see the same `State`.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import kopf

from perllm.telemetry.prom import Prometheus
from perllm_operator.config import Config
from perllm_operator.policy import Point

MEMO_KEY = "perllm"
HISTORY_LEN = 256  # ticks kept per service: far more than any re-placement window needs


def _history() -> collections.defaultdict[str, collections.deque[Point]]:
    return collections.defaultdict(lambda: collections.deque(maxlen=HISTORY_LEN))


@dataclass
class State:
    config: Config
    prom: Prometheus
    # Observations per LLMService uid, for the re-placement window. In memory: a restart
    # starts a fresh window; the cooldown survives in status.replacement.lastEvictionAt.
    history: collections.defaultdict[str, collections.deque[Point]] = field(
        default_factory=_history
    )

    @classmethod
    def from_config(cls, config: Config) -> State:
        return cls(config, config.prometheus.client())


def memo_of(state: State) -> kopf.Memo:
    return kopf.Memo({MEMO_KEY: state})


def state_of(memo: kopf.Memo) -> State:
    st = memo.get(MEMO_KEY)
    if not isinstance(st, State):
        raise RuntimeError("kopf memo carries no perllm State: run through registry.build")
    return st
