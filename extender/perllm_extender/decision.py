"""What a decision about one pod is: its outcome (`PodDecision`), the event listeners get
(`DecisionEvent`), and how a CS-UCB `Explanation` becomes scores, exclusion reasons and a
bounded explanation."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter, itemgetter
from typing import Any, TypeVar

from perllm.contract import Server, ServiceSpec
from perllm.csucb import Explanation
from perllm_extender.models import MAX_PRIORITY

Obj = dict[str, Any]
C = TypeVar("C")

EXPLAIN_LIMIT = 32  # candidates kept in a decision's explanation (log, learning)
# a FailedNodes reason for a feasible node the pod is not placed on (not an exclusion)
NOT_CHOSEN = "feasible, not chosen"


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
    n_feasible: int = 0  # candidates meeting every constraint (only the chosen one passes)


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


def priorities(expl: Explanation) -> dict[str, int]:
    """Integer scores 0..10: the chosen node 10, other feasible nodes by UCB rank, 9 down
    to 1; infeasible nodes 0."""
    out = {c.node: 0 for c in expl.candidates}
    out[expl.chosen] = MAX_PRIORITY
    rest = sorted(
        (c for c in expl.candidates if c.feasible and c.node != expl.chosen),
        key=lambda c: -(c.score or 0.0),  # feasible candidates always carry a score
    )
    for i, c in enumerate(rest):
        out[c.node] = max(1, round((MAX_PRIORITY - 1) * (1 - i / len(rest))))
    return out


_RANKED = ("node", "feasible", "score", "predicted_time_s")


def best_candidates(
    cands: Sequence[C], chosen: str, limit: int, fields: Callable[[C], tuple[Any, ...]]
) -> list[C]:
    """At most `limit` candidates: the chosen, then the feasible ones by score, then the
    rest by predicted time. `fields` reads (node, feasible, score, predicted time) from a
    candidate, so `csucb.Candidate`s and their dicts share this one ordering."""

    def rank(c: C) -> tuple[bool, bool, float]:
        node, feasible, score, time_s = fields(c)
        return (node != chosen, not feasible, -score if feasible else time_s)

    return sorted(cands, key=rank)[:limit]


def explanation_dict(expl: Explanation, limit: int = EXPLAIN_LIMIT) -> dict[str, Any]:
    """`expl.to_dict()` with at most `limit` candidates (request order when all fit, else
    `best_candidates`), so a 5,000-node decision does not keep 5,000 dicts in the log;
    `candidates_total` says how many there were."""
    cands = expl.candidates
    if len(cands) > limit:  # trimmed before to_dict: the dicts are the costly part
        cands = best_candidates(cands, expl.chosen, limit, attrgetter(*_RANKED))
    out = dataclasses.replace(expl, candidates=cands).to_dict()
    out["candidates_total"] = len(expl.candidates)
    return out


def log_entry(
    verb: str, service: str, d: PodDecision, limit: int = EXPLAIN_LIMIT
) -> dict[str, Any]:
    """`d` for the decision log (`/decisions`): its per-node maps cut to `limit` nodes (the
    explanation's first, then request order; scores highest first), with their totals. A
    reason and a score per candidate were kept whole: ~150 KB a decision at 5,000 nodes,
    150 MB for a full log, a third of the chart's memory limit."""
    shown = [c["node"] for c in (d.explanation or {}).get("candidates", [])]
    order = dict.fromkeys([*shown, *d.nodes, *d.failed])
    failed = {n: d.failed[n] for n in order if n in d.failed}
    top = sorted(d.scores.items(), key=lambda kv: -kv[1])[:limit]
    return {
        "time": time.time(),
        "verb": verb,
        "pod": d.pod,
        "service": service,
        "chosen": d.chosen,
        "feasible": d.feasible,
        "passed": d.passed[:limit],
        "failed": dict(list(failed.items())[:limit]),
        "scores": dict(top),
        "nodes_total": len(d.nodes),
        "failed_total": len(d.failed),
        "latency_s": d.latency_s,
        "explanation": d.explanation,
    }


def trimmed(expl: dict[str, Any] | None, limit: int) -> dict[str, Any]:
    """An `explanation_dict` cut down to `limit` candidates, in `best_candidates` order."""
    if not expl:
        return {}
    cands = expl.get("candidates", [])
    return {
        **expl,
        "candidates": best_candidates(cands, expl.get("chosen", ""), limit, itemgetter(*_RANKED)),
        "candidates_total": expl.get("candidates_total", len(cands)),
    }


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
