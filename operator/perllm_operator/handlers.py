"""kopf handlers: reconcile an `LLMService` into its children and keep its status.

create / resume / update all run `reconcile`, which creates each child or patches it in
place (never delete-and-recreate), then writes `status.child`, `status.observedGeneration`
and the conditions `Reconciled`, `Placed` and `Ready`. Deletion is left to the garbage
collector through the children's controller ownerReferences. Deployment events (pods
becoming ready) update the owner's `Ready` condition. The status timer (`status_tick`)
reads Prometheus and the extender's decision record, writes `status.observed` and the
conditions `DeadlineMet`, `Placed`, `TelemetryStale`, and re-places a service that keeps
missing its deadline (perllm_operator/replace.py). kopf puts its finalizer
(`perllm.io/finalizer`) on every LLMService because of the timer, and removes it when the
object is deleted while the operator runs.
"""

from __future__ import annotations

import collections
import datetime
import time
from collections.abc import Callable
from typing import Any

import kopf
import kubernetes as _kubernetes
from kubernetes.client.exceptions import ApiException

from perllm import labels
from perllm.crd import GROUP, PLURAL, VERSION, InvalidService, service_spec
from perllm.telemetry.prom import Prometheus
from perllm_operator import observe, render, replace
from perllm_operator.config import Config

CONFIG = Config.from_env()
PROM = Prometheus(CONFIG.prometheus_url)
# Observations per LLMService uid, for the re-placement window (in memory: a restart
# starts a fresh window; the cooldown survives in status.replacement.lastEvictionAt).
HISTORY: dict[str, collections.deque[replace.Point]] = collections.defaultdict(
    lambda: collections.deque(maxlen=256)
)
CONDITION_ORDER = ("Ready", "Placed", "DeadlineMet", "TelemetryStale", "Reconciled")

FIELD_MANAGER = "perllm-operator"
RETRY_DELAY_S = 15
KSERVE_RETRY_DELAY_S = 60

Obj = dict[str, Any]
# The client's generated hints want model classes; the operator passes plain dicts.
kubernetes: Any = _kubernetes


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=labels.DOMAIN)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=labels.DOMAIN, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{labels.DOMAIN}/finalizer"
    settings.posting.level = 20  # logging.INFO: k8s Events for info and above
    settings.watching.server_timeout = 600
    settings.watching.client_timeout = 660
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    # A tick runs in a thread and cannot be cancelled: on deletion, look again every second
    # (kopf's default is 60 s) so the finalizer goes as soon as the tick ends.
    settings.background.cancellation_polling = 1.0
    settings.background.instant_exit_timeout = 0.5
    load_config()


def load_config() -> None:
    """In-cluster config inside a pod, else KUBECONFIG / ~/.kube/config."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(
    type_: str, ok: bool | None, reason: str, message: str, old: list[Obj] | None = None
) -> Obj:
    """A status condition; `lastTransitionTime` moves only when the status changes."""
    status = "Unknown" if ok is None else ("True" if ok else "False")
    prev = next((c for c in old or [] if c.get("type") == type_), None)
    since = prev.get("lastTransitionTime") if prev and prev.get("status") == status else None
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since or _now(),
    }


def _kserve_installed() -> bool:
    try:
        kubernetes.client.ApiextensionsV1Api().read_custom_resource_definition(render.KSERVE_CRD)
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    return True


def _create_or_patch(create: Callable[[], Any], patch: Callable[[], Any]) -> Any:
    """Create; if the object exists already (409), patch it in place instead."""
    try:
        return create()
    except ApiException as e:
        if e.status != 409:
            raise
        return patch()


def _apply(child: Obj) -> Obj:
    """Create the child, or patch it in place when it exists. Returns the live object."""
    kind, ns, name = child["kind"], child["metadata"]["namespace"], child["metadata"]["name"]
    fm = FIELD_MANAGER
    if kind == "InferenceService":
        co = kubernetes.client.CustomObjectsApi()
        args = (render.KSERVE_GROUP, render.KSERVE_VERSION, ns, render.KSERVE_PLURAL)
        out: Obj = _create_or_patch(
            lambda: co.create_namespaced_custom_object(*args, child, field_manager=fm),
            lambda: co.patch_namespaced_custom_object(*args, name, child, field_manager=fm),
        )
        return out
    if kind == "Deployment":
        apps = kubernetes.client.AppsV1Api()
        live = _create_or_patch(
            lambda: apps.create_namespaced_deployment(ns, child, field_manager=fm),
            lambda: apps.patch_namespaced_deployment(name, ns, child, field_manager=fm),
        )
    elif kind == "Service":
        core = kubernetes.client.CoreV1Api()
        live = _create_or_patch(
            lambda: core.create_namespaced_service(ns, child, field_manager=fm),
            lambda: core.patch_namespaced_service(name, ns, child, field_manager=fm),
        )
    else:
        raise ValueError(f"unknown child kind {kind}")
    res: Obj = kubernetes.client.ApiClient().sanitize_for_serialization(live)
    return res


def ready_of(child: Obj) -> tuple[bool | None, str, str]:
    """(ready, reason, message) of a live child (Deployment or InferenceService)."""
    kind, name = child.get("kind"), child["metadata"]["name"]
    status = child.get("status") or {}
    if kind == "Deployment":
        want = (child.get("spec") or {}).get("replicas", 1)
        have = status.get("readyReplicas") or 0
        if have >= want:
            return True, "ReplicasReady", f"Deployment {name}: {have}/{want} replicas ready"
        return False, "ReplicasNotReady", f"Deployment {name}: {have}/{want} replicas ready"
    cond = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    if cond is None:
        return None, "Pending", f"InferenceService {name}: no Ready condition yet"
    ok = cond.get("status") == "True"
    return (
        ok,
        "InferenceServiceReady" if ok else "InferenceServiceNotReady",
        (
            f"InferenceService {name}: {cond.get('message') or cond.get('reason') or ''}".rstrip(
                ": "
            )
        ),
    )


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def reconcile(
    body: kopf.Body,
    spec: kopf.Spec,
    meta: kopf.Meta,
    status: kopf.Status,
    patch: kopf.Patch,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    obj: Obj = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": dict(meta),
        "spec": dict(spec),
        "status": dict(status),
    }
    old = list(status.get("conditions") or [])
    backend = spec.get("backend", "kserve")
    try:
        kids = render.children(obj)
    except (InvalidService, ValueError) as e:
        patch.status["observedGeneration"] = meta.get("generation")
        patch.status["conditions"] = [
            condition(t, False, "InvalidSpec", str(e), old)
            for t in ("Ready", "Placed", "Reconciled")
        ]
        kopf.warn(body, reason="InvalidSpec", message=str(e))
        raise kopf.PermanentError(str(e)) from None
    try:
        if backend == "kserve" and not _kserve_installed():
            msg = (
                "KServe is not installed (no CRD inferenceservices.serving.kserve.io): "
                "install KServe or set `spec.backend: deployment`"
            )
            patch.status["observedGeneration"] = meta.get("generation")
            patch.status["conditions"] = [
                condition(t, False, "KServeMissing", msg, old)
                for t in ("Ready", "Placed", "Reconciled")
            ]
            kopf.warn(body, reason="KServeMissing", message=msg)
            raise kopf.TemporaryError(msg, delay=KSERVE_RETRY_DELAY_S)
        for k in kids:
            _apply(k)
    except ApiException as e:
        msg = f"API error {e.status} {e.reason} while applying children; retrying"
        patch.status["conditions"] = [condition("Reconciled", False, "ApiError", msg, old)] + [
            c for c in old if c.get("type") != "Reconciled"
        ]
        raise kopf.TemporaryError(msg, delay=RETRY_DELAY_S) from e
    child = {
        "apiVersion": kids[0]["apiVersion"],
        "kind": kids[0]["kind"],
        "name": kids[0]["metadata"]["name"],
    }
    names = ", ".join(f"{k['kind']} {k['metadata']['name']}" for k in kids)
    try:
        sync_status(
            meta["namespace"],
            meta["name"],
            str(meta["uid"]),
            child,
            reconciled=("ChildApplied", f"applied {names} (tier {render.pin(obj)})"),
            generation=meta.get("generation"),
        )
    except ApiException as e:
        raise kopf.TemporaryError(f"API error {e.status} writing status", delay=5) from e
    kopf.info(
        body, reason="Reconciled", message=f"applied {names} (generation {meta.get('generation')})"
    )
    logger.info("applied %s", names)


def _read_child(ns: str, child: Obj) -> Obj | None:
    try:
        if child["kind"] == "Deployment":
            dep = kubernetes.client.AppsV1Api().read_namespaced_deployment(child["name"], ns)
            out: Obj = kubernetes.client.ApiClient().sanitize_for_serialization(dep)
            out["kind"] = "Deployment"
            return out
        out = kubernetes.client.CustomObjectsApi().get_namespaced_custom_object(
            render.KSERVE_GROUP, render.KSERVE_VERSION, ns, render.KSERVE_PLURAL, child["name"]
        )
        return out
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def _pods(ns: str, name: str) -> list[Obj]:
    """The pods of a service (label perllm.io/service), as plain dicts."""
    core = kubernetes.client.CoreV1Api()
    items = core.list_namespaced_pod(ns, label_selector=f"{labels.LABEL_SERVICE}={name}").items
    out: list[Obj] = kubernetes.client.ApiClient().sanitize_for_serialization(items)
    return out


def sync_status(
    ns: str,
    name: str,
    uid: str,
    child: Obj | None = None,
    reconciled: tuple[str, str] | None = None,
    generation: int | None = None,
    conditions: dict[str, observe.Cond] | None = None,
    fields: Obj | None = None,
) -> bool:
    """Write the LLMService's status from a fresh read of its child: read-modify-write with
    the resourceVersion, retried on conflict, so the reconcile handler, the Deployment
    event handler and the status timer never overwrite each other with stale data.
    `conditions`/`fields` are extra conditions and status fields to set. `Placed` is
    recomputed from `status.placement` (the extender's) on every write. False: no such
    owner."""
    co = kubernetes.client.CustomObjectsApi()
    for _attempt in range(8):
        try:
            llms: Obj = co.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        if llms["metadata"].get("uid") != uid:
            return False
        st = llms.get("status") or {}
        old = list(st.get("conditions") or [])
        ref = child or st.get("child")
        new: Obj = {}
        conds = {c.get("type"): c for c in old}
        if reconciled is not None:
            conds["Reconciled"] = condition("Reconciled", True, *reconciled, old)
        for type_, (ok, reason, msg) in (conditions or {}).items():
            conds[type_] = condition(type_, ok, reason, msg, old)
        if "Placed" not in (conditions or {}):
            pods = _pods(ns, name) if not st.get("placement") else []
            conds["Placed"] = condition("Placed", *observe.placed(st.get("placement"), pods), old)
        if ref:
            live = _read_child(ns, ref)
            if live is None:
                conds["Ready"] = condition(
                    "Ready", False, "ChildMissing", f"{ref['kind']} {ref['name']} not found", old
                )
            else:
                ok, reason, msg = ready_of(live)
                conds["Ready"] = condition("Ready", ok, reason, msg, old)
        new["conditions"] = [conds[t] for t in CONDITION_ORDER if t in conds] + [
            c for t, c in conds.items() if t not in CONDITION_ORDER
        ]
        new.update(fields or {})
        if child is not None:
            new["child"] = child
        if generation is not None:
            new["observedGeneration"] = generation
        if all(st.get(k) == v for k, v in new.items()):
            return True
        body = {"metadata": {"resourceVersion": llms["metadata"]["resourceVersion"]}, "status": new}
        try:
            co.patch_namespaced_custom_object_status(GROUP, VERSION, ns, PLURAL, name, body)
            return True
        except ApiException as e:
            if e.status != 409:
                raise
    raise kopf.TemporaryError(f"LLMService {ns}/{name}: status kept conflicting", delay=2)


@kopf.on.event("apps", "v1", "deployments", labels={labels.LABEL_SERVICE: kopf.PRESENT})
def deployment_event(body: kopf.Body, type: str | None, logger: kopf.Logger, **_: Any) -> None:
    """Mirror a child Deployment's readiness into its LLMService's Ready condition."""
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
    ns = str(body.metadata.namespace)
    try:
        sync_status(ns, owner["name"], owner.get("uid", ""))
    except ApiException as e:
        raise kopf.TemporaryError(f"API error {e.status} updating status", delay=5) from e
    logger.debug("LLMService %s/%s: status synced", ns, owner["name"])


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def forget(meta: kopf.Meta, **_: Any) -> None:
    """Drop the service's observation history (optional: adds no finalizer of its own)."""
    HISTORY.pop(str(meta.get("uid")), None)


def _evict(ns: str, pod: str) -> None:
    """Evict through the Eviction API (policy/v1), so PodDisruptionBudgets are honoured."""
    body = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": pod, "namespace": ns},
    }
    kubernetes.client.CoreV1Api().create_namespaced_pod_eviction(pod, ns, body)


def _parse_ts(ts: str | None) -> float | None:
    if not ts:
        return None
    try:
        return datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@kopf.timer(
    GROUP,
    VERSION,
    PLURAL,
    interval=CONFIG.status_interval_s,
    initial_delay=min(5.0, CONFIG.status_interval_s),
    sharp=False,
)
def status_tick(
    body: kopf.Body,
    spec: kopf.Spec,
    meta: kopf.Meta,
    status: kopf.Status,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Refresh status from Prometheus and the extender's record; re-place if needed."""
    ns, name, uid = str(meta["namespace"]), str(meta["name"]), str(meta["uid"])
    if meta.get("deletionTimestamp"):
        return
    st: Obj = dict(status)
    obj: Obj = {"metadata": dict(meta), "spec": dict(spec), "status": st}
    try:
        sspec = service_spec(obj)
    except InvalidService:
        return  # reconcile reports InvalidSpec
    now = time.time()
    try:
        pods = _pods(ns, name)
    except ApiException as e:
        raise kopf.TemporaryError(f"API error {e.status} listing pods", delay=10) from e
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    obs = (
        observe.observe(
            PROM,
            ns,
            name,
            sspec,
            [p["metadata"]["name"] for p in live],
            name,
            CONFIG.telemetry_window,
            now,
        )
        if CONFIG.prometheus_url
        else None
    )
    old_obs: Obj = dict(st.get("observed") or {})
    fields: Obj = {}
    stale_since = None
    if obs is not None and obs.reachable:
        fields["observed"] = obs.status(CONFIG.telemetry_window)
    else:
        stale_since = old_obs.get("at") or (
            observe.rfc3339(PROM.health.last_success) if PROM.health.last_success else None
        )
    conds: dict[str, observe.Cond] = {
        "DeadlineMet": observe.deadline_met(obs, sspec, stale_since),
        "TelemetryStale": observe.telemetry_stale(obs, CONFIG.prometheus_url, stale_since),
        "Placed": observe.placed(st.get("placement"), live),
    }
    hist = HISTORY[uid]
    hist.append(replace.Point(now, obs.attainment if obs is not None and obs.reachable else None))
    fields["replacement"] = _replacement(body, ns, name, sspec, st, live, obs, hist, now, logger)
    try:
        sync_status(ns, name, uid, conditions=conds, fields=fields)
    except ApiException as e:
        raise kopf.TemporaryError(f"API error {e.status} writing status", delay=10) from e
    _follow_tier(body, obj, logger)


def _replacement(
    body: kopf.Body,
    ns: str,
    name: str,
    sspec: Any,
    st: Obj,
    pods: list[Obj],
    obs: observe.Observation | None,
    hist: collections.deque[replace.Point],
    now: float,
    logger: kopf.Logger,
) -> Obj:
    """Decide and, if due, evict one pod (or escalate to another tier). Returns the new
    `status.replacement`."""
    rep: Obj = dict(st.get("replacement") or {})
    tgt = observe.target(sspec)
    last = _parse_ts(rep.get("lastEvictionAt"))
    verdict = replace.decide(list(hist), tgt, CONFIG.policy, now, last)
    rep["state"], rep["message"] = verdict.reason, verdict.message
    rep["belowTargetSince"] = (
        observe.rfc3339(verdict.below_since) if verdict.below_since is not None else None
    )
    if verdict.reason == "AttainmentOK":
        rep["evictionsSinceRecovery"] = 0
    if not verdict.act:
        return rep
    busy = replace.in_flight(pods)
    if busy:
        rep["state"], rep["message"] = "Waiting", f"{verdict.message}; {busy}"
        return rep
    window = f"{CONFIG.policy.window_s:g} s / {CONFIG.policy.min_ticks} ticks"
    done = int(rep.get("evictionsSinceRecovery") or 0)
    esc = CONFIG.policy.escalate_after
    tier_now = render.target_tier(
        {"metadata": {"name": name}, "spec": body.get("spec", {}), "status": st}
    )
    # open template (no tier decided yet): nothing to escalate from
    to = replace.other_tier(tier_now, [t.value for t in sspec.allowed_tiers]) if tier_now else None
    if esc and done >= esc and to is not None:
        rep["tier"] = {"target": to, "from": tier_now, "at": observe.rfc3339(now)}
        rep.update(
            state="TierSwitched", evictionsSinceRecovery=0, lastEvictionAt=observe.rfc3339(now)
        )
        msg = (
            f"{verdict.message}; {done} evictions in tier {tier_now} did not help: "
            f"moving the service to tier {to}"
        )
        kopf.warn(body, reason="TierSwitched", message=msg)
        logger.warning("%s", msg)
        hist.clear()
        return rep
    placement_nodes = (st.get("placement") or {}).get("nodes") or []
    choice = replace.worst_pod(pods, obs.pod_latency_s if obs else None, placement_nodes)
    if choice is None:
        rep["state"], rep["message"] = "Waiting", f"{verdict.message}; no bound pod to evict"
        return rep
    pod, why = choice
    pname, node = pod["metadata"]["name"], pod["spec"]["nodeName"]
    trig = (
        f"attainment {obs.attainment if obs and obs.attainment is not None else 0:.1%} "
        f"vs target {tgt:.0%} over window {window}: evicting pod {pname} on node {node} "
        f"({why})"
    )
    kopf.warn(body, reason="ReplacementTriggered", message=trig)
    try:
        _evict(ns, pname)
    except ApiException as e:
        if e.status == 429:  # a PodDisruptionBudget forbids it now
            msg = f"eviction of pod {pname} on node {node} refused (PodDisruptionBudget)"
            kopf.warn(body, reason="EvictionBlocked", message=msg)
            rep["state"], rep["message"] = "EvictionBlocked", msg
            return rep
        if e.status == 404:
            return rep
        raise kopf.TemporaryError(f"API error {e.status} evicting {pname}", delay=10) from e
    msg = (
        f"evicted pod {pname} from node {node}: attainment below {tgt:.0%} for "
        f"{now - (verdict.below_since or now):.0f} s (window {window}); perllm-scheduler "
        "places its replacement"
    )
    kopf.info(body, reason="Evicted", message=msg)
    logger.info("%s", msg)
    hist.clear()  # the replacement gets a fresh window
    rep.update(
        state="Evicted",
        message=msg,
        lastEvictionAt=observe.rfc3339(now),
        lastEvictedPod=pname,
        lastEvictedNode=node,
        evictions=int(rep.get("evictions") or 0) + 1,
        evictionsSinceRecovery=done + 1,
    )
    return rep


def _follow_tier(body: kopf.Body, obj: Obj, logger: kopf.Logger) -> None:
    """Re-render the children when their pin is no longer the target: the extender's
    first decision pins an open template, re-placement switches tier, or allowedTiers
    was edited."""
    ns, name, uid = obj["metadata"]["namespace"], obj["metadata"]["name"], obj["metadata"]["uid"]
    co = kubernetes.client.CustomObjectsApi()
    try:
        fresh: Obj = co.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    except ApiException:
        return
    if fresh["metadata"].get("uid") != uid or not (fresh.get("status") or {}).get("child"):
        return
    st = dict(fresh.get("status") or {})
    try:
        want = render.pin(fresh)
        live = _read_child(ns, st["child"])
    except (ValueError, ApiException):
        return
    if live is None or render.rendered_tier(live) == want:
        return
    try:
        for k in render.children(fresh):
            _apply(k)
    except (ApiException, InvalidService, ValueError) as e:
        logger.warning("re-rendering for tier %s failed: %s", want, e)
        return
    kopf.info(
        body,
        reason="TierChanged",
        message=f"pod template re-rendered for tier {want} (was {render.rendered_tier(live)})",
    )


@kopf.on.probe(id="telemetry")
def telemetry_probe(**_: Any) -> Obj:
    """Reported on the --liveness endpoint; never fails the probe (telemetry is optional)."""
    h = PROM.health
    return {
        "prometheus": CONFIG.prometheus_url,
        "ok": h.ok,
        "lastError": h.last_error,
        "stalenessSeconds": None if h.last_success is None else round(h.staleness_s(), 1),
    }
