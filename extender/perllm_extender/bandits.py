"""The extender's CS-UCB instances and what they learn: created, cached and updated here only.

What a service has learned lives in ONE `ArmStats` per service key (`ArmStore`), keyed by
class and pool name, so it carries across node sets, bandwidth changes and restarts (the
store is what `state.py` persists). kube-scheduler's in-tree filters change the candidate
set from pod to pod: each node set gets its own `CSUCB` (its `CostTable` of [the service] ×
[candidate nodes]) built around the service's `ArmStats`, kept in a bounded LRU whose key
holds only slow node facts (labels, annotations), never telemetry. A decision or an update
through any of them is at once what every other one of the service sees: nothing is synced.

Bounds: `max_size` CSUCBs; `max_services` services; a service whose LLMService is gone
(`live` says so) and that nothing used for `grace_s` is forgotten, CSUCBs included.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from perllm.contract import Server, ServiceSpec
from perllm.costmodel import build_cost_table
from perllm.csucb import CSUCB, ArmStats
from perllm.profiles import Catalogue

if TYPE_CHECKING:
    from perllm_extender.learning import LatencyObservation

log = logging.getLogger("perllm.extender.bandits")

GRACE_S = 3600.0  # a deleted service's learned state is kept this long after its last use
MAX_SERVICES = 4096
SWEEP_S = 60.0  # expiry runs at most this often from the decision path


def service_key(namespace: str, spec: ServiceSpec) -> str:
    """What learned state is kept under: `namespace/service@model` (a new model invalidates
    the learned time ratios; a new deadline does not)."""
    return f"{namespace}/{spec.name}@{spec.model}"


def split_key(skey: str) -> tuple[str, str, str]:
    """(namespace, service, model) of a service key."""
    ns, _, rest = skey.partition("/")
    name, _, model = rest.partition("@")
    return ns, name, model


class ArmStore:
    """One `ArmStats` per service key, and the restored states of services no CSUCB has
    asked for yet (their classes' output priors come from the service's spec, so a state is
    imported when the service's first CSUCB exists: `adopt`). Share the scheduler's
    (reentrant) lock so an export never reads statistics in the middle of a decision."""

    def __init__(
        self,
        lock: threading.RLock | None = None,
        *,
        grace_s: float = GRACE_S,
        max_services: int = MAX_SERVICES,
        live: Callable[[str], bool] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._stats: dict[str, ArmStats] = {}
        self._pending: dict[str, dict[str, Any]] = {}  # restored, not adopted yet
        self._used: dict[str, float] = {}  # last decision, update or restore
        self._gone: dict[str, float] = {}  # when first seen without a live LLMService
        self._lock = lock or threading.RLock()
        self.grace_s, self.max_services, self.clock = grace_s, max_services, clock
        self.live: Callable[[str], bool] = live or (lambda _k: False)
        # whether `live` can be trusted: False while the LLMService informer has not
        # listed (RBAC, API down at start), when every service would look deleted
        self.liveness_known: Callable[[], bool] = lambda: True
        self.on_drop: list[Callable[[set[str]], None]] = []
        self.expired = 0  # services forgotten (expiry or the size bound)

    def stats(self, skey: str) -> ArmStats:
        """The service's statistics (created empty when new); marks the service used."""
        with self._lock:
            self._used[skey] = self.clock()
            st = self._stats.get(skey)
            if st is None:
                st = self._stats[skey] = ArmStats()
                self._bound()
            return st

    def adopt(self, skey: str) -> None:
        """Import the restored state of `skey` into its statistics, now that a CSUCB added
        the service's class (arms of unknown classes would be dropped)."""
        with self._lock:
            st, pending = self._stats.get(skey), self._pending.pop(skey, None)
            if st is not None and pending is not None:
                st.import_state(pending)

    def peek(self, skey: str) -> ArmStats | None:
        with self._lock:
            return self._stats.get(skey)

    def keys(self) -> list[str]:
        """Service keys, the ones to keep first: live, then most recently used."""
        with self._lock:
            ks = self._stats.keys() | self._pending.keys()
            return sorted(ks, key=lambda k: (not self.live(k), -self._used.get(k, 0.0), k))

    def export(self) -> dict[str, dict[str, Any]]:
        """`export_state()` per service, in `keys()` order."""
        with self._lock:
            out: dict[str, dict[str, Any]] = {}
            for k in self.keys():
                st = self._stats.get(k)
                out[k] = st.export_state() if st is not None else self._pending[k]
            return out

    def load(self, states: dict[str, dict[str, Any]]) -> None:
        """Restored states (`state.parse`): replace what those services hold."""
        with self._lock:
            now = self.clock()
            self._drop(set(states) & self._stats.keys(), count=False)
            for k, st in states.items():
                self._pending[k] = st
                self._used[k] = now
            self._bound()

    def expire(self, now: float | None = None) -> set[str]:
        """Forget services without a live LLMService and unused for `grace_s` since they
        were last used or first seen gone; returns their keys. Nothing expires (nor starts
        its grace period) while `liveness_known()` is False."""
        with self._lock:
            if not self.liveness_known():
                return set()
            now = self.clock() if now is None else now
            old: set[str] = set()
            for k in self._stats.keys() | self._pending.keys():
                if self.live(k):
                    self._gone.pop(k, None)
                    continue
                since = max(self._gone.setdefault(k, now), self._used.get(k, 0.0))
                if now - since >= self.grace_s:
                    old.add(k)
            if old:
                log.info("forgot the learned state of %d deleted services", len(old))
                self._drop(old)
            return old

    def _bound(self) -> None:
        """At most `max_services`: the least worth keeping (`keys()` order) go first."""
        extra = len(self._stats.keys() | self._pending.keys()) - self.max_services
        if extra > 0:
            drop = set(self.keys()[-extra:])
            log.warning(
                "more than %d services learned: forgot the %d least recently used",
                self.max_services,
                len(drop),
            )
            self._drop(drop)

    def _drop(self, keys: set[str], count: bool = True) -> None:
        if not keys:
            return
        for k in keys:
            self._stats.pop(k, None)
            self._pending.pop(k, None)
            self._used.pop(k, None)
            self._gone.pop(k, None)
        self.expired += len(keys) if count else 0
        for hook in self.on_drop:
            hook(keys)

    def __len__(self) -> int:
        with self._lock:
            return len(self._stats.keys() | self._pending.keys())


_Key = tuple[str, str, tuple[str, ...]]  # service key, spec JSON, each server's JSON


class BanditCache:
    """The LRU of CSUCBs, one per (service, spec, node set), around the `ArmStore`'s
    statistics. Share the scheduler's (reentrant) lock: decisions and updates hold it."""

    def __init__(
        self,
        catalogue: Catalogue,
        lock: threading.RLock,
        max_size: int = 256,
        arms: ArmStore | None = None,
    ) -> None:
        self.catalogue = catalogue
        self.arms = arms or ArmStore(lock)  # what persistence saves and restores
        self.arms.on_drop.append(self._forget)
        self._lock = lock
        self._lru: OrderedDict[_Key, CSUCB] = OrderedDict()
        self._max_size = max_size
        self._swept = time.monotonic()

    def __len__(self) -> int:
        return len(self._lru)

    def _forget(self, skeys: set[str]) -> None:
        for k in [k for k in self._lru if k[0] in skeys]:
            del self._lru[k]

    def get(
        self,
        spec: ServiceSpec,
        servers: Sequence[Server],
        skey: str | None = None,
        server_keys: tuple[str, ...] | None = None,
    ) -> CSUCB:
        """The CSUCB of (service, node set), learning into the service's statistics.
        `server_keys`: each server's JSON when the caller has it (saves re-dumping)."""
        skey = skey or service_key("default", spec)
        if server_keys is None:
            server_keys = tuple(s.model_dump_json() for s in servers)
        key = (skey, spec.model_dump_json(), server_keys)
        with self._lock:
            b = self._lru.get(key)
            if b is not None:
                self._lru.move_to_end(key)
                self.arms.stats(skey)  # marks it used
                return b
            if time.monotonic() - self._swept >= SWEEP_S:
                self._swept = time.monotonic()
                self.arms.expire()
            table = build_cost_table([spec], [(s.name, s) for s in servers], self.catalogue)
            b = CSUCB(table, stats=self.arms.stats(skey))
            self.arms.adopt(skey)
            self._lru[key] = b
            while len(self._lru) > self._max_size:
                self._lru.popitem(last=False)
            return b

    def apply(self, observations: Sequence[LatencyObservation]) -> int:
        """`CSUCB.update()` for observed placements, grouped by (service, node set)."""
        groups: dict[tuple[str, str, tuple[str, ...]], list[LatencyObservation]] = {}
        for o in observations:
            p = o.placement  # ServiceSpec holds lists: group by its JSON, not the object
            k = (p.skey, p.spec.model_dump_json(), tuple(s.name for s in p.servers))
            groups.setdefault(k, []).append(o)
        n = 0
        with self._lock:
            for obs in groups.values():
                p = obs[0].placement
                self.get(p.spec, p.servers, p.skey).update(
                    np.zeros(len(obs), np.intp),
                    np.array([o.server for o in obs], np.intp),
                    np.array([o.time_s for o in obs]),
                    np.array([o.predicted_s for o in obs]),
                    np.array([o.energy_j for o in obs]),
                    np.array([o.deadline_s for o in obs]),
                    np.array([o.l_out for o in obs]),
                )
                n += len(obs)
        return n
