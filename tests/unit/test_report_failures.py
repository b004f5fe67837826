"""A run's failures are reported by kind: shed, rejected by admission, late."""

from __future__ import annotations

import pytest

from perllm import policies
from perllm.report import run_metrics
from perllm.scenario import load_scenario
from perllm.world.sim import simulate


@pytest.fixture(scope="module")
def overloaded() -> tuple[object, object]:
    sc = load_scenario("paper-llama2-7b")
    arr = sc.workload.arrivals.model_copy(update={"rate_rps": 10.0})
    sc = sc.model_copy(
        update={"duration_s": 120.0, "workload": sc.workload.model_copy(update={"arrivals": arr})}
    )
    r = simulate(sc, policies.make("perllm"), 1)
    return r, run_metrics(r)


def test_failure_kinds_and_successes_partition_the_requests(overloaded: tuple) -> None:
    r, m = overloaded
    assert r.shed.any() or r.rejected.any()  # overload: something never ran
    ran = ~(r.shed | r.rejected)
    failed_after_running = float((ran & ~r.met).mean())
    assert m.success_rate + m.shed_rate + m.rejected_rate + failed_after_running == pytest.approx(1)
    assert m.late_rate <= failed_after_running + 1e-12
    assert m.late_rate + m.quality_violation_rate >= failed_after_running - 1e-12
    assert m.shed_rate == pytest.approx(float(r.shed.mean()))
    assert m.rejected_rate == pytest.approx(float(r.rejected.mean()))


def test_edge_share_counts_requests_that_ran_only(overloaded: tuple) -> None:
    r, m = overloaded
    ran = ~(r.shed | r.rejected)
    edge = sum(r.tiers[j] == "edge" for j in r.server[ran])
    assert m.edge_share == pytest.approx(edge / ran.sum())


def test_throughput_counts_served_requests_only(overloaded: tuple) -> None:
    r, m = overloaded
    ran = ~(r.shed | r.rejected)
    assert m.throughput_rps == pytest.approx(((r.finish <= r.duration_s) & ran).sum() / 120.0)
    assert m.goodput_rps <= m.throughput_rps
