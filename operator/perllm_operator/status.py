"""Keeping an LLMService's status current between reconciles: the status timer
(`status_tick`: telemetry from Prometheus, the extender's decision record, re-placement),
child Deployment events (readiness), and the liveness probe's telemetry report."""

from __future__ import annotations

import time
from typing import Any, cast

import kopf
from kubernetes.client.exceptions import ApiException

from perllm.crd import InvalidService, service_spec
from perllm.timefmt import rfc3339
from perllm.urls import redact
from perllm_operator import (
    children,
    failures,
    kube,
    observe,
    policy,
    reads,
    reconcile,
    replacement,
    tiers,
)
from perllm_operator.conditions import sync_status, try_sync_status
from perllm_operator.state import state_of

Obj = dict[str, Any]
NO_ERRORS: observe.Cond = (False, "NoErrors", "the status timer ran without errors")


def status_tick(
    body: kopf.Body,
    spec: kopf.Spec,
    meta: kopf.Meta,
    status: kopf.Status,
    logger: kopf.Logger,
    memo: kopf.Memo,
    retry: int = 0,
    **_: Any,
) -> None:
    """Refresh status from Prometheus and the extender's record; re-place if needed. A
    refused API call (`children.Failed`) or an unexpected exception is condition
    `Degraded` (True, its reason) and an Event, then a retry with a growing delay, never
    only a log line."""
    try:
        _tick(body, logger, memo)
    except kopf.TemporaryError:
        raise
    except Exception as e:  # reported as a condition, never a crash loop
        conds: dict[str, observe.Cond] = {}
        if isinstance(e, Unlisted):  # said once per distinct error (`reads`), not each retry
            reason, msg = e.reason, e.message
            conds["Placed"] = (None, reason, msg)  # (the write would list the pods again)
        elif isinstance(e, children.Failed):
            reason, msg = e.reason, e.message
            logger.warning("status tick failed: %s", msg)
        else:
            reason, msg = failures.internal_failure(e, "status timer")
            logger.exception("status tick failed")
        if not isinstance(e, Unlisted):
            kopf.warn(body, reason=reason, message=msg)
        conds["Degraded"] = (True, reason, msg)
        try:
            sync_status(
                str(meta["namespace"]),
                str(meta["name"]),
                str(meta["uid"]),
                conditions=conds,
            )
        except Exception:  # the Event above already says it
            logger.exception("could not write the Degraded condition")
        raise kopf.TemporaryError(msg, delay=failures.backoff(retry, base=5.0)) from None


class Unlisted(children.Failed):
    """The timer's list of the service's pods refused or unanswered: `Degraded` True and
    `Placed` Unknown naming it, logged and an Event once per distinct error (`reads`)."""


def _tick(body: kopf.Body, logger: kopf.Logger, memo: kopf.Memo) -> None:
    meta, spec, status = body.meta, body.spec, body.status  # what kopf passes status_tick
    ns, name, uid = str(meta["namespace"]), str(meta["name"]), str(meta["uid"])
    if meta.get("deletionTimestamp"):
        return
    state = state_of(memo)
    cfg, prom = state.config, state.prom
    st: Obj = dict(status)
    obj: Obj = {"metadata": dict(meta), "spec": dict(spec), "status": st}
    try:
        sspec = service_spec(obj)
    except InvalidService:
        # The reconcile reports InvalidSpec (`Ready`, `Placed`, `Reconciled`); nothing is
        # read, observed or re-placed here, so what `Degraded` said last (a failed read,
        # an eviction) no longer holds: it stood for as long as the spec was invalid.
        _write(ns, name, uid, {"Degraded": NO_ERRORS})
        return
    now = time.time()
    try:  # only its children's: a hand-made copy's pods carry the label too
        pods = tiers.own_pods(obj, kube.pods(ns, name))
    except reads.ERRORS as e:  # said in Degraded: nothing else of this tick can be known
        raise Unlisted(*reads.failed(uid, reads.pods_ref(name), e, body)[1:]) from e
    reads.succeeded(uid, reads.pods_ref(name))
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    obs = None
    if cfg.prometheus.url:
        names = [p["metadata"]["name"] for p in live]
        obs = observe.observe(prom, ns, name, sspec, names, cfg.telemetry_window, now)
    fields: Obj = {}
    stale_since = None
    if obs is not None and obs.reachable:
        fields["observed"] = obs.status(cfg.telemetry_window)
    else:
        last_ok = prom.health.last_success
        old_at = (st.get("observed") or {}).get("at")
        stale_since = old_at or (rfc3339(last_ok) if last_ok else None)
    conds: dict[str, observe.Cond] = {
        "DeadlineMet": observe.deadline_met(obs, sspec, stale_since),
        "TelemetryStale": observe.telemetry_stale(obs, cfg.prometheus.url, stale_since),
        "Placed": observe.placed(
            st.get("placement"),
            live,
            failures.model_known(sspec.model)[0],
            [str(c["tier"]) for c in st["children"]] if st.get("children") else None,
        ),
        "Degraded": NO_ERRORS,
    }
    hist = state.history[uid]
    hist.append(policy.Point(now, obs.attainment if obs is not None and obs.reachable else None))
    # all of them: a terminating pod (the last one evicted) holds re-placement back
    tick = replacement.Tick(body, ns, name, sspec, st, pods, obs, hist, now, logger)
    fields["replacement"] = rep = replacement.replacement(tick, cfg.policy)
    if rep["state"] == "EvictionFailed":
        conds["Degraded"] = (True, "EvictionFailed", rep["message"])
    _write(ns, name, uid, conds, fields)
    reconcile.follow_tier(body, obj, logger)


def _write(
    ns: str, name: str, uid: str, conds: dict[str, observe.Cond], fields: Obj | None = None
) -> None:
    try:
        sync_status(ns, name, uid, conditions=conds, fields=fields)
    except ApiException as e:
        raise kopf.TemporaryError(failures.api_failure(e, "writing status")[1], delay=10) from e
    except reads.ERRORS as e:  # no answer (urllib3): a traceback per retry before, uncounted
        raise kopf.TemporaryError(reads.failure(reads.status_ref(name), e)[1], delay=10) from e


def deployment_event(body: kopf.Body, type: str | None, logger: kopf.Logger, **_: Any) -> None:
    """Mirror a child Deployment's readiness into its LLMService's Ready condition; a
    failed write is a warning and an Event once per distinct error (`try_sync_status`)."""
    if type == "DELETED":
        return
    owner = next(
        (
            r
            for r in body.metadata.get("ownerReferences") or []
            if r.get("kind") == "LLMService" and r.get("controller")
        ),
        None,
    )
    if owner is None:
        return
    ns, name, uid = str(body.metadata.namespace), str(owner["name"]), str(owner.get("uid", ""))
    # The LLMService, for an Event: a refused or unanswered write (the read before it
    # included) is said once per distinct error, then left to the next event or tick
    # (kopf does not retry an event handler: it logged each one's error, with a traceback
    # where no answer came).
    llms = {
        "apiVersion": owner.get("apiVersion"),
        "kind": "LLMService",
        "metadata": {"name": name, "namespace": ns, "uid": uid},
    }
    if try_sync_status(kopf.Body(cast(kopf.RawBody, llms)), ns, name, uid):
        logger.debug("LLMService %s/%s: status synced", ns, name)


def telemetry_probe(memo: kopf.Memo, **_: Any) -> Obj:
    """Reported on the --liveness endpoint; never fails the probe (telemetry is optional)."""
    state = state_of(memo)
    h = state.prom.health
    return {
        "prometheus": redact(url) if (url := state.config.prometheus.url) else None,
        "ok": h.ok,
        "lastError": h.last_error,
        "stalenessSeconds": None if h.last_success is None else round(h.staleness_s(), 1),
    }
