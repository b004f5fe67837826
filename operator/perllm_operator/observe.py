"""What the status timer reads from Prometheus, and the conditions it derives (no API calls).

The queries are perllm/telemetry/status_queries.py. The deadline used for attainment is the
service's processing-time deadline for its expected output length
(`Deadline.budget(traffic.outputTokens)`), counted with the largest vLLM latency bucket at
or below it, which under-reports attainment, never over-reports it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from perllm.contract import ServiceSpec
from perllm.telemetry import names
from perllm.telemetry import status_queries as q
from perllm.telemetry.prom import Answer, Prometheus
from perllm.timefmt import rfc3339
from perllm.urls import redact
from perllm_operator.tiers import LABEL_CHILD_TIER

Obj = dict[str, Any]


def deadline_s(spec: ServiceSpec) -> float:
    """The processing-time deadline of a request of the expected output length."""
    return spec.requirements.deadline.budget(spec.traffic.output_tokens)


def target(spec: ServiceSpec) -> float:
    """The attainment the service asks for, as a fraction (percentile 95 -> 0.95)."""
    return spec.requirements.deadline.percentile / 100.0


@dataclass(frozen=True)
class ServiceReading:
    """One timer tick's view of a service. `attainment` None: no requests in the window
    (or Prometheus gave nothing); `reachable` False: Prometheus did not answer."""

    at: float
    reachable: bool
    attainment: float | None = None
    p50_s: float | None = None
    p95_s: float | None = None
    energy_per_request_j: float | None = None
    rps: float | None = None
    pod_latency_s: dict[str, float] | None = None  # mean latency per live pod
    error: str | None = None

    def status(self, window: str) -> Obj:
        """`status.observed` (fields without data are left out, never invented)."""
        out: Obj = {"window": window, "at": rfc3339(self.at)}
        for key, v in (
            ("attainment", self.attainment),
            ("latencyP50Seconds", self.p50_s),
            ("latencyP95Seconds", self.p95_s),
            ("energyPerRequestJ", self.energy_per_request_j),
            ("requestsPerSecond", self.rps),
        ):
            if v is not None and math.isfinite(v):
                out[key] = round(v, 6)
        return out


def _scalar(ans: Answer | None) -> tuple[float | None, bool]:
    """(value, fresh): a stale cached answer counts as unreachable."""
    if ans is None or not ans.fresh:
        return None, False
    return ans.scalar(), True


def observe(
    prom: Prometheus,
    namespace: str,
    service: str,
    spec: ServiceSpec,
    pods: Sequence[str],
    window: str,
    now: float,
) -> ServiceReading:
    """Query Prometheus for one service. Never raises: an unreachable Prometheus gives an
    ServiceReading with `reachable=False` and the client's last error."""
    regex = q.pod_regex(pods)
    q_att = q.service_attainment(namespace, regex, deadline_s(spec), window)
    results: dict[str, float | None] = {}
    reachable = True
    queries = {
        "p50": q.service_latency_quantile(0.5, namespace, regex, window),
        "p95": q.service_latency_quantile(0.95, namespace, regex, window),
        "rps": q.requests_per_second(namespace, regex, window),
        "energy": q.service_energy_per_request(namespace, service, window),
    }
    if q_att is not None:
        queries["attainment"] = q_att
    for key, promql in queries.items():
        v, fresh = _scalar(prom.query(promql))
        reachable = reachable and fresh
        results[key] = v
        if not fresh:
            break  # one failure is enough: do not wait out a timeout per query
    per_pod: dict[str, float] = {}
    if reachable:
        ans = prom.query(q.pod_latency(window))
        if ans is not None and ans.fresh:
            by_pod = ans.by_pair("namespace", "pod")
            per_pod = {p: by_pod[f"{namespace}/{p}"] for p in pods if f"{namespace}/{p}" in by_pod}
    att = results.get("attainment")
    if q_att is None and results.get("p50") is not None:
        att = 0.0  # the deadline is below vLLM's smallest bucket: no request can count
    return ServiceReading(
        at=now,
        reachable=reachable,
        attainment=min(1.0, max(0.0, att)) if att is not None else None,
        p50_s=results.get("p50"),
        p95_s=results.get("p95"),
        energy_per_request_j=results.get("energy"),
        rps=results.get("rps"),
        pod_latency_s=per_pod or None,
        error=None if reachable else (prom.health.last_error or "no answer"),
    )


# ---- conditions -----------------------------------------------------------------------------
Cond = tuple[bool | None, str, str]  # (status, reason, message)


def deadline_met(obs: ServiceReading | None, spec: ServiceSpec, stale_since: str | None) -> Cond:
    dl, tgt = deadline_s(spec), target(spec)
    want = f"target {tgt:.0%} within {dl:g} s"
    if obs is None or not obs.reachable:
        since = f" since {stale_since}" if stale_since else ""
        return None, "TelemetryStale", f"no fresh telemetry{since}; {want}"
    if obs.attainment is None:
        return None, "NoTraffic", f"no requests observed in the window; {want}"
    p95 = f", p95 {obs.p95_s:.3g} s" if obs.p95_s is not None else ""
    msg = f"attainment {obs.attainment:.1%} vs {want}{p95}"
    if obs.attainment + 1e-9 >= tgt:
        return True, "DeadlineMet", msg
    return False, "DeadlineMissed", msg


def telemetry_stale(obs: ServiceReading | None, url: str | None, stale_since: str | None) -> Cond:
    """`TelemetryStale`: True while Prometheus is unconfigured or unreachable."""
    if url:
        url = redact(url)  # anyone who reads the LLMService reads the message
    if not url:
        return (
            True,
            "NoPrometheus",
            (
                "no Prometheus configured (--prometheus / "
                "PERLLM_PROMETHEUS_URL); status is not refreshed; "
                "placement continues"
            ),
        )
    if obs is None or not obs.reachable:
        err = obs.error if obs is not None and obs.error else "no answer"
        return (
            True,
            "PrometheusUnreachable",
            (
                f"status is stale since {stale_since or 'start'}; placement continues "
                f"(Prometheus {url}: {err})"
            ),
        )
    if obs.rps is None:
        return (
            True,
            "NoData",
            (
                f"Prometheus {url} has no {names.VLLM_E2E_LATENCY} series for the service's pods "
                "(is the model server scraped?); placement continues"
            ),
        )
    return False, "Fresh", f"Prometheus {url} answered at {rfc3339(obs.at)}"


def all_of(conds: Sequence[Cond]) -> Cond:
    """One condition over several children's: False if any is, else Unknown if any is,
    else True; the reason of the first that decides, every message."""
    if len(conds) == 1:
        return conds[0]
    msg = "; ".join(c[2] for c in conds)
    for want in (False, None):
        worst = next((c for c in conds if c[0] is want), None)
        if worst is not None:
            return worst[0], worst[1], msg
    return True, conds[0][1], msg


def placed(
    placement: Obj | None,
    pods: Sequence[Obj],
    model_known: bool = True,
    tiers: Sequence[str] | None = None,
) -> Cond:
    """`Placed` from the extender's decision record (`status.placement`), else Unknown (or
    False when the model is outside the catalogue: the extender refuses its pods). With
    `tiers` (a tiered service's), True only once each tier has a bound pod."""
    if tiers is not None and model_known:
        return _placed_tiers(placement, pods, tiers)
    if placement and placement.get("tier"):
        nodes = ", ".join(placement.get("nodes") or []) or "?"
        feasible = placement.get("feasible", True)
        parts = [f"tier {placement['tier']} on {nodes}"]
        if placement.get("predictedTimeSeconds") is not None:
            parts.append(f"predicted {float(placement['predictedTimeSeconds']):.3g} s")
        if placement.get("predictedEnergyJ") is not None:
            parts.append(f"{float(placement['predictedEnergyJ']):.3g} J/request")
        if placement.get("decidedAt"):
            parts.append(f"decided {placement['decidedAt']}")
        return True, "Placed" if feasible else "PlacedLeastViolating", "; ".join(parts)
    if not model_known:
        return (
            False,
            "ModelNotInCatalogue",
            "the extender refuses pods of a model outside its catalogue (see ModelKnown)",
        )
    bound = sorted({p["spec"]["nodeName"] for p in pods if (p.get("spec") or {}).get("nodeName")})
    if bound:
        return (
            None,
            "NoDecisionPublished",
            (
                f"pods bound to {', '.join(bound)} but no PerLLM decision published "
                "(extender not running or ignored); waiting for the scheduler"
            ),
        )
    return None, "WaitingForScheduler", "waiting for the scheduler"


def _placed_tiers(placement: Obj | None, pods: Sequence[Obj], tiers: Sequence[str]) -> Cond:
    """Each tier's nodes (its pods labelled `perllm.io/child-tier`), then the extender's
    latest decision, which is for one pod of one tier."""
    nodes = {t: set[str]() for t in tiers}
    for p in pods:
        tier = ((p.get("metadata") or {}).get("labels") or {}).get(LABEL_CHILD_TIER)
        node = (p.get("spec") or {}).get("nodeName")
        if node and tier in nodes:
            nodes[tier].add(node)
    where = "; ".join(f"{t} on {', '.join(sorted(n)) or 'no node yet'}" for t, n in nodes.items())
    if not all(nodes.values()):
        return None, "WaitingForScheduler", f"waiting for the scheduler: {where}"
    if not (placement and placement.get("tier")):
        return None, "NoDecisionPublished", f"{where}; no PerLLM decision published"
    _, reason, latest = placed(placement, pods)
    return True, reason, f"{where}; latest decision: {latest}"
