"""Re-placement policy: when to evict a pod of a service that keeps missing its deadline,
and which one (pure functions over a history of observations; no API calls).

A service is re-placed when its attainment has stayed below target (the deadline's
percentile) on every tick of a trailing window, that window holds at least `min_ticks`
observations and spans at least `window_s` seconds, no eviction for it happened within
`cooldown_s`, and no earlier replacement is still in flight. A tick without data (no
traffic, Prometheus unreachable) breaks the run: absence of evidence never evicts.
After `escalate_after` evictions without recovery, the next step moves the service to
another allowed tier instead (the pod template is re-rendered for it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]


@dataclass(frozen=True)
class ReplacementPolicy:
    enabled: bool = True
    window_s: float = 60.0  # with 30 s ticks: 3 consecutive ticks below target
    min_ticks: int = 3
    cooldown_s: float = 120.0
    escalate_after: int = 2  # evictions without recovery before switching tier (0: never)


@dataclass(frozen=True)
class Point:
    at: float  # time.time()
    attainment: float | None  # None: no data this tick


@dataclass(frozen=True)
class Verdict:
    act: bool
    reason: str  # AttainmentOK | NoEvidence | BelowTarget | CoolingDown | Disabled | Replace
    message: str
    below_since: float | None = None


def below_run(history: Sequence[Point], target: float) -> list[Point]:
    """The trailing observations below target, newest first."""
    run: list[Point] = []
    for p in reversed(history):
        if p.attainment is None or p.attainment + 1e-9 >= target:
            break
        run.append(p)
    return run


def decide(
    history: Sequence[Point],
    target: float,
    policy: ReplacementPolicy,
    now: float,
    last_eviction_at: float | None,
) -> Verdict:
    if not history or history[-1].attainment is None:
        return Verdict(False, "NoEvidence", "no attainment observed on the last tick")
    run = below_run(history, target)
    if not run:
        return Verdict(
            False, "AttainmentOK", f"attainment {history[-1].attainment:.1%} >= target {target:.0%}"
        )
    since = run[-1].at
    span = now - since
    worst = min(p.attainment for p in run if p.attainment is not None)
    msg = (
        f"attainment {run[0].attainment:.1%} (worst {worst:.1%}) < target {target:.0%} "
        f"for {span:.0f} s over {len(run)} ticks (window {policy.window_s:g} s, "
        f"{policy.min_ticks} ticks)"
    )
    if not policy.enabled:
        return Verdict(False, "Disabled", msg + "; re-placement disabled", since)
    if len(run) < policy.min_ticks or span + 1e-6 < policy.window_s:
        return Verdict(False, "BelowTarget", msg, since)
    if last_eviction_at is not None and now - last_eviction_at < policy.cooldown_s:
        left = policy.cooldown_s - (now - last_eviction_at)
        return Verdict(False, "CoolingDown", f"{msg}; cooldown {left:.0f} s left", since)
    return Verdict(True, "Replace", msg, since)


def in_flight(pods: Sequence[Obj]) -> str | None:
    """Why a replacement must wait (a pod terminating, unbound or not ready), else None."""
    for p in pods:
        name = p["metadata"]["name"]
        if p["metadata"].get("deletionTimestamp"):
            return f"pod {name} is terminating"
        if not (p.get("spec") or {}).get("nodeName"):
            return f"pod {name} is not scheduled yet"
        conds = (p.get("status") or {}).get("conditions") or []
        if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds):
            return f"pod {name} is not ready yet"
    return None


def worst_pod(
    pods: Sequence[Obj], pod_latency_s: dict[str, float] | None, placement_nodes: Sequence[str] = ()
) -> tuple[Obj, str] | None:
    """The pod to evict and why: the highest observed mean latency; without per-pod data,
    the oldest pod on a node of the extender's last decision, else the oldest pod."""
    bound = [
        p
        for p in pods
        if (p.get("spec") or {}).get("nodeName") and not p["metadata"].get("deletionTimestamp")
    ]
    if not bound:
        return None
    lat = {
        k: v
        for k, v in (pod_latency_s or {}).items()
        if k in {p["metadata"]["name"] for p in bound}
    }
    if lat:
        name = max(lat, key=lambda k: (lat[k], k))
        pod = next(p for p in bound if p["metadata"]["name"] == name)
        return pod, f"highest mean latency {lat[name]:.3g} s"
    oldest = sorted(
        bound,
        key=lambda p: (str(p["metadata"].get("creationTimestamp") or ""), p["metadata"]["name"]),
    )
    on_placed = [p for p in oldest if p["spec"]["nodeName"] in set(placement_nodes)]
    if on_placed:
        return on_placed[0], "oldest pod on a node of the last placement (no per-pod latency)"
    return oldest[0], "oldest pod (no per-pod latency)"


def other_tier(current: str | None, allowed: Sequence[str]) -> str | None:
    """The allowed tier to escalate to from `current` (None: no other tier)."""
    others = [t for t in allowed if t != current]
    return others[0] if others else None
