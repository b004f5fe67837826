"""`perllm simulate` and `perllm scenarios` through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from trace_scenarios import trace_scenario
from typer.testing import CliRunner

from perllm.cli import app

runner = CliRunner()


def test_simulate_writes_json_and_plots(tmp_path: Path) -> None:
    out, js = tmp_path / "plots", tmp_path / "r.json"
    res = runner.invoke(
        app,
        [
            "simulate",
            "paper-llama2-7b",
            "-p",
            "perllm",
            "-p",
            "clairvoyant-greedy",
            "-p",
            "cloud-only",
            "--seeds",
            "2",
            "--duration",
            "120",
            "--json",
            str(js),
            "--out",
            str(out),
            "--detail",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "Processing-time success rate" in res.output
    report = json.loads(js.read_text())
    pols = report["scenarios"]["paper-llama2-7b"]["policies"]
    for name in ("perllm", "clairvoyant-greedy", "cloud-only"):
        m = pols[name]
        for key in (
            "success_rate",
            "throughput_rps",
            "goodput_rps",
            "energy_j_per_service",
            "services",
        ):
            assert key in m
        assert set(m["energy_breakdown_j"]) == {"tran", "infer", "idle"}
        assert abs(sum(m["energy_breakdown_j"].values()) - m["energy_j_per_service"]) < 1e-6
        assert "success_rate" in m["per_model"]["llama2-7b"]
        assert m["seeds"] == 2
    ratios = report["scenarios"]["paper-llama2-7b"]["ratios_vs_perllm"]
    assert set(ratios) == {"clairvoyant-greedy", "cloud-only"}
    # The hindsight bound (on by default): never beaten, with each policy's distance to it.
    assert "Distance to the hindsight bound" in res.output
    entry = report["scenarios"]["paper-llama2-7b"]
    assert entry["bound"]["per_seed"][0]["seed"] == 1 and len(entry["bound"]["per_seed"]) == 2
    for name in ("perllm", "clairvoyant-greedy", "cloud-only"):
        d = entry["vs_bound"][name]
        assert d["success_gap_points"] >= 0 and d["energy_ratio"] >= 1
    for png in ("success_per_model", "energy_breakdown", "regret", "learning_curve"):
        assert (out / f"{png}.png").stat().st_size > 1000


def test_simulate_rejects_bad_input(tmp_path: Path) -> None:
    res = runner.invoke(app, ["simulate", "nope-scenario", "--seeds", "1"])
    assert res.exit_code == 2
    assert "no such file or built-in scenario" in res.output
    res = runner.invoke(app, ["simulate", "paper-yi-6b", "-p", "magic", "--seeds", "1"])
    assert res.exit_code == 2
    assert "--policy: unknown policy 'magic'; available: " in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nservers: []\nworkload: {arrivals: {kind: poisson}, classes: []}\n")
    res = runner.invoke(app, ["simulate", str(bad), "--seeds", "1"])
    assert res.exit_code == 2
    assert "servers" in res.output and "workload.arrivals" in res.output


def test_simulate_refuses_a_policy_named_twice() -> None:
    """It ran the policy twice and merged both into one entry (as `perllm sweep` refuses)."""
    argv = ["simulate", "paper-llama2-7b", "-p", "cloud-only", "-p", "cloud-only", "--seeds", "1"]
    res = runner.invoke(app, argv)
    assert res.exit_code == 2, res.output
    assert "error: --policy: a policy is named twice: 'cloud-only'" in flat(res.output)
    assert "simulating" not in res.output


def test_simulate_refuses_two_scenarios_of_one_name(tmp_path: Path) -> None:
    """Results are keyed by scenario name: two worlds of one name would be merged into
    one entry, as if they were seeds of one scenario."""
    f = trace_scenario(tmp_path, "time_s\n1\n")  # a file named paper-llama2-7b too
    for argv in (["paper-yi-6b", "paper-yi-6b"], ["paper-llama2-7b", str(f)]):
        res = runner.invoke(app, ["simulate", *argv, "-p", "cloud-only", "--seeds", "1"])
        assert res.exit_code == 2, res.output
        assert "scenarios run together need distinct names" in " ".join(res.output.split())

    res = runner.invoke(app, ["scenarios", "list"])
    assert res.exit_code == 0 and "paper-llama2-7b (reference)" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\n")
    res = runner.invoke(app, ["scenarios", "validate", "paper-yi-9b", str(bad)])
    assert res.exit_code == 1
    assert "ok paper-yi-9b" in res.output and "invalid" in res.output


def test_simulate_bad_trace_content_is_a_clean_error(tmp_path: Path) -> None:
    """A trace whose rows are only read when the run starts: an error naming the field,
    exit 2, no traceback."""
    f = trace_scenario(tmp_path, "time_s,class\n1,chat\nabc,chat\n")
    res = runner.invoke(
        app, ["simulate", str(f), "-p", "cloud-only", "--seeds", "1", "--duration", "5"]
    )
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit)
    out = " ".join(res.output.split())  # rich wraps at 80 columns
    assert "workload.arrivals.file" in out and "malformed row" in out


@pytest.mark.parametrize("value", ["inf", "nan"])
def test_simulate_rejects_a_duration_that_is_no_finite_number(value: str) -> None:
    res = runner.invoke(
        app,
        ["simulate", "paper-llama2-7b", "-p", "cloud-only", "--seeds", "1", "--duration", value],
    )
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit)
    assert "--duration" in res.output


TARGET = ["--target", "http://127.0.0.1:9"]


def flat(output: str) -> str:
    """The error's words on one line: rich draws it in a box, wrapped at 80 columns."""
    return " ".join(output.replace("│", " ").split())


@pytest.mark.parametrize(
    "argv",
    [
        ["load", "demo", *TARGET, "--timeout", "inf"],
        ["load", "demo", *TARGET, "--timeout", "nan"],
        ["load", "demo", *TARGET, "--speed", "nan"],
        ["load", "demo", *TARGET, "--max-duration", "nan"],
        ["twin-openai", "--scenario", "demo", "--speed", "nan"],
        ["twin", "--scenario", "demo", "--log-interval", "nan"],
        ["demo", "--duration", "inf"],
        ["demo", "--speed", "nan"],
        ["simulate", "paper-llama2-7b", "--duration", "inf"],
        ["simulate", "paper-llama2-7b", "--duration", "nan"],
        ["agent", "--probe-interval", "nan"],
        ["operator", "--status-interval", "nan"],
    ],
)
def test_float_options_refuse_nan_and_inf_before_anything_runs(argv: list[str]) -> None:
    """typer's ranges let inf through an option with only `min=`, and NaN failed them
    with a range it is not out of ("should be ≤ 1000"): `perllm.cli_args.number` says
    what is wrong, naming the option (exit 2)."""
    res = runner.invoke(app, argv)
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit)
    out = flat(res.output)
    assert f"Invalid value for '{argv[-2]}'" in out, out
    assert f"must be a finite number, got {argv[-1]}" in out, out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["load", "demo", *TARGET, "--speed", "2000"], "must be ≤ 1000, got 2000"),
        (["load", "demo", *TARGET, "--timeout", "0"], "must be ≥ 0.1, got 0"),
        (["simulate", "paper-llama2-7b", "--duration", "0.5"], "must be ≥ 1, got 0.5"),
        (["twin-openai", "--scenario", "demo", "--speed", "x"], "'x' is not a number"),
    ],
)
def test_float_options_out_of_range_say_the_range(argv: list[str], message: str) -> None:
    res = runner.invoke(app, argv)
    assert res.exit_code == 2, res.output
    out = flat(res.output)
    assert f"Invalid value for '{argv[-2]}'" in out and message in out, out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["twin-openai", "--scenario", "demo", "--port", "99999"], "must be ≤ 65535, got 99999"),
        (["twin-openai", "--scenario", "demo", "--port", "-1"], "must be ≥ 1, got -1"),
        (["router", "--config", "r.yaml", "--port", "99999"], "must be ≤ 65535, got 99999"),
        (["router", "--config", "r.yaml", "--port", "-1"], "must be ≥ 1, got -1"),
        (["twin", "--scenario", "demo", "--port", "65536"], "must be ≤ 65535, got 65536"),
        (["twin", "--scenario", "demo", "--openai-port", "0"], "must be ≥ 1, got 0"),
        (["extender", "--no-kube", "--port", "70000"], "must be ≤ 65535, got 70000"),
        (["extender", "--no-kube", "--metrics-port", "-1"], "must be ≥ 0, got -1"),
        (["agent", "--port", "65536"], "must be ≤ 65535, got 65536"),
        (["agent", "--port", "1.5"], "'1.5' is not an integer"),
    ],
)
def test_port_options_are_bounded(argv: list[str], message: str) -> None:
    """`--port 99999` listened on 34463 (the port modulo 65536), `--port -1` failed with an
    errno message: every port option is `perllm.cli_args.port` (exit 2, naming it)."""
    res = runner.invoke(app, argv)
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit)
    out = flat(res.output)
    assert f"Invalid value for '{argv[-2]}'" in out and message in out, out


def test_agent_refuses_a_probe_too_small_to_measure(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--probe-bytes 1` was accepted: a 1-byte probe gave 1.95e5 bit/s over a loopback a
    2 MB one measures at 1.07e10, a "bandwidth" that would steer placements."""

    def no_agent(*_a: object, **_k: object) -> None:
        raise AssertionError("the agent must not be built with a bad flag")

    monkeypatch.setattr("perllm.agent.agent.Agent.__init__", no_agent)
    res = runner.invoke(app, ["agent", "--node", "n", "--no-nvml", "--probe-bytes", "1"])
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit)
    out = flat(res.output)
    assert "Invalid value for '--probe-bytes'" in out and "65536" in out, out


def test_a_port_from_the_environment_is_bounded_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERLLM_ROUTER_PORT", "99999")
    res = runner.invoke(app, ["router", "--config", "r.yaml"])
    assert res.exit_code == 2 and "must be ≤ 65535, got 99999" in flat(res.output)


@pytest.mark.parametrize(
    "argv",
    [
        ["load", "demo", *TARGET, "--seed", "-5"],
        ["twin-openai", "--scenario", "demo", "--seed", "-1"],
        ["twin", "--scenario", "demo", "--seed", "-1"],
    ],
)
def test_a_negative_seed_is_refused(argv: list[str]) -> None:
    """numpy refuses a negative seed with a ValueError traceback (after the scenario was
    loaded, the twin's endpoints printed): `perllm.cli_args.seed` refuses it first."""
    res = runner.invoke(app, argv)
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit)
    out = flat(res.output)
    assert "Invalid value for '--seed'" in out and f"must be ≥ 0, got {argv[-1]}" in out, out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["simulate", "paper-llama2-7b", "--seeds", "1001"], "must be ≤ 1000, got 1001"),
        (["simulate", "paper-llama2-7b", "--seeds", str(10**21)], f"got {10**21}"),
        (["sweep", "--load", "4", "--seeds", "1000000"], "must be ≤ 1000, got 1000000"),
        (["sweep", "--load", "4", "--seeds", "0"], "must be ≥ 1, got 0"),
    ],
)
def test_the_number_of_seeds_is_bounded(
    argv: list[str], message: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`sweep --seeds 1000000` set up every job before the first ran (the machine's
    memory, no progress shown); `simulate --seeds 1e21` was an OverflowError traceback.
    `perllm.cli_args.seed_count` refuses more than `MAX_SEEDS` first: nothing runs."""
    import perllm.experiment
    import perllm.sweep.run

    def ran(*a: object, **kw: object) -> None:
        raise AssertionError("ran")

    monkeypatch.setattr(perllm.experiment, "run_experiment", ran)
    monkeypatch.setattr(perllm.sweep.run, "run_sweep", ran)
    res = runner.invoke(app, [*argv, "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit)
    out = flat(res.output)
    assert "Invalid value for '--seeds'" in out and message in out, out
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
@pytest.mark.parametrize(
    "argv",
    [
        ["simulate", "paper-llama2-7b", "--json", "/proc/perllm-test.json"],
        ["simulate", "paper-llama2-7b", "--out", "/proc"],
        ["sweep", "--load", "4", "--out", "/proc"],
    ],
)
def test_an_output_folder_that_refuses_files_is_refused_before_the_runs(
    argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`os.access` says /proc is writable to root (and to anyone on a filesystem that
    refuses new files for another reason): the JSON write failed after every run, with a
    FileNotFoundError traceback. A file made and removed there says it first."""
    import perllm.experiment
    import perllm.sweep.run

    def ran(*a: object, **kw: object) -> None:
        raise AssertionError("ran")

    monkeypatch.setattr(perllm.experiment, "run_experiment", ran)
    monkeypatch.setattr(perllm.sweep.run, "run_sweep", ran)
    res = runner.invoke(app, argv)
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit)
    assert f"error: {argv[-2]}: cannot write in /proc" in flat(res.output), res.output


def _full_disk(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Writing a file called `name` fails as on a full disk."""
    import errno

    real = Path.write_text

    def write_text(self: Path, *a: Any, **kw: Any) -> int:
        if self.name == name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **kw)

    monkeypatch.setattr(Path, "write_text", write_text)


@pytest.mark.parametrize(
    ("argv", "name", "option", "printed"),
    [
        (["simulate", "paper-llama2-7b", "--json"], "r.json", "--json", "J/service"),
        (["sweep", "paper-llama2-7b", "--load", "4", "--out"], "", "--out", "success %"),
    ],
)
def test_a_write_that_fails_after_the_runs_is_one_line_not_a_traceback(
    argv: list[str],
    name: str,
    option: str,
    printed: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A full disk (or a folder made read-only during the runs) was an OSError traceback
    at the end; it is an error naming the option (exit 1), after the results' table."""
    target = tmp_path / name
    _full_disk(monkeypatch, name or "paper-llama2-7b-load.json")
    opts = ["-p", "cloud-only", "--seeds", "1", "--duration", "5", "--no-bound"]
    res = runner.invoke(app, [*argv, str(target), *opts])
    assert res.exit_code == 1, res.output
    assert isinstance(res.exception, SystemExit)
    out = flat(res.output)
    assert f"error: {option}: cannot write the results: [Errno 28] No space left" in out, out
    assert printed in res.output


def test_scenarios_show_prints_the_file_verbatim(tmp_path: Path) -> None:
    """`show NAME > my.yaml` is the documented way to start a scenario: no wrapping of
    long lines, no `:x:` emoji codes, no extra newline."""
    text = (
        (Path(__file__).parents[2] / "perllm/scenarios/paper-llama2-7b.yaml")
        .read_text()
        .replace('description: "', 'description: ":x: ' + "a" * 200 + " ", 1)
    )
    f = tmp_path / "s.yaml"
    f.write_text(text)
    res = runner.invoke(app, ["scenarios", "show", str(f)])
    assert res.exit_code == 0
    assert res.stdout == text
    res = runner.invoke(app, ["scenarios", "show", "paper-llama2-7b"])
    assert (
        res.stdout
        == (Path(__file__).parents[2] / "perllm/scenarios/paper-llama2-7b.yaml").read_text()
    )


def test_scenarios_show_refuses_a_malformed_file(tmp_path: Path) -> None:
    """It printed the file and exited 0: `show FILE > my.yaml` copied a broken scenario.
    It fails as `scenarios validate` does (exit 1, the field named), printing nothing."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nservers: []\nworkload: {arrivals: {kind: poisson}, classes: []}\n")
    res = runner.invoke(app, ["scenarios", "show", str(bad)])
    assert res.exit_code == 1, res.output
    assert isinstance(res.exception, SystemExit)
    assert res.stdout == ""
    assert "invalid" in res.stderr and "servers" in res.stderr
    bad.write_text("servers: [unclosed")
    res = runner.invoke(app, ["scenarios", "show", str(bad)])
    assert res.exit_code == 1 and "not valid YAML" in res.stderr and res.stdout == ""


def test_simulate_checks_outputs_before_running(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("a file")
    for args in (
        ["--json", str(tmp_path / "f" / "r.json")],
        ["--json", str(tmp_path)],
        ["--out", str(tmp_path / "f" / "plots")],
    ):
        res = runner.invoke(
            app, ["simulate", "paper-llama2-7b", "-p", "cloud-only", "--seeds", "1", *args]
        )
        assert res.exit_code == 2, res.output
        assert isinstance(res.exception, SystemExit)
        assert args[0] in res.output and "simulating" not in res.output


@pytest.mark.parametrize(
    "argv",
    [
        ["simulate", ""],
        ["sweep", "", "--load", "4"],
        ["load", "", *TARGET],
        ["twin-openai", "--scenario", ""],
        ["twin", "--scenario", " "],
        ["scenarios", "validate", ""],
    ],
)
def test_an_empty_scenario_is_a_usage_error(argv: list[str]) -> None:
    """ "" was the current folder (Path("") is "."): ".: cannot read: Is a directory"."""
    res = runner.invoke(app, argv)
    assert res.exit_code == (1 if argv[0] == "scenarios" else 2), res.output
    assert isinstance(res.exception, SystemExit)
    assert "the scenario must not be empty: give a file or a built-in name" in flat(res.output)


@pytest.mark.parametrize(
    "argv",
    [
        ["simulate", "paper-llama2-7b", "--json", ""],
        ["simulate", "paper-llama2-7b", "--out", " "],
        ["sweep", "paper-llama2-7b", "--load", "4", "--out", ""],  # (wrote into the cwd)
        ["demo", "--out", ""],
    ],
)
def test_an_empty_output_path_is_a_usage_error(argv: list[str]) -> None:
    res = runner.invoke(app, argv)
    assert res.exit_code == 2, res.output
    out = flat(res.output)
    assert f"Invalid value for '{argv[-2]}': must not be empty" in out, out


def test_an_empty_router_config_is_a_usage_error() -> None:
    res = runner.invoke(app, ["router", "--config", ""])
    assert res.exit_code == 2, res.output
    assert "error: the config path must not be empty: give a router YAML file" in res.output


def test_python_dash_m_perllm_is_the_command() -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "perllm", "scenarios", "list"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[2],
    )
    assert out.returncode == 0 and "paper-llama2-7b" in out.stdout, out.stderr


def test_ctrl_c_while_the_cli_loads_is_one_line_and_exit_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C in the second `perllm` spends importing its modules was a KeyboardInterrupt
    traceback (the console script imported `perllm.cli` before any handler)."""
    from perllm.__main__ import run

    (tmp_path / "slow_cli.py").write_text("raise KeyboardInterrupt  # (Ctrl-C mid-import)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SystemExit) as e:
        run("slow_cli", "perllm")
    assert e.value.code == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_ctrl_c_in_a_command_is_one_line_and_exit_130(monkeypatch: pytest.MonkeyPatch) -> None:
    """typer turned a KeyboardInterrupt in a command into exit 130 with nothing said."""
    import perllm.cli

    def interrupted(*_a: object, **_k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(perllm.cli, "load_scenario", interrupted)
    res = runner.invoke(app, ["scenarios", "show", "paper-llama2-7b"])
    assert res.exit_code == 130 and res.output == "interrupted\n", res.output


def test_agent_rejects_an_unknown_log_level_as_a_usage_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--log-level verbose` raised ValueError out of logging.basicConfig: a traceback and
    exit 1 instead of a usage error naming the flag (the agent never starts)."""

    def no_agent(*_a: object, **_k: object) -> None:
        raise AssertionError("the agent must not be built with a bad flag")

    monkeypatch.setattr("perllm.agent.agent.Agent.__init__", no_agent)
    res = runner.invoke(app, ["agent", "--node", "n1", "--no-nvml", "--log-level", "verbose"])
    assert res.exit_code == 2, res.output
    assert "--log-level" in res.output and "verbose" in res.output


@pytest.mark.parametrize(
    "argv",
    [
        ["router", "--config", "never-read.yaml"],
        ["twin", "--scenario", "never-read"],
        ["extender"],
    ],
)
def test_every_component_rejects_an_unknown_log_level_before_starting(argv: list[str]) -> None:
    """The same check as the agent's (`perllm.logsetup`), before anything is read."""
    res = runner.invoke(app, [*argv, "--log-level", "verbose"])
    assert res.exit_code == 2, res.output
    assert "--log-level" in res.output and "verbose" in res.output


@pytest.mark.parametrize("level", ["warn", "fatal", "notset", "trace"])
@pytest.mark.parametrize(
    "argv", [["router", "--config", "never-read.yaml"], ["extender"], ["twin", "--scenario", "x"]]
)
def test_a_log_level_uvicorn_does_not_know_is_a_usage_error(argv: list[str], level: str) -> None:
    """logging knows `warn`, `fatal` and `notset`, uvicorn does not: they passed the flag's
    check and the extender and router then died in uvicorn with a KeyError traceback."""
    res = runner.invoke(app, [*argv, "--log-level", level])
    assert res.exit_code == 2, res.output
    assert "--log-level" in res.output and level in res.output


def test_the_charts_extender_log_levels_are_the_ones_the_extender_accepts() -> None:
    """The chart's schema offered `trace`, which the extender refused: a crash-looping pod."""
    from perllm.logsetup import LEVELS

    schema = json.loads(
        (Path(__file__).parents[2] / "charts/perllm/values.schema.json").read_text()
    )
    assert schema["properties"]["extender"]["properties"]["logLevel"]["enum"] == list(LEVELS)


def test_simulate_a_run_without_requests(tmp_path: Path) -> None:
    """A trace whose rows all fall after the end (or a rate so low that nothing arrives)
    is a run of zero requests: the report (regret 0), the bound and the plots still come
    out, as strict JSON, with the undefined ratios as "—" (not 0.00×)."""
    f = trace_scenario(tmp_path, "time_s\n100\n")  # after the run's end: dropped
    js = tmp_path / "r.json"
    opts = ["--seeds", "1", "--duration", "5", "--json", str(js), "--out", str(tmp_path / "p")]
    pols = ["-p", "perllm", "-p", "clairvoyant-greedy"]
    res = runner.invoke(app, ["simulate", str(f), *pols, *opts])
    assert res.exit_code == 0, res.output
    report = json.loads(js.read_text(), parse_constant=lambda c: pytest.fail(c))
    entry = report["scenarios"]["paper-llama2-7b"]
    assert entry["policies"]["perllm"]["services"] == 0
    assert entry["regret_vs_clairvoyant_greedy"]["perllm"] == 0.0
    assert entry["ratios_vs_perllm"]["clairvoyant-greedy"]["throughput_ratio"] is None
    rows = [line for line in res.output.splitlines() if "clairvoyant-greedy" in line]
    assert rows and not any("0.00×" in line for line in rows)


def test_every_commands_summary_is_one_line() -> None:
    """`perllm --help` lists each command with its help's first paragraph, line breaks
    kept: a summary wrapped in the source broke mid-sentence in the listing."""
    import typer

    def walk(cmd: Any, path: str) -> list[str]:
        first = (cmd.help or "").strip().split("\n\n")[0]
        bad = [path] if "\n" in first else []
        for name, sub in (getattr(cmd, "commands", None) or {}).items():
            bad += walk(sub, f"{path} {name}")
        return bad

    assert walk(typer.main.get_command(app), "perllm") == []
