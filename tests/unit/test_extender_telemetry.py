"""The extender's telemetry: background snapshot, priors, staleness, and its use in decisions."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from perllm_extender import ExtenderConfig, create_app
from perllm_extender.decide import Scheduler
from perllm_extender.telemetry import Snapshot, Telemetry
from test_extender_fakes import (
    NAMES,
    NODES,
    StubProm,
    args,
    fake_prometheus,
    pod,
    spec,
    vector,
)

from perllm.profiles import default_catalogue
from perllm.telemetry import names
from perllm.telemetry.prom import PromAccess

CAT = default_catalogue()
TIGHT_VISION = spec("vision", 3.0, payload=2e6, output=32, prompt=128)


def scheduler(prom: StubProm | None = None) -> tuple[Scheduler, Telemetry]:
    s = Scheduler(CAT)
    for n in NODES:
        s.nodes.upsert(n)
    s.services.add(TIGHT_VISION)  # its traffic (a 2 MB payload) is not in pod annotations
    tel = Telemetry(prom, pod_node=s.pods.node_of)
    s.telemetry = tel
    return s, tel


def stub_with_cluster_metrics() -> StubProm:
    p = StubProm()
    p.set(names.PATH_BANDWIDTH_BPS, [({"node": "cloud"}, 50e6), ({"node": "edge-1"}, 80e6)])
    p.set(names.DCGM_POWER_W, [({"Hostname": "cloud"}, 250.0), ({"hostname": "gpu-2"}, 90.0)])
    p.set(names.CPU_POWER_W, [({"node": "edge-1"}, 120.0)])
    p.set(
        names.VLLM_RUNNING,
        [
            ({"namespace": "llm", "pod": "a"}, 3.0),
            ({"namespace": "llm", "pod": "b"}, 2.0),
            ({"namespace": "llm", "pod": "stray"}, 7.0),
        ],
    )
    p.set(names.VLLM_WAITING, [({"namespace": "llm", "pod": "a"}, 1.0)])
    p.set(f"{names.VLLM_E2E_LATENCY}_sum", [({"namespace": "llm", "pod": "a"}, 0.8)])
    return p


def test_refresh_fills_the_snapshot_and_sums_pod_load_per_node() -> None:
    s, tel = scheduler(stub_with_cluster_metrics())
    s.pods.upsert(pod(TIGHT_VISION, name="a", uid="ua", node="cloud"))
    s.pods.upsert(pod(TIGHT_VISION, name="b", uid="ub", node="cloud"))
    snap = tel.refresh()
    assert snap.bandwidth_mbps == {"cloud": 50.0, "edge-1": 80.0}
    assert snap.gpu_power_w == {"cloud": 250.0, "gpu-2": 90.0}  # both host label spellings
    assert snap.cpu_power_w == {"edge-1": 120.0}
    assert snap.running == {"llm/a": 3.0, "llm/b": 2.0, "llm/stray": 7.0}
    assert snap.node_running == {"cloud": 5.0}  # the stray pod is on no known node
    assert snap.node_waiting == {"cloud": 1.0}
    assert snap.latency_s == {"llm/a": 0.8}
    assert tel.degraded() is None and tel.staleness_s() < 60


def test_decisions_use_snapshot_bandwidth_and_load() -> None:
    s, tel = scheduler(stub_with_cluster_metrics())
    s.pods.upsert(pod(TIGHT_VISION, name="a", uid="ua", node="cloud"))
    d0 = s.decide(pod(TIGHT_VISION, uid="u0"), None, NAMES, "filter")
    tel.refresh()
    d1 = s.decide(pod(TIGHT_VISION, uid="u1"), None, NAMES, "filter")

    def cloud_time(d: object) -> float:
        expl = d.explanation  # type: ignore[attr-defined]
        return float(
            next(c["predicted_time_s"] for c in expl["candidates"] if c["node"] == "cloud")
        )

    # 300 -> 50 Mbit/s and 4 requests in flight: the cloud's prediction grows
    assert cloud_time(d1) > cloud_time(d0)


def test_unknown_and_stale_values_fall_back_to_priors() -> None:
    s, tel = scheduler()
    nominal = s.decide(pod(TIGHT_VISION, uid="n"), None, NAMES, "filter")
    # a series for another node only: cloud keeps its annotation's 300 Mbit/s
    tel.snapshot = Snapshot(bandwidth_mbps={"edge-1": 1.0}, at={"bandwidth": time.time()})
    other = s.decide(pod(TIGHT_VISION, uid="o"), None, NAMES, "filter")
    # cloud at 1 Mbit/s, but measured two minutes ago: ignored
    tel.snapshot = Snapshot(bandwidth_mbps={"cloud": 1.0}, at={"bandwidth": time.time() - 120})
    stale = s.decide(pod(TIGHT_VISION, uid="s"), None, NAMES, "filter")
    for d in (nominal, other, stale):
        assert d.chosen == "cloud" and d.feasible


def test_lowered_bandwidth_moves_a_tight_deadline_pod_away() -> None:
    s, tel = scheduler()
    assert s.decide(pod(TIGHT_VISION, uid="a"), None, NAMES, "filter").chosen == "cloud"
    tel.snapshot = Snapshot(bandwidth_mbps={"cloud": 1.0}, at={"bandwidth": time.time()})
    d = s.decide(pod(TIGHT_VISION, uid="b"), None, NAMES, "filter")
    assert d.chosen != "cloud"
    assert d.failed["cloud"].startswith("deadline")


@settings(max_examples=40, deadline=None)
@given(bw=st.floats(0.05, 1000.0), deadline=st.floats(1.0, 30.0))
def test_property_chosen_node_meets_the_deadline_at_its_measured_bandwidth(
    bw: float, deadline: float
) -> None:
    """With the cloud's bandwidth lowered to `bw`: the cloud is chosen only if it can still
    meet the deadline there (or nothing can), and its prediction never improves."""
    s, tel = scheduler()
    svc = spec("vision", deadline, payload=2e6, output=32, prompt=128)
    s.services.add(svc)
    base = s.decide(pod(svc, uid="base"), None, NAMES, "filter")
    tel.snapshot = Snapshot(bandwidth_mbps={"cloud": bw}, at={"bandwidth": time.time()})
    d = s.decide(pod(svc, uid="low"), None, NAMES, "filter")
    assert d.explanation is not None and base.explanation is not None
    cands = {c["node"]: c for c in d.explanation["candidates"]}
    if d.feasible:
        assert cands[d.chosen]["feasible"]
        if d.chosen == "cloud":
            assert cands["cloud"]["pessimistic_time_s"] <= deadline + 1e-9
    if not cands["cloud"]["feasible"] and any(c["feasible"] for c in cands.values()):
        assert d.chosen != "cloud"
    before = next(c for c in base.explanation["candidates"] if c["node"] == "cloud")
    if bw <= 300.0:
        assert cands["cloud"]["predicted_time_s"] >= before["predicted_time_s"] - 1e-9


def test_decisions_never_wait_for_prometheus() -> None:
    """A refresh stuck inside Prometheus does not hold up a decision."""
    prom = StubProm()
    inside, release = threading.Event(), threading.Event()

    def block(_q: str) -> None:
        inside.set()
        release.wait(30)

    prom.hook = block
    s, tel = scheduler(prom)
    t = threading.Thread(target=tel.refresh, daemon=True)
    t.start()
    assert inside.wait(10)
    d = s.decide(pod(TIGHT_VISION, uid="x"), None, NAMES, "filter")
    assert d.chosen == "cloud" and not release.is_set()  # decided while the query hangs
    release.set()
    t.join(10)


def test_real_client_against_a_local_prometheus() -> None:
    def results(q: str) -> list[dict[str, object]]:
        if q == names.bandwidth_by_node():
            return [vector({"node": "cloud"}, 2e6)]
        return []

    with fake_prometheus(results) as (url, seen):
        c = TestClient(create_app(ExtenderConfig(prometheus_access=PromAccess(url))))
        sched: Scheduler = c.app.state.scheduler  # type: ignore[attr-defined]
        for n in NODES:
            sched.nodes.upsert(n)
        sched.services.add(TIGHT_VISION)
        snap = c.post("/telemetry/refresh").json()
        assert snap["nodes"]["cloud"]["bandwidth_mbps"] == 2.0
        assert snap["degraded"] is None and snap["staleness_s"] is not None
        assert names.bandwidth_by_node() in seen
        ready = c.get("/readyz").json()
        assert ready["status"] == "ready" and ready["telemetry"] == "ok"
        d = c.post("/scheduler/filter", json=args(pod(TIGHT_VISION, uid="r"))).json()
        assert "cloud" in d["FailedNodes"]  # 2 Mbit/s cannot move 2 MB in 3 s
    # Prometheus gone: last-good values are kept, staleness grows, still ready
    c.post("/telemetry/refresh")
    ready = c.get("/readyz").json()
    assert ready["status"] == "ready" and ready["degraded"] is True
    assert "queries failed" in ready["reason"]
    m = c.get("/metrics").text
    assert "perllm_extender_telemetry_staleness_seconds" in m


def test_no_prometheus_is_ready_but_degraded() -> None:
    c = TestClient(create_app())
    r = c.get("/readyz")
    assert r.status_code == 200
    body = r.json()
    assert body["telemetry"] == "degraded" and "no Prometheus" in body["reason"]
    assert "perllm_extender_telemetry_staleness_seconds +Inf" in c.get("/metrics").text


def test_background_refresher_runs_in_the_lifespan() -> None:
    prom = stub_with_cluster_metrics()
    app = create_app(ExtenderConfig(prometheus=prom, telemetry_interval_s=0.05))
    with TestClient(app) as c:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and c.get("/telemetry").json()["refreshes"] < 2:
            time.sleep(0.02)
        assert c.get("/telemetry").json()["refreshes"] >= 2
    n = len(prom.calls)
    time.sleep(0.2)
    assert len(prom.calls) == n  # stopped with the app


def test_a_wall_clock_set_back_does_not_pass_old_telemetry_as_fresh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """NTP stepping the clock back an hour while Prometheus is down: staleness read 0 and
    the last bandwidth stayed 'usable' for that hour (its time was ahead of the clock)."""
    prom = stub_with_cluster_metrics()
    s, tel = scheduler(prom)
    tel.max_age_s = 0.2
    tel.refresh()
    assert tel.snapshot.usable("bandwidth", tel.max_age_s)
    prom.down = True
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 3600.0)
    time.sleep(0.3)
    tel.refresh()
    assert tel.staleness_s() >= 0.3
    assert "telemetry stale" in (tel.degraded() or "")
    assert not tel.snapshot.usable("bandwidth", tel.max_age_s)
    prior = s.decide(pod(TIGHT_VISION, uid="p"), None, NAMES, "filter")
    cloud = next(c for c in prior.explanation["candidates"] if c["node"] == "cloud")
    fresh_prom = stub_with_cluster_metrics()  # measured 50 Mbit/s vs the 300 prior
    s2, tel2 = scheduler(fresh_prom)
    tel2.refresh()
    measured = s2.decide(pod(TIGHT_VISION, uid="q"), None, NAMES, "filter")
    cloud2 = next(c for c in measured.explanation["candidates"] if c["node"] == "cloud")
    assert cloud["predicted_time_s"] < cloud2["predicted_time_s"]  # on the prior again
