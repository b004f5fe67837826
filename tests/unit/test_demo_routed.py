"""The demo's routed phase: edge share per window of arrivals, the summary of the three
arms, the nodes of the replicas; and one short real-time run (marked slow) of the phase
itself: the router over twin replicas against each replica alone, the same requests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

import perllm.demo.run as run_mod
from perllm.burst import (
    CLOUD_ALONE,
    EDGE_ALONE,
    ROUTER,
    Arm,
    Burst,
    NoReplicaNodes,
    burst_scenario,
    cloud_share,
    phases,
    planned_requests,
    replica_nodes,
    shares,
    simulate_arm,
)
from perllm.demo.config import DemoConfig
from perllm.demo.observe import OURS, Counters, Sample
from perllm.demo.report import plot
from perllm.demo.routed import chat_edge, routed_nodes, routed_summary, run_routed
from perllm.demo.routed_view import progress_line, render_routed, routed_table
from perllm.load import Planned
from perllm.load_report import Outcome


def _o(at: float, tier: str = "", met: bool = True, status: int = 200) -> Outcome:
    return Outcome("chat", status, 1.0, 0.1, 10, met, tier=tier, at=at)


def _arm(name: str, outcomes: list[Outcome]) -> Arm:
    """An arm whose requests were placed and answered (a transport error: only answered)."""
    a = Arm(name, outcomes=outcomes)
    a.decided = [(o.at, o.tier or a.own_tier) for o in outcomes if o.status == 200]
    return a


def _router() -> Arm:
    return _arm(
        ROUTER,
        [
            _o(1, "edge"),
            _o(2, "edge"),
            _o(4, "cloud", met=False),
            _o(6, "edge"),
            _o(7, "cloud"),
            _o(8, "cloud"),
            _o(9, "edge", status=0, met=False),  # a transport error: never placed
            _o(12, "edge"),
        ],
    )


def test_shares_per_window_of_arrival_times() -> None:
    w = shares(_router(), 5.0, 12.0)
    assert [x["t"] for x in w] == [[0, 5], [5, 10], [10, 12]]
    assert [x["n"] for x in w] == [3, 3, 0]  # 12 s is past `until`
    assert [x["answered"] for x in w] == [3, 4, 0]
    assert w[0]["edge"] == pytest.approx(2 / 3) and w[0]["cloud"] == pytest.approx(1 / 3)
    assert w[0]["attainment"] == pytest.approx(2 / 3)
    assert w[1]["edge"] == pytest.approx(1 / 3)
    assert w[1]["attainment"] == pytest.approx(3 / 4)  # the error counts as missed
    assert w[2]["edge"] is None and w[2]["attainment"] is None


def test_a_request_counts_where_it_went_before_it_is_answered() -> None:
    """The router's decision arrives with the response's start: the share does not wait
    for the (long) answers, so a window's share is not biased to the faster tier."""
    a = Arm(ROUTER)
    a.started(Planned(1.0, "chat", "chat", (10, 0, 10), 1.0, 0.1), {"tier": "edge", "backend": "x"})
    a.started(
        Planned(2.0, "chat", "chat", (10, 0, 10), 1.0, 0.1), {"tier": "cloud", "backend": "y"}
    )
    w = shares(a, 5.0, 5.0)[0]
    assert (w["n"], w["edge"], w["answered"], w["attainment"]) == (2, 0.5, 0, None)
    lone = Arm(EDGE_ALONE)
    lone.started(Planned(1.0, "chat", "chat", (10, 0, 10), 1.0, 0.1), {})  # no router: its own tier
    assert lone.decided == [(1.0, "edge")]


def test_cloud_share_before_during_and_after_a_burst() -> None:
    a = _router()
    assert cloud_share(a, 0, 5) == pytest.approx(1 / 3)
    assert cloud_share(a, 20, 30) is None
    ph = phases(a, Burst(15.0))  # burst from 5 to 10 s
    assert ph == {"before": pytest.approx(1 / 3), "burst": pytest.approx(2 / 3), "after": 0.0}


def test_a_lone_pod_serves_every_request_on_its_own_tier() -> None:
    edge = _arm(EDGE_ALONE, [_o(1), _o(2)])
    cloud = _arm(CLOUD_ALONE, [_o(1)])
    assert [x["edge"] for x in shares(edge, 5, 5)] == [1.0]
    assert cloud_share(cloud, 0, 5) == 1.0
    # in flight: sent but not answered yet, on the pod's tier
    assert edge.inflight(5) == {"edge": 3}
    assert cloud.inflight(1) == {"cloud": 0}
    assert edge.j_per_request is None  # no twin yet


def test_summary_holds_the_finished_arms_with_their_shares() -> None:
    arms = [_router(), _arm(EDGE_ALONE, [_o(1)]), Arm(CLOUD_ALONE)]
    for a, att in zip(arms, (1.0, 0.5, 1.0), strict=True):
        a.row = {"arm": a.name, "requests": 8, "ok": 7, "attainment": att, "j_per_request": 90.0,
                 "latency_s": {"p50": 1.0, "p99": 2.0}, "tiers": {}}  # fmt: skip
    arms[2].row = None  # not finished (interrupted): left out
    s = routed_summary(arms, Burst(15.0, 5.0), ("edge-gpu-2", "cloud"), 8, 5.0)
    assert list(s["arms"]) == [ROUTER, EDGE_ALONE]
    assert s["arms"][ROUTER]["cloud_share"]["burst"] == pytest.approx(2 / 3)
    assert s["arms"][EDGE_ALONE]["cloud_share"]["before"] == 0.0
    assert s["burst"] == {"factor": 5.0, "at_s": 5.0, "until_s": 10.0}
    assert s["nodes"] == {"edge": "edge-gpu-2", "cloud": "cloud"}
    assert [len(w) for w in s["windows"].values()] == [3, 3, 3]
    t = routed_table(s)
    assert t.row_count == 2
    text = _text(t)
    assert "per-pod placement (edge-gpu-2)" in text and "33.3 % / 66.7 % / 0.0 %" in text


def _text(r: object) -> str:
    c = Console(width=200, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    c.print(r)
    return c.export_text()


def test_live_view_and_progress_line() -> None:
    arms = [_router(), _arm(EDGE_ALONE, [_o(1)]), Arm(CLOUD_ALONE)]
    b = Burst(15.0)
    text = _text(render_routed(arms, 7.0, 7, 9, b, ("edge-gpu-1", "cloud"), 5.0))
    assert "IN THE BURST" in text and "7/9 sent" in text
    assert "x5 burst" in text  # the windows of the burst are marked
    assert "66.7 %" in text  # the first window's edge share
    line = progress_line(arms, 7.0, 7, b, 5.0)
    assert "edge pod alone 100.0 % met, in flight edge 6" in line
    assert "router edge share of 5-7 s 100.0 %" in line


def test_progress_line_uses_the_configured_share_window() -> None:
    """Not a fixed 5 s: the config's `share_window_s`, as the live view and demo.json."""
    arms = [_router(), Arm(EDGE_ALONE), Arm(CLOUD_ALONE)]
    line = progress_line(arms, 9.5, 7, Burst(15.0), 10.0)
    assert "router edge share of 0-10 s 50.0 %" in line  # 3 edge of the 6 placed in 0-10 s


def test_the_edge_replica_is_where_the_extender_put_chat() -> None:
    sc = burst_scenario(Burst(30.0))
    assert replica_nodes(sc) == ("edge-gpu-1", "cloud")
    assert replica_nodes(sc, "edge-gpu-2") == ("edge-gpu-2", "cloud")
    assert replica_nodes(sc, "cloud") == ("edge-gpu-1", "cloud")  # not an edge node
    assert chat_edge({"chat": {"tier": "edge", "chosen": "edge-gpu-2"}}) == "edge-gpu-2"
    assert chat_edge({"chat": {"tier": "cloud", "chosen": "cloud"}}) is None
    assert chat_edge({"chat": None}) is None


def test_the_plot_gets_a_panel_of_the_routed_phase(tmp_path: Path) -> None:
    samples = [
        Sample(t=t, counters={OURS: {"chat": Counters(10 * t, 9 * t, 100 * t)}}) for t in range(5)
    ]
    arms = [_router(), Arm(EDGE_ALONE), Arm(CLOUD_ALONE)]
    for a in arms:
        a.row = {"attainment": 1.0, "j_per_request": 90.0}
    routed = routed_summary(arms, Burst(15.0), ("edge-gpu-1", "cloud"), 8, 5.0)
    path = plot(samples, 1.0, tmp_path / "demo.png", "t", routed=routed)
    assert path is not None and path.stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_routed_phase_overflows_the_burst_to_the_cloud() -> None:
    """30 s of chat arrivals, ×5 from 10 to 20 s, in real time through the router and to
    each replica alone at once (~40 s with the answers). Measured (3 runs, identical): the
    router kept 100 % of deadlines where the edge pod alone kept 90.2 %, and sent 16.7 % of
    the requests before the burst to the cloud, 24.4 % of those during it (29.3 % since
    issue #13's fix, in simulated time: `simulate_arm`)."""
    cfg = DemoConfig(router_duration_s=30.0, live=False)
    nodes = routed_nodes(cfg, "edge-gpu-2")
    s = run_routed(cfg, Console(file=open("/dev/null", "w")), nodes)  # noqa: SIM115
    arms = s["arms"]
    assert list(arms) == [ROUTER, EDGE_ALONE, CLOUD_ALONE]
    assert all(r["requests"] == s["requests"] == r["ok"] for r in arms.values()), arms
    router, edge = arms[ROUTER], arms[EDGE_ALONE]
    assert set(router["tiers"]) == {"edge", "cloud"}, router
    assert router["cloud_share"]["burst"] > router["cloud_share"]["before"], router
    assert router["attainment"] >= edge["attainment"], arms
    assert s["nodes"]["edge"] == "edge-gpu-2"


def test_in_simulated_time_the_router_keeps_the_demo_burst_deadlines() -> None:
    """The demo's default phase (60 s, ×5 from 20 to 40 s) replayed in simulated time: the
    router's own decisions and learning over twin replicas timed by the world model, no
    wall clock (what the real-time runs measured, to ~10 ms a request). Counting at the
    slots alone (before issue #13) the L4's prefill queue was invisible: the router kept
    requests there in the burst and met 93.8 % (113.7 J/request). Counting the requests
    whose prefill has not started as waiting (what the replica's metrics show), it meets
    every deadline at 101.3 J/request and overflows to the cloud during the burst."""
    b = Burst(60.0)
    sc = burst_scenario(b)
    planned = planned_requests(sc, b, 1)
    nodes = replica_nodes(sc, "edge-gpu-2")
    arms = [Arm(n) for n in (ROUTER, EDGE_ALONE, CLOUD_ALONE)]
    router, edge, cloud = (simulate_arm(a, sc, planned, nodes, 1) for a in arms)
    assert router["requests"] == edge["requests"] == cloud["requests"] == len(planned) == 129
    assert router["attainment"] == cloud["attainment"] == 1.0
    assert edge["attainment"] == pytest.approx(54 / 129)  # the baseline, as measured
    assert edge["j_per_request"] < router["j_per_request"] < 0.75 * cloud["j_per_request"]
    ph = phases(arms[0], b)
    assert ph["burst"] is not None and ph["before"] is not None
    assert ph["burst"] > ph["before"] + 0.2, ph


def _phase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run: Any) -> tuple[Any, dict, str]:
    """The demo's routed phase (`perllm.demo.run._routed_phase`) with `run` in place of
    `run_routed`: (its result, the summary, what it printed)."""
    monkeypatch.setattr(run_mod, "run_routed", run)
    monkeypatch.setattr(run_mod, "routed_table", lambda r: f"table {r}")
    console = Console(width=300, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    summary: dict[str, Any] = {"placements": {"chat": {"tier": "edge", "chosen": "edge-gpu-2"}}}
    cfg = DemoConfig(out=tmp_path)
    return run_mod._routed_phase(cfg, console, summary), summary, console.export_text()


def test_the_routed_phase_runs_on_the_nodes_chosen_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    got: list[tuple[str, str]] = []

    def run(_cfg: DemoConfig, _c: Console, nodes: tuple[str, str]) -> dict[str, Any]:
        got.append(nodes)
        return {"ok": 1}

    res, summary, _ = _phase(tmp_path, monkeypatch, run)
    assert res == (False, None) and summary["routed"] == {"ok": 1}
    assert got == [("edge-gpu-2", "cloud")]  # where the extender put chat


def test_a_scenario_without_replica_nodes_skips_the_routed_phase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def nodes(_cfg: DemoConfig, _edge: str | None) -> tuple[str, str]:
        raise NoReplicaNodes("demo: chat needs an edge and a cloud node that can run it")

    def run(*_a: Any) -> dict[str, Any]:
        raise AssertionError("not run")

    monkeypatch.setattr(run_mod, "routed_nodes", nodes)
    res, summary, out = _phase(tmp_path, monkeypatch, run)
    assert res == (False, None) and "routed" not in summary and "error" not in summary
    assert "routed phase skipped: demo: chat needs an edge and a cloud node" in out


def test_another_value_error_in_the_routed_phase_is_a_demo_error_not_a_skip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the node choice's failure skips the phase: a ValueError from inside it (numpy,
    JSON, a bug) is the demo's error, naming the phase, with its traceback in a log."""

    def run(*_a: Any) -> dict[str, Any]:
        raise ValueError("operands could not be broadcast together")

    (interrupted, error), summary, out = _phase(tmp_path, monkeypatch, run)
    assert not interrupted and error is not None and "routed" not in summary
    assert error.startswith("routed phase (perllm.demo.routed) failed: ValueError: operands")
    assert summary["error"] == error and "skipped" not in out and "error:" in out
    log = tmp_path / "run" / "routed.log"
    assert str(log) in error and "operands could not be broadcast" in log.read_text()
    assert "Traceback" in log.read_text()


def test_replica_nodes_fails_with_its_own_error() -> None:
    sc = burst_scenario(Burst(30.0))
    cloudless = sc.model_copy(
        update={"servers": [s for s in sc.servers if s.tier.value != "cloud"]}
    )
    with pytest.raises(NoReplicaNodes, match="needs an edge and a cloud node"):
        replica_nodes(cloudless)
