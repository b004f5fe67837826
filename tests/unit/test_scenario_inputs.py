"""A demanding user's own scenario files: each input that once loaded or ran wrongly
(a silent wrong number, a traceback, unbounded memory) is refused naming its field."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from perllm.cli import app
from perllm.scenario import ScenarioError, load_scenario

PAPER = Path(__file__).parents[2] / "perllm/scenarios/paper-llama2-7b.yaml"


def base() -> dict[str, Any]:
    return yaml.safe_load(PAPER.read_text())


def write(tmp_path: Path, d: dict[str, Any]) -> Path:
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(d))
    return f


def test_a_repeated_key_is_refused_naming_its_line(tmp_path: Path) -> None:
    """PyYAML keeps the last of two equal keys: a second `duration_s` ran silently."""
    f = tmp_path / "s.yaml"
    text = PAPER.read_text()
    f.write_text(text.replace("duration_s: 1800", "duration_s: 1800\nduration_s: 5", 1))
    with pytest.raises(ScenarioError, match=r"not valid YAML: line \d+, column 1: duplicate "
                       r"key 'duration_s' \(first on line \d+\)"):  # fmt: skip
        load_scenario(f)
    f.write_text(text.replace("link: {", "link: {noise: 0.1, noise: 0.3, ", 1))
    with pytest.raises(ScenarioError, match="duplicate key 'noise'"):
        load_scenario(f)
    res = CliRunner().invoke(app, ["scenarios", "validate", str(f)])
    assert res.exit_code == 1 and "duplicate key 'noise'" in res.output


def test_a_merge_key_may_still_be_overridden(tmp_path: Path) -> None:
    """`<<: *anchor` then the key again is YAML's override, not a repeat."""
    f = tmp_path / "s.yaml"
    text = PAPER.read_text()
    text = text.replace("link: {bandwidth_mbps: 100,", "link: &l {bandwidth_mbps: 100,", 1)
    text = text.replace(
        "link: {bandwidth_mbps: 300, noise: 0.2, rtt_ms: 40, energy_uj_per_bit: 1.1}",
        "link: {<<: *l, bandwidth_mbps: 300}",
    )
    f.write_text(text)
    cloud = load_scenario(f).servers[-1].link
    assert (cloud.bandwidth_mbps, cloud.rtt_ms) == (300, 5)


def trace_world(tmp_path: Path, rows: str | bytes, own: bool = False) -> Any:
    """The paper testbed whose arrivals are the trace `rows` (the scenario-wide process,
    or chat's own with `own`), loaded and its requests drawn."""
    from perllm.world.workload import generate

    f = tmp_path / "t.csv"
    f.write_bytes(rows if isinstance(rows, bytes) else rows.encode())
    d = base()
    d["duration_s"] = 30
    if own:
        d["workload"]["classes"][0]["arrivals"] = {"kind": "trace", "file": "t.csv"}
    else:
        d["workload"]["arrivals"] = {"kind": "trace", "file": "t.csv"}
    return generate(load_scenario(write(tmp_path, d)), 1)


FIELDS = {False: r"workload\.arrivals\.file: ", True: r"workload\.classes\[0\]\.arrivals\.file: "}


@pytest.mark.parametrize("own", [False, True])
@pytest.mark.parametrize(
    ("rows", "why"),
    [
        # A NaN or infinite time was dropped without a word (a row lost).
        ("time_s\n1\nnan\n", r"line 3: the time is not finite \(nan\)"),
        ("time_s\n1\n-inf\n", r"line 3: the time is not finite"),
        # A negative or NaN token count became 1 token, or one drawn from the class.
        ("time_s,input_tokens,output_tokens\n1,5,6\n2,-3,6\n", r"line 3: a token count is"),
        ("time_s,input_tokens,output_tokens\n1,nan,6\n", r"line 2: a token count is a finite"),
        ("time_s,input_tokens\n1,inf\n", r"line 2: a token count is a finite number >= 0"),
        # Errors name the line.
        ("time_s\n1\n\n2\nabc\n", r"line 5: malformed row \(could not convert"),
        ("time_s,class\n1,chat\n2\n", r"line 3: malformed row \(only 1 cells\)"),
        # A missing column was said twice ("malformed row (… needs a time_s …)").
        (
            "when,cls\n1,chat\n",
            r"t\.csv needs a time_s or TIMESTAMP column \(its header: when,cls\)$",
        ),
        # A value no column reads was dropped without a word: a cell beyond the header, a
        # second number in a file without one, a value under a column without a name, a
        # column the format has not (`input_token`: prompts drawn from the class instead)
        # or one given twice (all but the first ignored).
        ("time_s,class\n1,chat,9\n", r"line 2: a value in cell 3 \('9'\), beyond the header's 2"),
        ("1\n2,5\n", r"line 2: a value in cell 2 \('5'\), beyond the one column \(arrival"),
        ("time_s,,class\n1,x,chat\n", r"line 2: a value in cell 2 \('x'\), under a header column"),
        (
            "time_s,input_token\n1,5\n",
            r"line 1: unknown column\(s\) \['input_token'\]; the format's columns: "
            r"time_s\[,class\]\[,input_tokens,output_tokens\]$",
        ),
        ("TIMESTAMP,ContextTokens,GeneratedTokens,time_s\n", r"unknown column\(s\) \['time_s'\]"),
        ("time_s,time_s\n1,2\n", r"line 1: column\(s\) \['time_s'\] twice"),
        # Not text: a UnicodeDecodeError traceback.
        (b"\xff\xfe\x00\x01time_s\n", r"t\.csv: not a UTF-8 text \(CSV\) file$"),
        ("time_s\n" + "1" * 200_000 + "\n", r"t\.csv: not a CSV file \(field larger than"),
    ],
)
def test_a_bad_trace_row_is_refused_naming_the_file_and_line(
    tmp_path: Path, rows: str | bytes, why: str, own: bool
) -> None:
    with pytest.raises(ScenarioError, match=FIELDS[own] + ".*" + why) as e:
        trace_world(tmp_path, rows, own)
    assert str(e.value).count("needs a time_s") <= 1


@pytest.mark.parametrize("own", [False, True])
def test_a_spreadsheets_byte_order_mark_is_no_part_of_the_header(tmp_path: Path, own: bool) -> None:
    """Excel's "CSV UTF-8" starts with a BOM: `\\ufefftime_s` was no `time_s` column."""
    r = trace_world(tmp_path, "\ufefftime_s\n1\n2\n", own)
    assert list(r.arrival[r.cls == 0] if own else r.arrival) == [1.0, 2.0]


@pytest.mark.parametrize("own", [False, True])
def test_a_spreadsheets_empty_trailing_cells_are_no_values(tmp_path: Path, own: bool) -> None:
    r = trace_world(tmp_path, "time_s,class,\n1,chat,\n2,chat\n3,chat,,\n", own)
    assert list(r.arrival[r.cls == 0]) == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("own", [False, True])
def test_a_file_without_a_header_may_have_empty_trailing_cells(tmp_path: Path, own: bool) -> None:
    """`1,` (a spreadsheet's column of seconds beside an empty one) was read as a header
    and refused: "needs a time_s or TIMESTAMP column (its header: 1,)"."""
    r = trace_world(tmp_path, "1,\n2,\n3\n", own)
    assert list(r.arrival[r.cls == 0] if own else r.arrival) == [1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    ("rows", "why"),
    [
        ("time_s,server,mbps,note\n0,cloud,50,x\n", r"line 1: unknown column\(s\) \['note'\]"),
        ("time_s,server,mbps\n0,edge-*,50\n\n0,cloud,50,60\n", r"line 4: a value beyond the"),
    ],
)
def test_a_bandwidth_trace_refuses_cells_beyond_its_columns(
    tmp_path: Path, rows: str, why: str
) -> None:
    """`0,cloud,50,60` (a second bandwidth?) ran with 50 Mbps, the 60 ignored unsaid."""
    from perllm.world.sim import World

    d = base() | {"duration_s": 10, "bandwidth": {"trace": "bw.csv"}}
    (tmp_path / "bw.csv").write_text(rows)
    with pytest.raises(ScenarioError, match=r"bandwidth\.trace: .*bw\.csv: " + why):
        World(load_scenario(write(tmp_path, d)), 1)
    (tmp_path / "bw.csv").write_text("time_s,server,mbps,\n0,cloud,50,\n")
    World(load_scenario(write(tmp_path, d)), 1)


def bw_world(tmp_path: Path, rows: str | bytes) -> Any:
    """The paper testbed under the bandwidth trace `rows`, loaded and its world built."""
    from perllm.world.sim import World

    f = tmp_path / "bw.csv"
    f.write_bytes(rows if isinstance(rows, bytes) else rows.encode())
    d = base() | {"duration_s": 10, "bandwidth": {"trace": "bw.csv"}}
    return World(load_scenario(write(tmp_path, d)), 1)


@pytest.mark.parametrize(
    "rows",
    [
        # Excel's "CSV UTF-8" BOM: `\ufefftime_s` was no time_s column ("needs columns").
        "\ufefftime_s,server,mbps\n0,cloud,50\n",
        # Spaces after the commas, as the arrival traces allow: " server" was no column.
        "time_s, server, mbps\n0, cloud, 50\n",
    ],
)
def test_a_bandwidth_trace_reads_as_an_arrival_trace_does(tmp_path: Path, rows: str) -> None:
    w = bw_world(tmp_path, rows)
    assert 40 <= w.bw[0, -1] <= 60  # (cloud: 50 Mbps ± 20 % noise, not its 300)


@pytest.mark.parametrize(
    ("rows", "why"),
    [
        (b"\xff\xfe\x00\x01time_s\n", r"not a UTF-8 text \(CSV\) file$"),  # (a traceback)
        ("time_s,server,mbps\n0,cloud," + "5" * 200_000 + "\n", r"not a CSV file \(field larger"),
    ],
)
def test_a_bandwidth_trace_that_is_no_csv_is_an_error_not_a_traceback(
    tmp_path: Path, rows: str | bytes, why: str
) -> None:
    with pytest.raises(ScenarioError, match=r"^bandwidth\.trace: .*bw\.csv: " + why):
        bw_world(tmp_path, rows)


def test_a_bandwidth_trace_gone_since_loading_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    from perllm.world.sim import World

    (tmp_path / "bw.csv").write_text("time_s,server,mbps\n0,cloud,50\n")
    sc = load_scenario(write(tmp_path, base() | {"bandwidth": {"trace": "bw.csv"}}))
    (tmp_path / "bw.csv").unlink()
    (tmp_path / "bw.csv").mkdir()
    with pytest.raises(ScenarioError, match=r"^bandwidth\.trace: .*bw\.csv: cannot read"):
        World(sc, 1)


def test_a_bandwidth_trace_has_at_most_max_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every row was kept as a dict before any was read: a file of any size was held
    whole (arrival traces stop at MAX_TRACE_ROWS)."""
    import perllm.world.links as links

    monkeypatch.setattr(links, "MAX_BANDWIDTH_ROWS", 3)
    rows = "time_s,server,mbps\n" + "".join(f"{i},cloud,50\n" for i in range(3))
    bw_world(tmp_path, rows)
    with pytest.raises(ScenarioError, match=r"bw\.csv: more than 3 rows \(line 5\)"):
        bw_world(tmp_path, rows + "3,cloud,60\n")


def test_a_scenario_wide_trace_drops_rows_before_zero(tmp_path: Path) -> None:
    """As a class's own trace: an arrival at -5 s ran, in the run's last slot's bandwidth."""
    r = trace_world(tmp_path, "time_s\n-5\n1\n2\n40\n")
    assert list(r.arrival) == [1.0, 2.0]


def test_a_class_trace_without_a_row_of_its_class_is_refused(tmp_path: Path) -> None:
    """A typo in the `class` column (`Chat`) gave the class no arrivals, silently."""
    with pytest.raises(ScenarioError, match=r"workload\.classes\[0\]\.arrivals\.file: .*t\.csv: "
                       r"no row of class 'chat' \(its classes: \['Chat', 'qa'\]\)"):  # fmt: skip
        trace_world(tmp_path, "time_s,class\n1,Chat\n2,qa\n", own=True)


def test_a_trace_longer_than_a_run_can_replay_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows were kept as a dict each (~1 kB): a multi-GB trace took all memory."""
    import perllm.world.trace as wl

    monkeypatch.setattr(wl, "MAX_TRACE_ROWS", 3)
    assert len(trace_world(tmp_path, "time_s\n1\n2\n3\n")) == 3
    with pytest.raises(ScenarioError, match=r"t\.csv: more than 3 rows \(line 5\)"):
        trace_world(tmp_path, "time_s\n1\n2\n3\n4\n")


def test_a_trace_gone_since_loading_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("time_s\n1\n")
    d = base()
    d["workload"]["arrivals"] = {"kind": "trace", "file": "t.csv"}
    f = write(tmp_path, d)
    sc = load_scenario(f)
    (tmp_path / "t.csv").unlink()
    (tmp_path / "t.csv").mkdir()
    from perllm.world.workload import generate

    with pytest.raises(ScenarioError, match=r"workload\.arrivals\.file: .*t\.csv: cannot read"):
        generate(sc, 1)


def test_simulate_says_a_binary_trace_is_one(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_bytes(b"\xff\xfe\x00\x01")
    d = base()
    d["workload"]["arrivals"] = {"kind": "trace", "file": "t.csv"}
    res = CliRunner().invoke(
        app, ["simulate", str(write(tmp_path, d)), "-p", "cloud-only", "--seeds", "1", "--no-bound"]
    )
    assert res.exit_code == 2, res.output
    assert "not a UTF-8 text (CSV) file" in res.output and "Traceback" not in res.output


def test_a_scenario_wide_trace_declares_each_classs_rate(tmp_path: Path) -> None:
    """Every class of a scenario-wide trace declared 0 req/s (its share of a rate_rps the
    trace has not): the traffic weights of the cost model, the twin's arrivals and the
    LLMServices' traffic all took the mix as empty."""
    d = base()  # chat 0.5, qa 0.2, code 0.15, rag 0.1, mm 0.05
    d["duration_s"] = 10
    d["workload"]["arrivals"] = {"kind": "trace", "file": "t.csv"}
    (tmp_path / "t.csv").write_text(
        "time_s,class\n" + "".join(f"{i / 4},{'qa' if i % 4 else 'chat'}\n" for i in range(48))
    )
    sc = load_scenario(write(tmp_path, d))  # 40 rows in [0, 10 s): 10 chat, 30 qa
    assert [s.traffic.rate_rps for s in sc.services()] == [1.0, 3.0, 0.0, 0.0, 0.0]
    (tmp_path / "t.csv").write_text("".join(f"{i / 4}\n" for i in range(48)))
    sc = load_scenario(write(tmp_path, d))  # no class column: 4 req/s drawn by share
    rates = [s.traffic.rate_rps for s in sc.services()]
    assert rates == pytest.approx([2.0, 0.8, 0.6, 0.4, 0.2])


@pytest.mark.parametrize(
    ("change", "why"),
    [  # Each ran out of memory drawing its run (an ArrayMemoryError traceback).
        ({"duration_s": 1e12}, r"duration_s: 1e\+12 s would draw 4e\+12 requests, more than"),
        ({"slot_s": 1e-6}, r"duration_s: 1800 s in slots of 1e-06 s on 6 servers is "),
    ],
)
def test_a_run_too_large_to_hold_is_refused_at_load(
    tmp_path: Path, change: dict[str, Any], why: str
) -> None:
    with pytest.raises(ScenarioError, match=r"s\.yaml: invalid scenario:\n  " + why):
        load_scenario(write(tmp_path, base() | change))


def test_a_fleet_too_large_is_refused_before_it_is_expanded(tmp_path: Path) -> None:
    d = base()
    d["servers"][0]["count"] = 10**7  # (expanding it took minutes and gigabytes)
    with pytest.raises(
        ScenarioError, match=r"servers: 10,000,001 servers after count expansion, more than 10,000"
    ):
        load_scenario(write(tmp_path, d))


def test_simulate_refuses_a_duration_override_too_long_to_draw() -> None:
    res = CliRunner().invoke(
        app, ["simulate", "paper-llama2-7b", "--duration", "1e10", "-p", "cloud-only"]
    )
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "would draw 4e+10 requests" in res.output


@pytest.mark.parametrize(
    "dist",
    [
        {"kind": "constant", "value": 5000, "max": 100},  # declared 5,000, drew 100
        {"kind": "uniform", "low": 0, "high": 1000, "max": 200},  # declared 200, drew ~180
        {"kind": "uniform", "low": 300, "high": 1000, "max": 200},
        {"kind": "lognormal", "mu": 6, "sigma": 1.5, "max": 2000},  # 1,244 vs ~770
        {"kind": "lognormal", "mu": 5, "sigma": 40, "max": 1000},  # declared min(inf, max)
        {"kind": "quantiles", "probs": [0, 0.5, 0.9, 1], "values": [1, 100, 1000, 8000]}
        | {"max": 500},
        {"kind": "preset", "name": "azure-conv-input", "max": 1000},
        {"kind": "lognormal", "mu": 6, "sigma": 1.5},  # (unclipped: as before)
    ],
)
def test_a_clipped_distribution_declares_the_mean_it_draws(dist: dict[str, Any]) -> None:
    """The declared mean (a service's traffic, the scheduler's only knowledge of a class's
    lengths) ignored `max` for constant and uniform, and took min(mean, max) otherwise."""
    import numpy as np

    from perllm.scenario import Dist
    from perllm.scenario.dists import dist_mean
    from perllm.world.workload import draw

    d = Dist.model_validate(dist)
    drawn = float(draw(d, 400_000, np.random.default_rng(1)).mean())
    assert dist_mean(d) == pytest.approx(drawn, rel=0.02)


def test_an_overflowing_mean_is_refused_without_a_numpy_warning(tmp_path: Path) -> None:
    import warnings

    d = base()
    d["workload"]["classes"][0]["input_tokens"] = {"kind": "lognormal", "mu": 5, "sigma": 50}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (a RuntimeWarning with its source line on stderr)
        with pytest.raises(ScenarioError, match=r"input_tokens \(its mean\): Input should be a"):
            load_scenario(write(tmp_path, d))


@pytest.mark.parametrize(
    ("dist", "why"),
    [
        (
            {"kind": "constant", "value": 5, "mu": 3},
            r"input_tokens\.mu: not a parameter of kind "
            r"constant \(it takes value\)",
        ),
        ({"kind": "lognormal", "mu": 5, "sigma": 1, "low": 10}, r"input_tokens\.low: not a"),
        (
            {"kind": "quantiles", "probs": [0, 1], "values": [-100, -1]},
            r"input_tokens\.values: each >= 0",
        ),
    ],
)
def test_a_distribution_parameter_it_would_ignore_is_refused(
    tmp_path: Path, dist: dict[str, Any], why: str
) -> None:
    """Each loaded: the stray parameter ignored, the negative lengths made 1 token."""
    d = base()
    d["workload"]["classes"][0]["input_tokens"] = dist
    with pytest.raises(ScenarioError, match=r"workload\.classes\[0\]\." + why):
        load_scenario(write(tmp_path, d))


def test_a_class_whose_every_floor_is_out_of_reach_is_refused(tmp_path: Path) -> None:
    """A quality floor above every variant a class may run loaded, and every one of its
    requests then failed under every policy. A mix with a reachable floor stays valid (a
    share of requests only some servers, or none, can serve is a scenario to study)."""
    d = base()
    (chat,) = [c for c in d["workload"]["classes"] if c["name"] == "chat"]
    chat["min_quality"] = {"values": [0.999]}
    with pytest.raises(ScenarioError, match=r"classes\[\d\]\.min_quality\.values: class "
                       r"'chat''s lowest floor 0.999 is above the best quality"):  # fmt: skip
        load_scenario(write(tmp_path, d))
    chat["min_quality"] = {"values": [0.0, 0.999], "weights": [0.0, 1.0]}  # 0 never drawn
    with pytest.raises(ScenarioError, match=r"lowest floor 0\.999"):
        load_scenario(write(tmp_path, d))
    chat["min_quality"] = {"values": [0.0, 0.999], "weights": [0.5, 0.5]}
    assert load_scenario(write(tmp_path, d)).name == d["name"]


def _window(at_s: float, until_s: float, factor: float, **kw: Any) -> dict[str, Any]:
    return {"at_s": at_s, "until_s": until_s, "factor": factor, **kw}


FLOOR = r"below the 0\.001 Mbps \(1 kbit/s\) a link has at least"
CLOUD = ["cloud"]


@pytest.mark.parametrize(
    ("server", "bandwidth", "why"),
    [
        (  # every upload over the link took inf seconds: cloud-only served nothing
            {"link": {"bandwidth_mbps": 1e-300}},
            {},
            r"servers\[1\]\.link\.bandwidth_mbps: Input should be greater than or equal to "
            r"0\.001$",
        ),
        (  # J/service over 1e16
            {"perf_scale": 1e-300},
            {},
            r"servers\[1\]\.perf_scale: Input should be greater than or equal to 0\.001$",
        ),
        (  # each factor > 0, their product 1e-300 from 7 s to 9 s
            {},
            {
                "windows": [
                    _window(5, 10, 1e-150, servers=CLOUD),
                    _window(7, 9, 1e-150, servers=CLOUD),
                ]
            },
            r"bandwidth\.windows: server 'cloud''s link would be 3e-298 Mbps from 7 s \(300 Mbps "
            r"× the windows' factor 1e-300\), " + FLOOR,
        ),
    ],
)
def test_a_link_or_server_below_its_physical_floor_is_refused(
    tmp_path: Path, server: dict[str, Any], bandwidth: dict[str, Any], why: str
) -> None:
    d = base()
    cloud = d["servers"][1]
    cloud.update({k: v for k, v in server.items() if k != "link"})
    cloud["link"].update(server.get("link", {}))
    d["bandwidth"] = bandwidth
    with pytest.raises(ScenarioError, match=r"s\.yaml: invalid scenario:\n  " + why):
        load_scenario(write(tmp_path, d))


def test_a_link_at_its_floor_runs_to_finite_numbers(tmp_path: Path) -> None:
    """The floors keep every time and energy finite: 1 kbit/s links, servers 1,000×
    slower than their profile, a window taking a link to exactly 1 kbit/s."""
    import numpy as np

    from perllm import policies
    from perllm.world.sim import simulate

    d = base() | {"duration_s": 10}
    for s in d["servers"]:
        s["link"]["bandwidth_mbps"] = 1e-3 if s["tier"] == "edge" else 1.0
        s["perf_scale"] = 1e-3
    d["bandwidth"] = {"windows": [_window(2, 6, 1e-3, servers=["cloud"])]}
    sc = load_scenario(write(tmp_path, d))
    for policy in ("edge-only", "cloud-only"):
        r = simulate(sc, policies.make(policy), seed=1)
        ran = ~(r.shed | r.rejected)
        assert ran.any() and np.isfinite(r.time).all() and np.isfinite(r.finish[ran]).all()
        assert np.isfinite(list(r.energy_breakdown_j.values())).all() and r.horizon_s < 1e12


def test_a_bandwidth_trace_below_the_floor_is_refused_naming_its_line(tmp_path: Path) -> None:
    """A trace's mbps was only > 0; a window over a trace's value is checked as it is
    read (the load cannot know the file's values)."""
    from perllm.world.sim import World

    d = base() | {"duration_s": 10}
    d["bandwidth"] = {"trace": "bw.csv"}
    (tmp_path / "bw.csv").write_text("time_s,server,mbps\n0,edge-*,50\n3,cloud,1e-300\n")
    sc = load_scenario(write(tmp_path, d))
    with pytest.raises(ScenarioError, match=r"bandwidth\.trace: .*bw\.csv: line 3: mbps 1e-300 "
                       r"is outside \[0\.001, 1e\+07\]"):  # fmt: skip
        World(sc, 1)
    (tmp_path / "bw.csv").write_text("time_s,server,mbps\n3,cloud,0.01\n")
    d["bandwidth"]["windows"] = [_window(4, 6, 0.01, servers=["cloud"])]
    sc = load_scenario(write(tmp_path, d))  # (300 Mbps × 0.01 is fine at load)
    with pytest.raises(ScenarioError, match=r"bandwidth\.windows: server 'cloud''s link would "
                       r"be 0\.0001 Mbps from 4 s, " + FLOOR):  # fmt: skip
        World(sc, 1)


CEILING = r"above the 10,000,000 Mbps \(10 Tbit/s\) a link has at most"


def test_a_bandwidth_window_above_the_link_ceiling_is_refused(tmp_path: Path) -> None:
    """Only a window's floor was checked: a boost of 1e300 loaded, and the bound's bits per
    second overflowed to inf (a RuntimeWarning, then inf upload energies and times)."""
    from perllm.world.sim import World

    d = base() | {"duration_s": 10}
    d["bandwidth"] = {"windows": [_window(2, 4, 1e5), _window(3, 6, 1e300, servers=CLOUD)]}
    with pytest.raises(ScenarioError, match=r"bandwidth\.windows: server 'cloud''s link would "
                       r"be 3e\+307 Mbps from 3 s \(300 Mbps × the windows' factor 1e\+305\), "
                       + CEILING):  # fmt: skip
        load_scenario(write(tmp_path, d))
    d["bandwidth"] = {"windows": [_window(2, 4, 1e5, servers=CLOUD)]}  # 3e7 Mbps
    with pytest.raises(ScenarioError, match=r"would be 3e\+07 Mbps from 2 s .*" + CEILING):
        load_scenario(write(tmp_path, d))
    d["bandwidth"] = {"windows": [_window(2, 4, 1e4, servers=CLOUD)]}  # 3e6 Mbps: fine
    assert load_scenario(write(tmp_path, d)).bandwidth.windows[0].factor == 1e4
    # Over a trace's value, as the run reads it.
    (tmp_path / "bw.csv").write_text("time_s,server,mbps\n3,cloud,1e6\n")
    d["bandwidth"] = {"trace": "bw.csv", "windows": [_window(4, 6, 100, servers=CLOUD)]}
    sc = load_scenario(write(tmp_path, d))
    with pytest.raises(ScenarioError, match=r"bandwidth\.windows: server 'cloud''s link would "
                       r"be 1e\+08 Mbps from 4 s, " + CEILING):  # fmt: skip
        World(sc, 1)


def test_a_sweep_below_the_link_floor_is_refused() -> None:
    """The sweep sets links with `model_copy`, which validates nothing."""
    from perllm.scenario.load import check_services
    from perllm.sweep.transforms import set_cloud_bandwidth

    sc = set_cloud_bandwidth(load_scenario(PAPER), 1e-300)
    with pytest.raises(ScenarioError, match=r"servers\[1\]\.link\.bandwidth_mbps: 1e-300 Mbps is "
                       + FLOOR):  # fmt: skip
        check_services(sc, "sweep")


@pytest.mark.parametrize(
    ("field", "dist", "why"),
    [
        (  # ran as 4,095-token prompts, declaring 10,000
            "input_tokens",
            {"kind": "constant", "value": 10_000},
            r"class 'chat''s shortest prompt \(10,000 tokens\) and shortest output "
            r"\(1\) do not fit llama2-7b's context of 4,096 tokens: every prompt would be "
            r"clipped to at most 4,095 tokens",
        ),
        ("input_tokens", {"kind": "uniform", "low": 4096, "high": 9000}, r"\(4,096 tokens\)"),
        ("input_tokens", {"kind": "quantiles", "probs": [0, 1], "values": [5000, 6000]}, "5,000"),
        ("input_tokens", {"kind": "lognormal", "mu": 9, "sigma": 0}, r"\(8,103 tokens\)"),
        (  # outputs get at most half the context
            "output_tokens",
            {"kind": "constant", "value": 3000},
            r"class 'chat''s shortest output \(3,000 tokens\) is more than half "
            r"of llama2-7b's context of 4,096 tokens: every output would be clipped to 2,048",
        ),
    ],
)
def test_a_class_whose_every_request_would_be_clipped_to_the_context_is_refused(
    tmp_path: Path, field: str, dist: dict[str, Any], why: str
) -> None:
    """The world clips each request to its model's context: a class whose shortest prompt
    cannot fit ran other lengths than it declared, without a word."""
    d = base()
    d["workload"]["classes"][0][field] = dist
    if field == "input_tokens":
        d["workload"]["classes"][0]["output_tokens"] = {"kind": "constant", "value": 0}
    with pytest.raises(ScenarioError, match=rf"workload\.classes\[0\]\.{field}: .*" + why):
        load_scenario(write(tmp_path, d))


@pytest.mark.parametrize(
    "dist",
    [
        {"kind": "constant", "value": 10_000, "max": 4000},  # its `max` keeps it inside
        {"kind": "uniform", "low": 3000, "high": 9000},  # a tail beyond: the documented cut
        {"kind": "lognormal", "mu": 9, "sigma": 0.5},
    ],
)
def test_a_class_whose_tail_is_clipped_to_the_context_loads(
    tmp_path: Path, dist: dict[str, Any]
) -> None:
    d = base()
    d["workload"]["classes"][0]["input_tokens"] = dist
    assert load_scenario(write(tmp_path, d)).workload.classes[0].input_tokens.kind == dist["kind"]


@pytest.mark.parametrize("own", [False, True])
def test_a_trace_is_read_once_per_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, own: bool
) -> None:
    """Each class's declared rate read the trace: a scenario-wide trace (up to 10M rows)
    was parsed once per class and again by the rate-window check (10 times for the paper
    mix of 5 classes); a file that several classes replay, once per class."""
    import perllm.world.trace as tr

    reads: list[str] = []
    columns = tr.read_columns
    monkeypatch.setattr(
        tr, "read_columns", lambda path, label: reads.append(path) or columns(path, label)
    )
    (tmp_path / "t.csv").write_text(
        "time_s,class\n" + "".join(f"{i / 4},{['chat', 'qa'][i % 2]}\n" for i in range(40))
    )
    d = base() | {"duration_s": 10}
    d["workload"]["rate_windows"] = [_window(2, 4, 2.0)]
    if own:
        for c in d["workload"]["classes"][:2]:
            c["arrivals"] = {"kind": "trace", "file": "t.csv"}
    else:
        d["workload"]["arrivals"] = {"kind": "trace", "file": "t.csv"}
    sc = load_scenario(write(tmp_path, d))
    assert len(reads) == 1
    assert [s.traffic.rate_rps for s in sc.services()][:2] == [2.0, 2.0]
    assert len(reads) == 2  # (services() reads it once too)


def test_an_energy_weight_that_would_overflow_is_refused(tmp_path: Path) -> None:
    """Weights near 1e308 loaded; weight × energy overflowed and inf − inf made the cost
    model's energies NaN, so CS-UCB and greedy-deadline placed requests otherwise (97 %
    success for greedy-deadline instead of 100 % on the paper testbed), in silence."""
    import warnings

    from perllm import policies
    from perllm.world.sim import simulate

    d = base() | {"duration_s": 5, "weights": {"tran": 1e308, "infer": 1.0, "idle": 1e308}}
    with pytest.raises(ScenarioError, match=r"invalid scenario:\n  weights\.tran: Input should "
                       r"be less than or equal to 1000000\n  weights\.idle: "):  # fmt: skip
        load_scenario(write(tmp_path, d))
    d["weights"] = {"tran": 1e6, "infer": 1e6, "idle": 1e6}  # the largest: still finite
    sc = load_scenario(write(tmp_path, d))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for policy in ("perllm", "greedy-deadline"):
            simulate(sc, policies.make(policy), seed=1)


def test_shares_that_would_overflow_their_sum_are_refused_naming_the_share(
    tmp_path: Path,
) -> None:
    """Shares of 1e308 summed to inf: each class's rate was NaN, refused as
    `workload.classes[0].arrivals.rate_rps (the class's mean rate)`, a field not in the file."""
    d = base()
    for c in d["workload"]["classes"]:
        c["share"] = 1e308
    with pytest.raises(ScenarioError, match=r"invalid scenario:\n  workload\.classes\[0\]\.share: "
                       r"Input should be less than or equal to 1000000000\n"):  # fmt: skip
        load_scenario(write(tmp_path, d))
    for c in d["workload"]["classes"]:
        c["share"] = 1e9  # the largest: a class's rate is its share of the 4 req/s
    sc = load_scenario(write(tmp_path, d))
    assert sc.services()[0].traffic.rate_rps == pytest.approx(4.0 / len(d["workload"]["classes"]))


@pytest.mark.parametrize(
    ("kind", "entry", "why"),
    [
        ("gpu", {"max_seqs": 10**12}, r"hardware\.mine\.max_seqs: .* less than or equal to 65536"),
        (
            "cpu",
            {"mem_bw_eff_gbps": 1e-300},
            r"servers\[0\]\.hardware: mine running .* would run "
            r"[0-9.]+e\+30\d requests at once",
        ),
        ("model", {"params_b": 1e-300}, r".* would run [0-9.]+e\+30\d requests at once"),
        (
            "model",
            {"weights_gb": {"fp16": 1e5, "q4_k_m": 1e5}},
            r"servers\[0\]\.hardware: .* would run 69,328 requests at once .*: check the "
            r"catalogue's hardware 'xeon-silver-4214r' and models\.mine",
        ),
    ],
)
def test_a_catalogue_entry_with_an_absurd_concurrency_is_refused(
    tmp_path: Path, kind: str, entry: dict[str, Any], why: str
) -> None:
    """A scenario's own `hardware:`/`models:` entry was bounded only by > 0: the bound's
    arrays of one slot per concurrent request ran out of memory (7 TiB for max_seqs 1e12),
    or a CPU's derived concurrency divided by zero, each a traceback."""
    d = own_entry(kind, entry)
    with pytest.raises(ScenarioError, match=r"s\.yaml: invalid scenario:\n  " + why):
        load_scenario(write(tmp_path, d))
    res = CliRunner().invoke(app, ["scenarios", "validate", str(tmp_path / "s.yaml")])
    assert res.exit_code == 1 and "Traceback" not in res.output


def own_entry(kind: str, entry: dict[str, Any], cloud_only: bool = False) -> dict[str, Any]:
    """The paper testbed with its model (kind "model"), its CPU ("cpu") or its GPU ("gpu")
    replaced by a scenario's own entry `mine`: the catalogue's, with `entry`'s fields."""
    from perllm.profiles import default_catalogue

    cat = default_catalogue()
    d = base()
    d["duration_s"] = 20
    if kind == "model":
        d["models"] = {"mine": cat.models["llama2-7b"].model_dump(mode="json") | entry}
        for c in d["workload"]["classes"]:
            c["model"] = "mine"
    else:
        key = "a100-80gb-sxm" if kind == "gpu" else "xeon-silver-4214r"
        d["hardware"] = {"mine": cat.hardware[key].model_dump(mode="json") | entry}
        d["servers"][1 if kind == "gpu" else 0]["hardware"] = "mine"
    if cloud_only:
        for c in d["workload"]["classes"]:
            c["allowed_tiers"] = ["cloud"]
    return d


@pytest.mark.parametrize(
    ("kind", "entry", "field"),
    [
        ("model", {"params_b": 1e300}, "models.mine.params_b: .* 100000"),
        ("cpu", {"mem_bw_eff_gbps": 1e300}, "hardware.mine.mem_bw_eff_gbps: .* 1000000"),
        ("gpu", {"mem_bw_eff_gbps": 1e300}, "hardware.mine.mem_bw_eff_gbps: .* 1000000"),
        ("gpu", {"peak_tflops": 1e300}, "hardware.mine.peak_tflops: .* 1000000"),
        ("gpu", {"power_prefill_w": 1e300}, "hardware.mine.power_prefill_w: .* 1000000"),
        ("cpu", {"power_idle_w": 1e300}, "hardware.mine.power_idle_w: .* 1000000"),
        ("cpu", {"kappa": 1e300}, "hardware.mine.kappa: .* 1000"),
        ("gpu", {"ttft_overhead_s": 1e300}, "hardware.mine.ttft_overhead_s: .* 3600"),
        ("model", {"weights_gb": {"fp16": 1e300}}, r"models.mine.weights_gb.fp16: .* 1000000"),
    ],
)
def test_a_catalogue_field_beyond_any_machine_is_refused_naming_it(
    tmp_path: Path, kind: str, entry: dict[str, Any], field: str
) -> None:
    """A `models:`/`hardware:` entry's numbers were bounded only by > 0: params_b 1e300 made
    every GPU time NaN (a RuntimeWarning, then a linprog traceback in the bound), a CPU's
    mem_bw_eff_gbps 1e300 NaN decode times, a power of 1e300 W a report of 1e301×."""
    f = write(tmp_path, own_entry(kind, entry))
    with pytest.raises(ScenarioError, match=r"s\.yaml: invalid scenario:\n  " + field):
        load_scenario(f)


@pytest.mark.parametrize(
    ("kind", "entry", "why"),
    [
        (
            "gpu",
            {"peak_tflops": 1e-300},
            r"servers\[1\]\.hardware: mine running workload\.classes\[0\]\.model llama2-7b "
            r"\(fp16\): its typical request \(1,203 prompt and 221 output tokens\) would take "
            r"3\.9\d+e\+301 s alone on an idle server .* more than 10,000,000 s: check "
            r"hardware\.mine and the catalogue's models 'llama2-7b'",
        ),
        ("cpu", {"kappa": 1e-300}, r"servers\[0\]\.hardware: mine .* would take 5\.\d+e\+30"),
        ("cpu", {"prefill_coeff": 1e-9}, r"servers\[0\]\.hardware: mine .* would take"),
        ("gpu", {"mem_bw_eff_gbps": 1e-12}, r"servers\[1\]\.hardware: mine .* would take"),
    ],
)
def test_a_catalogue_entry_too_slow_to_serve_a_request_is_refused(
    tmp_path: Path, kind: str, entry: dict[str, Any], why: str
) -> None:
    """Tiny speeds passed `> 0`: 1e-300 TFLOPS made each request take 4e301 s (its energy
    overflowed in the report). A class's typical request takes at most 1e7 s alone."""
    f = write(tmp_path, own_entry(kind, entry))
    with pytest.raises(ScenarioError, match=r"s\.yaml: invalid scenario:\n  " + why):
        load_scenario(f)


def test_a_combination_of_fields_beyond_a_float_is_refused_naming_both(tmp_path: Path) -> None:
    """Each field within its bound, a model of 1e-305 B parameters on an A100 prefilled at
    inf tokens/s, every prompt in 0 s: a derived rate is finite and > 0 or refused."""
    f = write(tmp_path, own_entry("model", {"params_b": 1e-305}, cloud_only=True))
    with pytest.raises(
        ScenarioError,
        match=r"servers\[1\]\.hardware: a100-80gb-sxm running .*: its prefill rate "
        r"\(prefill_mfu × peak_tflops / params_b\) is inf tokens/s: check the catalogue's "
        r"hardware 'a100-80gb-sxm' and models\.mine",
    ):
        load_scenario(f)
    res = CliRunner().invoke(app, ["scenarios", "validate", str(f)])
    assert res.exit_code == 1 and "Traceback" not in res.output


def test_a_slow_but_finite_catalogue_entry_still_loads_and_runs(tmp_path: Path) -> None:
    """The bounds are far from real entries: a GPU of 1e-3 TFLOPS (seconds a token) runs."""
    import numpy as np

    from perllm import policies
    from perllm.world.sim import simulate

    sc = load_scenario(write(tmp_path, own_entry("gpu", {"peak_tflops": 1e-3})))
    res = simulate(sc, policies.make("greedy-deadline"), 1)
    assert len(res.time) > 0 and np.isfinite(res.energy_infer_j).all()


def _set(d: Any, path: str, value: object) -> None:
    """Set `value` at a dotted YAML path with [i] indices (`servers[0].count`)."""
    keys: list[str | int] = [int(k) if k.isdigit() else k for k in re.findall(r"[^.\[\]]+", path)]
    for k in keys[:-1]:
        d = d[k]
    d[keys[-1]] = value


LOOSE_NUMBERS = [
    "duration_s",
    "slot_s",
    "speed_noise",
    "weights.idle",
    "servers[0].count",
    "servers[0].perf_scale",
    "servers[0].link.bandwidth_mbps",
    "servers[0].link.rtt_ms",
    "admission.timeout_s",
    "workload.arrivals.rate_rps",
    "workload.classes[0].share",
    "workload.classes[1].input_tokens.sigma",
    "workload.classes[0].min_quality.values[0]",
    "bandwidth.windows[0].factor",
    "hardware.mine.cpu_cores",
    "hardware.mine.power_idle_w",
    "models.mine.layers",
    "models.mine.params_b",
    "models.mine.weights_gb.q4_k_m",
]


@pytest.mark.parametrize("value", [True, "2"])
@pytest.mark.parametrize("path", LOOSE_NUMBERS)
def test_a_boolean_or_a_string_is_no_number(tmp_path: Path, path: str, value: object) -> None:
    """Outside the service fields numbers were lax: `count: true` ran one server,
    `duration_s: "20"` 20 s. Each is refused naming its field."""
    from perllm.profiles import default_catalogue

    cat = default_catalogue()
    d = base()
    d["models"] = {"mine": cat.models["llama2-7b"].model_dump(mode="json")}
    d["hardware"] = {"mine": cat.hardware["xeon-silver-4214r"].model_dump(mode="json")}
    d["admission"] = {"mode": "timeout", "timeout_s": 30}
    d["weights"] = {"tran": 1, "infer": 1, "idle": 1}
    d["bandwidth"] = {"windows": [{"at_s": 10, "until_s": 20, "factor": 0.5}]}
    assert d["workload"]["classes"][1]["input_tokens"]["kind"] == "lognormal"
    load_scenario(write(tmp_path, d))  # (valid as it is)
    _set(d, path, value)
    want = re.escape(path) + r": Input should be a valid (number|integer)"
    with pytest.raises(ScenarioError, match=want):
        load_scenario(write(tmp_path, d))


def test_integers_are_still_numbers_and_enums_still_strings(tmp_path: Path) -> None:
    """Strict numbers take an int where a float is meant (`duration_s: 20`); an enum is
    still its string (`tier: edge`), which strict mode on a whole model would refuse."""
    d = base()
    d["duration_s"] = 20
    d["servers"][0]["link"]["bandwidth_mbps"] = 100
    d["workload"]["classes"][0]["variants"] = [
        {"tier": "edge", "precision": "q4_k_m"},
        {"tier": "cloud", "precision": "fp16", "quality": 1},
    ]
    sc = load_scenario(write(tmp_path, d))
    assert sc.duration_s == 20.0 and isinstance(sc.duration_s, float)
    assert sc.servers[0].tier.value == "edge"


@pytest.mark.parametrize(
    ("name", "count", "why"),
    [
        ("e" * 300, 1, r"servers\[0\]\.name: node name 'e+'… is 300 characters, more than 63"),
        ("e" * 61, 10, r"is 64 characters after count expansion, more than 63: .*hostname"),
    ],
)
def test_a_server_name_too_long_for_a_node_is_refused(
    tmp_path: Path, name: str, count: int, why: str
) -> None:
    """300 characters were accepted; `perllm cluster up` then made a KWOK node whose
    kubernetes.io/hostname label (its name) is over Kubernetes' 63 characters."""
    d = base()
    d["servers"][0].update(name=name, count=count)
    with pytest.raises(ScenarioError, match=why):
        load_scenario(write(tmp_path, d))
    d["servers"][0].update(name=name[: 63 - len(f"-{count}")] if count > 1 else name[:63])
    nodes = [n for n, _ in load_scenario(write(tmp_path, d)).expanded_servers()]
    assert max(len(n) for n in nodes) == 63


def test_a_class_name_too_long_for_an_llmservice_is_refused(tmp_path: Path) -> None:
    """A class is the LLMService of its name in a dev cluster; the operator refuses one of
    more than 53 characters (its child Service <name>-predictor is at most 63)."""
    d = base()
    d["workload"]["classes"][0]["name"] = "c" * 300
    with pytest.raises(
        ScenarioError,
        match=r"workload\.classes\[0\]\.name: 'c+'… is 300 characters, more than 53: a class "
        r"is the LLMService of its name, whose child Service <name>-predictor",
    ):
        load_scenario(write(tmp_path, d))
    d["workload"]["classes"][0]["name"] = "c" * 53
    assert load_scenario(write(tmp_path, d)).workload.classes[0].name == "c" * 53


def test_a_class_name_starting_with_a_digit_is_refused(tmp_path: Path) -> None:
    """'1chat' loaded (the contract's pattern lets a digit lead), but the operator refuses
    an LLMService of that name (a DNS-1035 label), so `perllm cluster up` could not run it."""
    d = base()
    d["workload"]["classes"][0]["name"] = "1chat"
    with pytest.raises(
        ScenarioError, match=r"workload\.classes\[0\]\.name: '1chat' must start with a letter"
    ):
        load_scenario(write(tmp_path, d))


@pytest.mark.parametrize("key", ["my gpu", "g" * 64, "-gpu", "gpu/1"])
def test_a_hardware_key_that_is_no_label_value_is_refused(tmp_path: Path, key: str) -> None:
    """A `hardware:` key is the dev cluster's perllm.io/hardware node label: 'my gpu' or 64
    characters loaded and `perllm cluster up` made a Node the apiserver refuses."""
    cat = yaml.safe_load((Path(__file__).parents[2] / "perllm/data/catalogue.yaml").read_text())
    d = base()
    d["hardware"] = {key: next(iter(cat["hardware"].values()))}
    with pytest.raises(ScenarioError, match=r"hardware: '.*': a hardware key is the value of"):
        load_scenario(write(tmp_path, d))
    d["hardware"] = {"my-gpu_1.x": d["hardware"][key]}
    assert "my-gpu_1.x" in load_scenario(write(tmp_path, d)).hardware


def test_a_tier_twice_in_allowed_tiers_is_refused(tmp_path: Path) -> None:
    """`allowed_tiers: [edge, edge]` loaded (the LLMService CRD's allowedTiers is a set:
    admission refuses it); the contract now refuses a repeated tier, naming the field."""
    d = base()
    d["workload"]["classes"][0]["allowed_tiers"] = ["edge", "edge"]
    with pytest.raises(
        ScenarioError,
        match=r"workload\.classes\[0\]\.allowed_tiers: each tier at most once, got "
        r"\['edge', 'edge'\]",
    ):
        load_scenario(write(tmp_path, d))
