"""The hindsight bound (perllm/bound/): exact on hand-made cases, and never beaten by any
policy (success at most the bound's, energy at least the bound's at the policy's success)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from perllm import policies
from perllm.bound import (
    BoundSkipped,
    HindsightBound,
    Pairs,
    build_pairs,
    compute_bound,
    demand_rows,
)
from perllm.cli import app
from perllm.profiles import default_catalogue
from perllm.report import finite_json
from perllm.scenario import Scenario, load_scenario
from perllm.sweep.transforms import set_load
from perllm.world.sim import World, simulate


def _gpu_pairs(n: int, arrival: list[float], deadline: list[float], prefill: float) -> Pairs:
    """One GPU server, requests that need only a serialised prefill (no link, no decode)."""
    z = np.zeros((n, 1))
    return Pairs(
        n=n,
        m=1,
        duration_s=10.0,
        arrival=np.array(arrival),
        deadline=np.array(deadline),
        allowed=np.ones((n, 1), bool),
        feasible=np.ones((n, 1), bool),
        time_alone=z + prefill,
        e_tran=z + 2.0,
        upload_s=z,
        prefill_s=z + prefill,
        decode_s=z,
        compute_s=z,
        is_gpu=np.array([True]),
        p_idle=np.array([100.0]),
        p_busy=np.array([300.0]),
        p_prefill=np.array([400.0]),
        gpu_decode_rate=np.array([8.0]),
        cpu_stream_rate=np.zeros(1),
        cpu_compute_rate=np.zeros(1),
    )


def test_exact_on_serialised_prefills() -> None:
    # Three requests at t=0 with 1 s deadlines, each needing 0.5 s of serialised prefill:
    # exactly two can be met. Meeting two needs only those two to run (the third may be
    # shed): 2 × 2 J transmission, prefill 1 s at 400 W and idle 9 s at 100 W, 1,304 J,
    # what the world charges for the two run back to back. Meeting none needs nothing
    # run: the idle 10 s at 100 W.
    p = _gpu_pairs(3, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], 0.5)
    hb = HindsightBound(p, demand_rows(p, 1.0))
    assert hb.max_met() == pytest.approx(2.0, abs=1e-5)
    assert hb.min_energy(2.0).energy_j == pytest.approx(4.0 + 400 * 1.0 + 100 * 9.0, rel=1e-5)
    assert hb.min_energy(0.0).energy_j == pytest.approx(100 * 10.0, rel=1e-5)


def test_exact_when_windows_do_not_overlap() -> None:
    # Windows [0, 1], [2, 3], [4, 5]: the server is free for each, all three can be met.
    p = _gpu_pairs(3, [0.0, 2.0, 4.0], [1.0, 1.0, 1.0], 0.9)
    hb = HindsightBound(p, demand_rows(p, 1.0))
    assert hb.max_met() == pytest.approx(3.0, abs=1e-5)


def test_isolated_time_is_the_worlds() -> None:
    sc = load_scenario("paper-llama2-7b").model_copy(update={"duration_s": 30.0})
    world = World(sc, 5)
    p = build_pairs(world)
    rng = np.random.default_rng(0)
    slots = np.minimum((world.req.arrival // sc.slot_s).astype(int), world.n_slots - 1)
    for i in rng.choice(p.n, 20, replace=False):
        for j in np.flatnonzero(p.allowed[i]):
            d, _, et = world.execute(int(i), int(j), int(slots[i]), commit=False)
            assert p.time_alone[i, j] == pytest.approx(d, rel=1e-9)
            assert p.e_tran[i, j] == pytest.approx(et, rel=1e-12)


def _overloaded(duration: float) -> Scenario:
    sc = load_scenario("paper-llama3-8b")
    arrivals = sc.workload.arrivals.model_copy(update={"rate_rps": 9.0})
    wl = sc.workload.model_copy(update={"arrivals": arrivals})
    return sc.model_copy(update={"duration_s": duration, "workload": wl, "name": "overload"})


SCENARIOS = {
    "paper-llama2-7b": lambda: load_scenario("paper-llama2-7b").model_copy(
        update={"duration_s": 240.0}
    ),
    "bandwidth-collapse": lambda: load_scenario("bandwidth-collapse").model_copy(
        update={"duration_s": 240.0}
    ),
    "overload": lambda: _overloaded(150.0),
    # Deep overload (24 req/s): admission control rejects most of cloud-only's requests,
    # which then cost no inference; a bound that made every request run charged them.
    "overload-24": lambda: set_load(load_scenario("paper-llama2-7b"), 24.0).model_copy(
        update={"duration_s": 90.0}
    ),
}
POLICIES = ["perllm", "clairvoyant-greedy", "cloud-only", "greedy-deadline", "least-loaded"]


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_no_policy_beats_the_bound(name: str) -> None:
    sc = SCENARIOS[name]()
    t0 = time.perf_counter()
    b = compute_bound(sc, 1)
    print(f"{name}: bound solved in {time.perf_counter() - t0:.2f} s")  # reported, not asserted
    n = b.n_requests
    for p in [*POLICIES, "edge-only"]:
        r = simulate(sc, policies.make(p), 1)
        assert len(r.met) == n
        met = int(r.met.sum())
        energy = sum(r.energy_breakdown_j.values())
        assert met <= b.met_ub, (p, met, b.met_ub)
        assert energy >= b.energy_lb_at(met), (p, energy, b.energy_lb_at(met))
        d = b.distance(met, energy)
        assert d["success_gap_points"] >= 0 and d["energy_ratio"] >= 1
        print(
            f"  {p}: {100 * met / n:.2f} % vs ≤ {100 * b.success_ub:.2f} %, "
            f"ratio {d['energy_ratio']:.3f}"
        )
    assert b.energy_lb_floor_j <= b.energy_lb_j + 1e-6


def _fleet(servers: int, duration: float) -> Scenario:
    """The large-fleet scenario cut to `servers` servers (all edge but 4 A100s)."""
    data = load_scenario("large-fleet").model_dump(mode="json")
    data["duration_s"] = duration
    data["servers"][0]["count"] = servers - 4
    data["servers"][1]["count"] = 4
    return Scenario.model_validate(data)


def test_a_fleet_beyond_the_size_limits_is_skipped_not_solved() -> None:
    """A 1,000-server fleet takes minutes for a few seconds of traffic (docs/bound.md,
    Limits): the bound says it is skipped, at once, instead of solving."""
    from perllm.bound import BoundSkipped, bounds_for
    from perllm.bound.result import MAX_SERVERS

    big = _fleet(1000, 5.0)
    with pytest.raises(BoundSkipped, match="large-fleet seed 1: bound skipped: 1,000 servers"):
        compute_bound(big, 1)  # (raised before any LP is built: no minutes of solving)
    said: list[str] = []
    skipped: dict[tuple[str, int], str] = {}
    small = _fleet(MAX_SERVERS, 1.0)  # within the limits, and solved
    pair = [big, small.model_copy(update={"name": "small"})]
    got = bounds_for(pair, [1], said.append, skipped=skipped)
    assert list(got) == [("small", 1)]
    assert any("bound skipped" in m for m in said)
    assert list(skipped) == [("large-fleet", 1)] and "1,000 servers" in skipped[("large-fleet", 1)]


def test_simulate_json_records_a_skipped_bound(tmp_path: Path) -> None:
    """`perllm simulate --json` says which bounds were skipped and why, per scenario, as
    `perllm sweep`'s JSON does (`bound_skipped`)."""
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(_fleet(1000, 2.0).model_dump(mode="json")))
    out = tmp_path / "r.json"
    argv = ["simulate", str(path), "-p", "cloud-only", "--seeds", "1", "--json", str(out)]
    res = CliRunner().invoke(app, argv)
    assert res.exit_code == 0, res.output
    entry = json.loads(out.read_text())["scenarios"]["large-fleet"]
    assert "bound" not in entry
    (skip,) = entry["bound_skipped"]
    assert skip["seed"] == 1 and "1,000 servers" in skip["reason"]


def test_a_world_without_power_has_a_zero_bound_that_a_run_meets(tmp_path: Path) -> None:
    """Hardware that draws no power and links that cost nothing: the least energy is 0 J
    (not −1e-6 J from the solver margin), and a run of 0 J is at ratio 1 to it (not inf);
    `perllm simulate --json` stays strict JSON (an infinite ratio would be null)."""
    data = load_scenario("paper-llama2-7b").model_dump(mode="json")
    hw = default_catalogue().hardware["a100-80gb-sxm"].model_dump(mode="json")
    hw |= {"power_prefill_w": 0.0, "power_decode_w": 0.0, "power_idle_w": 0.0}
    data |= {"name": "free", "duration_s": 20.0, "hardware": {"free-gpu": hw}}
    data["servers"] = [data["servers"][1] | {"hardware": "free-gpu"}]
    data["servers"][0]["link"]["energy_uj_per_bit"] = 0.0
    sc = Scenario.model_validate(data)
    b = compute_bound(sc, 1)
    assert b.energy_lb_j == 0.0 and b.energy_lb_floor_j == 0.0
    assert b.distance(0, 0.0)["energy_ratio"] == 1.0
    assert b.distance(0, 1.0)["energy_ratio"] == math.inf
    assert finite_json({"r": [math.inf, math.nan, 1.0]}) == {"r": [None, None, 1.0]}
    f, js = tmp_path / "free.yaml", tmp_path / "r.json"
    f.write_text(yaml.safe_dump(data))
    args = ["simulate", str(f), "-p", "cloud-only", "--seeds", "1", "--json", str(js)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "inf×" not in res.output and "-0.0" not in res.output
    report = json.loads(js.read_text(), parse_constant=lambda c: pytest.fail(c))
    assert report["scenarios"]["free"]["vs_bound"]["cloud-only"]["energy_ratio"] == 1.0


def test_a_run_within_the_bounds_margin_is_at_it_not_inf(tmp_path: Path) -> None:
    """A bound of 0 J (below the energy LP's absolute margin of 1e-6 J): a run within the
    margin is at it, not `inf×` it. (A scenario of 1e-9 s, whose idle energy of 2e-7 J
    showed it, draws no request: its bound is now skipped, success being undefined.)"""
    from perllm.bound import BoundResult

    b = BoundResult("zero", 1, 1, 1, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0)
    assert b.distance(1, 2e-7)["energy_ratio"] == 1.0
    assert b.distance(1, 1.0)["energy_ratio"] == math.inf  # beyond the margin: below no bound
    data = load_scenario("paper-llama2-7b").model_dump(mode="json")
    data |= {"name": "blink", "duration_s": 1e-9}
    f, js = tmp_path / "blink.yaml", tmp_path / "r.json"
    f.write_text(yaml.safe_dump(data))
    with pytest.raises(BoundSkipped, match="blink seed 1: bound skipped: no request arrived"):
        compute_bound(load_scenario(f), 1)
    args = ["simulate", str(f), "-p", "perllm", "-p", "round-robin", "--seeds", "1"]
    res = CliRunner().invoke(app, [*args, "--json", str(js)])
    assert res.exit_code == 0, res.output
    assert "inf×" not in res.output
    report = json.loads(js.read_text(), parse_constant=lambda c: pytest.fail(c))
    assert "vs_bound" not in report["scenarios"]["blink"]
    assert report["scenarios"]["blink"]["bound_skipped"][0]["reason"].endswith("no request arrived")


def _tiny(name: str = "tiny") -> Scenario:
    return load_scenario("paper-llama2-7b").model_copy(update={"duration_s": 20.0, "name": name})


def test_a_solver_failure_is_no_bound_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An LP that hits its time limit (or fails) gives no bound, with the reason, as a run
    beyond the size limits does: `perllm simulate` and `perllm sweep` still report the
    policies (they ended with a BoundError traceback after all the runs)."""
    import perllm.bound.solve as solve
    from perllm.bound import BoundSkipped

    monkeypatch.setattr(solve, "SOLVE_TIME_LIMIT_S", 0.0)
    with pytest.raises(BoundSkipped, match=r"tiny seed 1: bound skipped: .*time limit \(0 s\)"):
        compute_bound(_tiny(), 1)
    path, js = tmp_path / "tiny.yaml", tmp_path / "r.json"
    path.write_text(yaml.safe_dump(_tiny().model_dump(mode="json")))
    argv = ["simulate", str(path), "-p", "cloud-only", "--seeds", "1", "--json", str(js)]
    res = CliRunner().invoke(app, argv)
    assert res.exit_code == 0, res.output
    assert "bound skipped" in res.output and "time limit" in res.output
    (skip,) = json.loads(js.read_text())["scenarios"]["tiny"]["bound_skipped"]
    assert skip["seed"] == 1 and "time limit" in skip["reason"]
    argv = ["sweep", "paper-llama2-7b", "--load", "2", "-p", "cloud-only", "--duration", "5"]
    res = CliRunner().invoke(app, [*argv, "--out", str(tmp_path / "sw")])
    assert res.exit_code == 0, res.output
    assert "bound skipped" in res.output and "time limit" in res.output


def test_a_failed_target_solve_falls_back_to_the_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    """The energy bound at a policy's success is solved when the report asks for it; if
    that LP fails, the bound at any success (still a lower bound) stands in, instead of a
    traceback after every run is done."""
    from perllm.bound import BoundError

    b = compute_bound(_tiny(), 1)
    assert b.energy_lb_floor_j < b.energy_lb_j * (1 - 1e-6)  # not flat: a target is solved
    assert b._bound is not None

    def fail(_target: float) -> None:
        raise BoundError("energy LP failed: numerical trouble")

    monkeypatch.setattr(b._bound, "min_energy", fail)
    met = int(b.met_ub) - 1
    assert b.energy_lb_at(met) == b.energy_lb_floor_j
    assert b.distance(met, 1.0e6)["energy_lb_j_per_service"] == b.energy_lb_floor_j / b.n_requests


def test_a_class_no_server_may_run_is_unmet_in_the_bound() -> None:
    """A class with no allowed server (reachable through the Python API only: scenario
    loading refuses it) cannot be met by any policy (the world runs it nowhere; CS-UCB
    sheds it), and leaving it unplaced costs nothing: the bound counts its requests as
    unmet. It raised BoundError ("a request has no server that can run it")."""
    data = load_scenario("paper-llama2-7b").model_dump(mode="json")
    data |= {"name": "orphan", "duration_s": 20.0}
    data["workload"]["classes"][0]["allowed_tiers"] = ["cloud"]
    data["servers"] = [s for s in data["servers"] if s["tier"] != "cloud"]
    sc = Scenario.model_validate(data)
    b = compute_bound(sc, 1)
    r = simulate(sc, policies.make("perllm"), 1)
    orphans = int((r.requests.cls == 0).sum())
    assert orphans > 0 and not r.met[r.requests.cls == 0].any()
    assert int(r.met.sum()) <= b.met_ub <= b.n_requests - orphans + 1e-3
    assert sum(r.energy_breakdown_j.values()) >= b.energy_lb_at(int(r.met.sum()))
    assert b.feasible_requests <= b.n_requests - orphans
    # Exact by hand: no request may run anywhere, so none is met and the least energy is
    # the idle server's, 100 W × 10 s.
    p = _gpu_pairs(2, [0.0, 0.0], [1.0, 1.0], 0.5)
    none = np.zeros((2, 1), bool)
    p = Pairs(**{**p.__dict__, "allowed": none, "feasible": none})
    hb = HindsightBound(p, demand_rows(p, 1.0))
    assert hb.max_met() == pytest.approx(0.0, abs=1e-5)
    assert hb.min_energy(0.0).energy_j == pytest.approx(1000.0, rel=1e-5)


def test_a_bound_of_some_seeds_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With seed 2's bound skipped, the bound row was the mean of seed 1 alone under
    policies' success means over both seeds, with nothing to say so (a bound of 95 % on
    seed 1 could sit under a policy's 97 % over seeds 1 and 2). The row and the JSON say
    how many seeds the bound covers; the gaps pair each run with its own seed's bound."""
    import perllm.bound.result as result
    from perllm.bound import BoundSkipped

    real = result.compute_bound

    def seed_2_skipped(sc: Scenario, seed: int, **kw: object) -> object:
        if seed == 2:
            raise BoundSkipped(f"{sc.name} seed 2: bound skipped: (test)")
        return real(sc, seed, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(result, "compute_bound", seed_2_skipped)
    path, js = tmp_path / "tiny.yaml", tmp_path / "r.json"
    path.write_text(yaml.safe_dump(_tiny().model_dump(mode="json")))
    argv = ["simulate", str(path), "-p", "cloud-only", "--seeds", "2", "--json", str(js)]
    res = CliRunner().invoke(app, argv, env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "(1 of 2 seeds)" in text and "over those k seeds only" in text
    entry = json.loads(js.read_text())["scenarios"]["tiny"]
    assert entry["policies"]["cloud-only"]["seeds"] == 2
    assert entry["bound"]["seeds"] == 1 and entry["vs_bound"]["cloud-only"]["seeds"] == 1
    assert [d["seed"] for d in entry["bound"]["per_seed"]] == [1]
    # every seed bounded: the row is as before, no note
    monkeypatch.setattr(result, "compute_bound", real)
    res = CliRunner().invoke(app, argv[:-2], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "of 2 seeds" not in res.output and "over those k seeds" not in res.output
