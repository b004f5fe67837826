"""bench/agent_vs_nvidia_smi.py, run against a fake nvidia-smi and an agent on a fake NVML, so
that the check a GPU owner runs is known to work end to end (the numbers come from a GPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_agent_nvml import A100, P4, fake_nvml  # tests/unit is on sys.path (rootdir-less)

from perllm.agent import Agent, AgentConfig

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "agent_vs_nvidia_smi.py"


def fake_smi(tmp_path: Path, lines: list[str]) -> Path:
    smi = tmp_path / "nvidia-smi"
    body = "\n".join(lines)
    smi.write_text(f"#!/bin/sh\ncat <<'EOF'\n{body}\nEOF\n")
    smi.chmod(0o755)
    return smi


@pytest.mark.parametrize(("smi_w", "passes"), [((61.9, 25.1), True), ((61.9, 30.0), False)])
def test_bench_compares_per_uuid(tmp_path: Path, smi_w: tuple[float, float], passes: bool) -> None:
    agent = Agent(
        AgentConfig(node="n", host="127.0.0.1", port=0, rapl_root=tmp_path / "none"),
        nvml_module=fake_nvml([A100, P4]),
    )
    agent.start()
    smi = fake_smi(tmp_path, [f"GPU-aaaa, {smi_w[0]}", f"GPU-bbbb, {smi_w[1]}", "GPU-cccc, [N/A]"])
    out = tmp_path / "r.json"
    try:
        r = subprocess.run(
            [
                sys.executable,
                str(SCRIPT),
                "--url",
                agent.url,
                "--samples",
                "2",
                "--interval",
                "0",
                "--nvidia-smi",
                str(smi),
                "--out",
                str(out),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
    finally:
        agent.stop()
    assert r.returncode == (0 if passes else 1), r.stdout + r.stderr
    rep = json.loads(out.read_text())
    assert set(rep["gpus"]) == {"GPU-aaaa", "GPU-bbbb"}
    a = rep["gpus"]["GPU-aaaa"]
    assert a["agent_mean_w"] == pytest.approx(61.482)
    assert a["median_rel_diff"] == pytest.approx(abs(61.482 - smi_w[0]) / smi_w[0])
    assert rep["gpus"]["GPU-bbbb"]["within_tolerance"] is passes


def test_bench_without_nvidia_smi_says_so(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--nvidia-smi", str(tmp_path / "absent")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert r.returncode == 2 and "needs an NVIDIA GPU" in r.stderr
