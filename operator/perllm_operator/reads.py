"""A read of one of an LLMService's children, or the list of its pods, refused (RBAC,
5xx) or unanswered (the API server timing out): the condition it gives, said once per
distinct error.

Every status write reads the recorded children to compute `Ready`, and the status timer's
`follow_tier` reads them (and the Service or ServiceAccount beside them) again. A failed
read there no longer fails the whole write: `Ready` is Unknown naming the read (reason
`Read<StatusReason>`, e.g. `ReadForbidden`, or `ReadFailed` without an answer), the
timer's `Degraded` says it, and a warning and a Warning Event are given the first time
each error is seen (not every write); a read that succeeds again is logged once. The
service's pods, listed for `Placed` (`pods_ref`), the same: `Placed` Unknown naming the
list (`List<StatusReason>` / `ListFailed`).

The memory is per operator process, by (LLMService uid, kind, name) of the child. After
a restart the status's conditions stand in for it: a failure they already say is logged
once by the new process, but not posted as an Event again.

A status write itself refused or unanswered (`unwritten`: a Deployment event's,
`follow_tier`'s after a re-apply, the reconcile's on a failure path) can say it in no
condition: a warning and a Warning Event on the LLMService, once per distinct error
(reason `Status<StatusReason>`, or `StatusFailed` without an answer); written again (any
`sync_status`), logged once. It is remembered apart from the reads: the timer's
`Degraded` does not name it (its own write went through).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import kopf
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from perllm.labels import LABEL_SERVICE
from perllm_operator import failures

Obj = dict[str, Any]
Cond = tuple[bool | None, str, str]

# What a read of the API raises when refused (ApiException) or left unanswered (urllib3:
# read timeout, connection refused or reset, retries exhausted).
ERRORS: tuple[type[Exception], ...] = (ApiException, urllib3.exceptions.HTTPError)

log = logging.getLogger(__name__)
_lock = threading.Lock()
_failed: dict[tuple[str, str, str], tuple[str, str]] = {}
_unwritten: dict[str, tuple[str, str]] = {}  # by LLMService uid


def pods_ref(name: str) -> Obj:
    """The list of the service `name`'s pods, as `failed` and `succeeded` take it."""
    return {"kind": "Pod", "name": f"{LABEL_SERVICE}={name}", "list": True}


def failure(ref: Obj, e: Exception) -> tuple[str, str]:
    """(reason, message) of the failed read of `ref` (kind, name; or the list `pods_ref`),
    naming the HTTP status and the API server's reason, or why no answer came."""
    if ref.get("list"):
        verb, what = "List", f"listing pods labelled {ref['name']}"
    elif ref.get("status"):
        verb, what = "Status", f"updating the status of {ref['kind']} {ref['name']}"
    else:
        verb, what = "Read", f"reading {ref['kind']} {ref['name']}"
    if isinstance(e, ApiException):
        return failures.api_failure(e, what, prefix=verb)
    if isinstance(e, (*ERRORS, OSError)):
        return f"{verb}Failed", failures.bounded(
            f"{what}: no answer from the API server ({type(e).__name__}: {e})"
        )
    # neither refused nor unanswered (a status write that kept conflicting)
    return f"{verb}Failed", failures.bounded(f"{what}: {type(e).__name__}: {e}")


def failed(uid: str, ref: Obj, e: Exception, obj: kopf.Body) -> Cond:
    """Remember that reading `ref` of the service `uid` failed with `e`; the first time
    this error is seen, log it and post a Warning Event on `obj` (the LLMService). Returns
    the `Ready` of that child: Unknown, naming the read."""
    reason, msg = failure(ref, e)
    key = (uid, str(ref["kind"]), str(ref["name"]))
    with _lock:
        was = _failed.get(key)
        _failed[key] = (reason, msg)
    if was != (reason, msg):
        log.warning("%s", msg)
        # Not remembered (an operator restart): the status may say it already, and then
        # the Event was posted before; it was posted once more on every restart.
        if was is not None or not _said(obj, reason, msg):
            kopf.warn(obj, reason=reason, message=msg)
    return None, reason, msg


def status_ref(name: str) -> Obj:
    """The status write of the LLMService `name`, as `failure` takes it."""
    return {"kind": "LLMService", "name": name, "status": True}


def unwritten(uid: str, name: str, e: Exception, obj: kopf.Body) -> tuple[str, str]:
    """The status write of the service `uid` (`name`) failed with `e` (refused, or no
    answer): no condition can say it; the first time this error is seen, a warning and a
    Warning Event on `obj` (the LLMService; the API server may refuse that too, kopf logs
    it). Returns (reason, message)."""
    reason, msg = failure(status_ref(name), e)
    with _lock:
        was = _unwritten.get(uid)
        _unwritten[uid] = (reason, msg)
    if was != (reason, msg):
        log.warning("%s", msg)
        kopf.warn(obj, reason=reason, message=msg)
    return reason, msg


def written(uid: str, name: str) -> None:
    """The status of the service `uid` (`name`) was written: forget a failure, said once."""
    with _lock:
        was = _unwritten.pop(uid, None)
    if was is not None:
        log.info("the status of LLMService %s is written again (was: %s)", name, was[1])


def _said(obj: kopf.Body, reason: str, msg: str) -> bool:
    """Whether a condition of `obj` this module gives (`Ready`, `Placed`, `Degraded`)
    already says the failure (`Ready` may join several children's messages)."""
    conds = (obj.get("status") or {}).get("conditions") or []
    return any(
        isinstance(c, dict)
        and c.get("type") in ("Ready", "Placed", "Degraded")
        and c.get("reason") == reason
        and msg in str(c.get("message") or "")
        for c in conds
    )


def succeeded(uid: str, ref: Obj) -> None:
    """Reading `ref` of the service `uid` worked: forget a failure of it, said once."""
    with _lock:
        was = _failed.pop((uid, str(ref["kind"]), str(ref["name"])), None)
    if was is not None:
        log.info("%s %s is readable again (was: %s)", ref["kind"], ref["name"], was[1])


def pending(uid: str) -> tuple[str, str] | None:
    """(reason, message) of a read of the service `uid` that failed last time, if any."""
    with _lock:
        return next((v for (u, _, _), v in sorted(_failed.items()) if u == uid), None)


def keep(uid: str, refs: list[Obj]) -> None:
    """Forget the failed reads of the service `uid` but those of `refs` (what it still
    reads): a child dropped while unreadable would say `Degraded` for good."""
    wanted = {(str(r["kind"]), str(r["name"])) for r in refs}
    with _lock:
        for key in [k for k in _failed if k[0] == uid and k[1:] not in wanted]:
            del _failed[key]


def forget(uid: str) -> None:
    """The service is gone: drop what was remembered of its reads and status writes."""
    with _lock:
        _unwritten.pop(uid, None)
        for key in [k for k in _failed if k[0] == uid]:
            del _failed[key]
