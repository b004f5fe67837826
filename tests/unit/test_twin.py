"""The twin: same physics as the world model, exact energy accounting, the metric contract,
counterfactuals on the same requests, and pods moving load."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from perllm.cli import app
from perllm.costmodel import download_bits, gpu_times, upload_bits
from perllm.devcluster.process import free_port
from perllm.scenario import Scenario, load_scenario, parse_scenario
from perllm.telemetry import names
from perllm.twin.engine import ACTUAL, Twin
from perllm.twin.fleet import Fleet, IntervalSum
from perllm.twin.kube import ClusterReader, ClusterView
from perllm.twin.metrics import registry_for
from perllm.twin.records import Request, SvcKey
from perllm.twin.server import exposition, make_http_server
from perllm.world.sim import World

NS = "demo"


def demo_twin(pods: dict[str, tuple[str, str]], seed: int = 1) -> Twin:
    """The demo scenario's services, with pods {pod: (service, node)}."""
    sc = load_scenario("demo")
    tw = Twin(sc, seed=seed)
    tw.set_services({(NS, s.name): s for s in sc.services()})
    tw.set_pods({(NS, p): ((NS, svc), node) for p, (svc, node) in pods.items()})
    return tw


def families(tw: Twin) -> dict[str, Any]:
    text = exposition(registry_for(tw, threading.Lock())).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}, text


# -- the same physics as perllm/world ---------------------------------------------------
@pytest.mark.parametrize(
    ("scenario", "admission"),
    [("demo", "none"), ("demo", "reject-late"), ("paper-llama3-8b", "timeout")],
)
def test_fleet_matches_world_execute_request_by_request(scenario: str, admission: str) -> None:
    sc = load_scenario(scenario)
    adm = {"mode": admission, "timeout_s": 5.0}
    sc = parse_scenario({**sc.model_dump(mode="json"), "duration_s": 120.0, "admission": adm})
    world = World(sc, seed=5)
    fleet = Fleet(sc.expanded_servers(), sc.catalogue.hardware)
    r, m = world.req, world.table.n_servers
    assert len(r) > 50
    dropped = 0
    for i in range(len(r)):
        c = int(r.cls[i])
        allowed = np.flatnonzero(world.table.allowed[c])
        j = int(allowed[i % len(allowed)])
        slot = int(r.arrival[i] // sc.slot_s)
        d, out, e_tran = world.execute(i, j, slot)
        ex = fleet.execute(
            j,
            float(r.arrival[i]),
            float(r.l_in[i]),
            float(r.l_out[i]),
            float(r.attach[i]),
            float(world.speed[i]),
            world.coeffs[c][j],
            float(world.bw[slot, j]) * 1e6,
            sc.admission.latest_start(float(r.arrival[i]), float(r.deadline[i])),
        )
        assert ex.out.dropped == out.dropped
        dropped += out.dropped
        assert ex.time == pytest.approx(d, rel=1e-12)
        assert ex.out.e_infer == pytest.approx(out.e_infer, rel=1e-12)
        assert ex.e_tran == pytest.approx(e_tran, rel=1e-12)
    assert (dropped > 0) == (admission != "none")  # (the Xeon's or A100's queue overflows)
    # Exact energy: the meters give what ServerState.energy gives over the same horizon.
    horizon = max(max(s.busy_until for s in world.servers), sc.duration_s)
    for j in range(m):
        infer, idle = world.servers[j].energy(horizon)
        mi, md = fleet.meters[j].energy(horizon)
        assert mi == pytest.approx(infer, rel=1e-9)
        assert md == pytest.approx(idle, rel=1e-9)


def test_node_power_is_the_average_over_the_last_clock_tick() -> None:
    """It was the average since the last slot boundary in the tick: a tick ending just
    past one reported a near-instantaneous power, not the tick's (as DCGM's 1 s) average."""
    tw = demo_twin({"chat-0": ("chat", "edge-gpu-1"), "vision-0": ("vision", "edge-gpu-2")})
    meters = tw.fleets[ACTUAL].meters
    t0 = 30.0
    tw.advance(t0)
    for t1 in np.arange(31.001, 90.0, 1.7):  # ticks across slot boundaries (slot 1 s)
        e0 = [sum(m.energy(t0)) for m in meters]
        tw.advance(float(t1))
        for j, m in enumerate(meters):
            expected = (sum(m.energy(float(t1))) - e0[j]) / (t1 - t0)
            assert tw.node_power_w[j] == pytest.approx(expected, rel=1e-9), (j, t1)
        t0 = float(t1)


def test_interval_sum_is_union_length_at_any_time() -> None:
    s = IntervalSum()
    s.add(0.0, 2.0)
    s.add(1.0, 3.0)  # overlaps: union [0, 3]
    assert s.measure(1.5) == pytest.approx(1.5)
    s.add(5.0, 6.0)
    assert s.measure(4.0) == pytest.approx(3.0)
    assert s.measure(5.5) == pytest.approx(3.5)
    assert s.busy_at(5.5) and not s.busy_at(4.0)
    assert s.measure(10.0) == pytest.approx(4.0)


# -- counterfactual accounting on a tiny deterministic case ----------------------------
class FixedArrivals(Twin):
    """One request every `gap` s, constant lengths: no randomness in the requests."""

    gap = 10.0

    def _arrivals(self, live: list[SvcKey], t0: float, slot_s: float) -> list[Request]:
        out = []
        for key in live:
            spec = self.services[key]
            t = np.ceil(t0 / self.gap) * self.gap
            while t < t0 + slot_s:
                lo = spec.traffic.output_tokens
                out.append(
                    Request(
                        t,
                        key,
                        spec.traffic.prompt_tokens,
                        lo,
                        0.0,
                        spec.requirements.deadline.budget(lo),
                        1.0,
                    )
                )
                t += self.gap
        return out


def tiny_scenario() -> Scenario:
    return parse_scenario(
        {
            "name": "tiny",
            "duration_s": 600,
            "slot_s": 1.0,
            "speed_noise": 0.0,
            "servers": [
                {
                    "name": "edge",
                    "tier": "edge",
                    "hardware": "nvidia-l4",
                    "link": {
                        "bandwidth_mbps": 100,
                        "noise": 0.0,
                        "rtt_ms": 0,
                        "energy_uj_per_bit": 0.1,
                    },
                },
                {
                    "name": "cloud",
                    "tier": "cloud",
                    "hardware": "a100-80gb-sxm",
                    "link": {
                        "bandwidth_mbps": 300,
                        "noise": 0.0,
                        "rtt_ms": 0,
                        "energy_uj_per_bit": 1.1,
                    },
                },
            ],
            "workload": {
                "arrivals": {"kind": "poisson", "rate_rps": 0.1},
                "classes": [
                    {
                        "name": "chat",
                        "model": "llama3-8b",
                        "input_tokens": {"kind": "constant", "value": 100},
                        "output_tokens": {"kind": "constant", "value": 50},
                        "deadline": {"seconds": 1.0, "per_output_token_s": 0.15},
                    }
                ],
            },
        }
    )


def test_counterfactuals_get_the_same_requests_and_exact_energy() -> None:
    sc = tiny_scenario()
    tw = FixedArrivals(sc, seed=0)
    spec = sc.services()[0]
    tw.set_services({(NS, "chat"): spec})
    tw.set_pods({(NS, "chat-0"): ((NS, "chat"), "edge")})
    horizon = 299.5  # before the slot of the 31st arrival
    tw.advance(horizon)
    n = 30  # arrivals at 0, 10, ..., 290, each done within a few seconds
    for f in (ACTUAL, "cloud-only", "edge-only", "round-robin"):
        c = tw.stats[f][(NS, "chat")]
        assert c.requests == n, f
        assert c.met == n, f
    served = {f: [s.served for s in tw.fleets[f].states] for f in tw.fleets}
    assert served[ACTUAL] == [n, 0] and served["edge-only"] == [n, 0]
    assert served["cloud-only"] == [0, n]
    assert served["round-robin"] == [n // 2, n // 2]
    # Cloud-only by hand: isolated requests at batch 1 on the A100, the L4 idle throughout.
    a100, l4 = sc.catalogue.hardware["a100-80gb-sxm"], sc.catalogue.hardware["nvidia-l4"]
    t = tw.table
    assert t is not None
    pre, dec = gpu_times(
        100.0,
        50.0,
        1,
        t.kv[0, 1],
        t.bw[0, 1],
        t.r_pf[0, 1],
        t.ttft0[0, 1],
        t.step0[0, 1],
        t.flop[0, 1],
    )
    busy = n * (pre + dec)
    assert a100.power_decode_w is not None and a100.power_prefill_w is not None
    cloud_j = (
        a100.power_idle_w * (horizon - busy)
        + a100.power_decode_w * n * dec
        + a100.power_prefill_w * n * pre
    )
    tran_j = n * 1.1e-6 * (upload_bits(100.0, 0.0) + download_bits(50.0))
    expected = cloud_j + l4.power_idle_w * horizon + tran_j
    assert tw.fleet_energy("cloud-only") == pytest.approx(expected, rel=1e-9)
    # Attribution loses nothing: services' energy + what is still carried = fleet energy.
    for f in tw.fleets:
        attributed = tw.stats[f][(NS, "chat")].energy_j
        held = tw._pool[f] + sum(tw._carry[f]) + tw.unattributed_j[f]
        assert attributed + held == pytest.approx(tw.fleet_energy(f), rel=1e-9), f
        assert attributed > 0.9 * tw.fleet_energy(f), f


# -- pods move load ----------------------------------------------------------------------
def test_pod_add_and_remove_move_load() -> None:
    tw = demo_twin({"chat-a": ("chat", "edge-gpu-1")})
    tw.advance(60.0)
    real = tw.fleets[ACTUAL].states
    g1, g2 = tw.node_index["edge-gpu-1"], tw.node_index["edge-gpu-2"]
    before = (real[g1].served, real[g2].served)
    assert before[0] > 20 and before[1] == 0
    # The pod moves: the old one is deleted, a new one is bound to edge-gpu-2.
    tw.set_pods({(NS, "chat-b"): ((NS, "chat"), "edge-gpu-2")})
    tw.advance(120.0)
    assert real[g1].served == before[0]
    assert real[g2].served > 20
    fams, _ = families(tw)
    pods = {s.labels["pod"] for s in fams[names.VLLM_SUCCESS.removesuffix("_total")].samples}
    assert pods == {"chat-b"}
    # Two pods share the service's load.
    tw.set_pods(
        {(NS, "chat-b"): ((NS, "chat"), "edge-gpu-2"), (NS, "chat-c"): ((NS, "chat"), "edge-gpu-1")}
    )
    mid = (real[g1].served, real[g2].served)
    tw.advance(240.0)
    assert real[g1].served - mid[0] > 20 and real[g2].served - mid[1] > 20
    # No pod, no requests: the service's arrivals stop (in every fleet).
    tw.set_pods({})
    tw.advance(300.0)
    served = {f: sum(s.served for s in tw.fleets[f].states) for f in tw.fleets}
    tw.advance(400.0)
    assert served == {f: sum(s.served for s in tw.fleets[f].states) for f in tw.fleets}
    # ... and the idle energy of the pause is set aside, not charged to later requests
    # (fleets still working off a backlog, like round-robin's Xeon, keep attributing it).
    idle = [ACTUAL, "cloud-only"]
    energy = {f: tw.stats[f][(NS, "chat")].energy_j for f in idle}
    assert all(tw.unattributed_j[f] > 0 for f in idle)
    tw.advance(500.0)
    assert energy == {f: tw.stats[f][(NS, "chat")].energy_j for f in idle}


def test_a_pod_rescheduled_under_its_name_starts_afresh_without_its_old_requests() -> None:
    """The requests a pod had in flight on its old node completed into the new pod of the
    same name (completions were looked up by name): the new pod's counters, from zero,
    counted requests it never served, on another node."""
    tw = demo_twin({"chat-0": ("chat", "edge-gpu-1")})
    key = (NS, "chat-0")
    for k in range(20, 200):  # a slot whose second sees old requests complete
        tw.advance(k + 1e-6)  # (this slot's requests are placed: none more until k + 1)
        old = tw.pods[key]
        if any(d.finish < k + 0.999 and d.server >= 0 for d in tw.pending if d.fleet == ACTUAL):
            break
    before = old.success
    tw.set_pods({key: ((NS, "chat"), "cloud")})  # deleted and re-created on the cloud node
    new = tw.pods[key]
    assert new is not old and new.success == 0
    tw.advance(k + 0.999)
    assert old.success > before  # its requests completed (on edge-gpu-1) ...
    assert new.success == new.count == 0 and new.prompt_tokens == 0  # ... not into the new pod
    fams, _ = families(tw)
    ok = {s.labels["pod"]: s.value for s in fams[names.VLLM_SUCCESS.removesuffix("_total")].samples}
    assert ok == {"chat-0": 0.0}


def test_pod_on_a_node_that_cannot_run_the_service_fails_its_requests() -> None:
    tw = demo_twin({"assistant-0": ("assistant", "edge-gpu-1")})  # Yi-34B: cloud only
    tw.advance(300.0)
    c = tw.stats[ACTUAL][(NS, "assistant")]
    assert c.requests > 0 and c.met == 0 and tw.unplaceable == c.requests
    assert tw.stats["cloud-only"][(NS, "assistant")].met == c.requests


# -- the metric contract -----------------------------------------------------------------
def test_exposition_names_labels_and_units_parse() -> None:
    tw = demo_twin(
        {
            "chat-0": ("chat", "edge-gpu-1"),
            "vision-0": ("vision", "edge-gpu-2"),
            "assistant-0": ("assistant", "cloud"),
        }
    )
    tw.advance(180.0)
    fams, text = families(tw)
    gpu_nodes = {"edge-gpu-1", "edge-gpu-2", "cloud"}
    # DCGM: W and mJ, host label Hostname, only GPU nodes; energy declared counter, no _total.
    power = fams[names.DCGM_POWER_W]
    assert power.type == "gauge"
    assert {s.labels["Hostname"] for s in power.samples} == gpu_nodes
    for s in power.samples:
        assert {"gpu", "UUID", "modelName", "Hostname"} <= set(s.labels)
        hw = tw.hardware[tw.server_list[tw.node_index[s.labels["Hostname"]]][1].hardware]
        assert hw.power_idle_w <= s.value <= (hw.power_prefill_w or 0) + 1e-9
    assert f"# TYPE {names.DCGM_ENERGY_MJ} counter" in text
    assert f"{names.DCGM_ENERGY_MJ}_total" not in text
    energy = {s.labels["Hostname"]: s.value for s in fams[names.DCGM_ENERGY_MJ].samples}
    cloud = tw.node_index["cloud"]
    assert energy["cloud"] == pytest.approx(tw.node_energy_j[cloud] * 1000.0)
    assert energy["cloud"] >= 63.0 * 180.0 * 1000.0  # at least idle power, in mJ
    # CPU node: RAPL-style W and J with node/package.
    cpu = fams[names.CPU_ENERGY_J.removesuffix("_total")]
    assert [s.labels["node"] for s in cpu.samples] == ["edge-cpu"]
    assert cpu.samples[0].value == pytest.approx(60.0 * 180.0)  # idle all along
    # Bandwidth: bit/s per node within the link's noise band.
    bw = {s.labels["node"]: s.value for s in fams[names.PATH_BANDWIDTH_BPS].samples}
    assert set(bw) == gpu_nodes | {"edge-cpu"}
    assert 240e6 <= bw["cloud"] <= 360e6 and 80e6 <= bw["edge-gpu-1"] <= 120e6
    # vLLM: histogram with vLLM's buckets, counters with _total on the wire.
    hist = fams[names.VLLM_E2E_LATENCY]
    assert hist.type == "histogram"
    les = sorted({float(s.labels["le"]) for s in hist.samples if s.name.endswith("_bucket")})
    assert les == sorted([*names.VLLM_LATENCY_BUCKETS, float("inf")])
    for s in hist.samples:
        assert {"namespace", "pod", "model_name", "engine"} <= set(s.labels)
    models = {s.labels["pod"]: s.labels["model_name"] for s in hist.samples}
    assert models == {"chat-0": "llama3-8b", "vision-0": "llama3-8b", "assistant-0": "yi-34b"}
    # vLLM V1's labels (INTERFACES §3.4): the engine on every series, why it ended on success.
    ok = 'engine="0",finished_reason="stop",model_name="llama3-8b",namespace="demo",pod="chat-0"'
    assert f"{names.VLLM_SUCCESS}{{{ok}}}" in text
    for g in (names.VLLM_RUNNING, names.VLLM_WAITING):
        assert {s.labels["pod"] for s in fams[g].samples} == set(models)
    # Service and counterfactual counters, and their consistency with the histogram.
    req = {
        s.labels["service"]: s.value
        for s in fams["perllm_service_requests"].samples
        if s.name == names.SERVICE_REQUESTS
    }
    count = {
        s.labels["pod"]: s.value
        for s in hist.samples
        if s.name == f"{names.VLLM_E2E_LATENCY}_count"
    }
    assert req["chat"] == count["chat-0"] > 50
    arrivals = {
        s.labels["service"]: s.value
        for s in fams["perllm_twin_arrivals"].samples
        if s.name == "perllm_twin_arrivals_total"
    }
    assert arrivals["chat"] >= req["chat"]
    assert names.SERVICE_ENERGY_J in text and names.SERVICE_DEADLINE_MET in text
    cf = fams[names.COUNTERFACTUAL_ENERGY_J.removesuffix("_total")]
    assert {s.labels["policy"] for s in cf.samples} == {"cloud-only", "edge-only", "round-robin"}
    assert all(set(s.labels) == {"policy", "namespace", "service"} for s in cf.samples)
    for n in (names.COUNTERFACTUAL_REQUESTS, names.COUNTERFACTUAL_DEADLINE_MET):
        assert f'{n}{{namespace="demo",policy="cloud-only",service="chat"}}' in text


def test_http_endpoint_serves_metrics_and_health() -> None:
    tw = demo_twin({"chat-0": ("chat", "edge-gpu-1")})
    tw.advance(30.0)
    healthy = {"ok": True}
    srv = make_http_server(
        "127.0.0.1", 0, registry_for(tw, threading.Lock()), lambda: healthy["ok"]
    )
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as r:
            assert r.status == 200
            assert names.VLLM_E2E_LATENCY.encode() in r.read()
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as r:
            assert r.status == 200
        healthy["ok"] = False
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{base}/healthz", timeout=5)
        assert e.value.code == 503
    finally:
        srv.shutdown()
        srv.server_close()


# -- reading the cluster -----------------------------------------------------------------
def _llmservice(name: str, model: str = "llama3-8b", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "model": {
                "name": model,
                "variants": [
                    {"tier": "edge", "precision": "q4_k_m"},
                    {"tier": "cloud", "precision": "fp16"},
                ],
            },
            "requirements": {"deadline": {"seconds": 2.0}},
            "traffic": {"rateRps": 0.5},
            **spec,
        },
    }


def _pod(
    name: str,
    svc: str,
    node: str | None,
    deleting: bool = False,
    phase: str = "Running",
    deployment: str | None = None,
) -> dict[str, Any]:
    """A pod of `svc` as the API lists it: made by the ReplicaSet of its child Deployment
    (KServe's `<svc>-predictor` by default), or of `deployment` ("": a bare pod)."""
    dep = f"{svc}-predictor" if deployment is None else deployment
    meta: dict[str, Any] = {
        "name": name,
        "namespace": NS,
        "labels": {"perllm.io/service": svc, "pod-template-hash": "5d8f7"},
    }
    if dep:
        rs = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"{dep}-5d8f7"}
        meta["ownerReferences"] = [{**rs, "controller": True}]
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "spec": {"nodeName": node}, "status": {"phase": phase}}


class FakeApi:
    def __init__(
        self,
        objs: list[dict[str, Any]],
        pods: list[dict[str, Any]],
        nodes: list[str],
        fail: bool = False,
    ) -> None:
        self.objs, self.pods, self.fail = objs, pods, fail
        self.nodes = [SimpleNamespace(metadata=SimpleNamespace(name=n)) for n in nodes]

    def list_cluster_custom_object(self, *a: Any, **k: Any) -> dict[str, Any]:
        if self.fail:
            raise ConnectionError("connection refused")
        return {"items": self.objs}

    def list_pod_for_all_namespaces(self, **k: Any) -> SimpleNamespace:
        assert k.get("_preload_content") is False  # (JSON, as the pods are read)
        return SimpleNamespace(data=json.dumps({"items": self.pods}).encode())

    def list_node(self, **k: Any) -> SimpleNamespace:
        return SimpleNamespace(items=self.nodes)


def test_cluster_reader_keeps_bound_live_pods_of_known_services() -> None:
    sc = load_scenario("demo")
    objs = [
        _llmservice("chat"),
        _llmservice("bad", model="no-such-model"),
        {
            "metadata": {"name": "broken", "namespace": NS},
            "spec": {"model": {"name": "llama3-8b"}, "requirements": {}},
        },
    ]
    pods = [
        _pod("chat-1", "chat", "edge-gpu-1"),
        _pod("chat-2", "chat", None),
        _pod("chat-3", "chat", "edge-gpu-2", deleting=True),
        _pod("chat-4", "chat", "edge-gpu-2", phase="Succeeded"),
        _pod("chat-5", "chat", "not-in-scenario"),
        _pod("bad-1", "bad", "cloud"),
    ]
    api = FakeApi(objs, pods, ["edge-gpu-1", "edge-gpu-2", "edge-cpu", "cloud", "extra"])
    reader = ClusterReader(sc, api, api)
    view = reader.read()
    assert view is not None and reader.healthy
    assert set(view.services) == {(NS, "chat")}
    assert view.pods == {(NS, "chat-1"): ((NS, "chat"), "edge-gpu-1")}
    api.fail = True
    assert reader.read() is None and not reader.healthy


def test_a_pod_on_a_node_deleted_from_the_cluster_gets_no_requests() -> None:
    """Its node gone (until the pod GC deletes the pod, or for ever without one), the pod
    stayed bound and Running in the API: the twin kept sending its service's requests to a
    model server that no longer runs."""
    sc = load_scenario("demo")
    pods = [_pod("chat-1", "chat", "edge-gpu-1"), _pod("chat-2", "chat", "edge-gpu-2")]
    api = FakeApi([_llmservice("chat")], pods, ["edge-gpu-1", "edge-gpu-2", "cloud"])
    reader = ClusterReader(sc, api, api)
    view = reader.read()
    assert view is not None and set(view.pods) == {(NS, "chat-1"), (NS, "chat-2")}
    api.nodes = [n for n in api.nodes if n.metadata.name != "edge-gpu-2"]
    view = reader.read()
    assert view is not None and set(view.pods) == {(NS, "chat-1")}


def test_a_pod_only_labelled_as_a_services_is_not_simulated(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The twin took a service's pods by label: a hand-made pod (or a copy of a child
    under another name) carrying `perllm.io/service: chat` was simulated as one of its
    replicas, where the operator and the router count only the pods its children made
    (`service_pods`)."""
    sc = load_scenario("demo")
    pods = [
        _pod("chat-1", "chat", "edge-gpu-1"),
        _pod("copy-1", "chat", "edge-gpu-2", deployment="chat-copy-predictor"),
        _pod("bare", "chat", "cloud", deployment=""),
        # a pod of a child since deleted (a tier scaled to 0), terminating: not reported
        _pod("old-1", "chat", "cloud", deleting=True, deployment="chat-cloud-predictor"),
    ]
    api = FakeApi([_llmservice("chat")], pods, ["edge-gpu-1", "edge-gpu-2", "cloud"])
    reader = ClusterReader(sc, api, api)
    for _ in range(2):  # (said once)
        view = reader.read()
        assert view is not None and view.pods == {(NS, "chat-1"): ((NS, "chat"), "edge-gpu-1")}
    said = [r.getMessage() for r in caplog.records if "no child" in r.getMessage()]
    assert sorted(said) == [
        f"pod {NS}/{p} is labelled perllm.io/service=chat but no child of that LLMService "
        "made it: not simulated"
        for p in ("bare", "copy-1")
    ]
    backend = _llmservice("chat", backend="deployment")  # its pods: Deployment `chat`'s
    api.objs, api.pods = [backend], [_pod("chat-1", "chat", "edge-gpu-1", deployment="chat")]
    view = reader.read()
    assert view is not None and set(view.pods) == {(NS, "chat-1")}


def test_cli_rejects_a_bad_scenario_with_the_loaders_message(tmp_path: Any) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["twin", "--scenario", "no-such-scenario"])
    assert res.exit_code == 2
    assert "no such file or built-in scenario" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nservers: []\nworkload: {arrivals: {kind: poisson}}\n")
    res = runner.invoke(app, ["twin", "--scenario", str(bad)])
    assert res.exit_code == 2
    assert "servers" in res.output


def test_a_late_request_counts_as_missed_when_its_deadline_passes() -> None:
    # One Xeon socket cannot keep up with chat: its queue grows without bound.
    tw = demo_twin({"chat-0": ("chat", "edge-cpu")})
    tw.advance(600.0)
    c = tw.stats[ACTUAL][(NS, "chat")]
    pod = tw.pods[(NS, "chat-0")]
    assert pod.success < 0.2 * c.requests  # few have completed ...
    assert c.requests > 0.8 * tw.arrivals[(NS, "chat")]  # ... but nearly all are judged
    assert c.met < 0.2 * c.requests


def test_a_request_that_cannot_start_by_its_deadline_is_dropped_as_in_the_world() -> None:
    """The scenario's admission (`reject-late`, the default) held in the simulator only:
    the twin queued every request, so the Xeon's backlog grew without bound (its queue
    ran hours ahead of the clock) and the twin's numbers were not the world model's."""
    tw = demo_twin({"chat-0": ("chat", "edge-cpu")})
    tw.advance(600.0)
    xeon = tw.fleets[ACTUAL].states[tw.node_index["edge-cpu"]]
    spec = tw.services[(NS, "chat")]
    longest = spec.requirements.deadline.budget(tw.sc.catalogue.models[spec.model].context)
    assert xeon.last_start <= tw.now + longest  # nothing admitted to start past its deadline
    arrived = tw.arrivals[(NS, "chat")]
    assert 0 < xeon.served < arrived  # the rest were dropped ...
    c = tw.stats[ACTUAL][(NS, "chat")]
    assert c.met < 0.2 * c.requests  # ... as misses, not completions of the model server
    assert tw.pods[(NS, "chat-0")].success <= xeon.served


def test_serve_runs_the_scaled_clock_and_stops_cleanly() -> None:
    from perllm.twin.server import serve

    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    tw = serve(load_scenario("demo"), None, "127.0.0.1", 0, speed=50.0, stop=stop)
    assert stop.is_set()
    assert tw.now > 0.0  # the simulated clock ran (its rate is not asserted: timing)


class _AbsurdReader:
    """A cluster whose one service declares a rate no model server could see (built past
    the contract's validation, as a stale or hand-made object would be)."""

    healthy = True

    def __init__(self) -> None:
        sc = load_scenario("demo")
        spec = sc.services()[0]
        absurd = spec.model_copy(
            update={"traffic": spec.traffic.model_copy(update={"rate_rps": 1e6})}
        )
        self.view = ClusterView(
            services={(NS, spec.name): absurd},
            pods={(NS, "p-0"): ((NS, spec.name), "edge-cpu")},
        )

    def read(self) -> ClusterView:
        return self.view


def test_an_absurd_rate_is_capped_and_metrics_keep_answering() -> None:
    from perllm.twin import server

    stop = threading.Event()
    port = free_port()
    done: list[Twin] = []
    th = threading.Thread(
        target=lambda: done.append(
            server.serve(
                load_scenario("demo"),
                _AbsurdReader(),
                "127.0.0.1",
                port,
                speed=20.0,
                stop=stop,
                poll_s=0.1,
                max_requests_per_slot=200,
            )
        )
    )
    th.start()
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        for _ in range(300):  # until it listens and the absurd service draws requests
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if "perllm_twin_dropped_requests_total{" in r.read().decode():
                        break
            except OSError:
                pass
            time.sleep(0.1)
        bodies = []
        for _ in range(5):
            time.sleep(0.3)
            # Prometheus's contract, not a speed benchmark: a scrape is answered within 1 s
            # because the clock releases the lock between ticks of at most 0.1 s of work.
            with urllib.request.urlopen(url, timeout=1) as r:
                bodies.append(r.read().decode())
    finally:
        stop.set()
        th.join(30)
    assert not th.is_alive()
    tw = done[0]
    assert sum(tw.dropped.values()) > 0  # the cap held: most of the absurd rate dropped
    svc = next(iter(_AbsurdReader().view.services))
    assert tw.arrivals[svc] <= 200 * tw.next_slot  # never more than the cap per slot
    assert "perllm_twin_dropped_requests_total" in bodies[-1]


@pytest.mark.parametrize("value", ["inf", "1e300", "nan"])
def test_cli_refuses_a_poll_interval_a_thread_cannot_wait(value: str) -> None:
    """`inf` passed typer's min=0.1; the cluster-reading thread's stop.wait(inf) then
    raised OverflowError and the twin served a fleet it never read again."""
    res = CliRunner().invoke(app, ["twin", "--scenario", "demo", "--poll-interval", value])
    assert res.exit_code == 2 and "--poll-interval" in res.output, res.output
