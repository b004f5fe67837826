"""The twin's pods as OpenAI endpoints, and the router over them on loopback."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import numpy as np
import pytest

from perllm.costmodel import download_bits, upload_bits
from perllm.router.app import Router
from perllm.router.config import parse_config
from perllm.router.serving import serving
from perllm.scenario import load_scenario, parse_scenario
from perllm.twin.fleet import server_powers
from perllm.twin.openai import TwinOpenAI, pod_url, static_pods
from perllm.world.server import ServerState, execute
from perllm.world.sim import coeff_grid

CHAT = {"model": "llama3-8b", "messages": [{"role": "user", "content": "hello " * 100}]}


def quiet_demo() -> Any:
    sc = load_scenario("demo")
    return parse_scenario({**sc.model_dump(mode="json"), "speed_noise": 0.0}, "demo")


def test_timeline_is_the_world_models_outcome() -> None:
    sc = quiet_demo()
    clock = [0.0]
    tw = TwinOpenAI(sc, TwinOpenAI.standalone(sc).resolve, speed=1.0, clock=lambda: clock[0])
    spec = next(s for s in sc.services() if s.name == "chat")
    tl = tw.timeline(spec, "edge-gpu-1", 150.0, 0.0, 40)
    # The same request through the world model by hand, on an idle server.
    servers = sc.expanded_servers()
    from perllm.costmodel import build_cost_table

    t = build_cost_table([spec], servers, sc.catalogue)
    c = coeff_grid(t)[0][0]
    hw = sc.catalogue.hardware[servers[0][1].hardware]
    st = ServerState(*server_powers(hw), is_gpu=True)
    link = servers[0][1].link
    d, _out, _ = execute(
        st,
        c,
        0.0,
        150.0,
        40.0,
        (float(upload_bits(150.0, 0.0)), float(download_bits(40.0))),
        (link.bandwidth_mbps * 1e6, link.rtt_ms / 1000, link.energy_uj_per_bit * 1e-6),
        1.0,
    )
    assert tl.tokens == 40 and tl.prompt_tokens == 150
    assert tl.done == pytest.approx(d)
    assert 0 < tl.first < tl.last <= tl.done
    # A second request at the same instant queues behind or batches with the first.
    tl2 = tw.timeline(spec, "edge-gpu-1", 150.0, 0.0, 40)
    assert tl2.done > tl.done * 0.99


def test_pods_answer_openai_requests_streamed_at_the_decode_rate() -> None:
    async def go() -> None:
        sc = quiet_demo()
        tw = TwinOpenAI.standalone(sc, speed=20.0)
        pods = static_pods(sc)
        assert ("default", "chat-cloud") in pods and ("default", "assistant-edge-cpu") not in pods
        c = httpx.AsyncClient(transport=httpx.ASGITransport(app=tw), base_url="http://twin")
        edge, cloud = (pod_url("", "default", p) for p in ("chat-edge-gpu-1", "chat-cloud"))
        assert cloud == "/pods/default/chat-cloud"  # the route the twin answers
        r = await c.post(f"{edge}/v1/chat/completions", json={**CHAT, "max_tokens": 12})
        assert r.status_code == 200 and r.headers["x-perllm-twin-node"] == "edge-gpu-1"
        assert r.json()["usage"]["completion_tokens"] <= 12
        t0 = time.perf_counter()
        r = await c.post(
            f"{cloud}/v1/chat/completions",
            json={**CHAT, "max_tokens": 30, "stream": True},
        )
        wall = time.perf_counter() - t0
        events = r.content.count(b"data:") - 1
        assert events >= 2 and r.content.endswith(b"data: [DONE]\n\n")
        assert wall < 5.0
        assert (await c.get(pod_url("", "default", "nope") + "/v1/models")).status_code == 404
        assert (await c.get(f"{cloud}/v1/models")).json()["data"][0]["id"] == "llama3-8b"
        bad = await c.post(f"{cloud}/v1/chat/completions", content=b"{")
        assert bad.status_code == 400

    asyncio.run(asyncio.wait_for(go(), 30))


def test_router_over_the_twin_on_loopback_learns_and_streams() -> None:
    async def go() -> None:
        sc = quiet_demo()
        tw = TwinOpenAI.standalone(sc, speed=50.0)
        async with serving(tw) as url:
            backends = [
                {
                    "name": n,
                    "url": pod_url(url, "default", f"chat-{n}"),
                    "tier": s.tier.value,
                    "hardware": s.hardware,
                    "link": s.link.model_dump(),
                }
                for n, s in sc.expanded_servers()
            ]
            cfg = parse_config({"scenario": "demo", "service_class": "chat", "backends": backends})
            r = Router(cfg)
            async with serving(r) as rurl, httpx.AsyncClient(base_url=rurl, timeout=20) as c:
                tasks = [
                    c.post("/v1/chat/completions", json={**CHAT, "stream": True, "max_tokens": 20})
                    for _ in range(16)
                ]
                resps = await asyncio.gather(*tasks)
                assert all(x.status_code == 200 for x in resps)
                used = {x.headers["x-perllm-decision"].split(";")[0] for x in resps}
                assert len(used) >= 2
                assert r.decider.bandit.stats.n.sum() == pytest.approx(16, rel=0.05)
                assert r.inflight == [0] * len(backends)
                m = (await c.get("/metrics")).text
                assert "perllm_router_request_seconds_count" in m
            await r.aclose()
        assert tw.served == 16
        assert np.isfinite(r.decider.bandit.stats.n).all()

    asyncio.run(asyncio.wait_for(go(), 60))


def test_the_readmes_router_example_is_the_demo_twins_chat_pods() -> None:
    """docs/examples/router-twin-demo.yaml (the README's router command) parses, and its
    backends are exactly the pods `perllm twin-openai --scenario demo --port 9403` serves
    for `chat`, with the scenario's tier, hardware and link per node."""
    from pathlib import Path

    from perllm.router.config import load_config

    path = Path(__file__).resolve().parents[2] / "docs" / "examples" / "router-twin-demo.yaml"
    cfg = load_config(path)
    sc = load_scenario("demo")
    servers = dict(sc.expanded_servers())
    want = {
        node: pod_url("http://127.0.0.1:9403", ns, pod)
        for (ns, pod), (cls, node) in static_pods(sc).items()
        if cls == cfg.service_class
    }
    assert {b.name: b.url for b in cfg.backends} == want
    for b in cfg.backends:
        s = servers[b.name]
        assert (b.tier, b.hardware) == (s.tier, s.hardware)
        # the link as the scenario declares it (its noise is the simulator's, not a router's)
        fields = ("bandwidth_mbps", "rtt_ms", "energy_uj_per_bit")
        assert [getattr(b.link, f) for f in fields] == [getattr(s.link, f) for f in fields]
