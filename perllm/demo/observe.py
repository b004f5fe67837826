"""What the demo watches, once a second: the twin's counters through Prometheus (ours and
the counterfactual baselines', per service) and each LLMService's status (placement,
explanation, observed attainment). Totals are differences of cumulative counters between
two samples, so a window (warm-up excluded, or the last N seconds) is exact."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perllm.crd import GROUP, PLURAL, VERSION
from perllm.labels import LABEL_SERVICE, LABEL_TIER
from perllm.service_pods import by_service, own_pods
from perllm.telemetry import names
from perllm.telemetry.prom import Prometheus

OURS = "perllm"  # the policy name of our own (actual) counters in samples and reports
Obj = dict[str, Any]


@dataclass(frozen=True)
class Counters:
    requests: float = 0.0
    met: float = 0.0
    energy_j: float = 0.0

    def __add__(self, o: Counters) -> Counters:
        return Counters(self.requests + o.requests, self.met + o.met, self.energy_j + o.energy_j)

    def __sub__(self, o: Counters) -> Counters:
        return Counters(self.requests - o.requests, self.met - o.met, self.energy_j - o.energy_j)


@dataclass(frozen=True)
class Rates:
    """A window's figures: requests, attainment (fraction), joules per request."""

    requests: float
    attainment: float | None
    j_per_request: float | None

    @classmethod
    def of(cls, d: Counters) -> Rates:
        if d.requests <= 0:
            return cls(max(d.requests, 0.0), None, None)
        # met and requests are two scrapes' values: a short window can read met ahead of
        # requests by a completion or two, so the fraction is capped at 1
        return cls(d.requests, min(1.0, d.met / d.requests), d.energy_j / d.requests)


@dataclass
class Sample:
    t: float  # seconds since the run started (wall clock)
    # policy -> service -> cumulative counters; OURS holds the actual placements'
    counters: dict[str, dict[str, Counters]] = field(default_factory=dict)
    status: dict[str, dict[str, Any]] = field(default_factory=dict)  # service -> status
    # service -> the nodes its pods are bound to ("" while pending), from the API server
    pods: dict[str, list[str]] = field(default_factory=dict)
    tiers: dict[str, str] = field(default_factory=dict)  # node -> tier
    prometheus_ok: bool = False
    api_error: str | None = None  # the API server did not answer the last reads

    def total(self, policy: str, services: list[str] | None = None) -> Counters:
        per = self.counters.get(policy, {})
        out = Counters()
        for svc, c in per.items():
            if services is None or svc in services:
                out = out + c
        return out


def placements_hold(s: Sample) -> bool:
    """Every LLMService has a published placement and all its pods are bound to nodes that
    placement names, the latest decision's node among them (not pending, not
    mid-re-placement). A failed or empty read never holds."""
    if s.api_error is not None or not s.status:
        return False
    for svc, st in s.status.items():
        placement = st.get("placement") or {}
        nodes = set(placement.get("nodes") or [])
        bound = s.pods.get(svc, [])
        if not nodes or not bound or not set(bound) <= nodes:
            return False
        if placement.get("chosen") not in nodes:  # its pod went; the next decision is due
            return False
    return True


def window(a: Sample, b: Sample, policy: str, service: str | None = None) -> Rates:
    """Figures of `policy` between samples a (earlier) and b."""
    sel = None if service is None else [service]
    return Rates.of(b.total(policy, sel) - a.total(policy, sel))


class Observer:
    def __init__(self, prometheus_url: str, kubeconfig: Path, namespace: str) -> None:
        self.prom = Prometheus(prometheus_url, timeout_s=2.0)
        self.namespace = namespace
        self.t0 = time.monotonic()
        self._kubeconfig = kubeconfig
        self._api: Any = None
        self._core: Any = None
        self.tiers: dict[str, str] = {}  # node -> perllm.io/tier
        self.status_error: str | None = None

    def _custom(self) -> Any:
        if self._api is None:
            from kubernetes import client, config

            api = config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=str(self._kubeconfig)
            )
            self._api = client.CustomObjectsApi(api)
            self._core = client.CoreV1Api(api)
        return self._api

    def _pods(self, services: list[Obj]) -> dict[str, list[str]]:
        """service -> nodes of its own pods ("" while pending); learns node tiers once.
        Its own: those its children made (`service_pods.own_pods`, as the operator and the
        router count them), not a hand-made pod or a copy of a child carrying its label."""
        self._custom()
        try:
            raw = self._core.list_namespaced_pod(
                self.namespace,
                label_selector=LABEL_SERVICE,
                _request_timeout=5,
                _preload_content=False,  # JSON, as `service_pods` reads a pod
            )
            pods: list[Obj] = json.loads(raw.data)["items"]
            if not self.tiers:
                nodes = self._core.list_node(_request_timeout=5)
                self.tiers = {
                    n.metadata.name: (n.metadata.labels or {}).get(LABEL_TIER, "?")
                    for n in nodes.items
                }
        except Exception as e:  # keep the view running; the error is shown
            self.status_error = f"{type(e).__name__}: {e}"[:200]
            return {}
        out: dict[str, list[str]] = {}
        labelled = by_service(pods)
        for obj in services:
            name = obj["metadata"]["name"]
            for p in own_pods(obj, labelled.get((self.namespace, name), [])):
                if not p["metadata"].get("deletionTimestamp"):
                    out.setdefault(name, []).append((p.get("spec") or {}).get("nodeName") or "")
        return {k: sorted(v) for k, v in out.items()}

    def _counters(self) -> dict[str, dict[str, Counters]]:
        ns = f'namespace="{self.namespace}"'
        out: dict[str, dict[str, dict[str, float]]] = {}
        for policy_label, metrics in (
            (None, (names.SERVICE_REQUESTS, names.SERVICE_DEADLINE_MET, names.SERVICE_ENERGY_J)),
            (
                "policy",
                (
                    names.COUNTERFACTUAL_REQUESTS,
                    names.COUNTERFACTUAL_DEADLINE_MET,
                    names.COUNTERFACTUAL_ENERGY_J,
                ),
            ),
        ):
            by = "service" if policy_label is None else "policy, service"
            for key, metric in zip(("requests", "met", "energy_j"), metrics, strict=True):
                ans = self.prom.query(f"sum by ({by}) ({metric}{{{ns}}})")
                if ans is None:
                    continue
                for s in ans.samples:
                    if not math.isfinite(s.value) or "service" not in s.labels:
                        continue
                    pol = OURS if policy_label is None else s.labels.get("policy", "?")
                    out.setdefault(pol, {}).setdefault(s.labels["service"], {})[key] = s.value
        return {p: {svc: Counters(**v) for svc, v in per.items()} for p, per in out.items()}

    def _services(self) -> list[Obj]:
        """The namespace's LLMServices ([] if the API server did not answer: said in
        `status_error`)."""
        try:
            lst = self._custom().list_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, _request_timeout=5
            )
        except Exception as e:  # API server busy or gone: keep the view running
            self.status_error = f"{type(e).__name__}: {e}"[:200]
            return []
        self.status_error = None
        return list(lst.get("items", []))

    def settle(self, timeout_s: float, every_s: float = 0.5) -> tuple[Sample, bool]:
        """The services' status and pods once `placements_hold` (a re-placement started
        just before the end has had its replacement bound and its decision published), or
        the last read after `timeout_s`; with whether it held."""
        deadline = time.monotonic() + timeout_s
        while True:
            s = self.sample(counters=False)
            if placements_hold(s) or time.monotonic() >= deadline:
                return s, placements_hold(s)
            time.sleep(every_s)

    def sample(self, counters: bool = True) -> Sample:
        """One read of everything watched; without `counters`, the API server's part only."""
        got = self._counters() if counters else {}
        services = self._services()
        return Sample(
            t=time.monotonic() - self.t0,
            counters=got,
            status={o["metadata"]["name"]: dict(o.get("status") or {}) for o in services},
            pods=self._pods(services),
            tiers=dict(self.tiers),
            prometheus_ok=self.prom.health.ok,
            api_error=self.status_error,
        )
