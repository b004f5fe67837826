"""The router's view in its LLMService's status: `status.routing` (requests per tier and per
backend, over the router's life and the last `RECENT_S` seconds, and deadline attainment)
and the condition `BackendsReachable` (False while a backend refuses connections or does
not answer in time, naming it and why: a remote tier cut off says `RemoteUnreachable`).

Several replicas of one router share the LLMService: each keeps its own raw counts and
condition view in `status.routing.routers.<its pod name>`, and the totals, tiers,
backends and the condition are the sum (the combination) over the entries written within
`stale_s` (an older one, a replica gone, is deleted, as is one dated that far ahead),
recomputed by every writer from what it read plus its own entry under the read's
resourceVersion, so no writer loses another's.
At most `MAX_ROUTERS` entries: a replica that finds that many fresh ones, its own not
among them, writes only the `uncounted` mark (its counts and view left out).

Written every `interval_s` when it changed (and every `REFRESH_TICKS` intervals anyway,
in case another writer dropped or reverted the condition), never per request, off the
event loop: a read of the LLMService and a merge patch of its status subresource with
that resourceVersion (retried on conflict). The condition list is shared with the
operator and a merge patch replaces a list whole, so only this condition type is
replaced and the others are sent back as read; the operator's writes do the same with
the router's (and a resourceVersion conflict makes whichever wrote second read again;
the exception, a failed reconcile whose own guarded write failed too: docs/operator.md).
A failed write (RBAC, API down) is a log line per distinct error and
`perllm_router_status_writes_total{result="error"}`; routing never depends on it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from perllm.router.config import Backend
from perllm.router.health import Refusing
from perllm.router.periodic import Periodic
from perllm.router.tally import GONE, Cond, Counts, Obj, combine, entry
from perllm.timefmt import parse_rfc3339, rfc3339

if TYPE_CHECKING:
    from perllm.router.app import Router
    from perllm.router.discovery import Discovery

log = logging.getLogger("perllm.router.status")

CONDITION = "BackendsReachable"
RECENT_S = 60.0  # the `recent` window
CONFLICT_RETRIES = 4
# Unchanged, the status is still written every this many intervals: another writer (the
# operator) may have dropped or reverted this condition meanwhile.
REFRESH_TICKS = 12
# A replica's entry not written for this many refresh periods (`stale_s`) is dropped: a
# live one writes at least once a period, so this leaves two failed writes' slack.
STALE_REFRESHES = 3
# ... and never sooner: `updatedAt` is in whole seconds and a write (read, patch, conflicts
# read again) can take several `timeout_s`, which sub-second periods would not outlast.
STALE_MIN_S = 60.0


# Replicas' entries `routers` holds at most (the chart allows 20 replicas): the status grows
# with each, and an object the API server stores is capped (~1.5 MiB). A replica that finds
# it full of fresh entries, its own not among them, adds none: it marks the status
# `uncounted` instead (`merged`), so the totals stay those of the same replicas.
MAX_ROUTERS = 32


# A replica's entry says how long it may go unwritten (`staleSeconds`, its own `stale_s`):
# replicas with different `status_interval_s` (a rollout changing it) would otherwise
# delete each other's live entries. A declared value beyond this is not believed.
STALE_MAX_S = 7 * 86400.0


def stale_s(interval_s: float) -> float:
    """How old a replica's entry may be before the others drop it."""
    return max(STALE_REFRESHES * REFRESH_TICKS * interval_s, STALE_MIN_S)


def declared_stale_s(e: Obj, default: float) -> float:
    """The `staleSeconds` entry `e` declares, within [STALE_MIN_S, STALE_MAX_S]; `default`
    (the reader's own) when it declares none (a router from before) or no number."""
    v = e.get("staleSeconds")
    if isinstance(v, bool) or not isinstance(v, int | float) or v != v:
        return default
    return min(max(float(v), STALE_MIN_S), STALE_MAX_S)


def reachable(
    backends: Sequence[Backend],
    remote: Iterable[str],
    refusing: dict[str, Refusing],
    discovery: Discovery | None = None,
    cas: dict[str, str] | None = None,
) -> Cond:
    """Condition `BackendsReachable` from the members and those refusing connections or
    not answering in time; with `discovery`, the ready pods it left out and a failing pod
    list (the members are then the last good round's); `cas`: members whose `ca_file`
    cannot be read again, with why (`Membership.ca_errors`)."""
    stale = ""
    if discovery is not None and discovery.list_error:
        since = rfc3339(discovery.list_error_since or 0.0)
        stale = (
            f"; the backend list is the last good discovery's: listing pods fails since "
            f"{since} ({discovery.list_error})"
        )
    for name, why in sorted((cas or {}).items()):  # (its why names the file)
        stale += f"; ca_file of {name} not read again, the last good CAs are in use: {why}"
    if not backends:
        left = discovery.left_out if discovery is not None else {}
        why = "; ".join(f"{p}: {w}" for p, w in sorted(left.items())[:5])
        more = f" (+{len(left) - 5} more)" if len(left) > 5 else ""
        said = f"; {len(left)} ready pod(s) left out: {why}{more}" if left else ""
        msg = f"no ready backend: requests are answered 503 no_backends{said}{stale}"
        return False, "NoBackends", msg
    remote = set(remote)

    def what(b: Backend) -> str:
        return f"{'remote tier ' if b.name in remote else ''}{b.name} ({b.tier.value}, {b.url})"

    if not refusing:
        names = ", ".join(what(b) for b in backends)
        return True, "AllReachable", f"{len(backends)} backend(s) answer: {names}{stale}"

    def failing(b: Backend) -> str:
        f = refusing[b.name]
        kinds = [(f.refusals, "refuses connections", "refusal"),
                 (f.timeouts, "does not answer in time", "timeout"),
                 (f.answers, "refuses requests", "refused request")]  # fmt: skip
        says = " and ".join(s for k, s, _ in kinds if k)
        n = ", ".join(f"{k} {w}(s)" for k, _, w in kinds if k)
        return f"{what(b)} {says} since {rfc3339(f.since)} ({n}, last: {f.why})"

    down = [b for b in backends if b.name in refusing]
    up = [b.name for b in backends if b.name not in refusing]
    why = "; ".join(failing(b) for b in down)
    if not up:
        msg = f"{why}: requests are answered 503 backends_down{stale}"
        return False, "NoBackendReachable", msg
    rest = f"{why}: requests go to {', '.join(up)}{stale}"
    if any(b.name in remote for b in down):
        return False, "RemoteUnreachable", rest
    return False, "BackendsEjected", rest


def merge_condition(old: list[Obj], type_: str, cond: Cond) -> list[Obj]:
    """`old` with condition `type_` set (in place, or appended); the others as they were."""
    from perllm.crd import condition

    new = condition(type_, *cond, old)
    if not any(c.get("type") == type_ for c in old):
        return [*old, new]
    return [new if c.get("type") == type_ else c for c in old]


def _why(e: Exception) -> str:
    status = getattr(e, "status", None)
    if status is not None:
        return f"HTTP {status} {getattr(e, 'reason', '') or ''}".strip()
    return f"{type(e).__name__}: {e}"


@dataclass
class StatusWriter(Periodic):
    """Writes the router's `status.routing` and condition into LLMService `namespace/name`."""

    router: Router
    namespace: str
    name: str
    interval_s: float = 5.0
    timeout_s: float = 5.0
    kubeconfig: str | None = None
    pod: str = field(default_factory=socket.gethostname)  # its entry's key: the pod's name
    writes: int = 0
    errors: int = 0
    _since: float = field(default_factory=time.time)
    _history: deque[tuple[float, Counts]] = field(default_factory=deque, repr=False)
    _last: tuple[Obj, Cond] | None = field(default=None, repr=False)
    _failing: str = field(default="", repr=False)
    _custom: Any = field(default=None, repr=False)
    _client: Any = field(default=None, repr=False)  # the ApiClient under `_custom`
    _unchanged: int = field(default=0, repr=False)  # ticks skipped since the last write
    _unread: list[str] = field(default_factory=list, repr=False)  # entries last left out
    _fits: bool = field(default=True, repr=False)  # its entry fits in `routers` (MAX_ROUTERS)
    _said: tuple[Any, ...] | None = field(default=None, repr=False)  # the condition logged
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._history.append((self._since, {}))

    def snapshot(self, now: float) -> tuple[Obj, Cond]:
        """The routing status and the condition this replica alone would write now."""
        mine, cond = self.mine(now)
        return combine({self.pod: mine}, self.pod)[0], cond

    def mine(self, now: float) -> tuple[Obj, Cond]:
        """This replica's entry (without `updatedAt`) and its view of the condition now
        (pure but for the recent window)."""
        r = self.router
        counts = {b.name: (b.tier, b.requests, b.met_requests) for b in r.metrics.served()}
        counts |= {GONE + t: (t, n, m) for t, (n, m) in r.metrics.gone.items()}
        h = self._history
        h.append((now, counts))
        while len(h) > 2 and h[1][0] <= now - RECENT_S:
            h.popleft()
        t0, base = h[0]
        # Retired since (its counts moved into its tier's GONE): gone, or back under its
        # name counting from 0 (a pod unready a moment), where a difference with the base
        # would be negative and the entry one `combine` cannot read.
        retired = {
            n: c
            for n, c in base.items()
            if (now_ := counts.get(n)) is None
            or now_[0] != c[0]
            or now_[1] < c[1]
            or now_[2] < c[2]
        }
        recent = {}
        for n, (tier, req, met) in counts.items():
            _, b_req, b_met = base[n] if n in base and n not in retired else (tier, 0, 0)
            recent[n] = (tier, req - b_req, met - b_met)
        for tier, req, met in retired.values():
            _, r_req, r_met = recent.get(GONE + tier, (tier, 0, 0))
            recent[GONE + tier] = (tier, r_req - req, r_met - met)
        remote = [b.name for b in r.static]
        members = [b.name for b in r.backends]
        cond = reachable(r.backends, remote, r.refusing(), r.discovery, r.ca_errors())
        window = max(0.0, now - t0)  # a clock stepped back: no negative window
        mine = entry(counts, recent, window, remote, self._since, members, cond)
        return {**mine, "staleSeconds": round(stale_s(self.interval_s))}, cond

    def merged(self, routing_: Any, mine: Obj, now: float) -> tuple[Obj, Cond | None]:
        """The patch of `status.routing` (its aggregate, this replica's entry `mine`, the
        stale entries set to null: the merge patch deletes them) from the `routing_` read,
        and the combined condition; with `routers` full (`MAX_ROUTERS` fresh entries, this
        replica's not among them), only the `uncounted` mark and no condition."""
        theirs = routing_.get("routers") if isinstance(routing_, dict) else None
        theirs = theirs if isinstance(theirs, dict) else {}
        fresh, gone = {}, []
        own = stale_s(self.interval_s)
        for pod, e in theirs.items():
            if pod == self.pod:
                continue
            at = parse_rfc3339(e.get("updatedAt")) if isinstance(e, dict) else None
            limit = declared_stale_s(e, own) if at is not None else own
            # Gone (scaled down, died), never readable, or dated further ahead than clocks
            # may differ (a hand edit: it would count for ever).
            if at is None or not now - limit <= at <= now + limit:
                gone.append(pod)
            else:
                fresh[pod] = e
        if self.pod not in theirs and len(fresh) >= MAX_ROUTERS:
            self._counted(False)
            left = {"router": self.pod, "at": mine["updatedAt"], "limit": MAX_ROUTERS}
            return {"uncounted": left}, None
        self._counted(True)
        # Over the cap still (replicas of a version without it): the same entries kept by
        # every writer, the first by name; the others find it full and mark it.
        gone += sorted(fresh)[MAX_ROUTERS - 1 :]
        fresh = {p: fresh[p] for p in sorted(fresh)[: MAX_ROUTERS - 1]}
        status, cond, unread = combine({**fresh, self.pod: mine}, self.pod)
        if unread != self._unread:
            self._unread = unread
            if unread:
                log.warning("routing entries of %s left out of the totals (unreadable)", unread)
        routers = {**dict.fromkeys(gone), self.pod: mine}
        out = {**status, "updatedAt": mine["updatedAt"], "routers": routers}
        mark = routing_.get("uncounted") if isinstance(routing_, dict) else None
        at = parse_rfc3339(mark.get("at")) if isinstance(mark, dict) else None
        # Deleted when it marked this replica (counted now) or none marked it within
        # `stale_s` (3 refresh periods, as an entry: each one left out marks it once a period).
        ours = isinstance(mark, dict) and mark.get("router") == self.pod
        if mark is not None and (ours or at is None or not now - own <= at <= now + own):
            out["uncounted"] = None
        return out, cond

    def _counted(self, counted: bool) -> None:
        """Says once when this replica's entry no longer fits in `routers`, and when it does
        again."""
        if counted == self._fits:
            return
        self._fits = counted
        what = f"LLMService {self.namespace}/{self.name}"
        if counted:
            log.info("status.routing of %s counts this replica again", what)
        else:
            log.warning(
                "status.routing of %s holds %d other routers' entries (the most kept): this "
                "replica's counts and view are left out of it (marked `uncounted`; its own "
                "metrics still count them)",
                what, MAX_ROUTERS,
            )  # fmt: skip

    def write_once(self, mine: Obj, now: float) -> None:
        """Read the LLMService, sum its replicas' entries with `mine`, set the combined
        condition in its list, patch (blocking)."""
        from perllm.crd import GROUP, PLURAL, VERSION

        if self._custom is None:
            from kubernetes import client

            from perllm.router.discovery import api_client

            self._client = api_client(self.kubeconfig)
            self._custom = client.CustomObjectsApi(self._client)
        co, args = self._custom, (GROUP, VERSION, self.namespace, PLURAL, self.name)
        for attempt in range(CONFLICT_RETRIES):
            obj: Obj = co.get_namespaced_custom_object(*args, _request_timeout=self.timeout_s)
            st = obj.get("status") or {}
            old = list(st.get("conditions") or [])
            status, cond = self.merged(st.get("routing"), mine, now)
            body: Obj = {
                "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                "status": {"routing": status},
            }
            if cond is not None:  # (None: not counted, the condition left to those that are)
                body["status"]["conditions"] = merge_condition(old, CONDITION, cond)
            try:
                co.patch_namespaced_custom_object_status(
                    *args, body, _content_type="application/merge-patch+json",
                    _request_timeout=self.timeout_s,
                )  # fmt: skip
                return
            except Exception as e:
                if getattr(e, "status", None) != 409 or attempt == CONFLICT_RETRIES - 1:
                    raise

    async def tick(self) -> bool:
        """One round: write when the status or the condition changed, else every
        `REFRESH_TICKS` rounds (another writer may have dropped or reverted the
        condition). Never raises."""
        now = time.time()
        mine, cond = self.mine(now)
        # The window's length alone moving is no change worth a write.
        key = ({**mine, "windowSeconds": 0}, cond)
        if self._last == key and self._unchanged < REFRESH_TICKS - 1:
            self._unchanged += 1
            return False
        what = f"LLMService {self.namespace}/{self.name}"
        try:
            await asyncio.to_thread(self.write_once, {**mine, "updatedAt": rfc3339(now)}, now)
        except Exception as e:  # RBAC, not found, API down: routing goes on
            self.errors += 1
            self.router.metrics.status_writes.labels("error").inc()
            why = _why(e)
            if why != self._failing:
                self._failing = why
                log.warning("cannot write the status of %s (routing goes on): %s", what, why)
            return False
        self.writes += 1
        self.router.metrics.status_writes.labels("ok").inc()
        if self._failing:
            log.info("status of %s written again", what)
            self._failing = ""
        # A flip, not a count; said by a replica whose condition was written (counted)
        if self._fits and self._said != cond[:2]:
            log.info("%s: %s=%s %s: %s", what, CONDITION, cond[0], cond[1], cond[2])
            self._said = cond[:2]
        self._last, self._unchanged = key, 0
        return True

    async def step(self) -> None:
        await self.tick()

    async def stop(self) -> None:
        await super().stop()
        if self._client is not None:  # its connection pool and threads
            self._client.close()
        self._client = self._custom = None
