"""`perllm router` against stub backends served on loopback (the router's own upstream
client is what is tested), driven by httpx.AsyncClient over the router's ASGI app: routing,
learning from answers and streams, deadlines and shedding. Requests the router refuses:
test_router_requests.py; backends that fail: test_router_upstream.py and
test_router_backends.py; clients: test_router_clients.py; the config: test_router_config.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from router_harness import _STACK, BACKENDS, CHAT, config, decision, learned_lengths, router, run

from perllm.router.app import Router
from perllm.router.serving import serving
from perllm.router.stub import StubBackend


def test_routes_with_a_decision_header_and_learns() -> None:
    async def go() -> None:
        r, stubs, c = await router()
        backends = []
        for _ in range(12):
            resp = await c.post("/v1/chat/completions", json=CHAT)
            assert resp.status_code == 200, resp.text
            d = decision(resp)
            assert d["tier"] in ("edge", "cloud") and d["predicted"].endswith("s")
            assert d["feasible"] in ("true", "false")
            assert resp.json()["backend"] == d["backend"]
            backends.append(d["backend"])
        assert sum(s.requests for s in stubs.values()) == 12
        # Both arms were explored first (unplayed arms go first), and it learned every one.
        assert set(backends) == {"edge-gpu", "cloud"}
        assert r.decider.bandit.stats.n.sum() == pytest.approx(12, rel=0.05)
        assert r.inflight == [0, 0]
        text = (await c.get("/metrics")).text
        assert (
            'perllm_router_decisions_total{backend="edge-gpu",feasible="true",tier="edge"}' in text
        )
        assert "perllm_router_exploration_total" in text
        assert "perllm_router_attainment_ratio 1.0" in text
        models = (await c.get("/v1/models")).json()
        assert {m["id"] for m in models["data"]} == {"llama3-8b", "chat"}
        await r.aclose()

    run(go())


def test_streaming_passes_chunks_and_counts_tokens() -> None:
    async def go() -> None:
        stubs = {
            "edge-gpu": StubBackend("e", tokens=7, usage=False),
            "cloud": StubBackend("c", tokens=7),
        }
        r, _, c = await router(stubs)
        seen = learned_lengths(r)
        async with c.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as resp:
            assert resp.headers["content-type"] == "text/event-stream"
            body = b"".join([x async for x in resp.aiter_raw()])
        assert body.count(b"data:") == 8 and body.endswith(b"data: [DONE]\n\n")
        resp = await c.post(
            "/v1/completions", json={"model": "chat", "prompt": "hi", "stream": True}
        )
        assert resp.status_code == 200 and b"[DONE]" in resp.content
        assert seen == [7.0, 7.0]
        await r.aclose()

    run(go())


def test_a_stream_carrying_an_error_event_is_a_failure_not_an_outcome_to_learn() -> None:
    # vLLM fails a request after its 200 head with `data: {"error": ...}` (then [DONE]):
    # the router relayed it and CS-UCB learned a fast, short answer from that backend.
    from perllm.router.proxy import TokenCounter

    events = (
        b'data: {"choices": [{"delta": {"content": "a"}}]}\n\n'
        b'data: {"error": {"message": "CUDA out of memory", "code": 500}}\n\n'
        b"data: [DONE]\n\n"
    )
    tc = TokenCounter(stream=True)
    tc.feed(events)
    assert tc.error == "CUDA out of memory"
    old = TokenCounter(stream=True)  # vLLM's older shape, split across two reads
    old.feed(b'data: {"choices": []}\n\ndata: {"object": "err')
    assert old.error is None
    old.feed(b'or", "message": "bad"}\n\n')
    assert old.error == "bad"  # (the stream is read by lines: a line cut by a read, whole)
    text = TokenCounter(stream=True)  # the word in generated text is JSON-escaped: no event
    text.feed(b'data: {"choices": [{"delta": {"content": "data: {\\"error\\": 1}"}}]}\n\n')
    assert text.error is None

    async def failing(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})  # fmt: skip
        await send({"type": "http.response.body", "body": events})

    async def go() -> None:
        url = await _STACK.get().enter_async_context(serving(failing))
        r, _, c = await router(urls={"edge-gpu": url, "cloud": url})
        seen = learned_lengths(r)
        resp = await c.post("/v1/chat/completions", json={**CHAT, "stream": True})
        assert resp.status_code == 200 and resp.content == events  # relayed as it came
        assert seen == []  # not learned
        m = (await c.get("/metrics")).text
        assert 'kind="stream_error"} 1.0' in m
        await r.aclose()

    run(go())


def test_usage_of_a_json_answer_is_the_output_length() -> None:
    async def go() -> None:
        stubs = {"edge-gpu": StubBackend("e", tokens=5), "cloud": StubBackend("c", tokens=5)}
        r, _, c = await router(stubs)
        seen = learned_lengths(r)
        for _ in range(2):
            assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 200
        assert seen == [5.0, 5.0]
        await r.aclose()

    run(go())


def test_a_backends_token_count_is_a_finite_count_at_most_max_tokens() -> None:
    # A backend's usage is not trusted beyond what the request allowed: 1e308 tokens (or
    # inf, a negative or a boolean count) would be learned as the output length, a time
    # ratio of ~0 for that arm.
    from perllm.costmodel import BYTES_PER_TOKEN
    from perllm.router.proxy import TokenCounter

    def answer(usage: str) -> bytes:
        return b'{"choices": [{"text": "tok tok tok"}], "usage": {"completion_tokens": %s}}' % (
            usage.encode()
        )

    for usage, limit, want in [
        ("12", None, 12.0),
        ("12", 5.0, 5.0),
        ("1e308", 16.0, 16.0),
        ("1e999", None, None),  # inf: no count, the body's length stands
        ("-3", None, None),
        ("true", None, None),
        ("NaN", None, None),
        ("1" + "0" * 400, None, None),  # an int beyond a float's range
    ]:
        tc = TokenCounter(stream=False, limit=limit)
        tc.feed(answer(usage))
        got = tc.tokens()
        assert got == (len(answer(usage)) / BYTES_PER_TOKEN if want is None else want), usage
    sse = TokenCounter(stream=True, limit=2.0)
    sse.feed(b'data: {"choices": [{"text": "t"}]}\n\n' * 9 + b"data: [DONE]\n\n")
    assert sse.tokens() == 2.0

    async def liar(scope: Any, receive: Any, send: Any) -> None:  # usage far past max_tokens
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": answer("1e308")})

    async def go() -> None:
        url = await _STACK.get().enter_async_context(serving(liar))
        r, _, c = await router(urls={"edge-gpu": url, "cloud": url})
        seen = learned_lengths(r)
        resp = await c.post("/v1/chat/completions", json={**CHAT, "max_tokens": 32})
        assert resp.status_code == 200
        assert seen == [32.0]
        await r.aclose()

    run(go())


def test_sheds_with_503_when_no_backend_can_meet_the_deadline() -> None:
    async def go() -> None:
        r, stubs, c = await router(shed=True)
        # The service's own deadline is met; the header tightens it below any prediction.
        resp = await c.post(
            "/v1/chat/completions", json=CHAT, headers={"x-perllm-deadline-s": "0.001"}
        )
        assert resp.status_code == 503
        err = resp.json()["error"]
        assert err["type"] == "deadline_unmeetable" and "0.001" in err["message"]
        # A header cannot loosen the deadline: a huge prompt is infeasible everywhere.
        huge = {"model": "chat", "messages": [{"role": "user", "content": "x" * 2_000_000}]}
        resp = await c.post(
            "/v1/chat/completions", json=huge, headers={"x-perllm-deadline-s": "1e6"}
        )
        assert resp.status_code == 503, resp.text
        assert "no backend can meet the deadline" in resp.json()["error"]["message"]
        assert sum(s.requests for s in stubs.values()) == 0
        assert (
            'perllm_router_shed_requests_total{reason="deadline_unmeetable"} 2.0'
            in (await c.get("/metrics")).text
        )
        await r.aclose()

    run(go())


def test_without_shedding_the_least_violating_backend_serves() -> None:
    async def go() -> None:
        r, _, c = await router()
        resp = await c.post(
            "/v1/chat/completions", json=CHAT, headers={"x-perllm-deadline-s": "1e-9"}
        )
        assert resp.status_code == 200
        assert "perllm_router_attainment_ratio 0.0" in (await c.get("/metrics")).text
        await r.aclose()

    run(go())


def test_a_header_deadline_tightens_the_decision_itself() -> None:
    """`x-perllm-deadline-s` is the request's deadline where shorter than the service's,
    in CS-UCB's decision (not only in shedding): a deadline the edge's prediction cannot
    meet sends the request to the fastest backend (it was decided on the service's
    deadline, which the edge meets, and so went to the edge)."""

    async def go() -> None:
        r, _, c = await router()

        async def decisions(n: int, headers: dict[str, str]) -> list[str]:
            out = []
            for _ in range(n):
                resp = await c.post("/v1/chat/completions", json=CHAT, headers=headers)
                assert resp.status_code == 200, resp.text
                out.append(resp.headers["x-perllm-decision"])
            return out

        plain = await decisions(4, {})
        assert any(d.startswith("backend=edge-gpu;") and "feasible=true" in d for d in plain)
        tight = await decisions(6, {"x-perllm-deadline-s": "1e-9"})
        assert all(d.startswith("backend=cloud;") and "feasible=false" in d for d in tight)
        await r.aclose()

    run(go())


def test_a_large_fleet_loads_the_compiled_loop_before_serving(monkeypatch: Any) -> None:
    """More backends than CS-UCB scores one by one: the pooled path's compiled loop is
    loaded at start (off the event loop) and when discovery grows the membership past
    that size, not in a client's first request; a small fleet never loads it."""
    import threading

    from perllm.router import membership

    calls: list[str] = []

    def load() -> bool:
        calls.append(threading.current_thread().name)
        return True

    monkeypatch.setattr(membership, "kernels_available", load)
    many = [{**BACKENDS[i % 2], "name": f"b{i:03d}", "url": f"http://b{i}:8000"} for i in range(70)]

    async def main() -> None:
        small = Router(config())
        await small.start()
        assert not small.decider.bandit.pooled and calls == []
        await small.aclose()
        large = Router(config(backends=many))
        assert large.decider.bandit.pooled and calls == []  # no loop yet: at start
        await large.start()
        assert len(calls) == 1 and calls[0] != threading.current_thread().name
        await large.aclose()
        grown = Router(config())
        await grown.start()
        grown.set_backends(config(backends=many).backends)
        assert grown._warming is not None
        await grown._warming
        assert len(calls) == 2
        await grown.aclose()

    run(main())


def test_with_n_choices_the_length_learned_is_one_sequences() -> None:
    """With `n` > 1 a backend (vLLM, OpenAI) reports the output tokens of all its choices
    in `usage.completion_tokens`, and a stream has one event per choice's token: the n
    sequences' sum was learned as one sequence's output length (the cost model sizes, and
    CS-UCB decides on, one), and capped by max_tokens, which bounds each choice."""
    from perllm.router.proxy import TokenCounter
    from perllm.router.request import BadRequest, parse

    tc = TokenCounter(stream=False, limit=10, n=3)
    tc.feed(b'{"choices": [], "usage": {"completion_tokens": 24}}')
    assert tc.tokens() == 8.0  # (was 10: the 24 of three choices, capped at max_tokens)
    sse = TokenCounter(stream=True, n=2)
    for i in range(6):
        sse.feed(b'data: {"choices": [{"index": %d, "delta": {"content": "x"}}]}\n\n' % (i % 2))
    assert sse.tokens() == 3.0
    b = '{"model": "m", "messages": [], "n": '
    assert [parse((b + v + "}").encode(), True).n for v in ("3", "3.0", "1", "null")] == [
        3, 3, 1, 1,
    ]  # fmt: skip
    for v in ("0", "-1", '"2"', "true", "2.5", "1e400"):
        with pytest.raises(BadRequest, match=r"^n: must be a positive integer$"):
            parse((b + v + "}").encode(), True)

    async def three(scope: Any, receive: Any, send: Any) -> None:  # n choices of 5 tokens
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        n = json.loads(body)["n"]
        choices = [{"index": i, "message": {"content": "tok " * 5}} for i in range(n)]
        out = {"choices": choices, "usage": {"completion_tokens": 5 * n}}
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": json.dumps(out).encode()})

    async def go() -> None:
        url = await _STACK.get().enter_async_context(serving(three))
        r, _, c = await router(urls={"edge-gpu": url, "cloud": url})
        seen = learned_lengths(r)
        resp = await c.post("/v1/chat/completions", json={**CHAT, "n": 3})
        assert resp.status_code == 200 and len(resp.json()["choices"]) == 3
        assert seen == [5.0]
        await r.aclose()

    run(go())


def test_a_stream_counts_the_events_that_carry_text() -> None:
    """Without `usage`, a stream's tokens were its data events: a last chunk of its own
    with only finish_reason (OpenAI's `"delta": {}`, a completion's `"text": ""`), or a
    first one with only the role, counted one token each that was never generated. Now
    an event counts where it carries text (content, text, reasoning, a tool call's
    arguments), read by lines, so an event cut across two reads counts once."""
    from perllm.router.proxy import TokenCounter

    def ev(choice: str) -> bytes:
        return b'data: {"id":"x","object":"chat.completion.chunk","choices":[%s]}\n\n' % (
            choice.encode()
        )

    chat = (
        ev('{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}')
        + b"".join(ev('{"index":0,"delta":{"content":"tok"}}') for _ in range(3))
        + ev('{"index":0,"delta":{},"finish_reason":"stop"}')
        + b"data: [DONE]\n\n"
    )
    text = (
        b"".join(b'data: {"choices": [{"index": 0, "text": "tok"}]}\r\n\r\n' for _ in range(3))
        + b'data: {"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}\r\n\r\n'
        + b"data: [DONE]\r\n\r\n"
    )
    tools = ev('{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{"}}]}}')
    said = ev('{"index":0,"delta":{"content":"data: data: [DONE]"}}')  # (no event in text)
    for body, want in ((chat, 3.0), (text, 3.0), (tools * 2 + said, 3.0)):
        whole = TokenCounter(stream=True)
        whole.feed(body)
        assert whole.tokens() == want, body
        cut = TokenCounter(stream=True)  # every read cut at 7 bytes: events across reads
        for i in range(0, len(body), 7):
            cut.feed(body[i : i + 7])
        assert cut.tokens() == want, body
    usage = TokenCounter(stream=True)  # a usage event cut by a read is read whole
    late = b'data: {"choices": [], "usage": {"completion_tokens": 9}}\n\n'
    usage.feed(chat[:-14] + late[:30])
    usage.feed(late[30:] + b"data: [DONE]\n\n")
    assert usage.tokens() == 9.0
