"""`perllm sweep`: scenario transforms, metrics, outputs and CLI errors (tiny sweeps)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from trace_scenarios import trace_scenario
from typer.testing import CliRunner

from perllm import policies
from perllm.cli import app
from perllm.contract import Tier
from perllm.scenario import Scenario, load_scenario
from perllm.sweep import (
    METRICS,
    Sweep,
    SweepError,
    base_rate,
    run_row,
    run_sweep,
    scale_load,
    set_cloud_bandwidth,
    set_load,
)
from perllm.sweep.outputs import csv_columns, write_outputs
from perllm.sweep.transforms import set_duration
from perllm.world.sim import World, simulate

runner = CliRunner()


def test_set_load_sets_the_total_rate() -> None:
    sc = load_scenario("paper-llama2-7b")
    assert base_rate(sc) == pytest.approx(4.0)
    hi = set_load(sc, 12.0)
    assert hi.workload.arrivals.rate_rps == pytest.approx(12.0)
    assert base_rate(hi) == pytest.approx(12.0)
    assert sc.workload.arrivals.rate_rps == 4.0  # the base is untouched
    # Only the rate moves: mix, servers and duration are the base's.
    assert [c.share for c in hi.workload.classes] == [c.share for c in sc.workload.classes]
    assert hi.servers == sc.servers and hi.duration_s == sc.duration_s
    a = len(World(set_duration(sc, 120), 1).req)
    b = len(World(set_duration(hi, 120), 1).req)
    assert 2.5 < b / a < 3.5


def test_scale_load_scales_class_rates_too() -> None:
    sc = load_scenario("bursty-mix")
    own = sc.workload.classes[1]
    assert own.arrivals is not None
    fixed = own.model_copy(update={"arrivals": own.arrivals.model_copy(update={"rate_rps": 1.0})})
    classes = [sc.workload.classes[0], fixed]
    sc = sc.model_copy(update={"workload": sc.workload.model_copy(update={"classes": classes})})
    before = base_rate(sc)
    x2 = scale_load(sc, 2.0)
    assert base_rate(x2) == pytest.approx(2 * before)
    new_own = x2.workload.classes[1].arrivals
    assert new_own is not None and new_own.rate_rps == pytest.approx(2.0)
    assert new_own.kind == "gamma"
    assert base_rate(set_load(sc, 10.0)) == pytest.approx(10.0)


def test_set_cloud_bandwidth_sets_only_cloud_links() -> None:
    sc = load_scenario("edge-gpu")
    low = set_cloud_bandwidth(sc, 3.0)
    for old, new in zip(sc.servers, low.servers, strict=True):
        if new.tier == Tier.CLOUD:
            assert new.link.bandwidth_mbps == 3.0
            assert new.link.noise == old.link.noise and new.link.rtt_ms == old.link.rtt_ms
        else:
            assert new == old
    assert next(s for s in sc.servers if s.tier == Tier.CLOUD).link.bandwidth_mbps == 300
    assert low.workload == sc.workload


def test_transforms_reject_bad_values() -> None:
    sc = load_scenario("paper-llama2-7b")
    for f, v in ((set_load, 0.0), (scale_load, -1.0), (set_cloud_bandwidth, float("nan"))):
        with pytest.raises(SweepError, match="> 0"):
            f(sc, v)
    with pytest.raises(SweepError, match="repeated"):
        Sweep.build(sc, "load_rps", [4.0, 4.0])


def test_edge_gpu_testbed_is_the_paper_mix_on_l4s() -> None:
    eg, paper = load_scenario("edge-gpu"), load_scenario("paper-llama2-7b")
    assert eg.workload == paper.workload
    edge = [s for s in eg.servers if s.tier == Tier.EDGE]
    assert [s.hardware for s in edge] == ["nvidia-l4"] and edge[0].count == 5
    assert [s.hardware for s in eg.servers if s.tier == Tier.CLOUD] == ["a100-80gb-sxm"]


def test_run_row_reads_shed_and_rejected() -> None:
    sc = set_duration(load_scenario("paper-llama2-7b"), 30)
    r = simulate(sc, policies.make("edge-only"), 1)
    row = run_row(r)
    assert row["shed_rate"] == pytest.approx(r.shed.mean())
    assert row["rejected_rate"] == pytest.approx(r.rejected.mean())
    n = len(r.time)
    shed, rejected = np.zeros(n, bool), np.zeros(n, bool)
    shed[:4], rejected[4:6] = True, True
    r.server[:4] = -1  # a shed request has no server
    r.met[:6] = False
    r.shed, r.rejected = shed, rejected
    edge = np.array([t == "edge" for t in r.tiers])[r.server[6:]]
    row = run_row(r)
    assert row["shed_rate"] == pytest.approx(4 / n)
    assert row["rejected_rate"] == pytest.approx(2 / n)
    assert row["edge_share"] == pytest.approx(edge.mean())  # of the requests that ran
    assert row["success_rate"] == pytest.approx(r.met.mean())


def test_tiny_sweep_writes_json_csv_png_with_every_metric(tmp_path: Path) -> None:
    args = ["sweep", "paper-llama2-7b", "--load", "4,6", "--cloud-mbps", "300,3"]
    args += ["-p", "perllm", "-p", "cloud-only", "--duration", "60", "--out", str(tmp_path)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    for name in ("paper-llama2-7b-load", "paper-llama2-7b-cloud-bw"):
        data = json.loads((tmp_path / f"{name}.json").read_text())
        assert data["axis"] in ("load_rps", "cloud_mbps") and data["bound"] is True
        assert len(data["rows"]) == 4  # 2 points × 2 policies
        for row in data["rows"]:
            for m in METRICS:
                assert row[m.key] is not None, (name, m.key)
            assert row["bound_success_rate"] is not None
            assert row["success_gap_points"] >= -1e-6 and row["energy_ratio"] >= 1 - 1e-6
        assert [b["value"] for b in data["bound_points"]] == data["values"]
        with (tmp_path / f"{name}.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        assert rows and list(rows[0]) == csv_columns()
        for col in ("success_gap_points", "energy_ratio", "bound_success_rate", "shed_rate"):
            assert all(r[col] != "" for r in rows), col
        png = (tmp_path / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    load = json.loads((tmp_path / "paper-llama2-7b-load.json").read_text())
    r4 = next(r for r in load["rows"] if r["value"] == 4 and r["policy"] == "cloud-only")
    r6 = next(r for r in load["rows"] if r["value"] == 6 and r["policy"] == "cloud-only")
    assert r6["requests"] > r4["requests"]


def test_no_bound_keeps_the_columns_empty_and_processes_match(tmp_path: Path) -> None:
    sc = set_duration(load_scenario("edge-gpu"), 30)
    sw = [Sweep.build(sc, "cloud_mbps", [100.0])]
    one = run_sweep(sw, ["cloud-only", "edge-only"], [1], processes=1, bound=False)[0]
    two = run_sweep(sw, ["cloud-only", "edge-only"], [1], processes=2, bound=False)[0]
    rows = one.rows()
    assert [r["policy"] for r in rows] == ["cloud-only", "edge-only"]
    for r in rows:
        assert r["energy_ratio"] is None and r["bound_success_rate"] is None
    strip = [{k: v for k, v in r.items() if not k.startswith("wall_s")} for r in rows]
    assert strip == [{k: v for k, v in r.items() if not k.startswith("wall_s")} for r in two.rows()]
    # The bound's panels are empty, and on a bandwidth sweep's log axis that must not fail.
    png = next(p for p in write_outputs(one, tmp_path) if p.suffix == ".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "nothing to sweep"),
        (["--load", "4,abc"], "--load: 'abc' is not a number"),
        (["--load", "0,4"], "--load: every value must be a finite number > 0"),
        (["--cloud-mbps", "300,,3"], "--cloud-mbps: expected comma-separated numbers"),
        (["--load", "4,4"], "--load: a value is repeated"),
        (["--load", "4", "--load-x", "2"], "choose one"),
        (["--load", "4", "-p", "magic"], "--policy: unknown policy 'magic'"),
        (["--load", "4", "-p", "perllm", "-p", "perllm"], "--policy: a policy is named twice"),
        (["--load", "4", "--seeds", "0"], "Invalid value for '--seeds': must be ≥ 1"),
        (["--load", "4", "--processes", "0"], "Invalid value for '--processes': must be ≥ 1"),
        # (100,000 were accepted: a process spawned per job handed out)
        (["--load", "4", "--processes", "65"], "Invalid value for '--processes': must be ≤ 64"),
        (["--load", "4", "--duration", "-5"], "--duration: must be a finite number ≥ 1"),
        (["--load", "4", "--duration", "0.5"], "--duration: must be a finite number ≥ 1"),
        (["nope-scenario", "--load", "4"], "no such file or built-in scenario"),
        # (named the class's arrivals.rate_rps after "load sweep at 1e+300", not the option)
        (
            ["--load", "4,1e300"],
            "--load: 1e+300 is too high for paper-llama2-7b: its class 'chat' would arrive at "
            "5e+299 req/s, more than the 1,000 req/s a class (at most 2000 here)",
        ),
        (["--load-x", "1e9"], "--load-x: 1e+09 is too high for paper-llama2-7b: its class"),
        # (ran, at a nominal link beyond link.bandwidth_mbps's 10,000,000 Mbps; then named
        # servers[1].link.bandwidth_mbps after "cloud-bw sweep at 1e+12")
        (
            ["--cloud-mbps", "300,1e12"],
            "--cloud-mbps: 1e12 Mbps is outside the 0.001 to 10,000,000 Mbps",
        ),
        (["--cloud-mbps", "1e-300"], "--cloud-mbps: 1e-300 Mbps is outside the 0.001 to"),
        # (a point the scenario refuses otherwise: its error, after the option and value)
        (
            ["bandwidth-collapse", "--cloud-mbps", "0.01"],
            "--cloud-mbps 0.01: at it, bandwidth-collapse: invalid scenario: bandwidth.windows: "
            "server 'cloud''s link would be 0.0001 Mbps from 600 s",
        ),
        (
            ["edge-gpu", "edge-gpu", "--load", "4"],
            "edge-gpu: scenario name 'edge-gpu' is also that of edge-gpu",
        ),
    ],
)
def test_cli_rejects_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    res = runner.invoke(app, ["sweep", *args, "--out", str(tmp_path)])
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split()), res.output
    assert not list(tmp_path.iterdir())


def test_a_scenario_name_cannot_write_outside_out(tmp_path: Path) -> None:
    """Its files are named after the scenario: a name that is a path is refused at load,
    before anything runs or is written (it wrote ../escaped/x-load.json beside --out)."""
    import yaml

    f = trace_scenario(tmp_path, "time_s\n1\n")
    for name in ("../escaped/x", str(tmp_path / "abs"), ""):
        f.write_text(yaml.safe_dump(yaml.safe_load(f.read_text()) | {"name": name}))
        res = runner.invoke(app, ["sweep", str(f), "--load", "4", "--out", str(tmp_path / "o")])
        assert res.exit_code == 2, res.output
        assert "name: must be 1 to 63 lower-case letters" in " ".join(res.output.split())
        assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml", "t.csv"]


def _bench_sweep_argv() -> Callable[[list[str]], list[str]]:
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "bench" / "sweep.py"
    spec = importlib.util.spec_from_file_location("bench_sweep", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.argv  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "given",
    [
        ["--seeds", "1", "--load", "4", "--out", "x", "edge-gpu"],
        ["--seeds=1", "--load=4", "--out=x", "edge-gpu"],
    ],
)
def test_bench_sweep_fills_in_only_the_options_not_given(given: list[str]) -> None:
    """bench/sweep.py adds its defaults (3 seeds, the load and bandwidth grids, out/sweep,
    both testbeds) only where the user set nothing, in either option spelling; an added
    default after the user's `--seeds=1` would win (the last value counts)."""
    out = _bench_sweep_argv()(given)
    assert out == ["sweep", *given]
    defaults = _bench_sweep_argv()([])
    assert "--seeds" in defaults and "--load" in defaults and "--out" in defaults
    assert "paper-llama2-7b" in defaults and "edge-gpu" in defaults


def test_cli_bad_trace_content_is_a_clean_error(tmp_path: Path) -> None:
    """A trace read only when the runs start (a bandwidth sweep of a trace-driven
    scenario): an error naming the field, exit 2, no traceback."""
    f = trace_scenario(tmp_path, "time_s\n1\nabc\n")
    out = tmp_path / "out"
    res = runner.invoke(
        app,
        [
            *("sweep", str(f), "--cloud-mbps", "100", "--duration", "5", "--no-bound"),
            *("-p", "cloud-only", "--out", str(out)),
        ],
    )
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit)
    text = " ".join(res.output.split())
    assert "workload.arrivals.file" in text and "malformed row" in text
    assert not list(out.iterdir())  # created before the runs, nothing written


def test_cli_checks_out_before_running(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("a file")
    res = runner.invoke(
        app,
        ["sweep", "--load", "4", "--no-bound", "-p", "cloud-only", "--out", str(tmp_path / "f")],
    )
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit)
    assert "--out" in res.output


def test_a_sweep_of_a_fleet_too_large_for_the_bound_notes_the_skip(tmp_path: Path) -> None:
    args = ["sweep", "large-fleet", "--load-x", "0.5", "-p", "cloud-only", "--duration", "1"]
    res = runner.invoke(app, [*args, "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "bound skipped" in res.output
    data = json.loads((tmp_path / "large-fleet-load.json").read_text())
    assert data["bound_per_seed"] == [] and data["bound_points"] == []
    assert [(d["value"], d["seed"]) for d in data["bound_skipped"]] == [(0.5, 1)]
    assert data["rows"][0]["bound_success_rate"] is None


def test_one_process_reports_each_job_as_it_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    """With processes = 1 every job ran while the sweep was set up, so the progress bar
    stayed at 0 until the whole sweep was done; each is now reported before the next runs."""
    import perllm.sweep.run as run_mod

    events: list[str] = []
    real = run_mod._run_job

    def job(sc: object, policy: str, seed: int) -> dict[str, float]:
        events.append(f"run {policy} {seed}")
        return real(sc, policy, seed)  # type: ignore[arg-type]

    monkeypatch.setattr(run_mod, "_run_job", job)
    sc = set_duration(load_scenario("edge-gpu"), 20)
    sw = [Sweep.build(sc, "cloud_mbps", [100.0])]
    res = run_sweep(sw, ["cloud-only", "edge-only"], [1, 2], 1, False, lambda x: events.append(x))
    assert len(res[0].per_seed) == 4
    runs = [i for i, e in enumerate(events) if e.startswith("run ")]
    assert len(runs) == 4 and len(events) == 8
    # run, reported, run, reported, ...
    assert all(not events[i + 1].startswith("run ") for i in runs)


def test_runs_are_handed_out_as_they_are_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every run was submitted before the first ran: a sweep of 1,000 seeds (and many
    points) held each job, its future and arguments in memory with no progress shown.
    A few at a time now, whatever the sweep's size; the results are the same."""
    import perllm.sweep.run as run_mod

    submitted: list[int] = []  # jobs submitted when each run starts
    count = 0
    real_submit, real_job = run_mod._Inline.submit, run_mod._run_job

    def submit(self: Any, fn: Any, /, *a: Any, **kw: Any) -> Any:
        nonlocal count
        count += 1
        return real_submit(self, fn, *a, **kw)

    def job(sc: Any, policy: str, seed: int) -> dict[str, float]:
        submitted.append(count)
        return real_job(sc, policy, seed)

    monkeypatch.setattr(run_mod._Inline, "submit", submit)
    monkeypatch.setattr(run_mod, "_run_job", job)
    sc = set_duration(load_scenario("edge-gpu"), 2)
    sw = [Sweep.build(sc, "cloud_mbps", [100.0, 10.0])]
    res = run_sweep(sw, ["cloud-only", "edge-only"], list(range(1, 11)), 1, False)[0]
    assert len(res.per_seed) == 40 and count == 40
    assert max(k - i for i, k in enumerate(submitted)) <= 2  # at most 2 runs ahead
    assert [(d["value"], d["policy"], d["seed"]) for d in res.per_seed] == [
        (v, p, seed)
        for v in (100.0, 10.0)
        for p in ("cloud-only", "edge-only")
        for seed in range(1, 11)
    ]


def _skip_seed_2(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seed 2's bound skipped (as one too large or unsolved), in this process."""
    import perllm.bound as bound

    real = bound.compute_bound

    def compute(sc: object, seed: int, **kw: object) -> object:
        if seed == 2:
            raise bound.BoundSkipped("seed 2: bound skipped: (test)")
        return real(sc, seed, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(bound, "compute_bound", compute)


def _plot_texts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The texts the sweep's PNG will hold (filled when it is drawn; no file written)."""
    import matplotlib.pyplot as plt

    import perllm.plots as plots

    texts: list[str] = []

    def save(fig: object, path: Path) -> Path:
        texts.extend(t.get_text() for ax in fig.axes for t in ax.texts)  # type: ignore[attr-defined]
        texts.extend(
            f"bound marker {line.get_marker()}"
            for ax in fig.axes  # type: ignore[attr-defined]
            for line in ax.lines
            if line.get_label() == "hindsight bound"
        )
        plt.close(fig)  # type: ignore[arg-type]
        path.write_bytes(b"")
        return path

    monkeypatch.setattr(plots, "_save", save)
    return texts


def test_a_bound_of_some_seeds_is_marked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seed 2's bound skipped: the bound columns were the mean of seed 1 next to success
    means over seeds 1 and 2, unmarked. They now say how many seeds they cover
    (`bound_seeds` in JSON and CSV, † and a note in the table, "k/n seeds" on the PNG)."""
    from rich.console import Console

    from perllm.sweep.cli import print_table

    _skip_seed_2(monkeypatch)
    sc = set_duration(load_scenario("paper-llama2-7b"), 20)
    sw = [Sweep.build(sc, "load_rps", [4.0])]
    res = run_sweep(sw, ["cloud-only"], [1, 2], processes=1, bound=True)[0]
    assert [d["seed"] for d in res.bound_skipped] == [2]
    (row,) = res.rows()
    assert row["seeds"] == 2 and row["bound_seeds"] == 1
    texts = _plot_texts(monkeypatch)
    write_outputs(res, tmp_path)
    assert texts.count("1/2 seeds") == 2  # on the success and energy panels
    # a one-point sweep's bound is a marker (its dashed line has no length: it was invisible)
    assert texts.count("bound marker _") == 2
    with (tmp_path / f"{sw[0].name}.csv").open() as fh:
        (csv_row,) = csv.DictReader(fh)
    assert csv_row["bound_seeds"] == "1" and csv_row["seeds"] == "2"
    console = Console(width=200, record=True)
    print_table(console, res.to_dict())
    text = console.export_text()
    assert text.count("†") == 5 and "the bound of only some seeds" in text  # 4 cells, note


def _free_cloud() -> Scenario:
    """A cloud GPU that draws no power behind links that cost nothing, and edge CPUs that
    draw power only when busy: the bound's least energy is 0 J (everything on the cloud),
    and a run on the edge spends more, an infinite ratio to it."""
    from perllm.profiles import default_catalogue

    data = load_scenario("paper-llama2-7b").model_dump(mode="json")
    hw = default_catalogue().hardware
    gpu = hw["a100-80gb-sxm"].model_dump(mode="json")
    gpu |= {"power_prefill_w": 0.0, "power_decode_w": 0.0, "power_idle_w": 0.0}
    cpu = hw["xeon-silver-4214r"].model_dump(mode="json") | {"power_idle_w": 0.0}
    data |= {"name": "free-cloud", "duration_s": 20.0}
    data["hardware"] = {"free-gpu": gpu, "cold-cpu": cpu}
    data["servers"][0]["hardware"], data["servers"][1]["hardware"] = "cold-cpu", "free-gpu"
    for s in data["servers"]:
        s["link"]["energy_uj_per_bit"] = 0.0
    return Scenario.model_validate(data)


def test_an_infinite_energy_ratio_is_shown_not_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An energy ratio to a 0 J bound is infinite; the seed mean skipped it, so with one
    other seed the row showed that seed's ratio alone, and with none it was empty ("—",
    as if not computed). The mean is now infinite: inf in the table and the CSV, null with
    `energy_ratio_inf_seeds` in the JSON, "∞" on the PNG."""
    from rich.console import Console

    from perllm.sweep.cli import print_table

    sw = [Sweep.build(_free_cloud(), "load_rps", [4.0])]
    res = run_sweep(sw, ["cloud-only", "edge-only"], [1, 2], processes=1, bound=True)[0]
    cloud, edge = res.rows()
    assert edge["energy_j_per_service"] > 0 and edge["bound_energy_lb_j_per_service"] == 0
    assert cloud["energy_ratio"] == 1.0 and edge["energy_ratio"] == math.inf
    # One seed infinite, the other not: the mean is infinite, not the other seed's.
    b2 = next(b for b in res.bound_per_seed if b["seed"] == 2)
    b2["distances"]["edge-only"]["energy_ratio"] = 3.0
    assert res.rows()[1]["energy_ratio"] == math.inf
    assert [r["energy_ratio_inf_seeds"] for r in res.rows()] == [0, 1]
    texts = _plot_texts(monkeypatch)
    write_outputs(res, tmp_path)
    assert "∞" in texts and "not computed" not in texts
    data = json.loads((tmp_path / f"{sw[0].name}.json").read_text())
    assert data["rows"][1]["energy_ratio"] is None
    assert data["rows"][1]["energy_ratio_inf_seeds"] == 1
    with (tmp_path / f"{sw[0].name}.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["energy_ratio"] for r in rows] == ["1.0", "inf"]
    assert [r["energy_ratio_inf_seeds"] for r in rows] == ["0", "1"]
    console = Console(width=200, record=True)
    print_table(console, data)
    edge_line = next(ln for ln in console.export_text().splitlines() if "edge-only" in ln)
    assert "inf" in edge_line


def test_a_point_without_requests_is_undefined_not_zero(tmp_path: Path) -> None:
    """A load too low for one arrival in the run reported 0 % success and the idle energy
    as J/service; its run metrics are null in the JSON, empty in the CSV, n/a in the table
    (said once), and its bound is skipped saying why."""
    res = runner.invoke(
        app,
        [
            *("sweep", "paper-llama2-7b", "--load", "1e-300,4", "--duration", "5"),
            *("-p", "greedy-deadline", "--out", str(tmp_path)),
        ],
    )
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "n/a: no request arrived in any seed of the point" in text
    assert "bound skipped: no request arrived" in text
    data = json.loads((tmp_path / "paper-llama2-7b-load.json").read_text())
    empty, four = data["rows"]
    assert empty["requests"] == 0 and empty["seeds_without_requests"] == 1
    for k in ("success_rate", "energy_j_per_service", "edge_share", "late_rate", "shed_rate"):
        assert empty[k] is None and four[k] is not None
    assert four["success_rate"] > 0
    with (tmp_path / "paper-llama2-7b-load.csv").open() as fh:
        row = next(csv.DictReader(fh))
    assert row["success_rate"] == "" and row["energy_j_per_service"] == ""
