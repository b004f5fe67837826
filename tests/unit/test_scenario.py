"""Scenario files: every built-in loads; malformed ones fail naming the field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from trace_scenarios import trace_scenario
from typer.testing import CliRunner

from perllm import policies
from perllm.cli import app
from perllm.scenario import (
    REFERENCE_SCENARIOS,
    ScenarioError,
    builtin_scenarios,
    load_scenario,
    parse_scenario,
)
from perllm.world.sim import simulate


def base() -> dict[str, Any]:
    return yaml.safe_load(
        (Path(__file__).parents[2] / "perllm/scenarios/paper-llama2-7b.yaml").read_text()
    )


def test_reference_scenarios_are_built_in() -> None:
    names = builtin_scenarios()
    for ref in REFERENCE_SCENARIOS:
        assert ref in names


@pytest.mark.parametrize("name", builtin_scenarios())
def test_builtin_scenario_loads(name: str) -> None:
    sc = load_scenario(name)
    assert sc.expanded_servers()
    assert sc.services()


def test_paper_testbed_shape() -> None:
    sc = load_scenario("paper-llama2-7b")
    servers = sc.expanded_servers()
    edge = [s for _, s in servers if s.tier == "edge"]
    cloud = [s for _, s in servers if s.tier == "cloud"]
    assert len(edge) == 5 and len(cloud) == 1
    assert {s.hardware for s in edge} == {"xeon-silver-4214r"}
    assert edge[0].link.bandwidth_mbps == 100 and cloud[0].link.bandwidth_mbps == 300
    assert edge[0].link.noise == cloud[0].link.noise == 0.2


def _set(d: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    d = copy.deepcopy(d)
    cur: Any = d
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    for k in keys[:-1]:
        cur = cur[k]
    if value is DELETE:
        del cur[keys[-1]]
    else:
        cur[keys[-1]] = value
    return d


DELETE = object()

BAD = [
    ("servers.0.link.bandwidth_mbps", -5, "servers[0].link.bandwidth_mbps"),
    ("servers.0.hardware", "xeon-9999", "servers[0].hardware"),
    ("servers.1.tier", "fog", "servers[1].tier"),
    ("servers.0.count", 0, "servers[0].count"),
    ("workload.classes.0.model", "gpt-5", "workload.classes[0].model"),
    ("workload.classes.0.share", -1, "workload.classes[0].share"),
    ("workload.classes.1.deadline.seconds", 0, "workload.classes[1].deadline.seconds"),
    ("workload.classes.0.min_quality.values", [], "workload.classes[0].min_quality.values"),
    ("workload.classes.2.input_tokens.kind", "zipf", "workload.classes[2].input_tokens.kind"),
    ("workload.classes.3.input_tokens.high", 100, "workload.classes[3].input_tokens"),
    ("workload.arrivals.rate_rps", DELETE, "workload.arrivals"),
    ("duration_s", -1, "duration_s"),
    ("slot_s", 0, "slot_s"),
    ("servers.0.link.bandwith_mbps", 100, "servers[0].link.bandwith_mbps"),  # typo is caught
    # What the class's ServiceSpec would refuse at run time is refused at load.
    ("workload.classes.0.min_quality.values", [1.5, 0], "workload.classes[0].min_quality.values"),
    ("workload.classes.0.min_quality.values", [0, 45], "workload.classes[0].min_quality.values"),
    ("workload.classes.0.allowed_tiers", [], "workload.classes[0].allowed_tiers"),
    (
        "workload.classes.0.variants",
        [{"tier": "edge", "precision": "q4_k_m"}],
        "workload.classes[0].variants",
    ),
    ("workload.arrivals.rate_rps", 1e7, "workload.classes[0].arrivals.rate_rps"),
    ("duration_s", float("inf"), "duration_s"),  # finite numbers only
    ("workload.arrivals.cv", 1e6, "workload.arrivals.cv"),  # drawing would never end
    ("workload.classes.1.arrivals", {"kind": "gamma", "cv": 50}, "classes[1].arrivals.cv"),
    ("workload.rate_windows", [{"at_s": 0, "until_s": float("inf"), "factor": 2}], "until_s"),
    (
        "workload.classes.0.input_tokens",
        {"kind": "constant", "value": 1e12},
        "workload.classes[0].input_tokens",
    ),
    (  # no room for a prompt token and an output token: requests of 0 output tokens
        "models",
        {
            "tiny": {"display": "T", "params_b": 0.1, "layers": 2, "kv_heads": 1, "head_dim": 8}
            | {"context": 1, "weights_gb": {"fp16": 0.2}, "mmlu": {"fp16": 30}}
        },
        "models.tiny.context",
    ),
]


def _catalogue_entry(kind: str, key: str, **changes: Any) -> dict[str, Any]:
    cat = yaml.safe_load((Path(__file__).parents[2] / "perllm/data/catalogue.yaml").read_text())
    return {f"my-{key}": cat[kind][key] | changes}


INF = float("inf")
# Infinite numbers in the energy objective, a server or a custom profile passed the `> 0`
# and `>= 0` bounds: a .inf weight made every option's normalised energy NaN (all placed
# in the cloud), a .inf power made J/service inf, a .inf bandwidth or TFLOPS free compute.
BAD += [
    ("weights", {"tran": INF}, "weights.tran"),
    ("servers.0.perf_scale", INF, "servers[0].perf_scale"),
    ("hardware", _catalogue_entry("hardware", "nvidia-l4", power_idle_w=INF), "power_idle_w"),
    ("hardware", _catalogue_entry("hardware", "nvidia-l4", mem_bw_eff_gbps=INF), "mem_bw_eff"),
    ("hardware", _catalogue_entry("hardware", "nvidia-l4", peak_tflops=INF), "peak_tflops"),
    ("hardware", _catalogue_entry("hardware", "nvidia-l4", memory_gib=INF), "memory_gib"),
    ("hardware", _catalogue_entry("hardware", "xeon-silver-4214r", kappa=INF), "kappa"),
    ("models", _catalogue_entry("models", "llama2-7b", params_b=INF), "models.my-llama2-7b.params"),
    (
        "models",
        _catalogue_entry("models", "llama2-7b", weights_gb={"fp16": INF}),
        "models.my-llama2-7b.weights_gb.fp16",
    ),
]


@pytest.mark.parametrize(("path", "value", "field"), BAD)
def test_malformed_scenario_names_the_field(path: str, value: Any, field: str) -> None:
    with pytest.raises(ScenarioError) as e:
        parse_scenario(_set(base(), path, value), "bad.yaml")
    assert field in str(e.value)
    assert "bad.yaml" in str(e.value)


@pytest.mark.parametrize(
    "name", ["../escaped/x", "/tmp/abs", "a/b", "", "   ", "Paper", "-x", "x.", "n" * 64]
)
def test_a_scenario_name_is_a_file_safe_name(tmp_path: Path, name: str) -> None:
    """The name names output files (`perllm sweep` writes <name>-<axis>.json into --out):
    a path would write outside it, an empty name is none; `scenarios validate` says so."""
    with pytest.raises(ScenarioError, match=r"bad\.yaml: invalid scenario:\n  name: must be"):
        parse_scenario(base() | {"name": name}, "bad.yaml")
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(base() | {"name": name}))
    res = CliRunner().invoke(app, ["scenarios", "validate", str(f)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "name: must be 1 to 63 lower-case letters" in " ".join(res.output.split())


@pytest.mark.parametrize("name", ["x", "my-scenario.v2", "a_b", "0", "n" * 63])
def test_file_safe_scenario_names_load(name: str) -> None:
    assert parse_scenario(base() | {"name": name}, "ok.yaml").name == name


def test_a_class_no_server_can_run_is_refused_at_load() -> None:
    """It would make the baselines raise mid-run (a policy placing it anywhere)."""
    d = _set(base(), "workload.classes.0.allowed_tiers", ["edge"])
    d["servers"] = [s for s in d["servers"] if s["tier"] == "cloud"]
    with pytest.raises(ScenarioError, match=r"classes\[0\]: no server can run class .*"
                       r"allowed_tiers \['edge'\]: no server in them"):  # fmt: skip
        parse_scenario(d, "bad.yaml")
    d = _set(base(), "workload.classes.0.model", "yi-34b")
    d = _set(d, "workload.classes.0.allowed_tiers", ["cloud"])
    d["servers"] = [{**s, "hardware": "nvidia-l4"} for s in d["servers"] if s["tier"] == "cloud"]
    with pytest.raises(ScenarioError, match=r"model: yi-34b fits in no server's memory"):
        parse_scenario(d, "bad.yaml")


def test_a_bandwidth_window_naming_no_server_is_refused() -> None:
    d = base()
    d["bandwidth"] = {"windows": [{"at_s": 0, "until_s": 5, "factor": 0.5, "servers": ["clod"]}]}
    with pytest.raises(ScenarioError, match=r"bandwidth.windows\[0\].servers: 'clod' is no tier"):
        parse_scenario(d, "bad.yaml")
    for ok in (["cloud"], ["edge-*"], ["edge"]):  # a name, a pattern, a tier
        d["bandwidth"]["windows"][0]["servers"] = ok
        parse_scenario(d, "ok.yaml")


def test_a_rate_window_beyond_the_per_class_rate_is_refused() -> None:
    """A window's factor is unbounded: 1e7 × 4 req/s would draw 4e7 arrivals a second (the
    run never starts); the contract's 1,000 req/s a class is the limit, at the peak of
    overlapping windows, for the scenario-wide windows and a class's own."""
    d = base()  # 4 req/s, chat 50 %: 2 req/s
    d["workload"]["rate_windows"] = [{"at_s": 10, "until_s": 20, "factor": 1e7}]
    with pytest.raises(ScenarioError, match=r"workload.rate_windows: class 'chat' would "
                       r"arrive at 2e\+07 req/s from 10 s, more than 1,000 req/s"):  # fmt: skip
        parse_scenario(d, "bad.yaml")
    d["workload"]["rate_windows"] = [  # 20 × 30 = 600: overlapping windows multiply
        {"at_s": 10, "until_s": 20, "factor": 20},
        {"at_s": 15, "until_s": 30, "factor": 30},
    ]
    with pytest.raises(ScenarioError, match=r"class 'chat' would arrive at 1,?200 req/s from 15 s"):
        parse_scenario(d, "bad.yaml")
    d["workload"]["rate_windows"][1]["at_s"] = 20  # no overlap: 60 req/s at most
    parse_scenario(d, "ok.yaml")
    d["workload"]["classes"][1]["arrivals"] = {
        "rate_rps": 10.0,
        "rate_windows": [{"at_s": 0, "until_s": 5, "factor": 101}],
    }
    with pytest.raises(ScenarioError, match=r"workload.classes\[1\].arrivals.rate_windows: "):
        parse_scenario(d, "bad.yaml")


def test_not_yaml_and_not_a_mapping(tmp_path: Path) -> None:
    f = tmp_path / "x.yaml"
    f.write_text("servers: [unclosed")
    with pytest.raises(ScenarioError, match="not valid YAML: line 1, column 19: expected") as e:
        load_scenario(f)
    assert "\n" not in str(e.value)  # one line, not PyYAML's drawing
    f.write_text("- a\n- b\n")
    with pytest.raises(ScenarioError, match="mapping"):
        load_scenario(f)
    with pytest.raises(ScenarioError, match="no such file or built-in"):
        load_scenario(tmp_path / "missing.yaml")
    with pytest.raises(ScenarioError, match="cannot read: Is a directory"):
        load_scenario(tmp_path)  # (an IsADirectoryError traceback in `perllm load DIR`)
    for empty in ("", "  "):  # not the current folder (Path("") is "."): "is a directory"
        with pytest.raises(ScenarioError, match=r"^the scenario must not be empty: give a file"):
            load_scenario(empty)
    f.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ScenarioError, match="not a text file"):
        load_scenario(f)


def test_trace_driven_arrivals_and_bandwidth(tmp_path: Path) -> None:
    (tmp_path / "arrivals.csv").write_text(
        "time_s,class,input_tokens,output_tokens\n"
        + "".join(f"{0.5 * i},{'qa' if i % 2 else 'chat'},{100 + i},{50 + i}\n" for i in range(40))
    )
    (tmp_path / "bw.csv").write_text("time_s,server,mbps\n0,cloud,300\n10,cloud,2\n")
    d = base()
    d["duration_s"] = 30
    d["workload"]["arrivals"] = {"kind": "trace", "file": "arrivals.csv"}
    d["bandwidth"] = {"trace": "bw.csv"}
    f = tmp_path / "trace.yaml"
    f.write_text(yaml.safe_dump(d))
    sc = load_scenario(f)
    r = simulate(sc, policies.make("cloud-only"), seed=1)
    assert len(r.time) == 40
    assert list(r.requests.l_in[:3]) == [100, 101, 102]
    assert [r.class_names[c] for c in r.requests.cls[:2]] == ["chat", "qa"]
    # The trace cuts the cloud link to 2 Mbps from t=10 s: later uploads are slower.
    from perllm.world.sim import World

    w = World(sc, 1)
    assert w.bw[5, -1] > 200 and w.bw[15, -1] < 3


def test_trace_with_unknown_class_is_rejected(tmp_path: Path) -> None:
    f = trace_scenario(tmp_path, "time_s,class\n0,nope\n")
    with pytest.raises(ScenarioError, match="unknown class"):
        simulate(load_scenario(f), policies.make("cloud-only"), seed=1)


def test_missing_trace_file_names_the_field(tmp_path: Path) -> None:
    d = base()
    d["workload"]["arrivals"] = {"kind": "trace", "file": "nope.csv"}
    with pytest.raises(ScenarioError, match=r"workload\.arrivals\.file"):
        parse_scenario(d, "s.yaml", tmp_path)


def _bw_world(tmp_path: Path, rows: str) -> Any:
    from perllm.world.sim import World

    (tmp_path / "bw.csv").write_text("time_s,server,mbps\n" + rows)
    d = base()
    d["duration_s"] = 20
    d["bandwidth"] = {"trace": "bw.csv"}
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(d))
    return World(load_scenario(f), 1)


@pytest.mark.parametrize(
    "rows", ["0,cloud,abc\n", "x,cloud,5\n", "0,cloud\n", "0,cloud,nan\n", "nan,cloud,5\n"]
)
def test_bandwidth_trace_bad_row_names_the_field(tmp_path: Path, rows: str) -> None:
    with pytest.raises(ScenarioError, match=r"bandwidth\.trace: .*line 2"):
        _bw_world(tmp_path, rows)


def test_bandwidth_trace_row_before_zero_applies_from_the_start(tmp_path: Path) -> None:
    # A row at t < 0 holds from the start on, not over the run's last slots.
    w = _bw_world(tmp_path, "-5,cloud,2\n")
    assert w.bw[0, -1] < 3 and w.bw[-1, -1] < 3


def test_arrival_trace_short_row_names_the_field(tmp_path: Path) -> None:
    f = trace_scenario(tmp_path, "time_s,class\n0,chat\n1\n")
    with pytest.raises(ScenarioError, match=r"workload\.arrivals\.file: .*malformed row"):
        simulate(load_scenario(f), policies.make("cloud-only"), seed=1)
