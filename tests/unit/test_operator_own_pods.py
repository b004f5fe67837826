"""The operator counts and acts on its children's pods only: a pod labelled
`perllm.io/service: <name>` is the service's when its ReplicaSet is one of the service's
Deployments' (the ReplicaSet `<deployment>-<pod-template-hash>`, read from the pod alone).
A hand-made copy of a child (another name, the same pod labels) made the timer count its
pods in `Placed` and the telemetry, wait on them, and evict them."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from fake_kube import FakeStatusApi, pod_of
from perllm_operator import conditions, kube, render, tiers
from perllm_operator.config import Config
from perllm_operator.policy import ReplacementPolicy
from perllm_operator.state import State

from perllm import service_pods
from perllm.telemetry.prom import PromAccess, Sample
from tests.unit.test_operator_status import FakeCluster, FakeProm, _load, _pod
from tests.unit.test_operator_tiers import EXAMPLE, OWNED
from tests.unit.test_operator_tiers import _load as _load_tiered
from tests.unit.test_operator_tiers import _pod as _tier_pod


def _copy_pod(name: str, node: str | None, copy_of: str = "chat-assistant-copy") -> Any:
    """A pod of a Deployment made by hand from a child: other name, same pod labels."""
    return _pod(name, node, deployment=copy_of)


@pytest.mark.parametrize(
    ("backend", "replicas", "want"),
    [
        ("kserve", {}, {"x-predictor", "x-predictor-default"}),
        ("deployment", {}, {"x"}),
        ("deployment", {"edge": 1, "cloud": 1}, {"x-edge", "x-cloud"}),
        ("kserve", {"edge": 0, "cloud": 2}, {"x-cloud-predictor", "x-cloud-predictor-default"}),
    ],
)
def test_the_deployments_whose_pods_are_the_services(
    backend: str, replicas: dict[str, int], want: set[str]
) -> None:
    obj = _load("chat-assistant")
    obj["metadata"]["name"] = "x"
    obj["spec"]["backend"] = backend
    if replicas:
        obj["spec"]["tierReplicas"] = replicas
    assert service_pods.pod_deployments(obj) == want
    obj["spec"]["replicas"] = -1  # refused by the contract: every child name of the form
    obj["spec"].pop("tierReplicas", None)
    names = {"x", "x-edge", "x-cloud"}
    assert service_pods.pod_deployments(obj) == (
        names
        if backend == "deployment"
        else {f"{n}-predictor{s}" for n in names for s in ("", "-default")}
    )


def test_a_pod_is_its_replica_sets_deployments_by_name_and_hash() -> None:
    def pod(meta: dict[str, Any]) -> dict[str, Any]:
        return {"metadata": meta}

    assert service_pods.deployment_of(pod(pod_of("x-predictor", "abc12"))) == "x-predictor"
    assert service_pods.deployment_of(pod(pod_of("x", "abc12"))) == "x"
    assert service_pods.deployment_of(pod({"labels": {"perllm.io/service": "x"}})) is None  # bare
    wrong_hash = pod_of("x", "abc12")
    wrong_hash["labels"]["pod-template-hash"] = "zzz99"  # a ReplicaSet made by hand
    assert service_pods.deployment_of(pod(wrong_hash)) is None
    not_rs = pod_of("x", "abc12")
    not_rs["ownerReferences"][0]["kind"] = "StatefulSet"
    assert service_pods.deployment_of(pod(not_rs)) is None
    not_ctrl = pod_of("x", "abc12")
    not_ctrl["ownerReferences"][0]["controller"] = False
    assert service_pods.deployment_of(pod(not_ctrl)) is None
    only_hash = pod_of("x", "abc12")
    only_hash["ownerReferences"][0]["name"] = "-abc12"
    assert service_pods.deployment_of(pod(only_hash)) is None


def test_the_timer_never_evicts_nor_reads_a_hand_made_copys_pod(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The copy's pod is the slowest and on a node of the placement: it was the one
    evicted, and its series were in the service's attainment."""
    pods = [
        _pod("chat-assistant-a", "cloud-0"),
        _pod("chat-assistant-b", "cloud-1"),
        _copy_pod("chat-assistant-copy-x", "cloud-1"),
    ]
    fc = FakeCluster(_load("chat-assistant"), pods)
    fc.install(monkeypatch)
    fc.obj["status"] = {"placement": {"tier": "cloud", "nodes": ["cloud-0", "cloud-1"]}}
    pol = ReplacementPolicy(window_s=0, min_ticks=1, cooldown_s=3600, escalate_after=0)
    prom = FakeProm(
        {
            "sum by (namespace, pod)": [
                Sample({"namespace": "llm", "pod": "chat-assistant-a"}, 2.0),
                Sample({"namespace": "llm", "pod": "chat-assistant-b"}, 8.0),
                Sample({"namespace": "llm", "pod": "chat-assistant-copy-x"}, 99.0),
            ],
            "le=": 0.2,
            "_count": 1.0,
        }
    )
    fc.tick(State(Config(PromAccess("http://p"), policy=pol), prom))
    assert fc.evicted == ["chat-assistant-b"]
    assert not any("chat-assistant-copy-x" in q for q in prom.queries)


def test_a_copys_unready_pod_does_not_hold_re_placement(monkeypatch: pytest.MonkeyPatch) -> None:
    pods = [_pod("chat-assistant-a", "cloud-0"), _copy_pod("chat-assistant-copy-x", None)]
    fc = FakeCluster(_load("chat-assistant"), pods)
    fc.install(monkeypatch)
    fc.obj["status"] = {"placement": {"tier": "cloud", "nodes": ["cloud-0"]}}
    pol = ReplacementPolicy(window_s=0, min_ticks=1, cooldown_s=3600, escalate_after=0)
    fc.tick(
        State(Config(PromAccess("http://p"), policy=pol), FakeProm({"le=": 0.1, "_count": 1.0}))
    )
    assert fc.obj["status"]["replacement"]["state"] == "Evicted"  # not "Waiting" on the copy
    assert fc.evicted == ["chat-assistant-a"]


def test_a_copys_bound_pod_is_not_the_service_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a decision record, a copy's bound pod made `Placed` say the service's pods
    were bound (NoDecisionPublished) while its own waited for the scheduler."""
    fc = FakeCluster(
        _load("chat-assistant"),
        [_pod("chat-assistant-a", None), _copy_pod("chat-assistant-copy-x", "cloud-9")],
    )
    fc.install(monkeypatch)
    fc.tick(State(Config(), FakeProm({})))
    assert fc.cond("Placed")["reason"] == "WaitingForScheduler"


def _placed_with(
    monkeypatch: pytest.MonkeyPatch, backend: str, pods: list[dict[str, Any]]
) -> dict[str, Any]:
    obj = _load_tiered(backend, edge=1, cloud=1)
    obj["status"] = {"placement": {"tier": "edge", "nodes": ["edge-1"]}}
    api = FakeStatusApi(obj)
    live = {
        c["name"]: {
            "kind": c["kind"],
            "metadata": {"name": c["name"], **OWNED},
            "spec": {"replicas": 1},
            "status": {"readyReplicas": 1},
        }
        for c in tiers.children_status(render.children(obj))
    }
    monkeypatch.setattr(kube.kubernetes.client, "CustomObjectsApi", lambda: api)
    monkeypatch.setattr(kube, "read_child", lambda ns, ref: live.get(ref["name"]))
    monkeypatch.setattr(kube, "pods", lambda ns, name: copy.deepcopy(pods))
    kids = tiers.children_status(render.children(obj))
    assert conditions.sync_status("llm", EXAMPLE, "uid-1", children=kids, generation=1)
    return next(c for c in api.obj["status"]["conditions"] if c["type"] == "Placed")


@pytest.mark.parametrize("backend", ["kserve", "deployment"])
def test_a_copys_pod_does_not_place_a_tier(monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    """A tiered service's cloud tier had no pod bound, but a copy of its cloud child
    (pods labelled child-tier cloud) had: `Placed` said True."""
    copy_pod = _tier_pod("cloud", "cloud-0", backend)
    copy_pod["metadata"].update(pod_of(f"{EXAMPLE}-cloud-by-hand"))
    copy_pod["metadata"]["labels"].update(
        {"perllm.io/service": EXAMPLE, "perllm.io/child-tier": "cloud"}
    )
    pods = [_tier_pod("edge", "edge-1", backend), _tier_pod("cloud", None, backend), copy_pod]
    placed = _placed_with(monkeypatch, backend, pods)
    assert (placed["status"], placed["reason"]) == ("Unknown", "WaitingForScheduler")
    assert "cloud on no node yet" in placed["message"]
    pods[1]["spec"]["nodeName"] = "cloud-1"  # the real one bound: placed
    placed = _placed_with(monkeypatch, backend, pods)
    assert placed["status"] == "True" and "cloud on cloud-1;" in placed["message"]


def test_a_terminating_pod_does_not_place_a_tier(monkeypatch: pytest.MonkeyPatch) -> None:
    """A status write from a Deployment event counted the node of a terminating pod (the
    cloud tier's, evicted) as the tier's, where the timer's did not: `Placed` went True
    and back to WaitingForScheduler until the replacement was bound."""
    pods = [_tier_pod("edge", "edge-1"), _tier_pod("cloud", "cloud-0")]
    pods[1]["metadata"]["deletionTimestamp"] = "2026-01-01T00:10:00Z"
    placed = _placed_with(monkeypatch, "kserve", pods)
    assert (placed["status"], placed["reason"]) == ("Unknown", "WaitingForScheduler")
