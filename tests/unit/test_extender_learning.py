"""The extender's learning loop: placements, observations, CS-UCB updates, shared arms."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from perllm_extender import ExtenderConfig, create_app
from perllm_extender.bandits import service_key
from perllm_extender.decide import Scheduler
from perllm_extender.live import Live
from test_extender_fakes import EDGES, NAMES, NODES, StubProm, args, pod, spec

from perllm.csucb import CSUCB
from perllm.telemetry import names, queries

LOOSE = spec("batch", 600.0)


def app_with(prom: StubProm) -> tuple[TestClient, Live]:
    c = TestClient(create_app(ExtenderConfig(prometheus=prom)))
    live: Live = c.app.state.live  # type: ignore[attr-defined]
    for n in NODES:
        live.scheduler.nodes.upsert(n)
    live.scheduler.services.add(LOOSE)
    return c, live


def bandit_for(sched: Scheduler, names_: list[str]) -> CSUCB:
    from perllm_extender.nodes import to_server

    servers = [to_server(n, sched.catalogue) for n in NODES if n["metadata"]["name"] in names_]
    return sched.bandit(LOOSE, servers, service_key("llm", LOOSE))  # type: ignore[arg-type]


Q = queries.learning("1m")


def observed(
    prom: StubProm,
    pods: dict[str, float],
    energy: float | None = None,
    tokens: float | None = None,
    rate: float = 1.0,
) -> None:
    """Canned answers of the learning queries: mean latency per pod, `rate` requests/s
    each, optional output tokens and energy per request."""
    labels = [{"namespace": "llm", "pod": p} for p in pods]
    prom.exact(Q["latency"], [(lb, v) for lb, v in zip(labels, pods.values(), strict=True)])
    prom.exact(Q["rate"], [(lb, rate) for lb in labels])
    if tokens is not None:
        prom.exact(Q["tokens"], [(lb, tokens) for lb in labels])
    if energy is not None:
        prom.exact(Q["energy"], [({"namespace": "llm", "service": "batch"}, energy)])


def test_learning_updates_the_arm_of_the_placed_pool() -> None:
    prom = StubProm()
    c, live = app_with(prom)
    body = c.post("/scheduler/filter", json=args(pod(LOOSE, name="a", uid="ua"))).json()
    chosen = live.scheduler.log[-1]["chosen"]
    assert chosen in body["NodeNames"]
    expl = live.scheduler.log[-1]["explanation"]
    cand = next(x for x in expl["candidates"] if x["node"] == chosen)
    pred = cand["predicted_time_s"]  # at the expected 128 output tokens
    assert cand["predicted_fixed_s"] + 128 * cand["predicted_per_token_s"] == pytest.approx(pred)
    observed(prom, {"a": 3.0 * pred}, energy=42.0, tokens=100.0)
    obs = live.learner.observe()
    assert len(obs) == 1
    o = obs[0]
    # compared with the decision's prediction at the 100 tokens the pod really produced
    at_100 = cand["predicted_fixed_s"] + 100 * cand["predicted_per_token_s"]
    assert o.time_s == pytest.approx(3.0 * pred) and o.predicted_s == pytest.approx(at_100)
    assert o.predicted_s < pred
    assert o.energy_j == 42.0 and o.energy_source == "service" and o.l_out == 100.0
    assert o.deadline_s == 600.0
    r = c.post("/learn").json()
    assert r == {"updated": 1, "tracked": 1}
    b = bandit_for(live.scheduler, NAMES)
    pool = b.pool_names.index(b.t.pools[b.t.server_names.index(chosen)])
    assert b.n[0, pool] == pytest.approx(1.0)  # observe() alone applies nothing
    mu, _ = b.ratio_posterior()
    assert mu[0, pool] > 1.0  # slower than predicted: the arm's time ratio rose
    assert "perllm_extender_learning_updates_total 1.0" in c.get("/metrics").text


def test_energy_falls_back_to_node_power_then_to_the_prediction() -> None:
    prom = StubProm()
    c, live = app_with(prom)
    c.post("/scheduler/filter", json=args(pod(LOOSE, name="a", uid="ua")))
    chosen = live.scheduler.log[-1]["chosen"]
    expl = live.scheduler.log[-1]["explanation"]
    pred_e = next(x["predicted_energy_j"] for x in expl["candidates"] if x["node"] == chosen)
    observed(prom, {"a": 2.0})
    (o,) = live.learner.observe()
    assert o.energy_source == "predicted" and o.energy_j == pytest.approx(pred_e)
    label = "Hostname" if chosen == "cloud" else "node"
    metric = names.DCGM_POWER_W if chosen == "cloud" else names.CPU_POWER_W
    prom.set(metric, [({label: chosen}, 100.0)])
    live.telemetry.refresh()
    (o,) = live.learner.observe()
    assert o.energy_source == "node-power" and o.energy_j == pytest.approx(200.0)
    # node power last read an hour ago (Prometheus's power series gone since): not used
    import dataclasses

    snap = live.telemetry.snapshot
    live.telemetry.snapshot = dataclasses.replace(
        snap, at={k: v - 3600.0 for k, v in snap.at.items()}
    )
    (o,) = live.learner.observe()
    assert o.energy_source == "predicted" and o.energy_j == pytest.approx(pred_e)


def test_pods_without_requests_or_gone_are_not_learned() -> None:
    prom = StubProm()
    c, live = app_with(prom)
    c.post("/scheduler/filter", json=args(pod(LOOSE, name="a", uid="ua")))
    c.post("/scheduler/filter", json=args(pod(LOOSE, name="b", uid="ub")))
    assert live.learner.observe() == []  # nothing observed yet
    observed(prom, {"a": 1.0, "b": 1.0})
    prom.exact(
        Q["rate"],
        [({"namespace": "llm", "pod": "a"}, 1.0), ({"namespace": "llm", "pod": "b"}, 0.0)],
    )
    assert [o.placement.key for o in live.learner.observe()] == ["llm/a"]
    # the informer lists the pods: b is gone, a is bound elsewhere than decided
    other = next(n for n in NAMES if n != live.learner.tracked["llm/a"].node)
    live.scheduler.pods.replace([pod(LOOSE, name="a", uid="ua", node=other)])
    (o,) = live.learner.observe()
    assert set(live.learner.tracked) == {"llm/a"}
    assert o.placement.servers[o.server].name == other  # the binding wins
    live.scheduler.pods.replace([])
    assert live.learner.observe() == [] and live.learner.tracked == {}


def test_stale_answers_are_never_learned() -> None:
    prom = StubProm()
    c, live = app_with(prom)
    c.post("/scheduler/filter", json=args(pod(LOOSE, name="a", uid="ua")))
    observed(prom, {"a": 1.0})

    real = prom.query

    def stale(q: str) -> Any:
        a = real(q)
        return None if a is None else type(a)(a.samples, False, a.at)

    prom.query = stale  # type: ignore[method-assign]
    assert live.learner.observe() == []


def test_learning_is_shared_across_node_sets() -> None:
    """kube-scheduler's filters change the candidate set; what a service learned about a
    pool carries over to every CSUCB of that service."""
    c, live = app_with(StubProm())
    for i in range(3):
        c.post("/scheduler/filter", json=args(pod(LOOSE, name=f"p{i}", uid=f"u{i}")))
    full = bandit_for(live.scheduler, NAMES)
    sub = bandit_for(live.scheduler, [*EDGES[:2], "cloud"])
    assert full.plays.sum() == 3 and sub.plays.sum() == 3
    assert sub.total == full.total == 3
    c.post("/scheduler/filter", json=args(pod(LOOSE, name="p9", uid="u9"), [*EDGES[:2], "cloud"]))
    assert bandit_for(live.scheduler, NAMES).plays.sum() == 4


def test_repeated_slow_observations_move_placements() -> None:
    """An edge pool that keeps running far slower than predicted stops being feasible for
    a deadline it meets on paper."""
    prom = StubProm()
    c, live = app_with(prom)
    svc = spec("batch", 150.0)
    live.scheduler.services.add(svc)
    body = c.post("/scheduler/filter", json=args(pod(svc, name="a", uid="ua"), EDGES)).json()
    # on paper every edge node meets 150 s: all feasible, only the chosen one passes
    assert len(body["NodeNames"]) == 1
    assert all(v.startswith("feasible, not chosen") for v in body["FailedNodes"].values())
    expl = live.scheduler.log[-1]["explanation"]
    pred = float(np.mean([x["predicted_time_s"] for x in expl["candidates"]]))
    for i in range(12):
        key = f"s{i}"
        c.post("/scheduler/filter", json=args(pod(svc, name=key, uid=key), EDGES))
        observed(prom, {key: 6.0 * pred})
        c.post("/learn")
    body = c.post("/scheduler/filter", json=args(pod(svc, name="z", uid="uz"), EDGES)).json()
    assert len(body["FailedNodes"]) == len(EDGES) - 1  # nothing feasible: least violating
    assert all(v.startswith("deadline") for v in body["FailedNodes"].values())


def test_a_cpu_pods_energy_comes_from_kepler_before_node_power() -> None:
    """Kepler's package energy attributed to the pod, per request, is a CPU server's
    energy of an outcome (ahead of the node-power estimate); a GPU server ignores it."""
    prom = StubProm()
    c, live = app_with(prom)
    # "a" may run on the (Xeon) edge nodes only; "b" anywhere (CS-UCB puts it in the cloud)
    c.post("/scheduler/filter", json=args(pod(LOOSE, name="a", uid="ua"), EDGES))
    edge = live.scheduler.log[-1]["chosen"]
    c.post("/scheduler/filter", json=args(pod(LOOSE, name="b", uid="ub")))
    gpu = live.scheduler.log[-1]["chosen"]
    assert edge in EDGES and gpu == "cloud"
    observed(prom, {"a": 2.0, "b": 2.0})
    pods = [({"namespace": "llm", "pod": p}, 37.0) for p in ("a", "b")]
    prom.exact(Q["pod_energy"], pods)
    prom.set(names.CPU_POWER_W, [({"node": edge}, 100.0)])
    live.telemetry.refresh()
    got = {o.placement.key: o for o in live.learner.observe()}
    assert got["llm/a"].energy_source == "pod-cpu"
    assert got["llm/a"].energy_j == pytest.approx(37.0)
    assert got["llm/b"].energy_source == "predicted"  # a GPU's energy is not its host CPU's


@pytest.mark.parametrize("old", ["tracked", "forgotten"])
def test_a_pod_replaced_under_its_name_is_learned_from_its_own_window_only(old: str) -> None:
    """A StatefulSet pod replaced under its name (new uid) has the same (namespace, pod)
    series: for one window after its decision the mean blends the old pod's requests, on
    its old node, and was learned against the new placement's prediction."""
    prom = StubProm()
    c, live = app_with(prom)
    c.post("/scheduler/filter", json=args(pod(LOOSE, name="a", uid="old")))
    observed(prom, {"a": 1.0})
    assert len(live.learner.observe()) == 1
    if old == "forgotten":  # the informer saw the old pod go before the new one came
        live.scheduler.pods.replace([pod(LOOSE, name="a", uid="old")])
        live.scheduler.pods.replace([])
        assert live.learner.observe() == [] and live.learner.tracked == {}
    c.post("/scheduler/filter", json=args(pod(LOOSE, name="a", uid="new")))
    live.scheduler.pods.replace([pod(LOOSE, name="a", uid="new")])
    new = live.learner.tracked["llm/a"]
    assert new.uid == "new"
    assert live.learner.observe() == []  # the 1 m window still holds the old pod's series
    new.decided_at -= 61.0  # a whole window since the decision: the new pod's own
    (o,) = live.learner.observe()
    assert o.placement is new
    # a pod whose name was never used before is learned from at once (as above)
    c.post("/scheduler/filter", json=args(pod(LOOSE, name="b", uid="ub")))
    observed(prom, {"a": 1.0, "b": 1.0})
    live.scheduler.pods.replace([pod(LOOSE, name="a", uid="new"), pod(LOOSE, name="b", uid="ub")])
    assert {o.placement.key for o in live.learner.observe()} == {"llm/a", "llm/b"}


def test_a_window_that_is_no_prometheus_duration_is_refused_naming_the_field() -> None:
    from pydantic import ValidationError

    from perllm.telemetry.queries import window_seconds

    assert window_seconds("1m") == 60 and window_seconds("1h30m") == 5400
    for field in ("learn_window", "latency_window"):
        with pytest.raises(ValidationError, match=f"{field}\\n.*no positive Prometheus duration"):
            ExtenderConfig(**{field: "1.5m"})
