"""What the harness writes, checked without a cluster (runs in the unit tier: no e2e mark)."""

from __future__ import annotations

from pathlib import Path

import yaml

from perllm.devcluster import config as cfg
from perllm.devcluster.binaries import Binaries, cache_dir, versions
from perllm.devcluster.cluster import DEFAULT_SCENARIO
from perllm.devcluster.nodes import (
    ANN_HARDWARE_SPEC,
    GPU_RESOURCE,
    KWOK_ANNOTATION,
    LABEL_TIER,
    node_manifests,
)
from perllm.scenario import load_scenario

REPO = Path(__file__).resolve().parents[2]


def test_nodes_follow_the_scenario_and_catalogue() -> None:
    sc = load_scenario(DEFAULT_SCENARIO)
    nodes = node_manifests(sc)
    assert [n["metadata"]["name"] for n in nodes] == [name for name, _ in sc.expanded_servers()]
    for n, (_, server) in zip(nodes, sc.expanded_servers(), strict=True):
        hw = sc.catalogue.hardware[server.hardware]
        meta, status = n["metadata"], n["status"]
        assert meta["labels"][LABEL_TIER] == server.tier.value
        assert meta["annotations"][KWOK_ANNOTATION] == "fake"
        assert "perf_scale" not in meta["annotations"][ANN_HARDWARE_SPEC]
        assert status["capacity"] == status["allocatable"]
        assert status["capacity"]["pods"] == "110"
        assert status["capacity"]["cpu"] == str(hw.cpu_cores)
        assert (GPU_RESOURCE in status["capacity"]) == (hw.gpus > 0)
        assert "taints" not in n["spec"]


def test_perllm_scheduler_config_matches_the_extender_contract() -> None:
    ext = cfg.Extender(url="http://127.0.0.1:9999/x", ignorable=False)
    doc = yaml.safe_load(cfg.scheduler_config(Path("/k"), cfg.PERLLM_SCHEDULER, ext))
    assert doc["apiVersion"] == "kubescheduler.config.k8s.io/v1"
    # every feasible node reaches the extender (no early stop of kube-scheduler's search)
    assert doc["profiles"] == [
        {"schedulerName": "perllm-scheduler", "percentageOfNodesToScore": 100}
    ]
    assert doc["leaderElection"] == {"leaderElect": False}
    (e,) = doc["extenders"]
    assert e["urlPrefix"] == "http://127.0.0.1:9999/x" and e["ignorable"] is False
    assert e["weight"] > 0 and e["nodeCacheCapable"] is True
    # Never a binder, and no managedResources (they would let other pods bypass it).
    assert "bindVerb" not in e and "managedResources" not in e
    default = yaml.safe_load(cfg.scheduler_config(Path("/k"), "default-scheduler"))
    assert "extenders" not in default
    assert default["profiles"] == [{"schedulerName": "default-scheduler"}]


def test_kwok_stages_cover_node_init_pod_ready_and_pod_delete() -> None:
    stages = {d["metadata"]["name"]: d for d in yaml.safe_load_all(cfg.KWOK_STAGES)}
    assert set(stages) == {"node-initialize", "pod-ready", "pod-delete"}
    assert stages["pod-delete"]["spec"]["next"] == {"finalizers": {"empty": True}, "delete": True}
    for s in stages.values():
        assert s["apiVersion"] == "kwok.x-k8s.io/v1alpha1" and s["kind"] == "Stage"


def test_versions_agree_with_the_wrapper_modules() -> None:
    v = versions()
    k8s_mod = (REPO / "tools/k8sbin/go.mod").read_text()
    assert f"k8s.io/kubernetes {v['K8S_VERSION']}" in k8s_mod
    minor = v["K8S_VERSION"].replace("v1.", "v0.", 1)
    assert f"k8s.io/kubectl => k8s.io/kubectl {minor}" in k8s_mod
    assert (
        f"go.etcd.io/etcd/server/v3 {v['ETCD_VERSION']}"
        in (REPO / "tools/etcdbin/go.mod").read_text()
    )
    b = Binaries.locate()
    assert b.kubectl == cache_dir() / f"k8s-{v['K8S_VERSION']}" / "kubectl"
