"""The agent's GPU power against nvidia-smi (issue #5 acceptance: within 5 %). Needs a GPU.

Starts a `perllm agent` in process on loopback (or scrapes a running one with --url), then
for --samples rounds reads, per GPU UUID, `nvidia-smi --query-gpu=uuid,power.draw` and the
agent's DCGM_FI_DEV_POWER_USAGE one right after the other, and reports the relative
difference. Both are NVML's power reading (a 1 s average on Ampere and later, except GA100;
instantaneous before), so they should agree to well within 5 %; a loaded GPU (--load, needs
torch with CUDA) checks the agreement at high power too, where the readings move less.

    .venv/bin/python bench/agent_vs_nvidia_smi.py --samples 20 --out out/agent_vs_smi.json
    .venv/bin/python bench/agent_vs_nvidia_smi.py --load --samples 20
    .venv/bin/python bench/agent_vs_nvidia_smi.py --url http://127.0.0.1:9401   # a running agent

Exit status: 0 every GPU's median difference within --tolerance, 1 not, 2 no GPU/driver.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from perllm.telemetry import names


def smi_power(smi: str) -> dict[str, float]:
    """W per GPU UUID from nvidia-smi (`[N/A]` readings are skipped)."""
    out = subprocess.run(
        [smi, "--query-gpu=uuid,power.draw", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    ).stdout
    watts = {}
    for line in out.strip().splitlines():
        uuid, _, w = (x.strip() for x in line.partition(","))
        with contextlib.suppress(ValueError):
            watts[uuid] = float(w)
    return watts


def agent_power(url: str) -> dict[str, float]:
    """W per GPU UUID from the agent's /metrics."""
    with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=10) as r:
        text = r.read().decode()
    for fam in text_string_to_metric_families(text):
        if fam.name == names.DCGM_POWER_W:
            return {s.labels["UUID"]: s.value for s in fam.samples}
    return {}


def rel_diff(agent_w: float, smi_w: float) -> float:
    return abs(agent_w - smi_w) / smi_w if smi_w > 0 else float("inf")


def summarise(rounds: list[dict[str, dict[str, float]]], tolerance: float) -> dict[str, Any]:
    """Per GPU: mean W both ways and the median/max per-sample relative difference."""
    gpus: dict[str, dict[str, list[float]]] = {}
    for r in rounds:
        for uuid, smi_w in r["smi"].items():
            if uuid in r["agent"]:
                g = gpus.setdefault(uuid, {"smi": [], "agent": [], "diff": []})
                g["smi"].append(smi_w)
                g["agent"].append(r["agent"][uuid])
                g["diff"].append(rel_diff(r["agent"][uuid], smi_w))
    per_gpu = {
        uuid: {
            "samples": len(g["diff"]),
            "smi_mean_w": statistics.fmean(g["smi"]),
            "agent_mean_w": statistics.fmean(g["agent"]),
            "median_rel_diff": statistics.median(g["diff"]),
            "max_rel_diff": max(g["diff"]),
            "within_tolerance": statistics.median(g["diff"]) <= tolerance,
        }
        for uuid, g in gpus.items()
    }
    ok = bool(per_gpu) and all(v["within_tolerance"] for v in per_gpu.values())
    return {"tolerance": tolerance, "pass": ok, "gpus": per_gpu}


@contextlib.contextmanager
def gpu_load(enabled: bool) -> Iterator[str]:
    """Keep every GPU busy with matmuls (torch + CUDA) while sampling."""
    if not enabled:
        yield "idle"
        return
    try:
        import torch  # type: ignore[import-not-found]
    except ImportError:
        print("note: --load needs torch with CUDA; measuring idle", file=sys.stderr)
        yield "idle (torch missing)"
        return
    if not torch.cuda.is_available():
        yield "idle (no CUDA in torch)"
        return
    stop = threading.Event()

    def burn(dev: int) -> None:
        a = torch.randn(8192, 8192, device=f"cuda:{dev}", dtype=torch.float16)
        while not stop.is_set():
            for _ in range(20):
                a = (a @ a).clamp_(-1, 1)
            torch.cuda.synchronize(dev)

    ts = [
        threading.Thread(target=burn, args=(d,), daemon=True)
        for d in range(torch.cuda.device_count())
    ]
    for t in ts:
        t.start()
    time.sleep(5)  # let power settle at the loaded level
    try:
        yield "loaded (torch fp16 matmul)"
    finally:
        stop.set()
        for t in ts:
            t.join(30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="scrape this running agent instead of starting one")
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between rounds")
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--load", action="store_true", help="load the GPUs (torch) while sampling")
    ap.add_argument("--nvidia-smi", default="nvidia-smi")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    smi = shutil.which(args.nvidia_smi)
    if smi is None:
        print(
            f"no {args.nvidia_smi} on PATH: this check needs an NVIDIA GPU and driver",
            file=sys.stderr,
        )
        return 2
    agent = None
    url = args.url
    if url is None:
        from perllm.agent import Agent, AgentConfig

        agent = Agent(
            AgentConfig(node="bench", host="127.0.0.1", port=0, rapl_root=Path("/nonexistent"))
        )
        agent.start()
        url = agent.url
        if not agent.nvml.health.up:
            print(f"agent has no NVML: {agent.nvml.health.reason}", file=sys.stderr)
            agent.stop()
            return 2
    rounds = []
    try:
        with gpu_load(args.load) as state:
            for _ in range(args.samples):
                t = time.time()
                s = smi_power(smi)
                a = agent_power(url)
                rounds.append({"t": t, "smi": s, "agent": a})
                time.sleep(args.interval)
    finally:
        if agent is not None:
            agent.stop()
    report = {"state": state, "url": url, **summarise(rounds, args.tolerance), "rounds": rounds}
    for uuid, g in report["gpus"].items():
        print(
            f"{uuid}: nvidia-smi {g['smi_mean_w']:.1f} W, agent {g['agent_mean_w']:.1f} W, "
            f"median diff {100 * g['median_rel_diff']:.2f} %, max {100 * g['max_rel_diff']:.2f} %"
            f" over {g['samples']} samples ({state})"
        )
    print("PASS" if report["pass"] else "FAIL", f"(tolerance {100 * args.tolerance:g} %)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
