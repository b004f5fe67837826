"""The candidate nodes of a request: their names in request order, their Node objects and
their `Server` models, with the models of a node set cached for names-only requests."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from perllm.contract import Server
from perllm.profiles import Catalogue
from perllm_extender.lookup import BUSY, MISSING, TIMED_OUT, UNKNOWN, NodeLookup
from perllm_extender.names import is_dns_subdomain
from perllm_extender.nodes import NodeCache, node_name

Obj = dict[str, Any]
_UNRESOLVED = frozenset({UNKNOWN, MISSING, TIMED_OUT, BUSY})  # a set with these is not cached
# No node has such a name, and an API read of one is another path: `read_node("")` is
# GET /api/v1/nodes/, the whole list, which (nameless) was never cached, so read again
# on every request.
INVALID = "not a valid node name (an RFC 1123 subdomain): not looked up"


@dataclass(frozen=True)
class Prepared:
    """The modelled candidates of one request, in name order."""

    gen: int  # NodeCache.gen it was computed at
    servers: tuple[Server, ...]
    keys: tuple[str, ...]  # each server's JSON (the bandit cache key)
    failed: dict[str, str]  # unmodelled / unknown nodes


class CandidateSets:
    def __init__(
        self,
        nodes: NodeCache,
        catalogue: Catalogue,
        node_source: Callable[[str], Obj | None] | None = None,
        max_sets: int = 64,
    ) -> None:
        self.nodes, self.catalogue = nodes, catalogue
        # on a node-cache miss (nodeCacheCapable requests carry names only): fetch the Node,
        # in a thread pool within a per-request budget (lookup.py)
        self.node_source = node_source
        self.lookup = None if node_source is None else NodeLookup(node_source, nodes.upsert)
        self._sets: OrderedDict[tuple[str, ...], Prepared] = OrderedDict()
        self._max_sets = max_sets

    def __len__(self) -> int:
        return len(self._sets)

    def candidates(
        self, node_objs: list[Obj] | None, names: list[str] | None, lookup: bool = True
    ) -> tuple[list[str], dict[str, Obj | None]]:
        """Candidate names in request order and their Node objects (None: not cached)."""
        if node_objs is not None:
            objs: dict[str, Obj | None] = {}
            for o in node_objs:
                n = node_name(o)
                if n is not None and n not in objs:
                    objs[n] = o
                    self.nodes.upsert(o)
            return list(objs), objs
        order = list(dict.fromkeys(names or []))
        got = self._objects(order, lookup)
        return order, {n: o if isinstance(o, dict) else None for n, o in got.items()}

    def _objects(self, order: list[str], lookup: bool = True) -> dict[str, Obj | str]:
        """Node object per name, or why there is none (lookups only with `lookup`)."""
        out: dict[str, Obj | str] = {
            n: (o or UNKNOWN) if is_dns_subdomain(n) else INVALID
            for n, o in self.nodes.get_many(order)
        }
        if lookup and self.lookup is not None:
            miss = [n for n, o in out.items() if o == UNKNOWN]
            if miss:
                out.update(self.lookup.resolve(miss))
        return out

    def needs_lookup(self, names: list[str] | None) -> bool:
        """A names-only request naming nodes to read from the source (a read in flight, or
        one not made yet): its decision may wait up to the lookup budget."""
        if self.lookup is None or not names:
            return False
        lk = self.lookup
        return any(
            is_dns_subdomain(n) and not lk.known_missing(n) for n in self.nodes.missing(names)
        )

    def prepare(
        self, node_objs: list[Obj] | None, names: list[str] | None
    ) -> tuple[list[str], Prepared]:
        """Candidate names in request order and their models, in name order. kube-scheduler
        lists the nodes that passed its filters in the order its parallel filter workers
        finished, which differs from one pod to the next: models (and so the bandit cache
        key) follow the names' sorted order, so the same node set is the same bandit
        whatever the order. A names-only request for a set seen before, with no node
        changed since (`NodeCache.gen`), reuses the models: no per-node work on the hot
        path of a large fleet."""
        if node_objs is not None:  # full Nodes: cached and modelled in one pass
            got, got_keys = self.nodes.ingest(node_objs, self.catalogue)
            # the generation after these Nodes' changes: a decision over them is told
            # apart from one over their earlier labels (`Scheduler._reuse`)
            return list(got), _prepared(self.nodes.gen, got, got_keys)
        gen = self.nodes.gen
        order = list(dict.fromkeys(names or []))
        canon = tuple(sorted(order))
        hit = self._sets.get(canon)
        if hit is not None and hit.gen == gen:
            self._sets.move_to_end(canon)
            return order, hit
        objs = self._objects(order)
        models: dict[str, Server | str] = {}  # a reason for the nodes that fail
        keys: dict[str, str] = {}
        for n in order:
            o = objs[n]
            if isinstance(o, str):
                models[n] = o
            else:
                models[n], keys[n] = self.nodes.model(n, o, self.catalogue)
        prep = _prepared(gen, models, keys)
        if _UNRESOLVED.isdisjoint(prep.failed.values()):  # unknown nodes: look up next time
            self._sets[canon] = prep
            while len(self._sets) > self._max_sets:
                self._sets.popitem(last=False)
        return order, prep


def _prepared(gen: int, models: dict[str, Server | str], keys: dict[str, str]) -> Prepared:
    """Modelled nodes sorted by name; the others fail with their reason (request order)."""
    failed: dict[str, str] = {}
    ok: list[tuple[str, Server, str]] = []
    for n, srv in models.items():
        if isinstance(srv, str):
            failed[n] = srv
        else:
            ok.append((n, srv, keys[n]))
    ok.sort(key=lambda m: m[0])
    return Prepared(gen, tuple(m[1] for m in ok), tuple(m[2] for m in ok), failed)
