"""`Scheduler`: CS-UCB decisions for one pod over its candidate nodes.

Candidates and their models come from `CandidateSets`, the CSUCB of (service, node set)
from `BanditCache`. Each decision reads the latest telemetry snapshot (link bandwidth,
running/waiting per node) without waiting for Prometheus; what is unknown takes the prior
(nominal link bandwidth, no load).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from perllm.contract import Server, ServiceSpec
from perllm.csucb import CSUCB, Explanation
from perllm.profiles import Catalogue
from perllm_extender.bandits import GRACE_S, ArmStore, BanditCache, service_key, split_key
from perllm_extender.candidates import CandidateSets, Prepared
from perllm_extender.decision import (
    NOT_CHOSEN,
    DecisionEvent,
    PodDecision,
    constraint_of,
    explanation_dict,
    log_entry,
    priorities,
)
from perllm_extender.nodes import NodeCache
from perllm_extender.pods import PodIndex
from perllm_extender.services import BadPod, ServiceRegistry, pod_key, pod_uid

if TYPE_CHECKING:
    from perllm_extender.learning import LatencyObservation
    from perllm_extender.telemetry import Telemetry

Obj = dict[str, Any]


@dataclass
class _Decided:
    decision: PodDecision
    gen: int  # NodeCache.gen the candidates were modelled at
    spec: ServiceSpec
    at: float = field(default_factory=time.monotonic)


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
        state_grace_s: float = GRACE_S,
        lookup_budget_s: float = 0.5,
    ) -> None:
        """`state_grace_s`: how long a deleted LLMService's learned state is kept after its
        last use; `lookup_budget_s`: the most a names-only request waits for API reads of
        nodes the cache does not know (below kube-scheduler's extender httpTimeout)."""
        self.catalogue = catalogue
        self.default_model = default_model
        self.services = ServiceRegistry()
        self.nodes = NodeCache()
        self.pods = PodIndex()
        self.sets = CandidateSets(self.nodes, catalogue, node_source)
        self._lock = threading.RLock()  # decisions, updates, state exports
        self.bandits = BanditCache(catalogue, self._lock, max_bandits)
        self.bandits.arms.live = self.service_live  # deleted services' state expires
        self.bandits.arms.grace_s = state_grace_s
        if self.sets.lookup is not None:
            self.sets.lookup.budget_s = lookup_budget_s
        self.telemetry = telemetry
        self.listeners: list[Callable[[DecisionEvent], None]] = []
        self.log: deque[dict[str, Any]] = deque(maxlen=log_size)
        # filter's decision, reused by the prioritize call of the same scheduling cycle, so
        # one pod counts as one play
        self._recent: OrderedDict[str, _Decided] = OrderedDict()  # by pod uid
        self._reuse_s = reuse_s

    @property
    def arms(self) -> ArmStore:
        """What every service has learned (persisted by `state.StateKeeper`)."""
        return self.bandits.arms

    def service_live(self, skey: str) -> bool:
        """An LLMService of this service key is registered (same model)."""
        ns, name, model = split_key(skey)
        spec = self.services.get(name, ns)
        return spec is not None and spec.model == model

    def candidates(
        self, node_objs: list[Obj] | None, names: list[str] | None, lookup: bool = True
    ) -> tuple[list[str], dict[str, Obj | None]]:
        """Candidate names in request order and their Node objects (None: not cached)."""
        return self.sets.candidates(node_objs, names, lookup)

    def close(self) -> None:
        """Drop queued node lookups (at shutdown: exit does not wait for them)."""
        if self.sets.lookup is not None:
            self.sets.lookup.close()

    def needs_lookup(self, names: list[str] | None) -> bool:
        """A names-only request names nodes to read from the API first: decide it off the
        event loop (it may wait up to the lookup budget)."""
        return self.sets.needs_lookup(names)

    def bandit(self, spec: ServiceSpec, servers: list[Server], skey: str | None = None) -> CSUCB:
        """The CSUCB of (service, node set), learning into the service's statistics."""
        return self.bandits.get(spec, servers, skey)

    def apply(self, observations: Sequence[LatencyObservation]) -> int:
        """CSUCB.update() for observed placements."""
        return self.bandits.apply(observations)

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
        meta = pod.get("metadata")
        if not (isinstance(meta, dict) and meta.get("name")):
            # the pod key is what reuse, learning and publication tell pods apart by: every
            # nameless pod was "ns/?", and one's prioritize answered with another's decision
            raise BadPod(f"pod {key}: a PerLLM pod needs metadata.name")
        if spec.model not in self.catalogue.models:
            raise BadPod(
                f"pod {key}: model {spec.model!r} of service {spec.name!r} is not in the catalogue"
            )
        ns, uid = key.split("/", 1)[0], pod_uid(pod)
        skey = service_key(ns, spec)
        order, prep = self.sets.prepare(node_objs, names)
        with self._lock:
            reused = self._reuse(uid, key, order, verb, prep.gen, spec)
            if reused is not None:
                return reused
            d = self._decide(key, spec, order, prep, skey)
            d.latency_s = time.perf_counter() - t0
            self._remember(uid, verb, spec, d, prep.gen)
        if d.chosen is not None:
            self.pods.assume(key, uid, spec.name, d.chosen)
            ev = DecisionEvent(pod, key, uid, ns, skey, spec, prep.servers, d)
            for listen in self.listeners:
                listen(ev)  # listeners queue work; they never block a decision
        return d

    def _reuse(
        self, uid: str, key: str, order: list[str], verb: str, gen: int, spec: ServiceSpec
    ) -> PodDecision | None:
        """The pod's recent decision when this request repeats it: prioritize over the nodes
        that passed filter (kube-scheduler sends only those), or the same filter again
        while neither a node's modelled facts (labels, annotations) nor the service's spec
        changed. A filter after such a change (a retry once a node was relabelled, or the
        LLMService edited) decides again. One pod, one play."""
        hit = self._recent.get(uid)
        if hit is None or time.monotonic() - hit.at >= self._reuse_s:
            return None
        if hit.decision.pod != key:  # a uid sent for another pod: never its decision
            return None
        prev = hit.decision
        # prioritize follows its filter in one scheduling cycle: the same decision even if
        # an unrelated node changed in between (a second play would double-count the pod)
        if verb == "prioritize" and set(order) <= set(prev.nodes):
            same = True
        else:
            same = order == prev.nodes and gen == hit.gen and spec == hit.spec
        if same:
            return dataclasses.replace(
                prev, reused=True, nodes=order, passed=[n for n in prev.passed if n in set(order)]
            )
        return None

    def _remember(self, uid: str, verb: str, spec: ServiceSpec, d: PodDecision, gen: int) -> None:
        now = time.monotonic()
        self._recent[uid] = _Decided(d, gen, spec, now)
        self._recent.move_to_end(uid)  # oldest first: what is past the window goes
        # each holds a reason per candidate (~150 KB at 5,000 nodes): kept only while it may
        # be reused, 4,096 at most within the window
        while self._recent and (
            len(self._recent) > 4096 or now - next(iter(self._recent.values())).at >= self._reuse_s
        ):
            self._recent.popitem(last=False)
        self.log.append(log_entry(verb, spec.name, d))

    def _decide(
        self, key: str, spec: ServiceSpec, order: list[str], prep: Prepared, skey: str
    ) -> PodDecision:
        failed = dict(prep.failed)
        scores = dict.fromkeys(order, 0)
        if not prep.servers:
            return PodDecision(key, spec.name, order, [], failed, scores, feasible=False)
        expl = self._explain(spec, prep, skey)
        if expl.shed:
            # No node meets the service's tiers, memory and quality floor: those are hard, so
            # every node fails with its reason and the pod stays Pending (never placed below
            # its floor).
            for c in expl.candidates:
                failed[c.node] = c.reason or expl.fallback
            return PodDecision(
                key, spec.name, order, [], failed, scores, feasible=False,
                explanation=explanation_dict(expl), violated="hard-constraints",
            )  # fmt: skip
        return _placed(key, spec, order, failed, scores, expl)

    def _explain(self, spec: ServiceSpec, prep: Prepared, skey: str) -> Explanation:
        """CS-UCB's explained decision for one request of `spec` with the service's declared
        traffic, on the latest telemetry (the prior where there is none)."""
        servers, tr = prep.servers, spec.traffic
        b = self.bandits.get(spec, servers, skey, prep.keys)  # called under self._lock
        if self.telemetry is None:
            m = len(servers)
            running, waiting, bw = np.zeros(m), np.zeros(m), b.t.link_mbps.copy()
        else:
            running, waiting, bw = self.telemetry.inputs(servers, b.t.link_mbps)
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
        assert dec.explanations is not None
        return dec.explanations[0]


def _placed(
    key: str,
    spec: ServiceSpec,
    order: list[str],
    failed: dict[str, str],
    scores: dict[str, int],
    expl: Explanation,
) -> PodDecision:
    """The decision for a pod CS-UCB placed: only the chosen node passes (the least
    violating one when none is feasible), so the pod runs where the decision says: with
    several nodes passing, kube-scheduler adds its in-tree scores (resource fit, topology
    spread) to ours and can bind elsewhere. The others fail with their reason."""
    for c in expl.candidates:
        if c.node == expl.chosen:
            continue
        if c.feasible:
            failed[c.node] = f"{NOT_CHOSEN}: CS-UCB placed the pod on {expl.chosen}"
        else:
            failed[c.node] = c.reason or "not chosen: nothing was feasible"
    scores.update(priorities(expl))
    chosen = next(c for c in expl.candidates if c.node == expl.chosen)
    pool = [c for c in expl.candidates if c.feasible] or expl.candidates
    # A better mean the link-hold rank put after the chosen node lost to that rule, not to
    # a bonus: neither exploration nor regret (the fallback rules do not read the rank).
    rivals = [c for c in pool if c.link_hold <= chosen.link_hold] if expl.feasible else pool
    best = max(c.mean for c in rivals)
    explored = expl.feasible and (
        chosen.unplayed or any(c.mean > chosen.mean + 1e-9 for c in rivals)
    )
    return PodDecision(
        pod=key,
        service=spec.name,
        nodes=order,
        passed=[n for n in order if n == expl.chosen],
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
        n_feasible=len(pool) if expl.feasible else 0,
    )
