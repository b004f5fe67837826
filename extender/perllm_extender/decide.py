"""CS-UCB decisions for one pod over its candidate nodes.

One `CSUCB` per (service, node set), built from a `CostTable` of [the pod's service] ×
[candidate nodes] and kept in a bounded LRU. Telemetry defaults stand in until Prometheus
is wired in: no running or waiting requests, nominal link bandwidth.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from perllm.contract import Server, ServiceSpec
from perllm.costmodel import build_cost_table
from perllm.csucb import CSUCB, Explanation
from perllm.profiles import Catalogue
from perllm_extender.models import MAX_PRIORITY
from perllm_extender.nodes import NodeCache, node_name, to_server
from perllm_extender.services import BadPod, ServiceRegistry, pod_key, pod_uid

Obj = dict[str, Any]


@dataclass
class PodDecision:
    """The outcome for one pod: which nodes pass, why the others fail, and the scores."""

    pod: str
    service: str | None  # None: not a PerLLM pod (passed through)
    nodes: list[str]  # candidate node names, in request order
    passed: list[str]
    failed: dict[str, str]
    scores: dict[str, int]
    chosen: str | None = None
    feasible: bool = True
    explanation: dict[str, Any] | None = None
    latency_s: float = 0.0


@dataclass
class Decided:
    decision: PodDecision
    at: float = field(default_factory=time.monotonic)


def priorities(expl: Explanation) -> dict[str, int]:
    """Integer scores 0..10: the chosen node 10, other feasible nodes by UCB rank, 9 down
    to 1; infeasible nodes 0."""
    out = {c.node: 0 for c in expl.candidates}
    out[expl.chosen] = MAX_PRIORITY
    rest = sorted((c for c in expl.candidates if c.feasible and c.node != expl.chosen),
                  key=lambda c: -c.score)
    for i, c in enumerate(rest):
        out[c.node] = max(1, round((MAX_PRIORITY - 1) * (1 - i / len(rest))))
    return out


class Scheduler:
    def __init__(self, catalogue: Catalogue, *, default_model: str = "llama2-7b",
                 log_size: int = 1000, max_bandits: int = 256, reuse_s: float = 30.0,
                 node_source: Callable[[str], Obj | None] | None = None) -> None:
        self.catalogue = catalogue
        # on a node-cache miss (nodeCacheCapable requests carry names only): fetch the Node
        self.node_source = node_source
        self.default_model = default_model
        self.services = ServiceRegistry()
        self.nodes = NodeCache()
        self.log: deque[dict[str, Any]] = deque(maxlen=log_size)
        self._bandits: OrderedDict[tuple[str, tuple[str, ...]], CSUCB] = OrderedDict()
        self._max_bandits = max_bandits
        # filter's decision, reused by the prioritize call of the same scheduling cycle, so
        # one pod counts as one play
        self._recent: OrderedDict[tuple[str, tuple[str, ...]], Decided] = OrderedDict()
        self._reuse_s = reuse_s
        self._lock = threading.Lock()

    # -- inputs -------------------------------------------------------------------------
    def candidates(self, node_objs: list[Obj] | None, names: list[str] | None,
                   lookup: bool = True) -> tuple[list[str], dict[str, Obj | None]]:
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
        return order, {n: self._lookup(n) if lookup else None for n in order}

    def _lookup(self, name: str) -> Obj | None:
        obj = self.nodes.get(name)
        if obj is None and self.node_source is not None:
            obj = self.node_source(name)
            if obj is not None:
                self.nodes.upsert(obj)
        return obj

    def bandit(self, spec: ServiceSpec, servers: list[Server]) -> CSUCB:
        key = (spec.model_dump_json(),
               tuple(s.model_dump_json() for s in servers))
        b = self._bandits.get(key)
        if b is None:
            table = build_cost_table([spec], [(s.name, s) for s in servers], self.catalogue)
            b = CSUCB(table)
            self._bandits[key] = b
            while len(self._bandits) > self._max_bandits:
                self._bandits.popitem(last=False)
        else:
            self._bandits.move_to_end(key)
        return b

    # -- the decision ---------------------------------------------------------------------
    def decide(self, pod: Obj, node_objs: list[Obj] | None, names: list[str] | None,
               verb: str) -> PodDecision:
        t0 = time.perf_counter()
        spec = self.services.resolve(pod, self.default_model)
        order, objs = self.candidates(node_objs, names, lookup=spec is not None)
        key = pod_key(pod)
        if spec is None:
            return PodDecision(pod=key, service=None, nodes=order, passed=order, failed={},
                               scores=dict.fromkeys(order, 0))
        if spec.model not in self.catalogue.models:
            raise BadPod(f"pod {key}: model {spec.model!r} of service {spec.name!r} is not "
                         "in the catalogue")
        with self._lock:
            rkey = (pod_uid(pod), tuple(order))
            hit = self._recent.get(rkey)
            if hit is not None and time.monotonic() - hit.at < self._reuse_s:
                return hit.decision
            d = self._decide(key, spec, order, objs)
            d.latency_s = time.perf_counter() - t0
            self._recent[rkey] = Decided(d)
            while len(self._recent) > 4096:
                self._recent.popitem(last=False)
            self.log.append({
                "time": time.time(), "verb": verb, "pod": key, "service": spec.name,
                "chosen": d.chosen, "feasible": d.feasible, "passed": d.passed,
                "failed": d.failed, "scores": d.scores, "latency_s": d.latency_s,
                "explanation": d.explanation,
            })
            return d

    def _decide(self, key: str, spec: ServiceSpec, order: list[str],
                objs: dict[str, Obj | None]) -> PodDecision:
        failed: dict[str, str] = {}
        servers: list[Server] = []
        for n in order:
            o = objs[n]
            if o is None:
                failed[n] = "node unknown to the PerLLM extender (not in its node cache)"
                continue
            s = to_server(o, self.catalogue)
            if isinstance(s, str):
                failed[n] = s
            else:
                servers.append(s)
        scores = dict.fromkeys(order, 0)
        if not servers:
            return PodDecision(pod=key, service=spec.name, nodes=order, passed=[],
                               failed=failed, scores=scores, feasible=False)
        b = self.bandit(spec, servers)
        t, m = b.t, len(servers)
        tr = spec.traffic
        dec = b.decide(
            np.zeros(1, np.intp), np.array([tr.prompt_tokens]), np.array([tr.output_tokens]),
            np.array([tr.payload_bytes]), np.array([spec.requirements.min_quality]),
            np.zeros(m), np.zeros(m), t.link_mbps.copy(), explain=True,
        )
        assert dec.explanations is not None
        expl = dec.explanations[0]
        passed_set = {c.node for c in expl.candidates if c.feasible}
        if not expl.feasible:
            passed_set = {expl.chosen}  # least violating: the pod can still schedule
        for c in expl.candidates:
            if c.node not in passed_set:
                failed[c.node] = c.reason or "not chosen: nothing was feasible"
        scores.update(priorities(expl))
        return PodDecision(
            pod=key, service=spec.name, nodes=order,
            passed=[n for n in order if n in passed_set], failed=failed, scores=scores,
            chosen=expl.chosen, feasible=expl.feasible, explanation=expl.to_dict(),
        )
