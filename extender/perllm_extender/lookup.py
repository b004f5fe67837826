"""Node objects for names the node cache does not know (names-only requests), read from
the node source (the API server) in a thread pool, within a per-request time budget.

A names-only `/filter` may name thousands of nodes the cache has never seen (no informer
yet, or nodes that do not exist). Each name is read once: a read in flight is shared by the
requests that need it, a name the source does not know is remembered as missing for
`negative_ttl_s`, and a request waits for its reads at most `budget_s` in all (keep it
below kube-scheduler's extender `httpTimeout`, 2 s in the chart). What is not read by then
fails for this request with `TIMED_OUT` and is ready for the next one; at most
`max_pending` reads are queued, the names beyond fail with `BUSY`.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from typing import Any

from perllm_extender.nodes import node_name

Obj = dict[str, Any]

UNKNOWN = "node unknown to the PerLLM extender (not in its node cache)"
MISSING = "node unknown to the PerLLM extender (not found by the API lookup)"
TIMED_OUT = (
    "node unknown to the PerLLM extender (API lookup past this request's budget: "
    "retried on the next request)"
)
BUSY = (
    "node unknown to the PerLLM extender (too many API lookups queued: retried on the next request)"
)


class NodeLookup:
    def __init__(
        self,
        source: Callable[[str], Obj | None],
        on_found: Callable[[Obj], None],
        *,
        budget_s: float = 0.5,
        workers: int = 8,
        negative_ttl_s: float = 30.0,
        max_negative: int = 50_000,
        max_pending: int = 2_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source, self.on_found = source, on_found
        self.budget_s, self.negative_ttl_s = budget_s, negative_ttl_s
        self.max_negative, self.max_pending = max_negative, max_pending
        self.clock = clock
        self.workers = workers
        self._pool = self._new_pool()
        self._pending: dict[str, Future[Obj | None]] = {}
        self._missing: OrderedDict[str, float] = OrderedDict()  # name -> when found missing
        self._lock = threading.Lock()
        self.reads = 0  # source calls made
        self.results: dict[str, int] = {}  # found | missing | timeout | busy | negative-cache

    def _new_pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(self.workers, thread_name_prefix="perllm-node-lookup")

    def _count(self, what: str, n: int = 1) -> None:
        if n:
            with self._lock:
                self.results[what] = self.results.get(what, 0) + n

    def known_missing(self, name: str) -> bool:
        """The source did not know `name` less than `negative_ttl_s` ago."""
        with self._lock:
            at = self._missing.get(name)
            if at is None:
                return False
            if self.clock() - at < self.negative_ttl_s:
                return True
            del self._missing[name]
            return False

    def _read(self, name: str) -> Obj | None:
        try:
            obj = self.source(name)
        except Exception:
            obj = None
        if obj is not None and node_name(obj) != name:  # an answer about another node
            obj = None
        with self._lock:
            self.reads += 1
            self._pending.pop(name, None)
            if obj is None:
                self._missing[name] = self.clock()
                self._missing.move_to_end(name)
                while len(self._missing) > self.max_negative:
                    self._missing.popitem(last=False)
        if obj is not None:
            self.on_found(obj)  # into the node cache: the next request finds it there
        return obj

    def resolve(self, names: Iterable[str]) -> dict[str, Obj | str]:
        """Node object or the reason it is missing, per name (names the cache misses).
        Blocks at most `budget_s`: call it off the event loop."""
        deadline = self.clock() + self.budget_s
        out: dict[str, Obj | str] = {}
        waiting: dict[str, Future[Obj | None]] = {}
        with self._lock:
            for n in names:
                at = self._missing.get(n)
                if at is not None and self.clock() - at < self.negative_ttl_s:
                    out[n] = MISSING
                    continue
                f = self._pending.get(n)
                if f is None:
                    if len(self._pending) >= self.max_pending:
                        out[n] = BUSY
                        continue
                    f = self._pool.submit(self._read, n)
                    self._pending[n] = f
                waiting[n] = f
        neg = sum(v == MISSING for v in out.values())
        self._count("negative-cache", neg)
        self._count("busy", len(out) - neg)
        if waiting:
            wait_all(waiting.values(), timeout=max(0.0, deadline - self.clock()))
        for n, f in waiting.items():
            if not f.done():
                out[n] = TIMED_OUT
                self._count("timeout")
                continue
            obj = f.result()
            out[n] = obj if obj is not None else MISSING
            self._count("found" if obj is not None else "missing")
        return out

    def close(self) -> None:
        """Cancel the queued reads (a fresh pool serves any later request)."""
        with self._lock:
            pool, self._pool = self._pool, self._new_pool()
            self._pending.clear()
        pool.shutdown(wait=False, cancel_futures=True)
