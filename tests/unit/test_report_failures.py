"""A run's failures are reported by kind: shed, rejected by admission, late."""

from __future__ import annotations

import re
from pathlib import Path

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


def test_a_run_without_requests_reports_undefined_not_zero(tmp_path: Path) -> None:
    """A trace whose rows all lie past the run's end (or a run shorter than one arrival)
    has no request: it reported 0 % success and its idle energy as J/service. Success, J
    per service, edge share and the failure shares are None (null, n/a), said once."""
    import json

    from trace_scenarios import trace_scenario
    from typer.testing import CliRunner

    from perllm.cli import app
    from perllm.report import build_report

    f = trace_scenario(tmp_path, "time_s\n5000\n")
    sc = load_scenario(f).model_copy(update={"duration_s": 5.0})
    r = simulate(sc, policies.make("greedy-deadline"), 1)
    assert len(r.time) == 0 and sum(r.energy_breakdown_j.values()) > 0  # idle energy
    m = run_metrics(r)
    assert m.success_rate is None and m.energy_j_per_service is None and m.edge_share is None
    assert set(m.energy_breakdown_j.values()) == {None}
    assert (m.shed_rate, m.rejected_rate, m.late_rate, m.quality_violation_rate) == (None,) * 4
    assert (m.throughput_rps, m.goodput_rps) == (0.0, 0.0)  # (defined: 0 req/s)
    assert {v["success_rate"] for v in m.per_class.values()} == {None}
    entry = build_report([r])["scenarios"][sc.name]
    assert entry["note"].startswith("no request arrived in any of its 1 seed(s)")
    assert entry["policies"]["greedy-deadline"]["seeds_without_requests"] == 1

    out = tmp_path / "r.json"
    res = CliRunner().invoke(
        app,
        [
            *("simulate", str(f), "--duration", "5", "--seeds", "1", "-p", "greedy-deadline"),
            *("--json", str(out)),
        ],
    )
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert re.search(r"│ greedy-deadline +│ +n/a │", res.output)
    assert text.count("no request arrived in any of its 1 seed(s)") == 1
    assert "bound skipped: no request arrived" in text and "nan" not in text.lower()
    data = json.loads(out.read_text())["scenarios"][sc.name]
    pol = data["policies"]["greedy-deadline"]
    assert pol["success_rate"] is None and pol["energy_j_per_service"] is None
    assert data["bound_skipped"][0]["reason"].endswith("bound skipped: no request arrived")


def test_a_class_without_requests_has_no_success_rate() -> None:
    """Its success and p95 were 0.0 (of 0 requests); now None, as a run's."""
    sc = load_scenario("paper-llama2-7b")
    classes = [
        c.model_copy(update={"share": 1e-9}) if k == 0 else c
        for k, c in enumerate(sc.workload.classes)
    ]
    sc = sc.model_copy(
        update={"duration_s": 20.0, "workload": sc.workload.model_copy(update={"classes": classes})}
    )
    r = simulate(sc, policies.make("greedy-deadline"), 1)
    assert len(r.time) > 0 and not (r.requests.cls == 0).any()
    m = run_metrics(r)
    assert m.per_class[r.class_names[0]] == {
        "success_rate": None,
        "services": 0,
        "p95_time_s": None,
    }
    assert m.success_rate is not None and all(
        v["success_rate"] is not None for k, v in m.per_class.items() if k != r.class_names[0]
    )
