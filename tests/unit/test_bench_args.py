"""The bench scripts' flags: a bad value is argparse's one-line usage error naming the flag
(exit 2), before anything runs (`perllm.cli_args.at_least`)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def bench(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(
    ("script", "argv", "message"),
    [
        # --seeds 0 ran no seed and exited 0 with an empty report
        ("paper", ["--seeds", "0"], "argument --seeds: must be ≥ 1, got 0"),
        ("paper", ["--seeds", "-3"], "argument --seeds: must be ≥ 1, got -3"),
        # an OverflowError traceback at range(1, N + 1), as `perllm simulate --seeds`
        ("paper", ["--seeds", str(10**21)], f"argument --seeds: must be ≤ 1000, got {10**21}"),
        ("sim_speed", ["--seeds", "0"], "argument --seeds: must be ≥ 1, got 0"),
        # pydantic tracebacks naming the burst window's until_s / factor
        ("router_burst", ["--seconds", "0"], "argument --seconds: must be ≥ 1, got 0"),
        ("router_burst", ["--seconds", "-5"], "argument --seconds: must be ≥ 1, got -5"),
        ("router_burst", ["--seconds", "nan"], "argument --seconds: must be a finite number"),
        ("router_burst", ["--seconds", "inf"], "argument --seconds: must be a finite number"),
        ("router_burst", ["--burst", "-1"], "argument --burst: must be ≥ 1, got -1"),
        ("router_burst", ["--seed", "-1"], "argument --seed: must be ≥ 0, got -1"),
        ("router_overhead", ["--port", "99999"], "argument --port: must be ≤ 65535, got 99999"),
    ],
)
def test_bench_flags_are_checked(
    script: str,
    argv: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    mod = bench(script)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *argv])
    with pytest.raises(SystemExit) as e:
        mod.main()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
