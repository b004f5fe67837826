"""The demo's end-of-run report: windows of cumulative counters, and placements reported
only once the services' status and pods agree."""

from __future__ import annotations

from typing import Any

from perllm.demo.observe import OURS, Counters, Sample, placements_hold
from perllm.demo.report import summarise


def _status(nodes: list[str]) -> dict[str, Any]:
    return {"placement": {"tier": "edge", "chosen": nodes[0], "nodes": nodes}}


def test_placements_hold_when_pods_are_bound_where_published() -> None:
    s = Sample(t=0, status={"chat": _status(["e1", "e2"])}, pods={"chat": ["e1", "e2"]})
    assert placements_hold(s)


def test_a_pending_replacement_does_not_hold() -> None:
    s = Sample(t=0, status={"chat": _status(["e1"])}, pods={"chat": [""]})
    assert not placements_hold(s)


def test_a_pod_on_an_unpublished_node_does_not_hold() -> None:
    s = Sample(t=0, status={"chat": _status(["e1"])}, pods={"chat": ["c1"]})
    assert not placements_hold(s)


def test_a_latest_decision_whose_pod_went_does_not_hold() -> None:
    """The pod of the latest decision was evicted: its replacement's decision is due."""
    st = {"placement": {"tier": "edge", "chosen": "e2", "nodes": ["e1"]}}
    assert not placements_hold(Sample(t=0, status={"chat": st}, pods={"chat": ["e1"]}))


def test_a_failed_or_empty_read_does_not_hold() -> None:
    assert not placements_hold(Sample(t=0))
    ok = Sample(t=0, status={"chat": _status(["e1"])}, pods={"chat": ["e1"]})
    ok.api_error = "ReadTimeoutError: ..."
    assert not placements_hold(ok)


def test_a_service_without_placement_or_pods_does_not_hold() -> None:
    assert not placements_hold(Sample(t=0, status={"chat": {}}, pods={"chat": ["e1"]}))
    assert not placements_hold(Sample(t=0, status={"chat": _status(["e1"])}, pods={}))


def test_summary_counts_the_window_and_reports_the_settled_placements() -> None:
    def at(t: float, n: float) -> Sample:
        c = {OURS: {"chat": Counters(requests=n, met=n * 0.9, energy_j=n * 10.0)}}
        return Sample(t=t, counters=c, status={"chat": _status(["e1"])}, pods={"chat": [""]})

    samples = [at(0, 0), at(10, 100), at(20, 300)]
    final = Sample(t=21, status={"chat": _status(["c1"])}, pods={"chat": ["c1"]})
    out = summarise(samples, warmup=10, meta={}, final=final)
    ours = out["policies"][OURS]
    assert ours["requests"] == 200  # 300 - 100: the warm-up is excluded
    assert abs(ours["attainment"] - 0.9) < 1e-12
    assert abs(ours["j_per_request"] - 10.0) < 1e-12
    assert out["placements"]["chat"]["nodes"] == ["c1"]
    assert out["pods"]["chat"] == ["c1"]
    # without a settled read, the last sample's
    assert summarise(samples, warmup=10, meta={})["pods"]["chat"] == [""]


def test_the_observer_counts_only_a_services_own_pods(tmp_path: Any) -> None:
    """The observer took a service's pods by label: a hand-made pod (or a copy of a child)
    carrying `perllm.io/service: chat` was counted as bound, so `placements_hold` judged
    the placement by a pod the operator and the router do not count (`service_pods`)."""
    import json
    from types import SimpleNamespace

    from perllm.demo.observe import Observer

    def pod(name: str, node: str, rs: str | None) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "name": name,
            "namespace": "demo",  # (as the API lists a pod)
            "labels": {"perllm.io/service": "chat", "pod-template-hash": "5d8f7"},
        }
        if rs is not None:
            ref = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"{rs}-5d8f7"}
            meta["ownerReferences"] = [{**ref, "controller": True}]
        return {"metadata": meta, "spec": {"nodeName": node}}

    svc = {
        "metadata": {"name": "chat", "namespace": "demo"},
        "spec": {"backend": "deployment"},
        "status": _status(["e1"]),
    }
    pods = [pod("chat-1", "e1", "chat"), pod("copy-1", "c1", "chat-copy"), pod("bare", "c1", None)]

    class Api:
        def list_namespaced_custom_object(self, *a: Any, **k: Any) -> dict[str, Any]:
            return {"items": [svc]}

        def list_namespaced_pod(self, *a: Any, **k: Any) -> SimpleNamespace:
            assert k.get("_preload_content") is False
            return SimpleNamespace(data=json.dumps({"items": pods}).encode())

        def list_node(self, **k: Any) -> SimpleNamespace:
            return SimpleNamespace(items=[])

    obs = Observer("http://127.0.0.1:9", tmp_path / "kubeconfig", "demo")
    obs._api = obs._core = Api()
    s = obs.sample(counters=False)
    assert s.pods == {"chat": ["e1"]} and s.status == {"chat": _status(["e1"])}
    assert placements_hold(s)
