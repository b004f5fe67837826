"""The extender's CS-UCB instances: created, cached, synced and updated here only.

One `CSUCB` per (service key, spec, candidate node set), built from a `CostTable` of [the
service] × [candidate nodes] and kept in a bounded LRU: kube-scheduler's in-tree filters
change the candidate set from pod to pod. Its key holds only slow node facts (labels,
annotations), never telemetry. What a service has learned is shared by its CSUCBs through
`ArmStore` (CS-UCB `export_state()` format, arms keyed `<service>|<pool>`): each syncs from
the store before use and hands its state back after, so what is learned about a pool
carries across node sets, bandwidth changes and restarts (the store is what `state.py`
persists).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from perllm.contract import Server, ServiceSpec
from perllm.costmodel import build_cost_table
from perllm.csucb import CSUCB
from perllm.profiles import Catalogue

if TYPE_CHECKING:
    from perllm_extender.learning import LatencyObservation


def service_key(namespace: str, spec: ServiceSpec) -> str:
    """What learned state is kept under: `namespace/service@model` (a new model invalidates
    the learned time ratios; a new deadline does not)."""
    return f"{namespace}/{spec.name}@{spec.model}"


class ArmStore:
    """Learned state per service key, with a generation counter so a CSUCB re-imports only
    when another one has learned something since it last synced.

    Exporting a CSUCB costs more than a small decision, so `push` only records which CSUCB
    holds the service's freshest state; it is exported when another CSUCB of the service
    needs it, or for persistence (`export`). Share the scheduler's (reentrant) lock so an
    export never reads a CSUCB in the middle of a decision.
    """

    def __init__(self, lock: threading.RLock | None = None) -> None:
        self._states: dict[str, dict[str, Any]] = {}
        self._gen: dict[str, int] = {}
        self._owner: dict[str, CSUCB] = {}  # the CSUCB ahead of _states[skey]
        self._lock = lock or threading.RLock()

    def _materialize(self, skey: str) -> None:
        b = self._owner.pop(skey, None)
        if b is None:
            return
        st = b.export_state()
        old = self._states.get(skey)
        if old is not None:  # pools this CSUCB does not have keep what was learned
            st["arms"] = {**old.get("arms", {}), **st["arms"]}
            st["outputs"] = {**old.get("outputs", {}), **st["outputs"]}
        self._states[skey] = st

    def pull(self, skey: str, b: CSUCB, seen: int) -> int:
        """Bring `b` up to the service's state; returns the generation it now has."""
        with self._lock:
            gen = self._gen.get(skey, 0)
            if gen == seen or self._owner.get(skey) is b:
                return gen
            self._materialize(skey)
            st = self._states.get(skey)
            if st is not None:
                b.import_state(st)
            return gen

    def push(self, skey: str, b: CSUCB) -> int:
        """`b` (synced by `pull` before it changed) now holds the service's state."""
        with self._lock:
            if self._owner.get(skey) not in (None, b):
                self._materialize(skey)
            self._owner[skey] = b
            gen = self._gen.get(skey, 0) + 1
            self._gen[skey] = gen
            return gen

    def export(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            for k in list(self._owner):
                self._materialize(k)
            return dict(self._states)

    def load(self, states: dict[str, dict[str, Any]]) -> None:
        with self._lock:
            for k, st in states.items():
                self._owner.pop(k, None)
                self._states[k] = st
                self._gen[k] = self._gen.get(k, 0) + 1

    def __len__(self) -> int:
        with self._lock:
            return len(self._states.keys() | self._owner.keys())


@dataclass
class _Entry:
    b: CSUCB
    skey: str
    gen: int = -1  # ArmStore generation last synced


_Key = tuple[str, str, tuple[str, ...]]  # service key, spec JSON, each server's JSON


class BanditCache:
    """The LRU of CSUCBs and the `ArmStore` that keeps them in step. Share the scheduler's
    (reentrant) lock: decisions and updates hold it around `use`."""

    def __init__(self, catalogue: Catalogue, lock: threading.RLock, max_size: int = 256) -> None:
        self.catalogue = catalogue
        self.arms = ArmStore(lock)  # what persistence saves and restores
        self._lock = lock
        self._lru: OrderedDict[_Key, _Entry] = OrderedDict()
        self._max_size = max_size

    def __len__(self) -> int:
        return len(self._lru)

    def _entry(
        self,
        spec: ServiceSpec,
        servers: Sequence[Server],
        skey: str | None,
        server_keys: tuple[str, ...] | None,
    ) -> _Entry:
        skey = skey or service_key("default", spec)
        if server_keys is None:
            server_keys = tuple(s.model_dump_json() for s in servers)
        key = (skey, spec.model_dump_json(), server_keys)
        e = self._lru.get(key)
        if e is None:
            table = build_cost_table([spec], [(s.name, s) for s in servers], self.catalogue)
            e = _Entry(CSUCB(table), skey)
            self._lru[key] = e
            while len(self._lru) > self._max_size:
                self._lru.popitem(last=False)
        else:
            self._lru.move_to_end(key)
        e.gen = self.arms.pull(skey, e.b, e.gen)
        return e

    def get(
        self,
        spec: ServiceSpec,
        servers: Sequence[Server],
        skey: str | None = None,
        server_keys: tuple[str, ...] | None = None,
    ) -> CSUCB:
        """The CSUCB of (service, node set), synced with what the service has learned.
        `server_keys`: each server's JSON when the caller has it (saves re-dumping)."""
        return self._entry(spec, servers, skey, server_keys).b

    @contextmanager
    def use(
        self,
        spec: ServiceSpec,
        servers: Sequence[Server],
        skey: str,
        server_keys: tuple[str, ...] | None = None,
    ) -> Iterator[CSUCB]:
        """`get`, for a call that changes the CSUCB (a decision counts a round): what it
        holds afterwards becomes the service's state. Call under the lock."""
        e = self._entry(spec, servers, skey, server_keys)
        yield e.b
        e.gen = self.arms.push(skey, e.b)

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
                with self.use(p.spec, p.servers, p.skey) as b:
                    b.update(
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
