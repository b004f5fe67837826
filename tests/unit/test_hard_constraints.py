"""Hard constraints are never traded, rounds have no level cap, and the world's admission
control drops what can no longer start in time (docs/algorithm.md, docs/scenarios.md)."""

from __future__ import annotations

import numpy as np
import pytest

from perllm import policies
from perllm.csucb import CSUCB, CSUCBConfig
from perllm.scenario import load_scenario
from perllm.world.server import ServerState
from perllm.world.sim import World, simulate
from tests.unit.test_csucb import decide, table

FLOOR = 0.45  # the edge's Q4 variant has 0.438: only the cloud meets it


def _below_floor(b: CSUCB, cls: list[int], choice: np.ndarray, floor: float) -> int:
    placed = choice >= 0
    q = b.t.quality[np.array(cls)[placed], choice[placed]]
    return int((q < floor - 1e-9).sum())


@pytest.mark.parametrize("n, explain", [(12, False), (40, False), (40, True)])
def test_a_round_never_goes_below_its_floor(n: int, explain: bool) -> None:
    # 12: the Python-float path; 40 without explanations: the list assignment; with: numpy.
    b = CSUCB(table())
    d = decide(b, [0] * n, quality=FLOOR, explain=explain)
    assert _below_floor(b, [0] * n, d.choice, FLOOR) == 0
    assert not d.shed.any()  # least-late (default): the cloud takes them all, late or not
    assert all(b.t.tiers[j] == "cloud" for j in d.choice)
    assert np.all(np.diff(np.sort(d.predicted_time)) > 0)  # each at its real load


@pytest.mark.parametrize("explain", [False, True])
def test_full_cloud_waits_under_least_late_and_sheds_under_shed(explain: bool) -> None:
    t = table()
    cloud = t.tiers.index("cloud")
    waiting = np.zeros(t.n_servers)
    waiting[cloud] = 4000.0  # far past any deadline there (beyond the shed slack)
    for rule in ("least-late", "shed"):
        b = CSUCB(t, config=CSUCBConfig(on_infeasible=rule))
        n = 40
        d = decide(b, [0] * n, waiting=waiting, quality=FLOOR, explain=explain)
        assert not d.feasible.any() and b.violations == n
        if rule == "least-late":
            assert (d.choice == cloud).all() and not d.shed.any()
        else:
            assert (d.choice == -1).all() and d.shed.all()
            assert np.isnan(d.predicted_time).all()
        if explain:
            assert d.explanations is not None
            for e in d.explanations:
                assert e.shed == (rule == "shed") and not e.feasible
                assert e.fallback.startswith(
                    "shed: no server meets the deadline" if e.shed else "least-late:"
                )


def test_a_floor_no_server_meets_is_shed_under_either_rule() -> None:
    for rule in ("least-late", "shed"):
        b = CSUCB(table(), config=CSUCBConfig(on_infeasible=rule))
        d = decide(b, [0] * 20, quality=0.99, explain=True)
        assert d.shed.all() and (d.choice == -1).all()
        assert d.explanations is not None and d.explanations[0].chosen == ""


@pytest.mark.parametrize("n", range(17, 31))
def test_reproduction_idle_paper_fleet_17_to_30_requests(n: int) -> None:
    # The reported bug: past 16 requests in a round the old cap priced the cloud above a
    # quality gap, and requests went to edge variants below their floor.
    w = World(load_scenario("paper-llama2-7b").model_copy(update={"duration_s": 10.0}), 1)
    b = CSUCB(w.table)
    m = w.table.n_servers
    for explain in (False, True):
        d = b.decide(
            np.zeros(n, np.intp), np.full(n, 1000.0), np.full(n, 129.0), np.zeros(n),
            np.full(n, FLOOR), np.zeros(m), np.zeros(m), w.table.link_mbps, explain=explain,
        )  # fmt: skip
        assert _below_floor(b, [0] * n, d.choice, FLOOR) == 0


def _cpu_state_and_coeffs() -> tuple[ServerState, World]:
    w = World(load_scenario("paper-llama2-7b").model_copy(update={"duration_s": 10.0}), 1)
    return w.servers[0], w  # an edge server (llama.cpp slots)


def test_admit_drops_what_cannot_start_in_time_and_leaves_the_queue_as_it_was() -> None:
    s, w = _cpu_state_and_coeffs()
    c = w.coeffs[0][0]
    cap = c.max_conc
    for _ in range(cap):  # fill every slot with a long request
        s.admit(0.0, 100.0, 2000.0, c, 1.0)
    before = (sorted(s.active), s.kv_used, s.last_start, s.busy, s.served)
    out = s.admit(1.0, 100.0, 100.0, c, 1.0, latest_start=5.0)
    assert out.dropped and out.end == 5.0 and out.e_infer == 0.0
    assert (sorted(s.active), s.kv_used, s.last_start, s.busy, s.served) == before
    # Without a limit it waits for a slot.
    out = s.admit(1.0, 100.0, 100.0, c, 1.0)
    assert not out.dropped and out.start >= min(e for e, _, _ in before[0])


def _overloaded(mode: str, **extra: float) -> object:
    sc = load_scenario("paper-llama2-7b")
    wl = sc.workload.model_copy(
        update={"arrivals": sc.workload.arrivals.model_copy(update={"rate_rps": 8.0})}
    )
    adm = sc.admission.model_copy(update={"mode": mode, **extra})
    return sc.model_copy(update={"duration_s": 120.0, "workload": wl, "admission": adm})


def test_world_admission_modes() -> None:
    none = simulate(_overloaded("none"), policies.make("cloud-only"), 1)
    late = simulate(_overloaded("reject-late"), policies.make("cloud-only"), 1)
    tout = simulate(_overloaded("timeout", timeout_s=5.0), policies.make("cloud-only"), 1)
    r = late.requests
    assert not none.rejected.any() and none.admission == "none"
    assert late.rejected.any() and tout.rejected.any()
    for res in (late, tout):
        assert not res.met[res.rejected].any() and not res.shed.any()
        assert (res.e_infer_attr[res.rejected] == 0).all()
    # reject-late drops only what could no longer meet its deadline: dropped at it.
    assert (late.time[late.rejected] > r.deadline[late.rejected]).all()
    assert (tout.finish[tout.rejected] >= r.arrival[tout.rejected] + 5.0 - 1e-9).all()
    # The freed queue: served requests wait less, and more meet their deadline.
    served = ~late.rejected
    assert np.percentile(late.time[served], 95) < np.percentile(none.time, 95)
    assert late.met.mean() > none.met.mean()


def test_a_shed_request_never_runs_and_fails() -> None:
    sc = _overloaded("reject-late")
    r = simulate(sc, _shed_policy(), 1)
    assert r.shed.any()
    assert (r.server[r.shed] == -1).all() and not r.met[r.shed].any()
    assert (r.time[r.shed] == 0).all() and (r.e_infer_attr[r.shed] == 0).all()
    assert r.quality_ok.all()


def _shed_policy() -> policies.Policy:
    from perllm.policies.perllm_policy import PerLLM

    return PerLLM(CSUCBConfig(on_infeasible="shed"))
