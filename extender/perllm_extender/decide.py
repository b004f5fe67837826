"""CS-UCB decisions for one pod over its candidate nodes.

One `CSUCB` per (service, node set), built from a `CostTable` of [the pod's service] ×
[candidate nodes] and kept in a bounded LRU; the Server models (and so the cache key) hold
only slow-changing node facts (labels, annotations), never telemetry. What is learned is
shared per service through `learning.ArmStore`. Each decision reads the latest telemetry
snapshot (link bandwidth, running/waiting per node) without waiting for Prometheus; what is
unknown takes the prior (nominal link bandwidth, no load).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from perllm.contract import Server, ServiceSpec
from perllm.costmodel import build_cost_table
from perllm.csucb import CSUCB, Explanation
from perllm.profiles import Catalogue
from perllm_extender.learning import ArmStore, Observation, service_key
from perllm_extender.models import MAX_PRIORITY
from perllm_extender.nodes import NodeCache, node_name
from perllm_extender.pods import PodIndex
from perllm_extender.services import BadPod, ServiceRegistry, pod_key, pod_uid

if TYPE_CHECKING:
    from perllm_extender.telemetry import Telemetry

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
    # what the router's metrics need
    reused: bool = False  # the filter's decision, served again to prioritize
    tier: str | None = None
    predicted_time_s: float | None = None
    predicted_energy_j: float | None = None
    exploration: bool = False  # chosen arm unplayed, or chosen for its bonus
    regret: float = 0.0  # best feasible mean reward − chosen one (estimate, ≥ 0)
    violated: str | None = None  # constraint the chosen node violates (nothing feasible)


@dataclass(frozen=True)
class DecisionEvent:
    """A fresh decision about a PerLLM pod, for the listeners (learning, publication)."""

    pod: Obj
    key: str
    uid: str
    namespace: str
    skey: str
    spec: ServiceSpec
    servers: tuple[Server, ...]
    decision: PodDecision


@dataclass
class Decided:
    decision: PodDecision
    at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class _Prepared:
    gen: int  # NodeCache.gen it was computed at
    servers: tuple[Server, ...]
    keys: tuple[str, ...]  # each server's JSON (the bandit cache key)
    failed: dict[str, str]  # unmodelled / unknown nodes


@dataclass
class _Bandit:
    b: CSUCB
    skey: str
    gen: int = -1  # ArmStore generation last synced


def priorities(expl: Explanation) -> dict[str, int]:
    """Integer scores 0..10: the chosen node 10, other feasible nodes by UCB rank, 9 down
    to 1; infeasible nodes 0."""
    out = {c.node: 0 for c in expl.candidates}
    out[expl.chosen] = MAX_PRIORITY
    rest = sorted(
        (c for c in expl.candidates if c.feasible and c.node != expl.chosen),
        key=lambda c: -(c.score or 0.0),
    )
    for i, c in enumerate(rest):
        out[c.node] = max(1, round((MAX_PRIORITY - 1) * (1 - i / len(rest))))
    return out


EXPLAIN_LIMIT = 32  # candidates kept in a decision's explanation (log, learning)


def explanation_dict(expl: Explanation, limit: int = EXPLAIN_LIMIT) -> dict[str, Any]:
    """`expl.to_dict()` with at most `limit` candidates (request order when all fit; else
    the chosen, the feasible ones by score, the rest by predicted time), so a 5,000-node
    decision does not keep 5,000 dicts in the log; `candidates_total` says how many."""
    cands = expl.candidates
    if len(cands) > limit:
        cands = sorted(
            cands,
            key=lambda c: (
                c.node != expl.chosen,
                not c.feasible,
                -(c.score or 0.0) if c.feasible else c.predicted_time_s,
            ),
        )[:limit]
    out = dataclasses.replace(expl, candidates=cands).to_dict()
    out["candidates_total"] = len(expl.candidates)
    return out


def constraint_of(reason: str) -> str:
    """The constraint named by an exclusion reason (CS-UCB explanation, node model)."""
    for prefix, name in (
        ("deadline", "deadline"),
        ("quality", "quality"),
        ("tier", "tier"),
        ("model variant", "memory"),
        ("no room", "capacity"),
    ):
        if reason.startswith(prefix):
            return name
    return "unmodelled"


def _namespace(pod: Obj) -> str:
    return pod_key(pod).split("/", 1)[0]


class Scheduler:
    def __init__(
        self,
        catalogue: Catalogue,
        *,
        default_model: str = "llama2-7b",
        log_size: int = 1000,
        max_bandits: int = 256,
        reuse_s: float = 30.0,
        node_source: Callable[[str], Obj | None] | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.catalogue = catalogue
        # on a node-cache miss (nodeCacheCapable requests carry names only): fetch the Node
        self.node_source = node_source
        self.default_model = default_model
        self.services = ServiceRegistry()
        self.nodes = NodeCache()
        self.pods = PodIndex()
        self._lock = threading.RLock()  # decisions, updates, state exports
        self.arms = ArmStore(self._lock)
        self.telemetry = telemetry
        self.listeners: list[Callable[[DecisionEvent], None]] = []
        self.log: deque[dict[str, Any]] = deque(maxlen=log_size)
        self._bandits: OrderedDict[tuple[str, str, tuple[str, ...]], _Bandit] = OrderedDict()
        self._max_bandits = max_bandits
        # filter's decision, reused by the prioritize call of the same scheduling cycle, so
        # one pod counts as one play
        self._recent: OrderedDict[str, Decided] = OrderedDict()  # by pod uid
        self._reuse_s = reuse_s
        self._sets: OrderedDict[tuple[str, ...], _Prepared] = OrderedDict()

    # -- inputs -------------------------------------------------------------------------
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
        return order, {n: self._lookup(n) if lookup else None for n in order}

    def _lookup(self, name: str) -> Obj | None:
        obj = self.nodes.get(name)
        if obj is None and self.node_source is not None:
            obj = self.node_source(name)
            if obj is not None:
                self.nodes.upsert(obj)
        return obj

    def _bandit(
        self,
        spec: ServiceSpec,
        servers: list[Server] | tuple[Server, ...],
        skey: str | None = None,
        server_keys: tuple[str, ...] | None = None,
    ) -> _Bandit:
        skey = skey or service_key("default", spec)
        if server_keys is None:
            server_keys = tuple(s.model_dump_json() for s in servers)
        key = (skey, spec.model_dump_json(), server_keys)
        e = self._bandits.get(key)
        if e is None:
            table = build_cost_table([spec], [(s.name, s) for s in servers], self.catalogue)
            e = _Bandit(CSUCB(table), skey)
            self._bandits[key] = e
            while len(self._bandits) > self._max_bandits:
                self._bandits.popitem(last=False)
        else:
            self._bandits.move_to_end(key)
        e.gen = self.arms.pull(skey, e.b, e.gen)
        return e

    def bandit(self, spec: ServiceSpec, servers: list[Server], skey: str | None = None) -> CSUCB:
        """The CSUCB of (service, node set), synced with what the service has learned."""
        return self._bandit(spec, servers, skey).b

    # -- the decision ---------------------------------------------------------------------
    def decide(
        self, pod: Obj, node_objs: list[Obj] | None, names: list[str] | None, verb: str
    ) -> PodDecision:
        t0 = time.perf_counter()
        spec = self.services.resolve(pod, self.default_model)
        key = pod_key(pod)
        if spec is None:
            order, _ = self.candidates(node_objs, names, lookup=False)
            return PodDecision(
                pod=key,
                service=None,
                nodes=order,
                passed=order,
                failed={},
                scores=dict.fromkeys(order, 0),
            )
        if spec.model not in self.catalogue.models:
            raise BadPod(
                f"pod {key}: model {spec.model!r} of service {spec.name!r} is not in the catalogue"
            )
        ns, uid = _namespace(pod), pod_uid(pod)
        skey = service_key(ns, spec)
        order, prep = self._prepare(node_objs, names)
        with self._lock:
            hit = self._recent.get(uid)
            if hit is not None and time.monotonic() - hit.at < self._reuse_s:
                prev = hit.decision
                # the same request again, or prioritize over the nodes that passed filter
                # (kube-scheduler sends only those): one pod, one play
                if order == prev.nodes or (verb == "prioritize" and set(order) <= set(prev.nodes)):
                    return dataclasses.replace(
                        prev,
                        reused=True,
                        nodes=order,
                        passed=[n for n in prev.passed if n in set(order)],
                    )
            d, servers = self._decide(key, spec, order, prep, skey)
            d.latency_s = time.perf_counter() - t0
            self._recent[uid] = Decided(d)
            self._recent.move_to_end(uid)
            while len(self._recent) > 4096:
                self._recent.popitem(last=False)
            self.log.append(
                {
                    "time": time.time(),
                    "verb": verb,
                    "pod": key,
                    "service": spec.name,
                    "chosen": d.chosen,
                    "feasible": d.feasible,
                    "passed": d.passed,
                    "failed": d.failed,
                    "scores": d.scores,
                    "latency_s": d.latency_s,
                    "explanation": d.explanation,
                }
            )
        if d.chosen is not None:
            self.pods.assume(key, uid, spec.name, d.chosen)
            ev = DecisionEvent(pod, key, uid, ns, skey, spec, tuple(servers), d)
            for listen in self.listeners:
                listen(ev)  # listeners queue work; they never block a decision
        return d

    def _inputs(
        self, servers: list[Server], prior_bw: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """running, waiting, bandwidth per server from the latest snapshot (priors when
        unknown or stale)."""
        m = len(servers)
        tel = self.telemetry
        if tel is None:
            return np.zeros(m), np.zeros(m), prior_bw.copy()
        snap, now = tel.snapshot, time.time()
        names = [s.name for s in servers]
        bw = prior_bw.copy()
        if snap.usable("bandwidth", tel.max_age_s, now) and snap.bandwidth_mbps:
            got = snap.bandwidth_mbps
            bw = np.array([got.get(n, p) for n, p in zip(names, prior_bw.tolist(), strict=True)])
        running, waiting = np.zeros(m), np.zeros(m)
        if snap.usable("load", tel.max_age_s, now):
            nr, nw = snap.node_running, snap.node_waiting
            if nr:
                running = np.array([nr.get(n, 0.0) for n in names])
            if nw:
                waiting = np.array([nw.get(n, 0.0) for n in names])
        return running, waiting, bw

    def _prepare(
        self, node_objs: list[Obj] | None, names: list[str] | None
    ) -> tuple[list[str], _Prepared]:
        """Candidate names in request order and their models, in name order. kube-scheduler
        lists the nodes that passed its filters in the order its parallel filter workers
        finished, which differs from one pod to the next: models (and so the bandit cache
        key) follow the names' sorted order, so the same node set is the same bandit
        whatever the order. A names-only request for a set seen before, with no node
        changed since (`NodeCache.gen`), reuses the models: no per-node work on the hot
        path of a large fleet."""
        gen = self.nodes.gen
        canon: tuple[str, ...] | None = None  # the names-only request's set, sorted
        if node_objs is None:
            order = list(dict.fromkeys(names or []))
            canon = tuple(sorted(order))
            hit = self._sets.get(canon)
            if hit is not None and hit.gen == gen:
                self._sets.move_to_end(canon)
                return order, hit
        failed: dict[str, str] = {}
        modelled: list[tuple[str, Server, str]] = []
        unknown = False
        if node_objs is not None:  # full Nodes: cached and modelled in one pass
            models, mkeys = self.nodes.ingest(node_objs, self.catalogue)
            order = list(models)
            for n, srv in models.items():
                if isinstance(srv, str):
                    failed[n] = srv
                else:
                    modelled.append((n, srv, mkeys[n]))
        else:
            order, objs = self.candidates(None, names)
            for n in order:
                o = objs[n]
                if o is None:
                    failed[n] = "node unknown to the PerLLM extender (not in its node cache)"
                    unknown = True
                    continue
                srv, k = self.nodes.model(n, o, self.catalogue)
                if isinstance(srv, str):
                    failed[n] = srv
                else:
                    modelled.append((n, srv, k))
        modelled.sort(key=lambda m: m[0])
        prep = _Prepared(gen, tuple(m[1] for m in modelled), tuple(m[2] for m in modelled), failed)
        if canon is not None and not unknown:  # unknown nodes: look them up next time
            self._sets[canon] = prep
            while len(self._sets) > 64:
                self._sets.popitem(last=False)
        return order, prep

    def _decide(
        self, key: str, spec: ServiceSpec, order: list[str], prep: _Prepared, skey: str
    ) -> tuple[PodDecision, list[Server]]:
        failed = dict(prep.failed)
        servers, keys = list(prep.servers), prep.keys
        scores = dict.fromkeys(order, 0)
        if not servers:
            return PodDecision(
                pod=key,
                service=spec.name,
                nodes=order,
                passed=[],
                failed=failed,
                scores=scores,
                feasible=False,
            ), servers
        e = self._bandit(spec, servers, skey, keys)
        b = e.b
        t = b.t
        tr = spec.traffic
        running, waiting, bw = self._inputs(servers, t.link_mbps)
        dec = b.decide(
            np.zeros(1, np.intp),
            np.array([tr.prompt_tokens]),
            np.array([tr.output_tokens]),
            np.array([tr.payload_bytes]),
            np.array([spec.requirements.min_quality]),
            running,
            waiting,
            bw,
            explain=True,
        )
        e.gen = self.arms.push(skey, b)
        assert dec.explanations is not None
        expl = dec.explanations[0]
        passed_set = {c.node for c in expl.candidates if c.feasible}
        if not expl.feasible:
            passed_set = {expl.chosen}  # least violating: the pod can still schedule
        for c in expl.candidates:
            if c.node not in passed_set:
                failed[c.node] = c.reason or "not chosen: nothing was feasible"
        scores.update(priorities(expl))
        chosen = next(c for c in expl.candidates if c.node == expl.chosen)
        pool = [c for c in expl.candidates if c.feasible] or expl.candidates
        best = max(c.mean for c in pool)
        explored = expl.feasible and (
            chosen.unplayed or any(c.mean > chosen.mean + 1e-9 for c in pool)
        )
        return PodDecision(
            pod=key,
            service=spec.name,
            nodes=order,
            passed=[n for n in order if n in passed_set],
            failed=failed,
            scores=scores,
            chosen=expl.chosen,
            feasible=expl.feasible,
            explanation=explanation_dict(expl),
            tier=chosen.tier,
            predicted_time_s=chosen.predicted_time_s,
            predicted_energy_j=chosen.predicted_energy_j,
            exploration=explored,
            regret=max(0.0, best - chosen.mean),
            violated=None if expl.feasible else constraint_of(chosen.reason),
        ), servers

    # -- learning ---------------------------------------------------------------------------
    def apply(self, observations: list[Observation]) -> int:
        """CSUCB.update() for observed placements, grouped by (service, node set)."""
        groups: dict[tuple[str, str, tuple[str, ...]], list[Observation]] = {}
        for o in observations:
            p = o.placement  # ServiceSpec holds lists: group by its JSON, not the object
            k = (p.skey, p.spec.model_dump_json(), tuple(s.name for s in p.servers))
            groups.setdefault(k, []).append(o)
        n = 0
        with self._lock:
            for obs in groups.values():
                p = obs[0].placement
                e = self._bandit(p.spec, p.servers, p.skey)
                skey = p.skey
                e.b.update(
                    np.zeros(len(obs), np.intp),
                    np.array([o.server for o in obs], np.intp),
                    np.array([o.time_s for o in obs]),
                    np.array([o.predicted_s for o in obs]),
                    np.array([o.energy_j for o in obs]),
                    np.array([o.deadline_s for o in obs]),
                    np.array([o.l_out for o in obs]),
                )
                e.gen = self.arms.push(skey, e.b)
                n += len(obs)
        return n
