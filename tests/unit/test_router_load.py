"""`perllm load` against a stub router-like endpoint."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from perllm.load import body_for, plan, replay
from perllm.router.app import Router
from perllm.router.config import parse_config
from perllm.router.request import sizes
from perllm.router.serving import serving
from perllm.router.stub import StubBackend
from perllm.scenario import load_scenario


def test_bodies_carry_the_sizes_the_router_reads() -> None:
    b = body_for("chat", 300, 40_000, 50, True)
    l_in, attach = sizes(b)
    assert abs(l_in - 300) <= 1 and abs(attach - 40_000) <= 64
    assert b["max_tokens"] == 50 and b["stream"] is True


def test_plan_is_bounded_and_filtered() -> None:
    sc = load_scenario("demo")
    p = plan(sc, seed=1, speed=10.0, max_requests=25, classes=["chat"])
    assert len(p) == 25 and {x.cls for x in p} == {"chat"}
    assert all(b.at <= a.at for a, b in zip(p[1:], p, strict=False))


def test_a_plan_holds_no_bodies_before_they_are_sent() -> None:
    """Every body (a vision request's image up to MBs) was built in `plan`: 600 of the
    demo's requests held ~180 MB, 100,000 (--max-requests' bound) GBs, before any was sent."""
    import tracemalloc

    tracemalloc.start()
    try:
        p = plan(load_scenario("demo"), seed=0, speed=1.0, max_requests=600)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(p) == 600 and peak < 20e6, peak
    v = next(x for x in p if x.cls == "vision")
    assert v.body == body_for("vision", *v.sizes, True) and v.sizes[1] > 100_000
    assert sizes(v.body)[1] == pytest.approx(v.sizes[1], abs=64)


def test_replay_reports_attainment_percentiles_and_backend_share(tmp_path: Path) -> None:
    async def go() -> Any:
        stubs = [StubBackend("edge-gpu", tokens=4), StubBackend("cloud", tokens=4)]
        async with serving(stubs[0]) as e, serving(stubs[1]) as c:
            backends = [
                {"name": "edge-gpu", "url": e, "tier": "edge", "hardware": "nvidia-l4",
                 "link": {"bandwidth_mbps": 100}},
                {"name": "cloud", "url": c, "tier": "cloud", "hardware": "a100-80gb-sxm",
                 "link": {"bandwidth_mbps": 300}},
            ]  # fmt: skip
            r = Router(
                parse_config({"scenario": "demo", "service_class": "chat", "backends": backends})
            )
            async with serving(r) as url:
                sc = load_scenario("demo")
                planned = plan(sc, seed=0, speed=50.0, max_requests=30, classes=["chat"])
                rep = await replay(url, planned, max_duration_s=10)
            await r.aclose()
        return rep

    rep = asyncio.run(asyncio.wait_for(go(), 60))
    assert rep.sent == 30 and rep.ok == 30 and rep.attainment == 1.0
    assert set(rep.tiers) == {"edge", "cloud"} and abs(sum(rep.backends.values()) - 1) < 1e-9
    assert rep.latency_s["p50"] <= rep.latency_s["p99"]
    assert json.loads(rep.to_json())["statuses"] == {"200": 30}


def test_replay_counts_transport_errors() -> None:
    sc = load_scenario("demo")
    planned = plan(sc, seed=0, speed=100.0, max_requests=3)
    rep = asyncio.run(replay("http://127.0.0.1:9", planned, max_duration_s=5, timeout_s=2))
    assert rep.sent == 3 and rep.ok == 0 and rep.statuses == {"0": 3}
    # named, so that a refused connection reads as one (port 9: nothing listens)
    [(err, n)] = rep.errors.items()
    assert n == 3 and err.startswith("ConnectError")


def test_cli_fails_when_no_request_succeeds_and_names_unknown_classes(tmp_path: Path) -> None:
    from perllm.cli import app

    out = tmp_path / "r.json"
    args = ["load", "demo", "--target", "http://127.0.0.1:9", "--speed", "100"]
    res = CliRunner().invoke(app, [*args, "--max-requests", "2", "--json", str(out)])
    assert res.exit_code == 1, res.output
    assert (
        "none of 2 requests got a complete 200 answer" in res.output
        and "ConnectError" in res.output
    )
    assert json.loads(out.read_text())["ok"] == 0  # the report is still written
    res = CliRunner().invoke(app, [*args, "--class", "chat", "--class", "nosuch"])
    assert res.exit_code == 2
    assert "--class nosuch" in res.output and "chat, vision, assistant" in res.output


def test_cli_rejects_a_bad_scenario() -> None:
    from perllm.cli import app

    res = CliRunner().invoke(app, ["load", "no-such-scenario", "--target", "http://x"])
    assert res.exit_code == 2
    res = CliRunner().invoke(app, ["router", "--config", "/nonexistent.yaml"])
    assert res.exit_code == 2 and "error" in res.output
    assert httpx  # the client library is a runtime dependency


def test_cli_rejects_a_bad_target_before_sending() -> None:
    from perllm.cli import app

    # (they were sent, all failing, with exit 1; the last two were tracebacks)
    for target, why in [
        ("notaurl", "not an http(s) URL"), ("ftp://x", "not an http(s) URL"),
        ("http://", "no host"), ("http://127.0.0.1:99999", "Port out of range"),
        ("http://[::1", "Invalid IPv6 URL"),
    ]:  # fmt: skip
        res = CliRunner().invoke(app, ["load", "demo", "--target", target, "--max-requests", "1"])
        assert res.exit_code == 2, (target, res.output)
        assert f"error: --target {target}: {why}" in res.output and "Traceback" not in res.output
