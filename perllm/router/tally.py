"""What `status.routing` says: one router replica's entry (`entry`: its raw counts per
backend and its view of `BackendsReachable`) and the sum over the replicas' entries
(`combine`, `routing`: totals, per-tier shares, attainment, backends and the recent window;
`combined`: the condition). Pure: `perllm.router.status.StatusWriter` reads and writes
them."""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Any

from perllm.timefmt import parse_rfc3339, rfc3339

# A key of `Counts` for the requests of a tier's retired backends (`RouterMetrics.gone`),
# `GONE + tier`: no backend's name has a space. Counted in the totals, never listed.
GONE = "gone "

Obj = dict[str, Any]
Counts = dict[str, tuple[str, int, int]]  # backend -> (tier, requests, met)
Cond = tuple[bool, str, str]  # (status, reason, message)
# The reasons of a False `BackendsReachable`, worst first: several replicas' views
# combined take the worst.
SEVERITY = ("NoBackends", "NoBackendReachable", "RemoteUnreachable", "BackendsEjected")
# Views (and routers per view) the combined message names, the worst first; the others are
# counted: each replica's view has its own message, and hundreds would fill the condition.
SHOWN = 5


def _ratio(a: int, b: int) -> float:
    return round(a / b, 4)


def _split(counts: Counts) -> Obj:
    """Requests, attainment and the per-tier shares of `counts`."""
    total = sum(r for _, r, _ in counts.values())
    met = sum(m for _, _, m in counts.values())
    tiers: dict[str, list[int]] = {}
    for tier, r, m in counts.values():
        t = tiers.setdefault(tier, [0, 0])
        t[0], t[1] = t[0] + r, t[1] + m
    # Unknown without requests: null, which a merge patch (RFC 7386) deletes; left out,
    # a previous write's attainment would survive next to `requests: 0`.
    out: Obj = {"requests": total, "attainment": _ratio(met, total) if total else None}
    out["tiers"] = [
        {"tier": t, "requests": r, "share": _ratio(r, total), "attainment": _ratio(m, r)}
        for t, (r, m) in sorted(tiers.items())
        if r
    ]
    return out


def routing(
    counts: Counts,
    recent: Counts,
    window_s: float,
    remote: Iterable[str],
    since: float,
    members: Iterable[str] | None = None,
    router: str = "",
) -> Obj:
    """`status.routing` (without `updatedAt`) from the judged requests per backend since
    start (`counts`) and within the last `window_s` seconds (`recent`). `backends` lists
    the current `members` (all of `counts` if None) and any with requests in the window;
    the others (pods gone at a rollout) and the `GONE` keys (those retired since, per
    tier) count only in the totals and their tiers'. `router`: the writer (this host)."""
    life = _split(counts)
    remote = set(remote)
    listed = None if members is None else set(members)
    backends = []
    for name, (tier, r, m) in sorted(counts.items()):
        if name.startswith(GONE):
            continue
        if listed is not None and name not in listed and not recent.get(name, ("", 0, 0))[1]:
            continue
        if r:
            b: Obj = {"name": name, "tier": tier, "requests": r}
            b.update(share=_ratio(r, life["requests"]), attainment=_ratio(m, r))
            if name in remote:
                b["remote"] = True
            backends.append(b)
    return {
        "router": router or socket.gethostname(),
        "since": rfc3339(since),
        **life,
        "backends": backends,
        "recent": {"windowSeconds": round(window_s), **_split(recent)},
    }


def entry(
    counts: Counts, recent: Counts, window_s: float, remote: Iterable[str],
    since: float, members: Iterable[str], cond: Cond,
) -> Obj:  # fmt: skip
    """One replica's `status.routing.routers.<pod>` (without `updatedAt`): its raw counts
    per backend (a tier's retired backends without `name`), what `routing` needs to sum
    them with the other replicas', and its view of the condition."""
    remote, members = set(remote), set(members)
    rows = []
    for name in sorted(counts.keys() | recent.keys()):
        tier, req, met = counts.get(name) or (recent[name][0], 0, 0)
        _, rreq, rmet = recent.get(name, (tier, 0, 0))
        if not req and not rreq:  # nothing to add
            continue
        row: Obj = {} if name.startswith(GONE) else {"name": name}
        row.update(tier=tier, requests=req, met=met, recentRequests=rreq, recentMet=rmet)
        if name in members:
            row["member"] = True
        if name in remote:
            row["remote"] = True
        rows.append(row)
    return {
        "since": rfc3339(since),
        "windowSeconds": round(window_s),
        "backends": rows,
        "condition": {"status": str(cond[0]), "reason": cond[1], "message": cond[2]},
    }


def _count(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ValueError(f"not a count: {v!r}")
    return v


def _read(e: Any) -> tuple[list[tuple[str, str, int, int, int, int, Obj]], float, float, Cond]:
    """An entry's rows (key, tier, requests, met, recent requests, recent met, row), since,
    window and condition; ValueError, KeyError or TypeError for one this code did not
    write (another version's, a hand edit's)."""
    rows = []
    for row in e["backends"]:
        tier = row["tier"]
        name = row.get("name")
        if not isinstance(tier, str) or not isinstance(name, str | None):
            raise ValueError("a backend's name or tier is not a string")
        counted = [_count(row[k]) for k in ("requests", "met", "recentRequests", "recentMet")]
        rows.append((name if name else GONE + tier, tier, *counted, row))
    since = parse_rfc3339(e["since"])
    c = e["condition"]
    ok, reason, msg = c["status"], c["reason"], c["message"]
    if (
        since is None
        or ok not in ("True", "False")
        or not (isinstance(reason, str) and isinstance(msg, str))
    ):
        raise ValueError("since or the condition unreadable")
    return rows, since, _count(e["windowSeconds"]), (ok == "True", reason, msg)


def combine(entries: dict[str, Any], writer: str) -> tuple[Obj, Cond, list[str]]:
    """`status.routing` (without `routers` and `updatedAt`) summed over the replicas'
    `entries`, the condition combining their views, and the names of the entries that
    could not be read (left out, left in place)."""
    counts: dict[str, tuple[str, int, int]] = {}
    recent: dict[str, tuple[str, int, int]] = {}
    members: set[str] = set()
    remote: set[str] = set()
    starts, windows, views, bad = [], [0.0], {}, []
    for pod, e in sorted(entries.items()):
        try:
            rows, since, window, view = _read(e)
        except (KeyError, TypeError, ValueError, AttributeError):
            bad.append(pod)
            continue
        for key, tier, req, met, rreq, rmet, row in rows:
            t, n, m = counts.get(key, (tier, 0, 0))
            counts[key] = (t, n + req, m + met)
            t, n, m = recent.get(key, (tier, 0, 0))
            recent[key] = (t, n + rreq, m + rmet)
            if row.get("member") is True:
                members.add(key)
            if row.get("remote") is True:
                remote.add(key)
        starts.append(since)
        windows.append(window)
        views[pod] = view
    out = routing(counts, recent, max(windows), remote, min(starts, default=0.0), members, writer)
    return out, combined(views, writer), bad


def combined(views: dict[str, Cond], writer: str) -> Cond:
    """`BackendsReachable` over the replicas' `views`: one replica's as it is; of several,
    False (the worst reason) when any sees a backend fail, naming who sees what."""
    if len(views) <= 1:
        return next(iter(views.values()), (False, "NoBackends", "no router has written"))
    down = {p: c for p, c in views.items() if not c[0]}
    if not down:
        mine = views.get(writer, next(iter(views.values())))[2]
        return (
            True,
            "AllReachable",
            f"all {len(views)} routers reach every backend; {writer}: {mine}",
        )
    rank = {r: i for i, r in enumerate(SEVERITY)}

    def routers(ps: list[str]) -> str:
        more = f" (+{len(ps) - SHOWN} more)" if len(ps) > SHOWN else ""
        return f"router {', '.join(ps[:SHOWN])}{more}"

    seen: dict[str, list[str]] = {}  # message -> the routers that see it, worst first
    for p, c in sorted(down.items(), key=lambda pc: (rank.get(pc[1][1], len(SEVERITY)), pc[0])):
        seen.setdefault(f"{c[1]}: {c[2]}", []).append(p)
    reason = down[next(iter(seen.values()))[0]][1]
    parts = [f"{routers(ps)}: {m}" for m, ps in list(seen.items())[:SHOWN]]
    if rest := sum(len(ps) for ps in list(seen.values())[SHOWN:]):
        parts.append(f"{rest} more router(s) see a backend fail")
    if fine := sorted(p for p in views if p not in down):
        parts.append(f"{routers(fine)}: all backends answer")
    return False, reason, " | ".join(parts)
