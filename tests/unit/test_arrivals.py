"""Per-class arrival processes: Poisson, gamma (CV), rate windows and trace replay."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from perllm.contract import Precision
from perllm.scenario import Scenario, ScenarioError, load_scenario, parse_scenario
from perllm.world.arrivals import arrival_times
from perllm.world.workload import generate


def base(duration: float = 20_000.0, rate: float = 4.0) -> dict[str, Any]:
    """paper-llama2-7b with two classes, chat (share 3) and code (share 1)."""
    d = yaml.safe_load(
        (Path(__file__).parents[2] / "perllm/scenarios/paper-llama2-7b.yaml").read_text()
    )
    d["duration_s"] = duration
    d["workload"]["arrivals"] = {"kind": "poisson", "rate_rps": rate}
    chat, _, code = d["workload"]["classes"][:3]
    chat["share"], code["share"] = 3.0, 1.0
    d["workload"]["classes"] = [chat, code]
    return d


def with_class_arrivals(d: dict[str, Any], k: int, arrivals: dict[str, Any]) -> dict[str, Any]:
    d = copy.deepcopy(d)
    d["workload"]["classes"][k]["arrivals"] = arrivals
    return d


def gaps(sc: Scenario, k: int, seed: int = 1) -> tuple[float, float, np.ndarray]:
    """(rate, CV of the gaps, times) of class k in one run's requests."""
    r = generate(sc, seed)
    t = r.arrival[r.cls == k]
    g = np.diff(t)
    return len(t) / sc.duration_s, float(g.std() / g.mean()), t


def test_per_class_poisson_and_gamma_rates_and_cv() -> None:
    d = with_class_arrivals(base(), 1, {"kind": "gamma", "rate_rps": 1.5, "cv": 2.0})
    sc = parse_scenario(d)
    rate, cv, _ = gaps(sc, 1)
    assert rate == pytest.approx(1.5, rel=0.05)
    assert cv == pytest.approx(2.0, rel=0.08)
    # chat keeps the scenario-wide Poisson process at its share: 4 × 3/4 = 3 req/s.
    rate, cv, _ = gaps(sc, 0)
    assert rate == pytest.approx(3.0, rel=0.03)
    assert cv == pytest.approx(1.0, abs=0.04)
    d = with_class_arrivals(base(), 0, {"kind": "poisson", "rate_rps": 0.5})
    rate, cv, _ = gaps(parse_scenario(d), 0)
    assert rate == pytest.approx(0.5, rel=0.05)
    assert cv == pytest.approx(1.0, abs=0.05)


def test_unset_fields_inherit_the_scenario_wide_process() -> None:
    d = base()
    d["workload"]["arrivals"] = {"kind": "gamma", "rate_rps": 4.0, "cv": 3.0}
    sc = parse_scenario(with_class_arrivals(d, 1, {"kind": "gamma"}))
    p = sc.workload.process(1)
    assert p is not None and p.kind == "gamma" and p.cv == 3.0
    assert p.rate_rps == pytest.approx(1.0)  # its share: 4 × 1/4
    assert sc.workload.process(0) is None
    rate, cv, _ = gaps(sc, 1)
    assert rate == pytest.approx(1.0, rel=0.08)
    assert cv == pytest.approx(3.0, rel=0.12)
    # The declared traffic of each service is its own rate.
    assert [s.traffic.rate_rps for s in sc.services()] == pytest.approx([3.0, 1.0])
    sc = parse_scenario(with_class_arrivals(d, 1, {"rate_rps": 2.0}))
    assert [s.traffic.rate_rps for s in sc.services()] == pytest.approx([3.0, 2.0])


def test_class_rate_windows() -> None:
    d = base(duration=6000.0)
    d["workload"]["rate_windows"] = [{"at_s": 0, "until_s": 3000, "factor": 2.0}]
    win = [{"at_s": 1000, "until_s": 2000, "factor": 4.0}]
    sc = parse_scenario(with_class_arrivals(d, 1, {"rate_windows": win}))
    _, _, t = gaps(sc, 1)
    inside = ((t >= 1000) & (t < 2000)).sum() / 1000
    outside = ((t < 1000) | (t >= 2000)).sum() / 5000
    assert outside == pytest.approx(1.0, rel=0.08)  # own windows replace the scenario's
    assert inside == pytest.approx(4.0, rel=0.08)
    _, _, t = gaps(sc, 0)  # chat keeps the scenario's window
    assert ((t < 3000).sum() / 3000) == pytest.approx(6.0, rel=0.05)
    assert ((t >= 3000).sum() / 3000) == pytest.approx(3.0, rel=0.05)
    # An empty list: no windows for the class.
    sc = parse_scenario(with_class_arrivals(d, 1, {"rate_windows": []}))
    _, _, t = gaps(sc, 1)
    assert ((t < 3000).sum() / 3000) == pytest.approx(1.0, rel=0.08)


def test_arrival_times_windows_and_duration() -> None:
    from perllm.scenario import Window

    rng = np.random.default_rng(0)
    w = [Window(at_s=100, until_s=200, factor=0.1)]
    t = arrival_times("gamma", 5.0, 1.5, w, 300.0, rng)
    assert (np.diff(t) >= 0).all() and t.min() >= 0 and t.max() < 300
    assert ((t >= 100) & (t < 200)).sum() < 0.2 * (t < 100).sum()


def test_trace_replay_is_exact(tmp_path: Path) -> None:
    times = [0.25, 3.5, 1.125, 7.0, 59.999, 60.0, 75.5]
    (tmp_path / "code.csv").write_text("".join(f"{x!r}\n" for x in times))  # no header
    d = with_class_arrivals(base(duration=60.0), 1, {"kind": "trace", "file": "code.csv"})
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(d))
    sc = load_scenario(f)
    for seed in (1, 2):
        r = generate(sc, seed)
        code = r.arrival[r.cls == 1]
        assert code.tolist() == sorted(x for x in times if x < 60.0)  # exact, in order
        assert (np.diff(r.arrival) >= 0).all()
        assert (r.cls == 0).sum() > 100  # chat: its share of the Poisson process
    assert sc.services()[1].traffic.rate_rps == pytest.approx(5 / 60)


def test_one_trace_file_for_several_classes(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text(
        "time_s,class,input_tokens\n0.5,chat,100\n1.0,code,200\n1.5,chat,300\n2.0,code,400\n"
    )
    d = base(duration=10.0)
    for k in (0, 1):
        d = with_class_arrivals(d, k, {"kind": "trace", "file": str(tmp_path / "t.csv")})
    r = generate(parse_scenario(d), 1)
    assert r.arrival.tolist() == [0.5, 1.0, 1.5, 2.0]
    assert r.cls.tolist() == [0, 1, 0, 1]
    assert r.l_in.tolist() == [100, 200, 300, 400]  # token columns are replayed too


def test_scenario_wide_trace_beside_a_class_process(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text(
        "time_s,class\n" + "".join(f"{i},{'chat' if i % 2 else 'code'}\n" for i in range(20))
    )
    d = base(duration=20.0)
    d["workload"]["arrivals"] = {"kind": "trace", "file": str(tmp_path / "t.csv")}
    d = with_class_arrivals(d, 1, {"kind": "poisson", "rate_rps": 2.0})
    r = generate(parse_scenario(d), 1)
    # chat replays its trace rows; code's rows are skipped (it has its own process).
    assert r.arrival[r.cls == 0].tolist() == [float(i) for i in range(1, 20, 2)]
    assert (r.cls == 1).sum() > 15


BAD = [
    ({"kind": "trace"}, "workload.classes[1].arrivals.file"),
    ({"kind": "poisson", "cv": 2.0}, "workload.classes[1].arrivals.cv"),
    ({"kind": "gamma", "rate_rps": -1}, "workload.classes[1].arrivals.rate_rps"),
    ({"kind": "trace", "file": "x.csv", "rate_rps": 1}, "workload.classes[1].arrivals.rate_rps"),
    ({"file": "x.csv"}, "workload.classes[1].arrivals.kind"),
    ({"kind": "weibull"}, "workload.classes[1].arrivals.kind"),
    ({"burst": 3}, "workload.classes[1].arrivals.burst"),
    (
        {"rate_windows": [{"at_s": 5, "until_s": 1, "factor": 2}]},
        "workload.classes[1].arrivals.rate_windows[0].until_s",
    ),
]


@pytest.mark.parametrize(("arrivals", "field"), BAD)
def test_bad_class_arrivals_name_the_field(arrivals: dict[str, Any], field: str) -> None:
    with pytest.raises(ScenarioError) as e:
        parse_scenario(with_class_arrivals(base(), 1, arrivals), "bad.yaml")
    assert field in str(e.value)


def test_inherited_settings_that_cannot_resolve_name_the_field(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("time_s\n1\n")
    d = base()
    d["workload"]["arrivals"] = {"kind": "trace", "file": str(tmp_path / "t.csv")}
    with pytest.raises(ScenarioError, match=r"workload\.classes\[1\]\.arrivals\.rate_rps"):
        parse_scenario(with_class_arrivals(d, 1, {"kind": "gamma"}), "bad.yaml")
    with pytest.raises(ScenarioError, match=r"workload\.classes\[1\]\.arrivals\.file"):
        parse_scenario(with_class_arrivals(d, 1, {"rate_windows": []}), "bad.yaml")
    d = with_class_arrivals(base(), 0, {"kind": "trace", "file": "missing.csv"})
    with pytest.raises(ScenarioError, match=r"workload\.classes\[0\]\.arrivals\.file: no such"):
        parse_scenario(d, "s.yaml", tmp_path)


def test_bursty_mix() -> None:
    sc = load_scenario("bursty-mix")
    names = [c.name for c in sc.workload.classes]
    assert names == ["chat", "code"]
    sc = sc.model_copy(update={"duration_s": 3600.0})
    r = generate(sc, 1)
    _, cv_chat, _ = gaps(sc, 0)
    _, cv_code, _ = gaps(sc, 1)
    assert cv_chat == pytest.approx(1.0, abs=0.08)
    assert cv_code == pytest.approx(2.0, rel=0.15)
    assert len(r) / 3600 == pytest.approx(4.0, rel=0.06)
    assert (r.min_quality > 0).mean() == pytest.approx(0.30, abs=0.02)
    t = sc.catalogue.models["llama3-8b"]
    # the floor: above the edge's 4-bit quality, met by the cloud's fp16
    floor = max(sc.workload.classes[0].min_quality.values)
    assert t.quality(Precision.Q4_K_M) < floor <= t.quality(Precision.FP16)
