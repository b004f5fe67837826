"""What a demanding user hits before the demo's cluster runs: another demo's cluster in the
same --out, and bad option values. None of these start a control plane."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

import perllm.demo.binaries as binaries_mod
import perllm.demo.run as run_mod
from perllm.cli import app
from perllm.demo.config import DemoConfig
from perllm.demo.stack import Stack, demo_inputs
from perllm.devcluster.binaries import Binaries
from perllm.devcluster.process import Proc, StartError, start
from perllm.devcluster.state import State
from perllm.scenario import ScenarioError


def test_a_second_demo_on_the_same_out_leaves_the_first_ones_cluster_running(
    tmp_path: Path,
) -> None:
    """`Cluster.up` refuses a run directory another cluster runs from; the refused demo's
    stop must not then stop that cluster (it stopped every process of the first demo)."""
    config = DemoConfig(out=tmp_path / "demo")
    rd = config.run_dir / "cluster"
    rd.mkdir(parents=True)
    # (no die_with_parent: its preexec_fn forks through JAX's at-fork warning; `finally`
    # stops it)
    other = start("etcd", ["sleep", "60"], rd / "logs" / "etcd.log")
    try:
        State(
            run_dir=str(rd),
            kubeconfig=str(rd / "kubeconfig"),
            kubectl="kubectl",
            api_server="https://127.0.0.1:1",
            external=False,
            processes=[
                {
                    "name": other.name,
                    "pid": other.pid,
                    "log": str(other.log),
                    "started": other.started,
                }
            ],
            ports={},
        ).save(rd)
        stack = Stack(config, Console(quiet=True), Binaries.locate(), *demo_inputs(config))
        with pytest.raises(StartError, match="already runs"):
            stack.start()
        stack.stop()
        assert other.alive(), "the refused demo stopped the other demo's cluster"
        assert State.load(rd) is not None, "the other cluster's state.json was removed"
    finally:
        other.stop()


@pytest.fixture
def never_run(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("the demo started although an option was refused")

    monkeypatch.setattr(run_mod, "run_demo", refuse)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--speed", "inf"], "--speed"),
        (["--speed", "5000"], "--speed"),  # the twin refuses > 1000 after the cluster started
        (["--duration", "inf"], "--duration"),
        (["--warmup", "inf"], "--warmup"),
        (["--duration", "60", "--warmup", "60"], "--warmup"),  # nothing left to total
        (["--router-duration", "inf"], "--router-duration"),
        (["--burst", "inf"], "--burst"),
        (["--burst", "nan"], "--burst"),
    ],
)
def test_demo_refuses_a_bad_value_before_starting(
    argv: list[str], named: str, never_run: None
) -> None:
    r = CliRunner().invoke(app, ["demo", *argv])
    assert r.exit_code == 2, r.output
    assert named in r.output


def test_demo_refuses_an_unwritable_out_in_one_line(tmp_path: Path, never_run: None) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for out in (a_file, a_file / "demo"):
        r = CliRunner().invoke(app, ["demo", "--out", str(out)])
        assert r.exit_code == 2, r.output
        assert "--out" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (None, "no file or folder"),
        (b"kind: LLMService\n  bad: [\n", "line 2, column 6: mapping values are not allowed"),
        (b"kind: LLMService\nkind: LLMService\n", "duplicate key 'kind'"),
        (b"kind: LLMService\nmetadata: {name: caf\xe9}\n", "cannot read it"),
        (b"kind: ConfigMap\n", "no LLMService in"),
    ],
)
def test_bad_services_are_a_usage_error_naming_the_file(
    content: bytes | None, said: str, tmp_path: Path, never_run: None
) -> None:
    """Exit 2 with one line naming --services and the file, as a bad --scenario: a YAML
    error was a traceback (PyYAML's, exit 1), a missing file exit 1."""
    f = tmp_path / "svc.yaml"
    if content is not None:
        f.write_bytes(content)
    r = CliRunner().invoke(app, ["demo", "--services", str(f), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    assert "--services" in r.output and said in " ".join(r.output.split())
    assert "Traceback" not in r.output


def test_an_unknown_scenario_is_a_usage_error(tmp_path: Path, never_run: None) -> None:
    r = CliRunner().invoke(app, ["demo", "--scenario", "no-such", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    assert "no-such" in r.output and "built-ins" in r.output


@pytest.mark.parametrize(
    ("config", "error"),
    [
        (DemoConfig(scenario="no-such-scenario"), ScenarioError),
        (DemoConfig(services=[Path("no/such/services")]), FileNotFoundError),
    ],
)
def test_a_bad_scenario_or_services_is_named_before_any_build(
    config: DemoConfig, error: type[Exception], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first run builds the binaries for 10-15 minutes: a typo must not wait for that."""

    def build(*_a: object, **_k: object) -> None:
        raise AssertionError("binaries looked up (or built) before the inputs were checked")

    monkeypatch.setattr(run_mod, "ensure_binaries", build)
    config.out = tmp_path / "demo"
    old = signal.getsignal(signal.SIGTERM)
    with pytest.raises(error):
        run_mod.run_demo(config, Console(quiet=True))
    assert signal.getsignal(signal.SIGTERM) is old


def test_an_interrupted_first_build_leaves_no_build_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (or SIGTERM, which the demo turns into the same) while the binaries build:
    the script and what it started stop with the demo."""
    pidfile = tmp_path / "child.pid"
    script = tmp_path / "build.sh"
    script.write_text(f"#!/bin/sh\nsleep 60 &\necho $! > {pidfile}\necho building\nwait\n")
    script.chmod(0o755)
    monkeypatch.setenv("PERLLM_BIN_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(binaries_mod, "BUILD_SCRIPT", script)

    def ctrl_c(text: str) -> str:
        if text == "building":
            raise KeyboardInterrupt
        return text

    monkeypatch.setattr(binaries_mod, "escape", ctrl_c)  # on the build's first line
    with pytest.raises(KeyboardInterrupt):
        binaries_mod.ensure_binaries(Console(quiet=True), helm=False)
    child = Proc.attach("sleep", int(pidfile.read_text()), tmp_path / "none")
    for _ in range(50):
        if not child.alive():
            break
        time.sleep(0.1)
    alive = child.alive()
    if alive:
        os.kill(child.pid, signal.SIGKILL)
    assert not alive, "the build's child outlived the interrupted demo"
