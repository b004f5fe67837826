"""Status timer and re-placement policy of the operator (no cluster: pure functions, and
the timer handler with the Kubernetes and Prometheus calls replaced by fakes)."""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from fake_kube import pod_of
from kubernetes.client.exceptions import ApiException
from perllm_operator import kube, observe, policy, reads, reconcile, status
from perllm_operator.conditions import condition
from perllm_operator.config import Config, ConfigError
from perllm_operator.policy import Point, ReplacementPolicy
from perllm_operator.state import State, memo_of

from perllm.crd import service_spec
from perllm.telemetry import status_queries
from perllm.telemetry.prom import Answer, PromAccess, Prometheus, Sample

ROOT = Path(__file__).parents[2]
POLICY = ReplacementPolicy(window_s=60, min_ticks=3, cooldown_s=120, escalate_after=2)


def _load(name: str) -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load((ROOT / "manifests" / f"{name}.yaml").read_text())
    obj["metadata"].update(namespace="llm", uid="uid-1", generation=1)
    return obj


def _hist(*atts: float | None, step: float = 30.0) -> list[Point]:
    return [Point(i * step, a) for i, a in enumerate(atts)]


# ---- decision logic ----------------------------------------------------------------------
def test_evicts_after_window_of_consecutive_ticks_below_target() -> None:
    h = _hist(0.99, 0.5, 0.6, 0.4)  # below since t=30, now t=90: 3 ticks, 60 s
    v = policy.decide(h, 0.95, POLICY, now=90, last_eviction_at=None)
    assert v.act and v.reason == "Replace" and v.below_since == 30
    assert "40.0%" in v.message and "95%" in v.message and "3 ticks" in v.message


def test_not_before_the_window_is_full() -> None:
    v = policy.decide(_hist(0.99, 0.5, 0.6), 0.95, POLICY, now=60, last_eviction_at=None)
    assert not v.act and v.reason == "BelowTarget"  # 2 ticks, 30 s
    # enough ticks but too short a span (fast ticks)
    v = policy.decide(
        _hist(0.5, 0.5, 0.5, 0.5, step=5), 0.95, POLICY, now=15, last_eviction_at=None
    )
    assert not v.act and v.reason == "BelowTarget"


def test_recovery_or_missing_data_breaks_the_run() -> None:
    v = policy.decide(_hist(0.5, 0.5, 0.97, 0.5), 0.95, POLICY, now=90, last_eviction_at=None)
    assert not v.act and v.below_since == 90
    v = policy.decide(_hist(0.5, 0.5, None, 0.5), 0.95, POLICY, now=90, last_eviction_at=None)
    assert not v.act
    v = policy.decide(_hist(0.5, 0.5, 0.5, None), 0.95, POLICY, now=90, last_eviction_at=None)
    assert not v.act and v.reason == "NoEvidence"
    v = policy.decide(_hist(0.96), 0.95, POLICY, now=0, last_eviction_at=None)
    assert v.reason == "AttainmentOK"
    assert policy.decide([], 0.95, POLICY, now=0, last_eviction_at=None).reason == "NoEvidence"


def test_cooldown_and_disabled() -> None:
    h = _hist(0.5, 0.5, 0.5, 0.5)
    v = policy.decide(h, 0.95, POLICY, now=90, last_eviction_at=0)
    assert not v.act and v.reason == "CoolingDown" and "30 s left" in v.message
    assert policy.decide(h, 0.95, POLICY, now=130, last_eviction_at=0).act
    off = ReplacementPolicy(enabled=False)
    assert policy.decide(h, 0.95, off, now=90, last_eviction_at=None).reason == "Disabled"


def _pod(
    name: str,
    node: str | None,
    created: str = "2026-01-01T00:00:00Z",
    ready: bool = True,
    deleting: bool = False,
    deployment: str = "chat-assistant-predictor",  # KServe's, of chat-assistant's ISVC
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "creationTimestamp": created, **pod_of(deployment)}
    meta["labels"]["perllm.io/service"] = "chat-assistant"
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:10:00Z"
    return {
        "metadata": meta,
        "spec": {"nodeName": node} if node else {},
        "status": {"conditions": [{"type": "Ready", "status": str(ready)}]},
    }


def test_worst_pod_by_latency_then_placement_then_age() -> None:
    pods = [
        _pod("a", "edge-0", "2026-01-01T00:00:02Z"),
        _pod("b", "edge-1", "2026-01-01T00:00:01Z"),
        _pod("c", None),
    ]
    pick = policy.worst_pod(pods, {"a": 3.0, "b": 9.0, "gone": 99.0})
    assert pick is not None and pick[0]["metadata"]["name"] == "b" and "9" in pick[1]
    pick = policy.worst_pod(pods, None, ["edge-0"])
    assert pick is not None and pick[0]["metadata"]["name"] == "a"
    pick = policy.worst_pod(pods, None)
    assert pick is not None and pick[0]["metadata"]["name"] == "b"  # oldest
    assert policy.worst_pod([_pod("c", None)], None) is None


def test_in_flight_waits_for_previous_replacement() -> None:
    assert policy.in_flight([_pod("a", "n")]) is None
    assert "terminating" in str(policy.in_flight([_pod("a", "n", deleting=True)]))
    assert "not scheduled" in str(policy.in_flight([_pod("a", None)]))
    assert "not ready" in str(policy.in_flight([_pod("a", "n", ready=False)]))
    assert policy.other_tier("cloud", ["edge", "cloud"]) == "edge"
    assert policy.other_tier("cloud", ["cloud"]) is None


# ---- observation and conditions ------------------------------------------------------------
class FakeProm(Prometheus):
    """Answers by query substring; `down` makes every query fail like a refused connection."""

    def __init__(self, answers: dict[str, float | list[Sample]], down: bool = False) -> None:
        super().__init__("http://prom.invalid:9090")
        self.answers, self.down, self.queries = answers, down, []  # type: list[str]

    def query(self, promql: str) -> Answer | None:
        self.queries.append(promql)
        if self.down:
            self._fail("ConnectionError: refused")
            return None
        for key, v in self.answers.items():
            if key in promql:
                samples = v if isinstance(v, list) else [Sample({}, v)]
                return Answer(samples, True, 1000.0)
        return Answer([], True, 1000.0)


def test_deadline_and_pod_regex() -> None:
    spec = service_spec(_load("chat-assistant"))
    assert observe.deadline_s(spec) == pytest.approx(1.0 + 0.15 * 211)
    assert observe.target(spec) == 0.95
    assert status_queries.pod_regex(["b-1", "a.x"]) == r"a\\.x|b-1"


def _matches(promql: str, pod: str) -> bool:
    """Whether the query's `pod=~"..."` selector (a PromQL string: its `\\\\` is one
    backslash; RE2 matches it whole) selects a series of `pod`."""
    m = re.search(r'pod=~"([^"]*)"', promql)
    assert m is not None, promql
    return re.fullmatch(m.group(1).replace("\\\\", "\\"), pod) is not None


def test_a_service_without_pods_reads_no_other_pods_series() -> None:
    """With no live pod, the queries stood in with the prefix `<service>-.*`, which matched
    the pods of LLMService `chat-assistant-b` and of a hand-made copy `chat-assistant-copy`
    (and `DeadlineMet` quoted their attainment); they now select no pod."""
    spec = service_spec(_load("chat-assistant"))
    prom = FakeProm({})
    observe.observe(prom, "llm", "chat-assistant", spec, [], "5m", 5.0)
    pod_queries = [q for q in prom.queries if "pod=~" in q]
    assert pod_queries
    for pod in ("chat-assistant-b-7c9d8f-x2x4z", "chat-assistant-copy-5f6b-abcde"):
        assert not any(_matches(q, pod) for q in pod_queries), pod
    observe.observe(prom, "llm", "chat-assistant", spec, ["p-1.x"], "5m", 5.0)
    last = [q for q in prom.queries if "pod=~" in q][-1]
    assert _matches(last, "p-1.x") and not _matches(last, "p-1yx")


def test_service_attainment_counts_under_the_deadline_bucket() -> None:
    q = status_queries.service_attainment("ns", "chat-.*", 2.4, "1m")
    assert q is not None and 'le="2.0"' in q and 'pod=~"chat-.*"' in q
    assert status_queries.service_attainment("ns", "x", 0.1) is None


def test_observe_reads_the_contract_queries() -> None:
    spec = service_spec(_load("chat-assistant"))
    prom = FakeProm(
        {
            "le=": 0.5,  # attainment query (bucket / count)
            "histogram_quantile(0.5,": 2.0,
            "histogram_quantile(0.95,": 40.0,
            "perllm_service_energy_joules_total": 310.0,
            "sum(rate(vllm:e2e_request_latency_seconds_count": 4.0,
            "sum by (namespace, pod)": [
                Sample({"namespace": "llm", "pod": "p-1"}, 3.0),
                Sample({"namespace": "llm", "pod": "other"}, 50.0),
            ],
        }
    )
    obs = observe.observe(prom, "llm", "chat-assistant", spec, ["p-1"], "1m", now=1000.0)
    assert obs.reachable and obs.attainment == 0.5 and obs.p95_s == 40.0
    assert obs.energy_per_request_j == 310.0 and obs.rps == 4.0
    assert obs.pod_latency_s == {"p-1": 3.0}  # only live pods of the service
    assert any('pod=~"p-1"' in q and "[1m]" in q for q in prom.queries)
    st = obs.status("1m")
    assert st["attainment"] == 0.5 and st["latencyP95Seconds"] == 40.0
    assert st["window"] == "1m" and st["at"] == "1970-01-01T00:16:40Z"
    ok, reason, msg = observe.deadline_met(obs, spec, None)
    assert ok is False and reason == "DeadlineMissed"
    assert "50.0%" in msg and "95%" in msg and "32.65 s" in msg
    assert observe.telemetry_stale(obs, prom.url, None)[0] is False


def test_unreachable_prometheus_is_stale_not_fatal() -> None:
    spec = service_spec(_load("chat-assistant"))
    prom = FakeProm({}, down=True)
    obs = observe.observe(prom, "llm", "chat-assistant", spec, [], "5m", 5.0)
    assert not obs.reachable and obs.attainment is None
    assert len(prom.queries) == 1  # gives up after the first failure
    ok, reason, msg = observe.telemetry_stale(obs, prom.url, "2026-01-01T00:00:00Z")
    assert ok is True and reason == "PrometheusUnreachable"
    assert "stale since 2026-01-01T00:00:00Z; placement continues" in msg and "refused" in msg
    assert observe.deadline_met(obs, spec, None)[:2] == (None, "TelemetryStale")
    assert observe.telemetry_stale(None, None, None)[1] == "NoPrometheus"


def test_conditions_and_probe_never_show_the_url_credentials() -> None:
    """The TelemetryStale message is readable by anyone who can read the LLMService, the
    liveness probe by anyone who reaches the port: neither may carry a password."""
    url = "http://user:s3cret@prom:9090"
    spec = service_spec(_load("chat-assistant"))
    down = observe.observe(FakeProm({}, down=True), "llm", "s", spec, [], "5m", 5.0)
    empty = observe.observe(FakeProm({}), "llm", "s", spec, [], "5m", 5.0)
    fresh = dataclasses.replace(empty, rps=1.0)
    for obs in (down, empty, fresh):
        msg = observe.telemetry_stale(obs, url, None)[2]
        assert "s3cret" not in msg and "http://***@prom:9090" in msg
    probe = status.telemetry_probe(memo_of(State(Config(PromAccess(url)), FakeProm({}))))
    assert probe["prometheus"] == "http://***@prom:9090"


def test_no_series_and_no_traffic() -> None:
    spec = service_spec(_load("chat-assistant"))
    obs = observe.observe(FakeProm({}), "llm", "s", spec, [], "5m", 5.0)
    assert obs.reachable and obs.rps is None
    assert observe.telemetry_stale(obs, "http://p", None)[1] == "NoData"
    assert observe.deadline_met(obs, spec, None)[:2] == (None, "NoTraffic")
    assert "attainment" not in obs.status("5m")
    nan = observe.ServiceReading(at=0, reachable=True, attainment=None, rps=math.nan)
    assert "requestsPerSecond" not in nan.status("5m")


def test_placed_condition_from_extender_record() -> None:
    ok, reason, msg = observe.placed(
        {
            "tier": "edge",
            "nodes": ["edge-1"],
            "feasible": True,
            "predictedTimeSeconds": 0.8,
            "predictedEnergyJ": 42.0,
            "decidedAt": "2026-01-01T00:00:00Z",
        },
        [],
    )
    assert ok is True and reason == "Placed" and "tier edge on edge-1" in msg and "0.8 s" in msg
    assert observe.placed({"tier": "cloud", "feasible": False}, [])[1] == "PlacedLeastViolating"
    assert observe.placed(None, []) == (None, "WaitingForScheduler", "waiting for the scheduler")
    ok, reason, msg = observe.placed(None, [_pod("a", "edge-3")])
    assert ok is None and reason == "NoDecisionPublished" and "edge-3" in msg


def test_config_from_env_names_bad_settings() -> None:
    c = Config.from_env({})
    assert (
        c.prometheus.url is None and c.status_interval_s == 30 and c.policy == ReplacementPolicy()
    )
    c = Config.from_env(
        {
            "PERLLM_PROMETHEUS_URL": "http://p:9090",
            "PERLLM_STATUS_INTERVAL": "2",
            "PERLLM_REPLACEMENT_WINDOW": "4",
            "PERLLM_REPLACEMENT": "off",
            "PERLLM_PROMETHEUS_TOKEN_FILE": "/run/prom/token",
        }
    )
    assert c.prometheus.url == "http://p:9090" and c.status_interval_s == 2
    assert c.prometheus.token_file == "/run/prom/token"
    assert Config.from_env({}).prometheus.token_file is None
    assert Config.from_env({}).prometheus.ca_file is None
    assert not Config.from_env({}).prometheus.insecure_skip_verify  # verified by default
    tls = Config.from_env({"PERLLM_PROMETHEUS_CA_FILE": "/run/prom-ca/ca.crt"})
    assert tls.prometheus.ca_file == "/run/prom-ca/ca.crt"
    both = {"PERLLM_PROMETHEUS_CA_FILE": "/ca.crt", "PERLLM_PROMETHEUS_INSECURE_SKIP_VERIFY": "1"}
    with pytest.raises(ConfigError, match=r"PERLLM_PROMETHEUS_CA_FILE.*choose one"):
        Config.from_env(both)
    with pytest.raises(ConfigError, match="PERLLM_PROMETHEUS_INSECURE_SKIP_VERIFY='yes'"):
        Config.from_env({"PERLLM_PROMETHEUS_INSECURE_SKIP_VERIFY": "yes"})
    assert c.policy.window_s == 4 and not c.policy.enabled
    with pytest.raises(ConfigError, match="PERLLM_STATUS_INTERVAL"):
        Config.from_env({"PERLLM_STATUS_INTERVAL": "0.1"})
    with pytest.raises(ConfigError, match="PERLLM_TELEMETRY_WINDOW"):
        Config.from_env({"PERLLM_TELEMETRY_WINDOW": "five"})
    with pytest.raises(ConfigError, match="PERLLM_REPLACEMENT_COOLDOWN"):
        Config.from_env({"PERLLM_REPLACEMENT_COOLDOWN": "x"})


@pytest.mark.parametrize(
    ("key", "raw"),
    [
        ("PERLLM_STATUS_INTERVAL", "nan"),  # the timer would sleep NaN seconds
        ("PERLLM_STATUS_INTERVAL", "inf"),
        ("PERLLM_REPLACEMENT_COOLDOWN", "nan"),  # every comparison False: no cooldown at all
        ("PERLLM_REPLACEMENT_WINDOW", "NaN"),  # no minimum span at all
        ("PERLLM_REPLACEMENT_TICKS", "inf"),  # int(inf): OverflowError, not a ConfigError
        ("PERLLM_REPLACEMENT_TICKS", "2.5"),  # silently 2
        ("PERLLM_REPLACEMENT_ESCALATE_AFTER", "1.5"),
        ("PERLLM_TELEMETRY_WINDOW", "0m"),  # PromQL refuses a zero range: stale forever
        ("PERLLM_STATUS_INTERVAL", "1_0"),  # float() read 10 (annotations' DECIMAL now)
        ("PERLLM_REPLACEMENT_COOLDOWN", " 5 "),
        ("PERLLM_REPLACEMENT_TICKS", "\u0663"),  # an Arabic-Indic 3
    ],
)
def test_config_refuses_values_that_would_misbehave_later(key: str, raw: str) -> None:
    """A bad setting stops the start with a message naming it, instead of an operator that
    starts and then never ticks, never cools down or never gets an answer from Prometheus."""
    with pytest.raises(ConfigError, match=key):
        Config.from_env({key: raw})


# ---- the timer handler with fakes ------------------------------------------------------------
class FakeCluster:
    """What the timer calls on the API: pods, status writes, evictions, events."""

    def __init__(self, obj: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        self.obj, self.pods = obj, pods
        self.evicted: list[str] = []
        self.events: list[tuple[str, str]] = []

    def install(self, mp: pytest.MonkeyPatch) -> None:
        mp.setattr(kube, "pods", lambda ns, name: copy.deepcopy(self.pods))
        mp.setattr(kube, "evict", lambda ns, pod: self.evicted.append(pod))
        mp.setattr(reconcile, "follow_tier", lambda body, obj, logger: None)

        def sync(
            ns: str, name: str, uid: str, conditions: Any = None, fields: Any = None, **_: Any
        ) -> bool:
            st = self.obj.setdefault("status", {})
            old = list(st.get("conditions") or [])
            conds = {c["type"]: c for c in old}
            for t, c in (conditions or {}).items():
                conds[t] = condition(t, *c, old)
            st["conditions"] = list(conds.values())
            st.update(fields or {})
            return True

        mp.setattr(status, "sync_status", sync)
        mp.setattr(
            kopf, "info", lambda body, *, reason, message: self.events.append((reason, message))
        )
        mp.setattr(
            kopf, "warn", lambda body, *, reason, message: self.events.append((reason, message))
        )

    def tick(self, state: State) -> None:
        b = kopf.Body(copy.deepcopy(self.obj))
        status.status_tick(
            body=b,
            spec=kopf.Spec(b),
            meta=kopf.Meta(b),
            status=kopf.Status(b),
            logger=_Logger(),
            memo=memo_of(state),
        )

    def cond(self, t: str) -> dict[str, Any]:
        return next(c for c in self.obj["status"]["conditions"] if c["type"] == t)


class _Logger:
    def info(self, *a: Any) -> None: ...
    def warning(self, *a: Any) -> None: ...


def test_timer_marks_stale_and_keeps_going_when_prometheus_is_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fc = FakeCluster(_load("chat-assistant"), [_pod("chat-assistant-1", "cloud-0")])
    fc.install(monkeypatch)
    state = State(Config(PromAccess("http://prom.invalid")), FakeProm({}, down=True))
    fc.tick(state)
    assert fc.cond("TelemetryStale")["status"] == "True"
    assert "placement continues" in fc.cond("TelemetryStale")["message"]
    assert fc.cond("DeadlineMet")["status"] == "Unknown"
    assert fc.cond("Placed")["reason"] == "NoDecisionPublished"
    assert "observed" not in fc.obj["status"] and fc.evicted == []


def test_timer_evicts_one_pod_after_the_window_then_cools_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pods = [_pod("chat-assistant-a", "cloud-0"), _pod("chat-assistant-b", "cloud-1")]
    fc = FakeCluster(_load("chat-assistant"), pods)
    fc.install(monkeypatch)
    fc.obj["status"] = {"placement": {"tier": "cloud", "nodes": ["cloud-0", "cloud-1"]}}
    pol = ReplacementPolicy(window_s=0, min_ticks=3, cooldown_s=3600, escalate_after=0)
    prom = FakeProm(
        {
            "sum by (namespace, pod)": [
                Sample({"namespace": "llm", "pod": "chat-assistant-a"}, 2.0),
                Sample({"namespace": "llm", "pod": "chat-assistant-b"}, 8.0),
            ],
            "le=": 0.2,
            "histogram_quantile": 9.0,
            "_count": 1.0,
        }
    )
    state = State(Config(PromAccess("http://p"), policy=pol), prom)
    for _ in range(2):
        fc.tick(state)
    assert fc.evicted == [] and fc.obj["status"]["replacement"]["state"] == "BelowTarget"
    assert fc.cond("DeadlineMet")["status"] == "False"
    assert fc.cond("Placed")["status"] == "True"
    assert fc.obj["status"]["observed"]["attainment"] == 0.2
    fc.tick(state)
    assert fc.evicted == ["chat-assistant-b"]  # the slowest pod
    reasons = [r for r, _ in fc.events]
    assert reasons == ["ReplacementTriggered", "Evicted"]
    assert "20.0%" in fc.events[0][1] and "95%" in fc.events[0][1]
    assert "cloud-1" in fc.events[1][1]
    rep = fc.obj["status"]["replacement"]
    assert rep["lastEvictedPod"] == "chat-assistant-b" and rep["evictions"] == 1
    for _ in range(4):  # still bad, but within the cooldown: no second eviction
        fc.tick(state)
    assert fc.evicted == ["chat-assistant-b"]
    assert fc.obj["status"]["replacement"]["state"] == "CoolingDown"


def test_timer_escalates_to_the_other_tier(monkeypatch: pytest.MonkeyPatch) -> None:
    fc = FakeCluster(_load("chat-assistant"), [_pod("chat-assistant-a", "cloud-0")])
    fc.install(monkeypatch)
    fc.obj["status"] = {
        "replacement": {"evictionsSinceRecovery": 2},
        "placement": {"tier": "cloud", "nodes": ["cloud-0"]},
    }
    pol = ReplacementPolicy(window_s=0, min_ticks=1, cooldown_s=0, escalate_after=2)
    prom = FakeProm({"le=": 0.1, "_count": 1.0})
    fc.tick(State(Config(PromAccess("http://p"), policy=pol), prom))
    assert fc.evicted == []
    rep = fc.obj["status"]["replacement"]
    assert rep["state"] == "TierSwitched" and rep["tier"]["target"] == "edge"
    assert [r for r, _ in fc.events] == ["TierSwitched"]


def _fake_tier_follow(
    monkeypatch: pytest.MonkeyPatch, obj: dict[str, Any], live: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[str]]:
    """reconcile.follow_tier's API calls faked: the LLMService reads back as `obj`, its child
    as `live`. Returns the children applied and the Events' messages, filled as it runs."""
    applied: list[dict[str, Any]] = []
    events: list[str] = []

    class CO:
        def get_namespaced_custom_object(self, *a: Any, **_: Any) -> dict[str, Any]:
            return copy.deepcopy(obj)

    monkeypatch.setattr(kube.kubernetes.client, "CustomObjectsApi", CO)
    monkeypatch.setattr(kube, "read_child", lambda ns, ref: live)
    monkeypatch.setattr(kube, "apply", lambda child: applied.append(child) or child)
    monkeypatch.setattr(reconcile, "sync_status", lambda *a, **k: True)
    monkeypatch.setattr(reconcile, "try_sync_status", lambda *a, **k: True)
    monkeypatch.setattr(kopf, "info", lambda body, *, reason, message: events.append(message))
    return applied, events


def test_children_follow_a_tier_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    obj = _load("code-assistant")
    obj["spec"]["backend"] = "kserve"
    obj["status"] = {
        "child": {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "name": "code-assistant",
        },
        "replacement": {"tier": {"target": "edge", "from": "cloud"}},
        "conditions": [{"type": "Reconciled", "status": "True", "reason": "ChildApplied"}],
    }
    live = {
        "metadata": {
            "annotations": {"perllm.io/pinned-tier": "cloud"},
            "ownerReferences": [{"controller": True, "uid": "uid-1"}],
        }
    }
    applied, events = _fake_tier_follow(monkeypatch, obj, live)
    reconcile.follow_tier(kopf.Body(obj), obj, _Logger())
    # the ServiceAccount of its gated hf:// weights (kept: another tier may fetch them)
    sa, child = applied
    assert sa["kind"] == "ServiceAccount"
    p = child["spec"]["predictor"]
    assert p["annotations"]["perllm.io/variant-tier"] == "edge"
    assert "nvidia.com/gpu" not in str(p["model"]["resources"])
    assert events == ["pod template re-rendered for tier edge (was cloud)"]
    # Already on the target tier: nothing is applied.
    applied.clear()
    live["metadata"]["annotations"]["perllm.io/pinned-tier"] = "edge"
    reconcile.follow_tier(kopf.Body(obj), obj, _Logger())
    assert applied == []


def test_first_decision_pins_an_open_template(monkeypatch: pytest.MonkeyPatch) -> None:
    obj = _load("chat-assistant")
    obj["spec"]["backend"] = "deployment"
    obj["status"] = {
        "child": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "chat-assistant"},
        "placement": {"tier": "edge", "nodes": ["edge-2"]},
        "conditions": [{"type": "Reconciled", "status": "True", "reason": "ChildApplied"}],
    }
    live = {
        "metadata": {
            "annotations": {"perllm.io/pinned-tier": "open"},
            "ownerReferences": [{"controller": True, "uid": "uid-1"}],
        }
    }
    applied, _events = _fake_tier_follow(monkeypatch, obj, live)
    reconcile.follow_tier(kopf.Body(obj), obj, _Logger())
    dep, _svc = applied
    tpl = dep["spec"]["template"]["spec"]
    expr = tpl["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ][0]["matchExpressions"][0]
    assert expr["values"] == ["edge"] and "tolerations" not in tpl
    assert dep["metadata"]["annotations"]["perllm.io/pinned-tier"] == "edge"


def test_flags_win_over_the_environment_and_fail_before_kopf_starts() -> None:
    from perllm_operator.main import run

    env = {"PERLLM_PROMETHEUS_URL": "http://env:9090", "PERLLM_STATUS_INTERVAL": "9"}
    c = Config.load(env, "http://flag:9090", 3)
    assert c.prometheus.url == "http://flag:9090" and c.status_interval_s == 3
    assert Config.load(env) == Config.from_env(env)
    with pytest.raises(ConfigError, match="PERLLM_STATUS_INTERVAL"):
        Config.load({}, None, 0.5)
    with pytest.raises(ConfigError, match="PERLLM_TELEMETRY_WINDOW"):
        run(env={"PERLLM_TELEMETRY_WINDOW": "five"})


@pytest.mark.parametrize(
    ("code", "state", "degraded"),
    [(403, "EvictionFailed", "True"), (500, "EvictionFailed", "True"), (404, "Waiting", "False")],
)
def test_a_failed_eviction_is_reported_and_the_tick_still_writes_its_status(
    monkeypatch: pytest.MonkeyPatch, code: int, state: str, degraded: str
) -> None:
    """An eviction refused otherwise than by a PodDisruptionBudget (RBAC, the API server
    failing) raised out of the tick: status.observed and the conditions were never written
    while it lasted, nothing said why but the log, and each retry 10 s later posted
    ReplacementTriggered again. A pod gone meanwhile left state 'Replace', no state of
    the CRD's."""
    fc = FakeCluster(_load("chat-assistant"), [_pod("chat-assistant-a", "cloud-0")])
    fc.install(monkeypatch)

    def refuse(ns: str, pod: str) -> None:
        raise ApiException(status=code, reason="Refused")

    monkeypatch.setattr(kube, "evict", refuse)
    fc.obj["status"] = {"placement": {"tier": "cloud", "nodes": ["cloud-0"]}}
    pol = ReplacementPolicy(window_s=0, min_ticks=1, cooldown_s=3600, escalate_after=0)
    prom = FakeProm({"le=": 0.1, "_count": 1.0})
    fc.tick(State(Config(PromAccess("http://p"), policy=pol), prom))
    st = fc.obj["status"]
    assert st["observed"]["attainment"] == 0.1 and fc.cond("DeadlineMet")["status"] == "False"
    assert st["replacement"]["state"] == state
    assert "chat-assistant-a" in st["replacement"]["message"]
    assert fc.cond("Degraded")["status"] == degraded
    if degraded == "True":
        assert fc.cond("Degraded")["reason"] == "EvictionFailed"
        assert f"({code} Refused)" in fc.cond("Degraded")["message"]
        assert [r for r, _ in fc.events] == ["ReplacementTriggered", "EvictionFailed"]


def test_a_refused_pod_list_is_degraded_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tick's pod list refused (403: a namespace the chart's Roles do not cover) raised
    a TemporaryError every 10 s with no condition: the status went stale and Degraded
    kept saying NoErrors."""
    fc = FakeCluster(_load("chat-assistant"), [])
    fc.install(monkeypatch)
    monkeypatch.setattr(reads, "_failed", {})  # (what it records stays this test's)
    fc.obj["status"] = {"conditions": [condition("Degraded", False, "NoErrors", "ok")]}
    body = '{"kind":"Status","reason":"Forbidden","message":"pods is forbidden: no list"}'

    def refuse(ns: str, name: str) -> None:
        e = ApiException(status=403, reason="Forbidden")
        e.body = body
        raise e

    monkeypatch.setattr(kube, "pods", refuse)
    state = State(Config(PromAccess("http://p"), policy=POLICY), FakeProm({}))
    with pytest.raises(kopf.TemporaryError) as e:
        fc.tick(state)
    assert e.value.delay == 5.0  # growing with kopf's retry count
    d = fc.cond("Degraded")
    assert (d["status"], d["reason"]) == ("True", "ListForbidden")
    assert d["message"] == (
        "listing pods labelled perllm.io/service=chat-assistant: the API server refused it "
        "(403 Forbidden): pods is forbidden: no list"
    )
    assert fc.events == [("ListForbidden", d["message"])]
    assert fc.cond("Placed")["status"] == "Unknown"
    with pytest.raises(kopf.TemporaryError):  # the next retry: said once
        fc.tick(state)
    assert len(fc.events) == 1


def test_re_placement_waits_while_the_last_evicted_pod_terminates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The timer passed only the live pods to re-placement, so `in_flight`'s "terminating"
    never held it: once the cooldown was over and the replacement ready, a second pod was
    evicted while the first still shut down (two of the service's pods out at once)."""
    pods = [
        _pod("chat-assistant-a", "cloud-0", deleting=True),  # evicted, still terminating
        _pod("chat-assistant-b", "cloud-1"),
        _pod("chat-assistant-c", "cloud-0"),  # its replacement, ready
    ]
    fc = FakeCluster(_load("chat-assistant"), pods)
    fc.install(monkeypatch)
    fc.obj["status"] = {"placement": {"tier": "cloud", "nodes": ["cloud-0", "cloud-1"]}}
    pol = ReplacementPolicy(window_s=0, min_ticks=1, cooldown_s=0, escalate_after=0)
    state = State(Config(PromAccess("http://p"), policy=pol), FakeProm({"le=": 0.1, "_count": 1.0}))
    fc.tick(state)
    rep = fc.obj["status"]["replacement"]
    assert fc.evicted == [] and rep["state"] == "Waiting"
    assert "pod chat-assistant-a is terminating" in rep["message"]
    fc.pods = fc.pods[1:]  # gone: the next tick re-places, never the terminating one
    fc.tick(state)
    assert fc.evicted == ["chat-assistant-b"]  # the oldest live pod on a placed node


def test_an_unanswered_status_write_of_the_timer_is_a_temporary_error_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The timer's status write caught only ApiException: an API server that did not
    answer (urllib3's timeout) escaped as an unexpected error, a traceback on every retry."""
    import urllib3.exceptions
    from perllm_operator import status as status_mod

    def no_answer(*_a: object, **_k: object) -> None:
        raise urllib3.exceptions.ReadTimeoutError(None, "/apis", "Read timed out.")  # type: ignore[arg-type]

    monkeypatch.setattr(status_mod, "sync_status", no_answer)
    with pytest.raises(kopf.TemporaryError) as e:
        status_mod._write("team", "chat", "u1", {})
    assert e.value.delay == 10
    assert str(e.value).startswith(
        "updating the status of LLMService chat: no answer from the API server (ReadTimeoutError"
    )
