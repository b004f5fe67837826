"""A real model server: llama.cpp's `llama-server` (the edge runtime the chart ships) on a
tiny random-weight GGUF the test writes itself, directly and behind `perllm router`.

Nothing is downloaded: the binary is built from the llama.cpp sources of the pinned
llama-cpp-python sdist (`tools/build-binaries.sh llamacpp`, cached like the Kubernetes
binaries) and the model comes from `perllm.devcluster.llamacpp.write_tiny_gguf`. The text
is noise; tokenisation, slots, batching, streaming, `usage`, `timings` and `/metrics` are
the real server's. No Kubernetes API server is needed; the module sits in the e2e tier
because it needs a built binary.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from perllm.csucb import realised_prediction
from perllm.devcluster.binaries import Binaries, BinariesMissing, llama_server_path
from perllm.devcluster.llamacpp import LlamaServer, start_llama_server, write_tiny_gguf
from perllm.devcluster.process import free_port, start
from perllm.router.app import Router
from perllm.router.config import parse_config
from perllm.router.serving import serving
from perllm.scenario import load_scenario
from perllm.telemetry.names import LLAMACPP_RUNNING, LLAMACPP_WAITING

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

N_OUT = 16


def chat(n_out: int = N_OUT, stream: bool = False, words: int = 40) -> dict[str, Any]:
    # ignore_eos: a random model may sample </s> at any step; the tests count tokens.
    return {
        "model": "llama3-8b",
        "messages": [{"role": "user", "content": "tell me about the edge " * words}],
        "max_tokens": n_out,
        "ignore_eos": True,
        "stream": stream,
        **({"stream_options": {"include_usage": True}} if stream else {}),
    }


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LlamaServer]]:
    d = tmp_path_factory.mktemp("llamacpp")
    model = write_tiny_gguf(d / "tiny.gguf", seed=1)
    started: dict[str, LlamaServer] = {}
    try:
        started["edge"] = start_llama_server(model, d, name="llama-edge", slots=2)
        started["cloud"] = start_llama_server(model, d, name="llama-cloud", slots=4)
    except BinariesMissing as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield started
    finally:
        for s in started.values():
            s.stop()


def gauges(text: str) -> dict[str, tuple[str, float]]:
    return {
        f.name: (f.type, f.samples[0].value)
        for f in text_string_to_metric_families(text)
        if f.samples
    }


def test_it_serves_openai_chat_with_usage_and_timings(servers: dict[str, LlamaServer]) -> None:
    s = servers["edge"]
    r = httpx.post(f"{s.url}/v1/chat/completions", json=chat(), timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body["choices"][0]["message"]["content"], str)
    assert body["usage"]["completion_tokens"] == N_OUT
    assert body["usage"]["prompt_tokens"] > 40  # the prompt went through its tokenizer
    assert body["timings"]["predicted_n"] == N_OUT and body["timings"]["predicted_ms"] > 0
    models = httpx.get(f"{s.url}/v1/models", timeout=10).json()
    assert models["data"] and models["data"][0]["id"]


def test_its_metrics_carry_the_load_gauges_the_extender_reads(
    servers: dict[str, LlamaServer],
) -> None:
    """The names in perllm.telemetry.names are the real server's: a long stream shows up
    in `llamacpp:requests_processing` while it runs, and leaves it at 0 when it ends."""
    s = servers["edge"]
    seen: list[float] = []
    done = threading.Event()

    def scrape() -> None:
        while not done.is_set():
            g = gauges(s.metrics())
            seen.append(g[LLAMACPP_RUNNING][1])
            time.sleep(0.02)

    body = chat(n_out=400, stream=True)
    t = threading.Thread(target=scrape)
    t.start()
    try:
        with httpx.stream("POST", f"{s.url}/v1/chat/completions", json=body, timeout=120) as r:
            assert r.status_code == 200
            events = [ln for ln in r.iter_lines() if ln.startswith("data:")]
    finally:
        done.set()
        t.join(10)
    assert events[-1] == "data: [DONE]"
    final = gauges(s.metrics())
    for name in (LLAMACPP_RUNNING, LLAMACPP_WAITING):
        assert final[name][0] == "gauge", sorted(final)
    assert max(seen) >= 1, seen
    assert final[LLAMACPP_RUNNING][1] == 0


def test_router_routes_to_real_servers_and_learns_their_latency(
    servers: dict[str, LlamaServer],
) -> None:
    """Through `perllm router` (the demo's chat service, one edge and one cloud backend,
    both real llama-servers): every answer is the server's, and what CS-UCB learns is the
    real outcome: per request the server's own token count, and a time between the
    server's own compute time and what the client waited."""
    sc = load_scenario("demo")
    hw = {s.tier.value: s for _, s in sc.expanded_servers()}
    backends = [
        {
            "name": f"llama-{tier}",
            "url": servers[tier].url,
            "tier": tier,
            "hardware": hw[tier].hardware,
            "link": hw[tier].link.model_dump(),
        }
        for tier in ("edge", "cloud")
    ]
    router = Router(
        parse_config({"scenario": "demo", "service_class": "chat", "backends": backends})
    )
    learned: list[tuple[float, float, float, str]] = []  # time, tokens, predicted, pool
    real_learn = router.decider.learn_one
    pool_of = router.decider.table.pools  # per server

    def spy(k: Any, d: Any, n: Any, deadline: Any, energy: Any = None) -> None:
        pred = float(realised_prediction(k.fixed, k.per_token, np.float64(n)))
        learned.append((d, n, pred, pool_of[k.server]))
        real_learn(k, d, n, deadline, energy)

    router.decider.learn_one = spy  # type: ignore[method-assign]

    async def one(c: httpx.AsyncClient, stream: bool) -> tuple[str, float, float, int]:
        t0 = time.perf_counter()
        if not stream:
            r = await c.post("/v1/chat/completions", json=chat())
            assert r.status_code == 200, r.text
            b = r.json()
            timings, usage = b["timings"], b["usage"]
        else:
            async with c.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as r:
                assert r.status_code == 200
                data = [ln[5:].strip() async for ln in r.aiter_lines() if ln.startswith("data:")]
            assert data[-1] == "[DONE]"
            last = json.loads(data[-2])
            timings, usage = last["timings"], last["usage"]
        assert usage["completion_tokens"] == N_OUT
        own = (timings["prompt_ms"] + timings["predicted_ms"]) / 1000
        return r.headers["x-perllm-decision"], own, time.perf_counter() - t0, usage

    async def go() -> list[tuple[str, float, float, int]]:
        async with serving(router) as url, httpx.AsyncClient(base_url=url, timeout=60) as c:
            out = []
            for batch in range(4):  # 4 rounds of 4 concurrent requests, half streamed
                out += await asyncio.gather(*(one(c, (batch + i) % 2 == 0) for i in range(4)))
            metrics = (await c.get("/metrics")).text
            assert 'perllm_router_request_seconds_count{backend="llama-' in metrics
        await router.aclose()
        return out

    results = asyncio.run(asyncio.wait_for(go(), 240))
    assert len(results) == 16 and len(learned) == 16
    assert {h.split(";")[0] for h, *_ in results} <= {"backend=llama-edge", "backend=llama-cloud"}
    assert all(x[1] == N_OUT for x in learned)
    own = sum(x[1] for x in results)
    waited = sum(x[2] for x in results)
    t_learned = sum(x[0] for x in learned)
    assert own < t_learned <= waited, (own, t_learned, waited)
    st = router.decider.bandit.stats
    assert st.n.sum() == pytest.approx(16, rel=0.05)
    assert router.inflight == [0, 0]
    # Each played arm's time ratio is what those real times say against the decision-time
    # predictions (the forgetting factor weighs 16 observations almost equally).
    for pool in {x[3] for x in learned}:
        ratios = [d / p for d, _, p, q in learned if q == pool]
        col = st.pool_index(pool)
        row = st.class_index("chat")
        assert st.sum_ratio[row, col] / st.n[row, col] == pytest.approx(np.mean(ratios), rel=0.02)


def test_a_dead_server_is_ejected_and_its_requests_served_elsewhere(
    tmp_path: Path, servers: dict[str, LlamaServer]
) -> None:
    """The backend CS-UCB prefers (the cloud) is a llama-server that is killed: the
    request that finds it gone is decided again on the edge (nothing was sent), the dead
    one is left out of decisions (`/readyz` degraded, naming it) and no client sees an
    error; once it is back and its ejection has ended, requests reach it again."""
    model = next(iter(servers.values())).model
    doomed = start_llama_server(model, tmp_path, name="llama-doomed", slots=2)
    port = doomed.url.rsplit(":", 1)[1]
    sc = load_scenario("demo")
    hw = {s.tier.value: s for _, s in sc.expanded_servers()}
    backends = [
        {
            "name": name,
            "url": url,
            "tier": tier,
            "hardware": hw[tier].hardware,
            "link": hw[tier].link.model_dump(),
        }
        for name, url, tier in (
            ("alive", servers["edge"].url, "edge"),
            ("doomed", doomed.url, "cloud"),
        )
    ]
    cfg = {"scenario": "demo", "service_class": "chat", "backends": backends}
    router = Router(parse_config({**cfg, "limits": {"eject_s": 2.0}}))

    async def go() -> None:
        nonlocal doomed
        async with serving(router) as url, httpx.AsyncClient(base_url=url, timeout=60) as c:
            first = await c.post("/v1/chat/completions", json=chat(n_out=4))
            assert first.headers["x-perllm-decision"].startswith("backend=doomed")
            doomed.stop()
            rs = [await c.post("/v1/chat/completions", json=chat(n_out=4)) for _ in range(6)]
            assert [r.status_code for r in rs] == [200] * 6, [r.text for r in rs]
            assert all(r.headers["x-perllm-decision"].startswith("backend=alive") for r in rs)
            ready = await c.get("/readyz")
            assert ready.status_code == 200 and ready.json() == {
                "status": "degraded",
                "down": ["doomed"],
            }
            m = (await c.get("/metrics")).text
            assert 'perllm_router_backend_ejected{backend="doomed"} 1.0' in m
            assert "perllm_router_retries_total 1.0" in m
            # Back on the same port; after the ejection (2 s) it is decided on again.
            doomed = start_llama_server(
                model, tmp_path, name="llama-doomed-again", slots=2, port=int(port)
            )
            await asyncio.sleep(2.2)
            back = await c.post("/v1/chat/completions", json=chat(n_out=4))
            assert back.status_code == 200
            assert back.headers["x-perllm-decision"].startswith("backend=doomed")
            assert (await c.get("/readyz")).json() == {"status": "ok"}
        await router.aclose()

    try:
        asyncio.run(asyncio.wait_for(go(), 120))
    finally:
        doomed.stop()


def test_when_every_server_is_dead_the_answer_says_so(tmp_path: Path) -> None:
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    sc = load_scenario("demo")
    hw = {s.tier.value: s for _, s in sc.expanded_servers()}
    backends = [
        {"name": f"b{i}", "url": u, "tier": t, "hardware": hw[t].hardware,
         "link": hw[t].link.model_dump()}
        for i, (u, t) in enumerate(zip(dead, ("edge", "cloud"), strict=True))
    ]  # fmt: skip
    router = Router(
        parse_config({"scenario": "demo", "service_class": "chat", "backends": backends})
    )

    async def go() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        async with serving(router) as url, httpx.AsyncClient(base_url=url, timeout=30) as c:
            first = await c.post("/v1/chat/completions", json=chat(n_out=4))
            second = await c.post("/v1/chat/completions", json=chat(n_out=4))
            ready = await c.get("/readyz")
        await router.aclose()
        return first, second, ready

    first, second, ready = asyncio.run(asyncio.wait_for(go(), 60))
    # The first request tries both (each refuses and is ejected), then nothing is left.
    for r in (first, second):
        assert r.status_code == 503, r.text
        assert r.json()["error"]["type"] == "backends_down"
        assert "b0, b1" in r.json()["error"]["message"]
    assert ready.status_code == 503 and "b0" in ready.text and "b1" in ready.text


def test_the_charts_llamacpp_runtime_serves_a_gguf_where_kserve_puts_it(
    tmp_path: Path, servers: dict[str, LlamaServer]
) -> None:
    """The chart's `perllm-llamacpp` ClusterServingRuntime command, run as rendered (only
    the image's binary path, /mnt/models, the listen address and port substituted): it
    finds the GGUF the storage initializer put one directory down, serves it under the
    InferenceService's name and exposes the gauges on the container port it declares."""
    helm = Binaries.locate().helm
    if not helm.is_file():
        pytest.fail(f"no Helm at {helm}: tools/build-binaries.sh helm", pytrace=False)
    out = subprocess.run(
        [str(helm), "template", "perllm", str(Path(__file__).parents[2] / "charts" / "perllm"),
         "--api-versions", "serving.kserve.io/v1alpha1/ClusterServingRuntime"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    rt = next(
        d
        for d in yaml.safe_load_all(out)
        if d and d["kind"] == "ClusterServingRuntime" and d["metadata"]["name"] == "perllm-llamacpp"
    )
    (c,) = rt["spec"]["containers"]
    (port,) = [p["containerPort"] for p in c["ports"]]
    assert f"--port {port}" in " ".join(c["args"]) and "--metrics" in " ".join(c["args"])
    models = tmp_path / "mnt-models"
    (models / "tiny").mkdir(parents=True)
    (models / "tiny" / "tiny.gguf").write_bytes(next(iter(servers.values())).model.read_bytes())
    local = free_port()
    swap = {
        "/app/llama-server": str(llama_server_path()),
        "/mnt/models": str(models),
        "--host 0.0.0.0": "--host 127.0.0.1",
        f"--port {port}": f"--port {local}",
        "{{.Name}}": "chat",
    }

    def local_arg(a: str) -> str:
        for k, v in swap.items():
            a = a.replace(k, v)
        return a

    argv = [*c["command"], *(local_arg(a) for a in c["args"])]
    proc = start("llama-runtime", argv, tmp_path / "runtime.log", die_with_parent=True)
    srv = LlamaServer(proc=proc, url=f"http://127.0.0.1:{local}", model=models)
    try:
        srv.wait_healthy(60)
        ids = [m["id"] for m in json.loads(srv.get("/v1/models")[1])["data"]]
        assert "chat" in ids, ids
        body = {**chat(n_out=4), "model": "chat"}
        r = httpx.post(f"{srv.url}/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4, r.text
        g = gauges(srv.metrics())
        assert g[LLAMACPP_RUNNING][0] == g[LLAMACPP_WAITING][0] == "gauge"
    finally:
        proc.stop()
