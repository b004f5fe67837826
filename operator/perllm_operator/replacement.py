"""Re-placement on a status tick: decide (policy.py) and, when due, evict one pod of the
service through the Eviction API, or switch it to another tier after evictions that did
not help. Returns the new `status.replacement`; Events say what was done and why."""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from perllm.contract import ServiceSpec
from perllm.timefmt import parse_rfc3339, rfc3339
from perllm_operator import failures, kube, observe, pinning, policy, tiers

Obj = dict[str, Any]


@dataclass(frozen=True)
class Tick:
    """One status tick of one service, as re-placement sees it."""

    body: kopf.Body
    ns: str
    name: str
    sspec: ServiceSpec
    status: Obj  # as read at the start of the tick
    pods: list[Obj]  # the service's, terminating ones included (`policy.in_flight`)
    obs: observe.ServiceReading | None
    history: collections.deque[policy.Point]
    now: float
    logger: kopf.Logger


@dataclass(frozen=True)
class _Due:
    """A verdict to act on, with what its messages quote."""

    verdict: policy.Verdict
    target: float
    window: str  # the policy's window, as messages quote it
    done: int  # evictions since the attainment last recovered


def replacement(t: Tick, pol: policy.ReplacementPolicy) -> Obj:
    """Decide and, if due, evict one pod (or escalate to another tier)."""
    rep: Obj = dict(t.status.get("replacement") or {})
    tgt = observe.target(t.sspec)
    last = parse_rfc3339(rep.get("lastEvictionAt"))
    verdict = policy.decide(list(t.history), tgt, pol, t.now, last)
    rep["state"], rep["message"] = verdict.reason, verdict.message
    since = verdict.below_since
    rep["belowTargetSince"] = rfc3339(since) if since is not None else None
    if verdict.reason == "AttainmentOK":
        rep["evictionsSinceRecovery"] = 0
    if not verdict.act:
        return rep
    busy = policy.in_flight(t.pods)
    if busy:
        rep["state"], rep["message"] = "Waiting", f"{verdict.message}; {busy}"
        return rep
    window = f"{pol.window_s:g} s / {pol.min_ticks} ticks"
    due = _Due(verdict, tgt, window, int(rep.get("evictionsSinceRecovery") or 0))
    obj = {"metadata": {"name": t.name}, "spec": t.body.get("spec", {}), "status": t.status}
    # A tiered service's children are pinned per tier: evict within a tier, never switch.
    tier_now = None if tiers.tiered(obj) else pinning.target_tier(obj)
    # open template (no tier decided yet): nothing to escalate from
    allowed = [x.value for x in t.sspec.allowed_tiers]
    to = policy.other_tier(tier_now, allowed) if tier_now else None
    if pol.escalate_after and due.done >= pol.escalate_after and to is not None:
        return _switch_tier(t, rep, due, str(tier_now), to)
    return _evict_worst(t, rep, due)


def _switch_tier(t: Tick, rep: Obj, due: _Due, tier_now: str, to: str) -> Obj:
    rep["tier"] = {"target": to, "from": tier_now, "at": rfc3339(t.now)}
    rep.update(state="TierSwitched", evictionsSinceRecovery=0, lastEvictionAt=rfc3339(t.now))
    msg = (
        f"{due.verdict.message}; {due.done} evictions in tier {tier_now} did not help: "
        f"moving the service to tier {to}"
    )
    kopf.warn(t.body, reason="TierSwitched", message=msg)
    t.logger.warning("%s", msg)
    t.history.clear()
    return rep


def _evict_worst(t: Tick, rep: Obj, due: _Due) -> Obj:
    placement_nodes = (t.status.get("placement") or {}).get("nodes") or []
    latency = t.obs.pod_latency_s if t.obs else None
    choice = policy.worst_pod(t.pods, latency, placement_nodes)
    if choice is None:
        rep["state"], rep["message"] = "Waiting", f"{due.verdict.message}; no bound pod to evict"
        return rep
    pod, why = choice
    pname, node = pod["metadata"]["name"], pod["spec"]["nodeName"]
    att = t.obs.attainment if t.obs and t.obs.attainment is not None else 0
    trig = (
        f"attainment {att:.1%} vs target {due.target:.0%} over window {due.window}: "
        f"evicting pod {pname} on node {node} ({why})"
    )
    kopf.warn(t.body, reason="ReplacementTriggered", message=trig)
    try:
        kube.evict(t.ns, pname)
    except ApiException as e:
        if e.status == 429:  # a PodDisruptionBudget forbids it now
            msg = f"eviction of pod {pname} on node {node} refused (PodDisruptionBudget)"
            kopf.warn(t.body, reason="EvictionBlocked", message=msg)
            rep["state"], rep["message"] = "EvictionBlocked", msg
            return rep
        if e.status == 404:  # gone meanwhile: its replacement is on the way
            rep["state"] = "Waiting"
            rep["message"] = f"{due.verdict.message}; pod {pname} was gone before its eviction"
            return rep
        # Anything else (RBAC, the API server failing) is said in the status and an Event,
        # and the tick still writes its telemetry; the next tick tries again. Raising lost
        # the tick's status write and re-triggered the eviction every 10 s.
        msg = failures.api_failure(e, f"evicting pod {pname} on node {node}")[1]
        kopf.warn(t.body, reason="EvictionFailed", message=msg)
        t.logger.warning("%s", msg)
        rep["state"], rep["message"] = "EvictionFailed", msg
        return rep
    below = t.now - (due.verdict.below_since or t.now)
    msg = (
        f"evicted pod {pname} from node {node}: attainment below {due.target:.0%} for "
        f"{below:.0f} s (window {due.window}); perllm-scheduler places its replacement"
    )
    kopf.info(t.body, reason="Evicted", message=msg)
    t.logger.info("%s", msg)
    t.history.clear()  # the replacement gets a fresh window
    rep.update(
        state="Evicted",
        message=msg,
        lastEvictionAt=rfc3339(t.now),
        lastEvictedPod=pname,
        lastEvictedNode=node,
        evictions=int(rep.get("evictions") or 0) + 1,
        evictionsSinceRecovery=due.done + 1,
    )
    return rep
