"""The twin's pods as OpenAI endpoints: what they answer to malformed requests, and what a
client that goes away leaves behind."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from perllm.router.config import Limits
from perllm.scenario import load_scenario, parse_scenario
from perllm.twin.openai import TwinOpenAI, pod_url, uvicorn_config

CHAT = {"model": "llama3-8b", "messages": [{"role": "user", "content": "hello " * 100}]}
POD = pod_url("", "default", "chat-cloud")


def quiet_demo() -> Any:
    sc = load_scenario("demo")
    return parse_scenario({**sc.model_dump(mode="json"), "speed_noise": 0.0}, "demo")


def _post_all(tw: TwinOpenAI, calls: list[tuple[str, str, bytes]]) -> list[httpx.Response]:
    async def go() -> list[httpx.Response]:
        t = httpx.ASGITransport(app=tw)
        async with httpx.AsyncClient(transport=t, base_url="http://twin") as c:
            return [await c.request(m, f"{POD}/v1/{route}", content=b) for m, route, b in calls]

    return asyncio.run(asyncio.wait_for(go(), 30))


def _chat(**kw: Any) -> bytes:
    return json.dumps({**CHAT, **kw}).encode()


def test_malformed_requests_get_a_4xx_with_a_reason() -> None:
    tw = TwinOpenAI.standalone(quiet_demo(), speed=1000.0)
    cases: list[tuple[str, str, bytes, int, str]] = [
        ("POST", "chat/completions", b"{", 400, "not valid JSON"),
        ("POST", "chat/completions", b"[1]", 400, "JSON object"),
        ("POST", "chat/completions", b'{"model": "chat"}', 400, "messages"),
        ("POST", "completions", b'{"model": "chat"}', 400, "prompt"),
        ("POST", "chat/completions", _chat(max_tokens=0), 400, "max_tokens"),
        ("POST", "chat/completions", _chat(max_tokens=-3), 400, "max_tokens"),
        ("POST", "chat/completions", _chat(max_tokens="8"), 400, "max_tokens"),
        ("POST", "chat/completions", _chat()[:-1] + b', "max_tokens": NaN}', 400, "NaN"),
        # (they were answered 200: any model name, a truthy string streamed)
        ("POST", "chat/completions", _chat(model="gpt-4"), 404, "gpt-4"),
        ("POST", "chat/completions", _chat(stream="false"), 400, "stream"),
        ("POST", "chat/completions", _chat(stream=1), 400, "stream"),
        # (a 404 "no route": the route is there, the method is not)
        ("GET", "chat/completions", b"", 405, "POST"),
        ("POST", "models", b"", 405, "GET"),
    ]
    resps = _post_all(tw, [(m, r, b) for m, r, b, _, _ in cases])
    for (_, _, b, status, why), resp in zip(cases, resps, strict=True):
        assert resp.status_code == status, (b[:80], resp.text)
        err = resp.json()["error"]
        assert why in err["message"], (b[:80], err)
    assert tw.served == 0  # none of them ran through the world model
    ok = _post_all(tw, [("POST", "chat/completions", _chat(model=m, max_tokens=3, stream=False))
                        for m in ("chat", "llama3-8b")])  # fmt: skip
    assert [r.status_code for r in ok] == [200, 200]
    assert ok[0].json()["model"] == "chat"


def test_an_oversized_body_is_a_413_read_no_further() -> None:
    """It was read whole into memory whatever its size, then answered 200."""
    tw = TwinOpenAI.standalone(quiet_demo(), speed=1000.0, max_body_bytes=64 * 1024)
    big = _chat(max_tokens=2)[:-1] + b', "pad": "' + b"x" * 100_000 + b'"}'
    [resp] = _post_all(tw, [("POST", "chat/completions", big)])
    assert resp.status_code == 413 and "65536 bytes" in resp.json()["error"]["message"]

    async def chunked() -> list[dict[str, Any]]:  # no content-length: counted as it comes
        sent: list[dict[str, Any]] = []
        chunks = [big[i : i + 8192] for i in range(0, len(big), 8192)]
        received = 0

        async def receive() -> dict[str, Any]:
            nonlocal received
            received += 1
            more = received < len(chunks)
            return {"type": "http.request", "body": chunks[received - 1], "more_body": more}

        async def send(m: dict[str, Any]) -> None:
            sent.append(m)

        scope = {"type": "http", "method": "POST", "headers": [],
                 "path": f"{POD}/v1/chat/completions"}  # fmt: skip
        await tw(scope, receive, send)
        assert received <= 9  # stopped at the limit, not at the end of the body
        return sent

    sent = asyncio.run(chunked())
    assert sent[0]["status"] == 413
    assert tw.served == 0


def test_the_pods_server_states_do_not_grow_with_every_request_served() -> None:
    """Every request's (start, end, kv) stayed in its node's `ServerState.inflight`
    forever (only `observe` prunes it, and nothing called it here): memory grew with every
    request the twin ever answered."""
    sc = quiet_demo()
    clock = [0.0]
    tw = TwinOpenAI(sc, TwinOpenAI.standalone(sc).resolve, speed=1.0, clock=lambda: clock[0])
    spec = next(s for s in sc.services() if s.name == "chat")
    j = tw.node_index["cloud"]
    for _ in range(200):
        tl = tw.timeline(spec, "cloud", 100.0, 0.0, 5)
        clock[0] += tl.done + 1.0  # the next one arrives after this one has ended
    assert tw.served == 200
    assert len(tw.states[j].inflight) <= 1
    assert len(tw.states[j].active) <= 1


def test_a_client_that_disconnects_mid_stream_leaves_no_task_behind() -> None:
    async def go() -> None:
        tw = TwinOpenAI.standalone(quiet_demo(), speed=5.0)
        body = _chat(max_tokens=200, stream=True)
        sent: list[dict[str, Any]] = []
        gone = asyncio.Event()
        first = True

        async def receive() -> dict[str, Any]:
            nonlocal first
            if first:
                first = False
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(m: dict[str, Any]) -> None:
            sent.append(m)
            if sum(1 for x in sent if x["type"] == "http.response.body") == 3:
                gone.set()  # the client leaves after two tokens

        scope = {"type": "http", "method": "POST", "headers": [],
                 "path": f"{POD}/v1/chat/completions"}  # fmt: skip
        before = asyncio.all_tasks()
        await asyncio.wait_for(tw(scope, receive, send), 20)
        await asyncio.sleep(0)
        assert asyncio.all_tasks() == before  # the answer and the watcher are gone
        bodies = [x for x in sent if x["type"] == "http.response.body"]
        assert 3 <= len(bodies) < 200 and all(x.get("more_body") for x in bodies)
        assert tw.served == 1
        # and its node no longer runs it (a model server aborts a disconnected request)
        assert tw.states[tw.node_index["cloud"]].observe(tw.now()) == (0, 0, 0.0)

    asyncio.run(go())


def test_a_request_whose_client_left_frees_its_slot_for_the_next() -> None:
    """Its slot and KV cache were held until the world model's end of the answer nobody
    read: a later request on the node batched with (or queued behind) a ghost."""
    sc = quiet_demo()
    spec = next(s for s in sc.services() if s.name == "chat")

    def second(leave: bool | None) -> float:
        clock = [0.0]
        tw = TwinOpenAI(sc, TwinOpenAI.standalone(sc).resolve, clock=lambda: clock[0])
        # the first request, on this node or (None: an idle node) elsewhere: same draws
        first = tw.admit(spec, "edge-gpu-1" if leave is not None else "cloud", 150, 0, 400)
        clock[0] = first.tl.first + 0.5  # mid-answer
        if leave:
            tw.abort(first)
            assert tw.states[tw.node_index["edge-gpu-1"]].observe(tw.now()) == (0, 0, 0.0)
        return tw.timeline(spec, "edge-gpu-1", 150.0, 0.0, 40).done

    idle, ghost, freed = second(None), second(False), second(True)
    assert ghost > idle  # batched with the first request
    assert freed == pytest.approx(idle)


def test_an_aborted_request_a_later_one_queued_behind_stops_being_reported() -> None:
    """On a full server the next admission takes the request's slot from its end (it
    leaves the heap early); aborted then, it must still leave what the server reports."""
    from perllm.world.server import Outcome, ServerState

    s = ServerState(p_idle=10, p_busy=100, p_prefill=100, is_gpu=False)
    a = Outcome(start=0.0, end=10.0, conc=1, prefill=1.0, decode=9.0, e_infer=0, e_idle_saved=0)
    s.inflight.append((0.0, 10.0, 0.0))  # A running, B queued behind it (taken from A)
    s.inflight.append((10.0, 20.0, 0.0))
    s.abort(a, 2.0)
    assert s.observe(3.0) == (0, 1, 0.0)  # B still waits (its start was fixed); A is gone


def _full_cpu_node(tw: TwinOpenAI, n: int) -> list[Any]:
    """`n` requests at t=0 on the Xeon, whose 3 chat slots the first three take."""
    spec = next(s for s in tw.sc.services() if s.name == "chat")
    return [tw.admit(spec, "edge-cpu", 150.0, 0.0, 400 if k < 3 else 20) for k in range(n)]


def test_a_request_queued_behind_an_aborted_one_starts_when_its_slot_frees() -> None:
    """Its start was fixed at its admission, with the aborted request's slot taken until
    that request's end: it waited for a slot that had been free for seconds."""
    sc = quiet_demo()
    clock = [0.0]
    tw = TwinOpenAI(sc, TwinOpenAI.standalone(sc).resolve, clock=lambda: clock[0])
    ads = _full_cpu_node(tw, 5)
    fourth, fifth = ads[3].tl, ads[4].tl
    assert fourth.outcome.start > 10 and fifth.outcome.start > fourth.outcome.start
    clock[0] = 5.0
    tw.abort(ads[0])  # the client of a running request leaves: its slot is free now
    assert ads[3].tl.outcome.start == pytest.approx(5.0)
    assert ads[3].tl.done < fourth.done - 5
    assert ads[4].tl.done <= fifth.done  # (it waits for the second's slot)
    assert tw.states[tw.node_index["edge-cpu"]].observe(5.01) == (3, 1, 0.0)


def test_a_queued_request_whose_client_leaves_gives_its_place_to_the_next() -> None:
    """It never runs: the request behind it gets its place, as if it had never come."""
    sc = quiet_demo()
    clock = [0.0]
    tw = TwinOpenAI(sc, TwinOpenAI.standalone(sc).resolve, clock=lambda: clock[0])
    ads = _full_cpu_node(tw, 5)
    energy = tw.energy_j
    clock[0] = 1.0
    tw.abort(ads[3])  # queued (its start is 11.7 s)
    ref = TwinOpenAI(sc, TwinOpenAI.standalone(sc).resolve, clock=lambda: 0.0)
    alone = _full_cpu_node(ref, 4)[3].tl  # (output lengths: all capped by max_tokens)
    assert ads[4].tl.outcome.start == pytest.approx(alone.outcome.start)
    assert ads[4].tl.done == pytest.approx(alone.done)
    assert tw.energy_j < energy  # its inference never happens
    assert tw.states[tw.node_index["edge-cpu"]].observe(1.0) == (3, 1, 0.0)


def test_a_queued_streams_first_token_comes_when_the_one_ahead_leaves() -> None:
    """Over the ASGI app: the answer of a queued request wakes when its slot frees."""

    async def go() -> float:
        tw = TwinOpenAI.standalone(quiet_demo(), speed=2.0)
        pod = pod_url("", "default", "chat-edge-cpu")
        gone = asyncio.Event()

        async def call(body: bytes, leave: bool) -> float:
            done = False

            async def receive() -> dict[str, Any]:
                nonlocal done
                if not done:
                    done = True
                    return {"type": "http.request", "body": body, "more_body": False}
                await (gone.wait() if leave else asyncio.Event().wait())
                return {"type": "http.disconnect"}

            async def send(m: dict[str, Any]) -> None:
                pass

            scope = {"type": "http", "method": "POST", "headers": [],
                     "path": f"{pod}/v1/chat/completions"}  # fmt: skip
            t0 = time.perf_counter()
            await tw(scope, receive, send)
            return time.perf_counter() - t0

        long = [_chat(max_tokens=400, stream=True) for _ in range(3)]
        ahead = [asyncio.ensure_future(call(b, k == 0)) for k, b in enumerate(long)]
        await asyncio.sleep(0.05)
        short = {**CHAT, "messages": [{"role": "user", "content": "hello " * 10}]}
        short |= {"max_tokens": 2, "stream": True}
        queued = asyncio.ensure_future(call(json.dumps(short).encode(), False))
        await asyncio.sleep(0.3)
        gone.set()
        wall = await asyncio.wait_for(queued, 30)
        for t in ahead:
            t.cancel()
        await asyncio.gather(*ahead, return_exceptions=True)
        return wall

    # It waited for the first answer's end: done at 13.3 simulated s (6.7 s here), now 2.3.
    assert asyncio.run(go()) < 3.5


@pytest.mark.parametrize("route", ["chat/completions", "completions"])
def test_a_well_formed_request_still_answers(route: str) -> None:
    tw = TwinOpenAI.standalone(quiet_demo(), speed=1000.0)
    body = (
        _chat(max_tokens=4)
        if route == "chat/completions"
        else json.dumps({"model": "chat", "prompt": "hi", "max_tokens": 4}).encode()
    )
    [resp] = _post_all(tw, [("POST", route, body)])
    assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] <= 4


def test_an_openai_port_in_use_is_an_error_naming_the_flag() -> None:
    """uvicorn's bind failed in the OpenAI endpoint's thread, which ended it: the twin
    logged that it served the pods there and ran on without them."""
    import socket

    from typer.testing import CliRunner

    from perllm.cli import app
    from perllm.twin.server import ListenError, serve

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ListenError, match=f"--openai-port {port}: cannot listen"):
            serve(load_scenario("demo"), None, "127.0.0.1", 0, 1.0, openai_port=port)
        # (and without a cluster: it exited 1 with uvicorn's log line)
        res = CliRunner().invoke(app, ["twin-openai", "--scenario", "demo", "--port", str(port)])
        assert res.exit_code == 2 and f"--port {port}: cannot listen" in res.output, res.output


def test_the_twin_serves_its_pods_on_the_openai_port() -> None:
    import socket
    import threading

    from perllm.twin.server import serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stop = threading.Event()
    th = threading.Thread(
        target=serve,
        args=(load_scenario("demo"), None, "127.0.0.1", 0, 1.0),
        kwargs={"stop": stop, "openai_port": port},
    )
    th.start()
    try:
        for _ in range(100):
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        assert r.status_code == 200
    finally:
        stop.set()
        th.join(10)


def test_answers_are_shaped_as_openais() -> None:
    """A completions stream's chunks were chat.completion.chunk objects and its last one a
    chat "delta"; finish_reason was "length" even when nothing cut the answer."""
    tw = TwinOpenAI.standalone(quiet_demo(), speed=1000.0)
    prompt = {"model": "chat", "prompt": "hi", "max_tokens": 3, "stream": True}
    long = _chat(max_tokens=100_000)  # (no drawn length reaches it)
    resps = _post_all(tw, [("POST", "completions", json.dumps(prompt).encode()),
                           ("POST", "chat/completions", _chat(max_tokens=3, stream=True)),
                           ("POST", "chat/completions", long)])  # fmt: skip
    for r in resps:
        assert r.status_code == 200
    text = resps[0].text
    assert text.endswith("data: [DONE]\n\n")
    events = [json.loads(x[6:]) for x in text.split("\n\n") if x.startswith("data: {")]
    assert {e["object"] for e in events} == {"text_completion"}
    assert all("text" in e["choices"][0] and "delta" not in e["choices"][0] for e in events)
    # (finish_reason with the last token, as vLLM; usage only when asked: below)
    assert [e["choices"][0]["finish_reason"] for e in events] == [None] * 2 + ["length"]
    assert len({e["id"] for e in events}) == 1
    chunks = [json.loads(x[6:]) for x in resps[1].text.split("\n\n") if x.startswith("data: {")]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "tok "}
    last = {"index": 0, "delta": {"content": "tok "}, "finish_reason": "length"}
    assert chunks[-1]["choices"][0] == last
    whole = resps[2].json()
    assert whole["choices"][0]["finish_reason"] == "stop"
    assert whole["id"].startswith("chatcmpl-") and isinstance(whole["created"], int)


def test_n_above_one_is_refused_naming_n() -> None:
    """n=3 was answered with one choice: a client counting on three got one."""
    tw = TwinOpenAI.standalone(quiet_demo(), speed=1000.0)
    cases = [(_chat(n=3, max_tokens=2), 400, "n: the twin answers one choice per request"),
             (_chat(n=0, max_tokens=2), 400, "n: must be a positive integer"),
             (_chat(n="2", max_tokens=2), 400, "n: must be a positive integer"),
             (_chat(stream=True, stream_options=[]), 400, "stream_options: must be an object"),
             (_chat(stream=True, stream_options={"include_usage": "yes"}), 400,
              "stream_options.include_usage: must be true or false"),
             (_chat(stream_options={"include_usage": True}), 400,
              "stream_options: only allowed when stream is true")]  # fmt: skip
    resps = _post_all(tw, [("POST", "chat/completions", b) for b, _, _ in cases])
    for (b, status, why), r in zip(cases, resps, strict=True):
        assert r.status_code == status and why in r.json()["error"]["message"], (b, r.text)
    assert tw.served == 0
    [ok] = _post_all(tw, [("POST", "chat/completions", _chat(n=1, max_tokens=2))])
    assert ok.status_code == 200 and len(ok.json()["choices"]) == 1


def test_a_stream_has_usage_only_when_asked_in_a_last_chunk_without_choices() -> None:
    """`usage` was in every stream's last content chunk: OpenAI (and vLLM, llama.cpp) send
    it only with stream_options.include_usage, in a chunk of its own with no choices. The
    router, which does not ask, counts the events then: one per token, exactly."""
    from perllm.router.proxy import TokenCounter

    tw = TwinOpenAI.standalone(quiet_demo(), speed=1000.0)
    asked = {"stream_options": {"include_usage": True}}
    prompt = {"model": "chat", "prompt": "hi", "max_tokens": 3, "stream": True}
    calls = [("POST", "chat/completions", _chat(max_tokens=3, stream=True)),
             ("POST", "chat/completions", _chat(max_tokens=3, stream=True, **asked)),
             ("POST", "completions", json.dumps({**prompt, **asked}).encode())]  # fmt: skip
    resps = _post_all(tw, calls)
    plain, with_usage, text = (r.content for r in resps)
    assert b"usage" not in plain and plain.endswith(b"data: [DONE]\n\n")
    counter = TokenCounter(stream=True)
    counter.feed(plain)
    assert counter.tokens() == 3.0
    for body, obj in ((with_usage, "chat.completion.chunk"), (text, "text_completion")):
        evs = [json.loads(x[6:]) for x in body.decode().split("\n\n") if x.startswith("data: {")]
        assert body.endswith(b"data: [DONE]\n\n") and len(evs) == 4
        assert evs[-1]["choices"] == [] and evs[-1]["object"] == obj
        assert evs[-1]["usage"]["completion_tokens"] == 3
        assert all("usage" not in e for e in evs[:-1])
        assert evs[-2]["choices"][0]["finish_reason"] == "length"


def test_an_answer_past_the_wall_limit_is_ended_visibly_not_sped_up(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Past MAX_ANSWER_SLEEP_S of wall time the rest of an answer was sent at once and it
    ended as a complete, fast one: a client (or the router, learning from it) saw a time
    the world model never gave. Now: a 504 naming the limit, or in a stream an error event
    and no end (the router then counts it broken off, not an answer to learn from)."""
    import perllm.twin.openai as twin_openai
    from perllm.router.serving import serving

    monkeypatch.setattr(twin_openai, "MAX_ANSWER_SLEEP_S", 0.3)
    tw = TwinOpenAI.standalone(quiet_demo(), speed=1.0)  # (a 40-token answer: seconds)

    async def go() -> tuple[httpx.Response, list[str], BaseException | None]:
        async with serving(tw) as url, httpx.AsyncClient(base_url=url, timeout=10) as c:
            whole = await c.post(f"{POD}/v1/chat/completions", content=_chat(max_tokens=40))
            lines: list[str] = []
            try:
                body = _chat(max_tokens=40, stream=True)
                async with c.stream("POST", f"{POD}/v1/chat/completions", content=body) as r:
                    assert r.status_code == 200
                    async for ln in r.aiter_lines():
                        lines.append(ln)
            except httpx.RemoteProtocolError as e:
                return whole, lines, e
            return whole, lines, None

    with caplog.at_level("WARNING", logger="perllm.twin"):
        whole, lines, broke = asyncio.run(asyncio.wait_for(go(), 30))
    assert whole.status_code == 504, whole.text
    assert "at most 0.3s of wall time" in whole.json()["error"]["message"]
    events = [x for x in lines if x.startswith("data: ")]
    assert broke is not None and "data: [DONE]" not in events and len(events) < 40
    err = json.loads(events[-1][6:])["error"]
    assert err["code"] == 504 and "at most 0.3s of wall time" in err["message"]
    assert tw.overdue == 2 and "at most 0.3s of wall time" in caplog.text
    assert tw.queued == [[] for _ in tw.states]  # (their slots were given back)


def test_the_twins_listener_reads_requests_under_the_routers_bounds() -> None:
    """`twin-openai` and the twin's endpoints ran plain uvicorn: a connection that sent
    nothing, or a head a byte at a time, stayed open for ever (perllm.httpguard)."""
    cfg = uvicorn_config(TwinOpenAI.standalone(load_scenario("demo"), 10.0, 0), lifespan="off")
    cfg.load()
    b = cfg.http_protocol_class.bounds  # type: ignore[attr-defined]
    assert (b.timeout_s, b.min_rate) == (Limits().request_timeout_s, Limits().min_body_bytes_per_s)
    assert cfg.ws_protocol_class is None
