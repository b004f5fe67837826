"""`perllm router` against stub backends served on loopback (the router's own upstream
client is what is tested), driven by httpx.AsyncClient over the router's ASGI app."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import math
import re
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from perllm.router.app import Router
from perllm.router.config import RouterConfig, RouterConfigError, load_config, parse_config
from perllm.router.health import Ejections
from perllm.router.serving import serving
from perllm.router.stub import StubBackend

BACKENDS: list[dict[str, Any]] = [
    {
        "name": "edge-gpu",
        "url": "http://edge:8000",
        "tier": "edge",
        "hardware": "nvidia-l4",
        "link": {"bandwidth_mbps": 100, "rtt_ms": 5},
    },
    {
        "name": "cloud",
        "url": "http://cloud:8000",
        "tier": "cloud",
        "hardware": "a100-80gb-sxm",
        "link": {"bandwidth_mbps": 300, "rtt_ms": 40},
    },
]
CHAT = {"model": "llama3-8b", "messages": [{"role": "user", "content": "hello " * 50}]}


def config(**kw: Any) -> RouterConfig:
    return parse_config({"scenario": "demo", "service_class": "chat", "backends": BACKENDS} | kw)


_STACK: contextvars.ContextVar[contextlib.AsyncExitStack] = contextvars.ContextVar("stack")


async def router(
    stubs: dict[str, StubBackend] | None = None, urls: dict[str, str] | None = None, **kw: Any
) -> tuple[Router, dict[str, StubBackend], httpx.AsyncClient]:
    """A router over stubs served on loopback for this test (or at `urls`)."""
    stubs = stubs or {"edge-gpu": StubBackend("edge-gpu"), "cloud": StubBackend("cloud")}
    if urls is None:
        st = _STACK.get()
        urls = {n: await st.enter_async_context(serving(s)) for n, s in stubs.items()}
    backends = [{**b, "url": urls[b["name"]]} for b in BACKENDS]
    r = Router(config(backends=backends, **kw))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=r), base_url="http://router")
    return r, stubs, client


def decision(resp: httpx.Response) -> dict[str, str]:
    h = resp.headers["x-perllm-decision"]
    return dict(p.strip().split("=", 1) for p in h.split(";"))


def run(coro: Awaitable[None]) -> None:
    async def main() -> None:
        async with contextlib.AsyncExitStack() as st:
            _STACK.set(st)
            await asyncio.wait_for(coro, 30)

    asyncio.run(main())


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
        seen: list[float] = []
        orig = r.decider.learn_one

        def spy(ticket: Any, time: Any, l_out: Any, deadline: Any, energy: Any = None) -> None:
            seen.append(l_out)
            orig(ticket, time, l_out, deadline, energy)

        r.decider.learn_one = spy  # type: ignore[method-assign]
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
        seen: list[float] = []
        orig = r.decider.learn_one
        r.decider.learn_one = lambda t, d, lo, dl, e=None: (seen.append(lo), orig(t, d, lo, dl, e))  # type: ignore[method-assign,func-returns-value,assignment]
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
        seen: list[float] = []
        orig = r.decider.learn_one
        r.decider.learn_one = lambda t, d, lo, dl, e=None: (seen.append(lo), orig(t, d, lo, dl, e))  # type: ignore[method-assign,func-returns-value,assignment]
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
        seen: list[float] = []
        orig = r.decider.learn_one
        r.decider.learn_one = lambda t, d, lo, dl, e=None: (seen.append(lo), orig(t, d, lo, dl, e))  # type: ignore[method-assign,func-returns-value,assignment]
        resp = await c.post("/v1/chat/completions", json={**CHAT, "max_tokens": 32})
        assert resp.status_code == 200
        assert seen == [32.0]
        await r.aclose()

    run(go())


@pytest.mark.parametrize(
    ("body", "headers", "status", "kind"),
    [
        (b"{not json", {}, 400, "invalid_request_error"),
        (b"[1, 2]", {}, 400, "invalid_request_error"),
        (json.dumps({"model": "llama3-8b"}).encode(), {}, 400, "invalid_request_error"),
        (json.dumps({**CHAT, "model": "gpt-9"}).encode(), {}, 404, "model_not_found"),
        (json.dumps({**CHAT, "max_tokens": -1}).encode(), {}, 400, "invalid_request_error"),
        (b"[" * 2000 + b"]" * 2000, {}, 400, "invalid_request_error"),  # (a RecursionError)
        (
            json.dumps({**CHAT, "max_tokens": float("nan")}).encode(),
            {},
            400,
            "invalid_request_error",
        ),
        (
            json.dumps({**CHAT, "max_tokens": -5, "max_completion_tokens": None}).encode(),
            {},
            400,
            "invalid_request_error",
        ),
        (json.dumps(CHAT).encode(), {"x-perllm-deadline-s": "soon"}, 400, "invalid_request_error"),
        (json.dumps({**CHAT, "pad": "x" * 5000}).encode(), {}, 413, "invalid_request_error"),
    ],
)
def test_malformed_requests_get_a_clear_4xx(
    body: bytes, headers: dict[str, str], status: int, kind: str
) -> None:
    async def go() -> None:
        r, stubs, c = await router(limits={"max_body_bytes": 4096})
        resp = await c.post("/v1/chat/completions", content=body, headers=headers)
        assert resp.status_code == status
        assert resp.json()["error"]["type"] == kind
        assert sum(s.requests for s in stubs.values()) == 0
        assert (await c.get("/v1/chat/completions")).status_code == 405
        assert (await c.get("/nope")).status_code == 404
        await r.aclose()

    run(go())


def test_bad_max_tokens_and_non_json_numbers_are_named() -> None:
    from perllm.router.request import BadRequest, parse

    def why(body: str) -> str:
        with pytest.raises(BadRequest) as e:
            parse(body.encode(), True)
        return e.value.message

    b = '{"model": "m", "messages": []'
    # Not JSON, though Python reads them (the body goes on as it came); 1e400 reads as inf
    assert why(b + ', "max_tokens": NaN}') == "body is not valid JSON: NaN is not a JSON value"
    assert why(b + ', "top_p": -Infinity}').endswith("-Infinity is not a JSON value")
    assert why(b + ', "max_tokens": 1e400}') == "max_tokens: must be a positive integer"
    assert why("[" * 2000 + "]" * 2000) == "body: JSON nested too deeply"  # (was a 500)
    bad = b + ', "max_completion_tokens": "8", "max_tokens": 8}'
    assert why(bad) == "max_completion_tokens: must be a positive integer"
    assert why(b + ', "max_tokens": 2.5}') == "max_tokens: must be a positive integer"
    from perllm.router.request import deadline_header

    for v, msg in (("inf", "a finite number"), ("nan", "a finite number"), ("-1", "> 0")):
        with pytest.raises(BadRequest, match=f"x-perllm-deadline-s: must be {msg}"):
            deadline_header(v)
    assert deadline_header("2.5") == 2.5
    assert parse((b + ', "max_tokens": 8.0}').encode(), True).max_tokens == 8
    # null is not given: max_tokens is checked (it was skipped) and caps the answer
    assert why(b + ', "max_completion_tokens": null, "max_tokens": 0}').startswith("max_tokens:")
    assert (
        parse((b + ', "max_completion_tokens": null, "max_tokens": 9}').encode(), True).max_tokens
        == 9
    )
    assert (
        parse((b + ', "max_completion_tokens": 5, "max_tokens": 9}').encode(), True).max_tokens == 5
    )
    # an integer beyond a float's range (no inf in JSON, but 400 digits): float() overflowed
    assert why(b + ', "max_tokens": ' + "9" * 400 + "}") == "max_tokens: must be a positive integer"
    assert parse((b + ', "max_tokens": 1' + "0" * 300 + "}").encode(), True).max_tokens == 10**300


def test_a_lone_surrogate_escape_or_a_huge_max_tokens_is_no_500() -> None:
    """JSON.stringify of a string cut inside an emoji writes `\\ud83d` (valid JSON); the
    prompt's byte count encoded it strictly (UnicodeEncodeError: a 500). A max_tokens of
    400 digits passed the check and overflowed float() when the output length was capped."""

    async def go() -> None:
        r, _, c = await router()
        cut = {**CHAT, "messages": [{"role": "user", "content": "\ud83d cut"}]}
        resp = await c.post("/v1/chat/completions", content=json.dumps(cut).encode())
        assert resp.status_code == 200, resp.text
        huge = json.dumps(CHAT)[:-1] + ', "max_tokens": ' + "9" * 400 + "}"
        resp = await c.post("/v1/chat/completions", content=huge.encode())
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["message"] == "max_tokens: must be a positive integer"
        await r.aclose()

    run(go())


def test_several_deadline_headers_are_a_400() -> None:
    """Two x-perllm-deadline-s lines (which HTTP allows only for a list field): the last
    one was taken silently, whichever a proxy or client meant."""

    async def go() -> None:
        r, stubs, c = await router()
        twice = [("x-perllm-deadline-s", "10"), ("x-perllm-deadline-s", "0.5")]
        resp = await c.post("/v1/chat/completions", json=CHAT, headers=twice)
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["message"] == "x-perllm-deadline-s: given 2 times; give one"
        assert sum(s.requests for s in stubs.values()) == 0
        one = await c.post("/v1/chat/completions", json=CHAT, headers=twice[:1])
        assert one.status_code == 200
        await r.aclose()

    run(go())


def test_a_wrong_method_is_405_naming_the_right_one() -> None:
    async def go() -> None:
        r, _, c = await router()
        for path, right in [
            ("/v1/chat/completions", "POST"), ("/v1/completions", "POST"),
            ("/v1/models", "GET"), ("/metrics", "GET"),
        ]:  # fmt: skip
            for method in {"GET", "POST", "PUT", "DELETE"} - {right}:
                resp = await c.request(method, path)
                assert resp.status_code == 405, (method, path)  # (GET-only ones were 404)
                assert resp.json()["error"]["message"] == f"use {right}"
                assert resp.headers["allow"] == right  # (HTTP requires it on a 405)
        assert (await c.post("/v2/nope")).status_code == 404
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


def test_a_hanging_backend_times_out_and_frees_its_slot() -> None:
    async def go() -> None:
        stubs = {"edge-gpu": StubBackend("e", hang=True), "cloud": StubBackend("c", hang=True)}
        async with serving(stubs["edge-gpu"]) as e, serving(stubs["cloud"]) as cl:
            r, _, c = await router(
                stubs, {"edge-gpu": e, "cloud": cl}, limits={"read_timeout_s": 0.2}
            )
            resp = await c.post("/v1/chat/completions", json=CHAT)
            assert resp.status_code == 504 and resp.json()["error"]["type"] == "upstream_timeout"
            assert r.inflight == [0, 0]
            # a miss in the metrics, not a speed for CS-UCB (`Feedback.failed`)
            assert r.decider.bandit.stats.n.sum() == 0
            assert r.metrics.attainment._value.get() == 0.0
            await r.aclose()
            await asyncio.sleep(0.05)
            assert sum(s.active for s in stubs.values()) == 0  # the upstream was cancelled

    run(go())


def test_an_unreachable_backend_is_a_502_without_retries() -> None:
    async def go() -> None:
        dead = [{**b, "url": "http://127.0.0.1:9"} for b in BACKENDS]  # nothing listens
        r = Router(config(backends=dead, limits={"retries": 0}))
        c = httpx.AsyncClient(transport=httpx.ASGITransport(app=r), base_url="http://router")
        resp = await c.post("/v1/chat/completions", json=CHAT)
        assert resp.status_code == 502 and resp.json()["error"]["type"] == "upstream_unavailable"
        assert r.inflight == [0, 0]
        assert len(r.down()) == 1  # the one tried is ejected
        await r.aclose()

    run(go())


def test_a_backend_answering_a_status_out_of_range_is_a_502() -> None:
    async def go() -> None:
        async def weird(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 999 Weird\r\ncontent-length: 2\r\n\r\nhi")
            await writer.drain()
            writer.close()

        srv = await asyncio.start_server(weird, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
        r, _, c = await router(urls={"edge-gpu": url, "cloud": url}, limits={"retries": 0})
        # (uvicorn has no status line for 999: it was a 500 and a traceback in the log)
        resp = await c.post("/v1/chat/completions", json=CHAT)
        assert resp.status_code == 502 and resp.json()["error"]["type"] == "upstream_unavailable"
        assert "bad HTTP response: status 999" in resp.json()["error"]["message"]
        assert r.inflight == [0, 0]
        await r.aclose()
        srv.close()

    run(go())


def test_an_answer_nested_too_deeply_to_read_is_relayed_without_a_traceback() -> None:
    """The output tokens are read from a backend's `usage` (the whole JSON body, or an SSE
    event naming it): a body nested deeper than Python's recursion limit raised a
    RecursionError there, after the answer: a traceback in the log, the stream cut off."""

    async def go() -> None:
        deep = b"[" * 100_000 + b"]" * 100_000
        event = b'data: {"usage": ' + deep + b"}\n\ndata: [DONE]\n\n"

        async def nested(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            n = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            stream = json.loads(await reader.readexactly(n)).get("stream")
            body, ctype = (event, b"text/event-stream") if stream else (deep, b"application/json")
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: " + ctype + b"\r\ncontent-length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body)  # fmt: skip
            await writer.drain()
            writer.close()

        srv = await asyncio.start_server(nested, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
        r, _, c = await router(urls={"edge-gpu": url, "cloud": url}, limits={"retries": 0})
        for stream, body in ((False, deep), (True, event)):
            resp = await c.post("/v1/chat/completions", json={**CHAT, "stream": stream})
            assert resp.status_code == 200 and resp.content == body
        assert r.inflight == [0, 0] and r.metrics.attainment._value.get() == 1.0
        await r.aclose()
        srv.close()

    run(go())


def test_a_backend_answering_an_endless_head_is_a_502_at_its_size_limit() -> None:
    """A response head that never ends (one header line growing for good): the parser
    buffered it until read_timeout_s, growing by ~17 MB/s (over 1 GB at the default 60 s)."""

    async def go() -> None:
        async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nx-a: ")
            with contextlib.suppress(ConnectionError):
                while True:
                    writer.write(b"a" * 65536)
                    await writer.drain()

        srv = await asyncio.start_server(endless, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
        limits = {"retries": 0, "read_timeout_s": 10}
        r, _, c = await router(urls={"edge-gpu": url, "cloud": url}, limits=limits)
        resp = await asyncio.wait_for(c.post("/v1/chat/completions", json=CHAT), 5)
        assert resp.status_code == 502, resp.text
        assert "bad HTTP response: head over 65536 bytes" in resp.json()["error"]["message"]
        assert r.inflight == [0, 0]
        await r.aclose()
        srv.close()

    run(go())


def test_informational_heads_before_the_answer_are_skipped() -> None:
    """103 Early Hints (or a 100 Continue) before the 200 is allowed HTTP: the answer after
    it is relayed, on a connection that stays usable (a 502 'status 103' before)."""

    async def go() -> None:
        async def hints(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:  # keep-alive: requests until the router closes the connection
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    break
                n = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(n)
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n"
                             b"link: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\n"
                             b"content-type: application/json\r\ncontent-length: 12\r\n\r\n"
                             b'{"ok": true}')  # fmt: skip
                await writer.drain()
            writer.close()

        srv = await asyncio.start_server(hints, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
        r, _, c = await router(urls={"edge-gpu": url, "cloud": url}, limits={"retries": 0})
        for _ in range(2):
            resp = await c.post("/v1/chat/completions", json=CHAT)
            assert resp.status_code == 200 and resp.json() == {"ok": True}
        assert r.inflight == [0, 0] and not r.down()
        await r.aclose()
        srv.close()

    run(go())


def test_a_refused_request_is_decided_again_among_the_others() -> None:
    """Nothing was sent to a backend that refused the connection: the request goes to the
    next decision without the ejected one, and the client sees the other's answer."""

    async def go() -> None:
        edge = await _STACK.get().enter_async_context(serving(StubBackend("edge-gpu")))
        # The cloud (which CS-UCB prefers for this service) refuses connections.
        r, _, c = await router(urls={"edge-gpu": edge, "cloud": "http://127.0.0.1:9"})
        for _ in range(3):
            resp = await c.post("/v1/chat/completions", json=CHAT)
            assert resp.status_code == 200, resp.text
            assert resp.headers["x-perllm-decision"].startswith("backend=edge-gpu")
        assert r.down() == ["cloud"]
        assert r.inflight == [0, 0]
        m = (await c.get("/metrics")).text
        assert 'perllm_router_backend_ejected{backend="cloud"} 1.0' in m
        assert "perllm_router_retries_total 1.0" in m
        assert (await c.get("/readyz")).json() == {"status": "degraded", "down": ["cloud"]}

    run(go())


def test_ejections_double_per_refusal_up_to_the_cap_and_clear_on_an_answer() -> None:
    now = [100.0]
    ej = Ejections(1.0, 5.0, clock=lambda: now[0])
    assert [ej.refused("a") for _ in range(4)] == [1.0, 2.0, 4.0, 5.0]
    assert ej.out(["a", "b"]) == {"a"}
    now[0] += 5.01
    assert ej.out(["a", "b"]) == set()  # the ejection ended: decided on again (the probe)
    assert ej.refused("a") == 5.0  # the probe refused too: still at the cap
    assert ej.answered("a") and not ej.answered("a")
    assert ej.out(["a"]) == set() and ej.refused("a") == 1.0  # a fresh streak
    ej.forget([])
    assert ej.out(["a"]) == set()


def test_queue_full_and_queue_timeout_are_503() -> None:
    async def go() -> None:
        stubs = {"edge-gpu": StubBackend("e", hang=True), "cloud": StubBackend("c", hang=True)}
        async with serving(stubs["edge-gpu"]) as e, serving(stubs["cloud"]) as cl:
            await _queue(stubs, {"edge-gpu": e, "cloud": cl})

    run(go())


def test_clients_gone_while_queued_leave_the_queue_at_once() -> None:
    """Clients that disconnect while their request waits for a slot: their queue places
    are freed then (they held them until a slot came, so the queue could be full of
    requests nobody waits for: 503 queue_full for the next client), and they are never
    decided nor sent to a backend (CS-UCB counted plays for them)."""

    async def go() -> None:
        stubs = {n: StubBackend(n, tokens=40, token_delay_s=0.05) for n in ("edge-gpu", "cloud")}
        async with serving(stubs["edge-gpu"]) as e, serving(stubs["cloud"]) as cl:
            r, _, _ = await router(
                stubs,
                {"edge-gpu": e, "cloud": cl},
                limits={"max_concurrency": 1, "max_queue": 3, "queue_timeout_s": 10},
            )
            async with serving(r) as url, httpx.AsyncClient(base_url=url, timeout=10) as c:
                first = asyncio.create_task(c.post("/v1/chat/completions", json=CHAT))
                while not r._slots.locked():
                    await asyncio.sleep(0.01)
                body = json.dumps(CHAT).encode()
                host, port = url.removeprefix("http://").split(":")
                ghosts = []
                for _ in range(3):
                    _, w = await asyncio.open_connection(host, int(port))
                    w.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: r\r\n"
                            b"content-length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
                    ghosts.append(w)
                while r._queued < 3:
                    await asyncio.sleep(0.01)
                for w in ghosts:
                    w.close()
                for _ in range(100):  # (the first request holds its slot for 2 s)
                    if r._queued == 0:
                        break
                    await asyncio.sleep(0.01)
                assert r._queued == 0 and not first.done()
                resp = await c.post("/v1/chat/completions", json=CHAT)  # queued, not full
                assert resp.status_code == 200 and (await first).status_code == 200
            assert sum(s.requests for s in stubs.values()) == 2
            assert r.decider.bandit.stats.plays.sum() == 2
            assert r.metrics.abandoned._value.get() == 3
            assert r._queued == 0 and not r._slots.locked() and r.inflight == [0, 0]
            await r.aclose()

    run(go())


def test_a_client_that_stops_reading_its_answer_is_cut_after_send_timeout() -> None:
    """A client that keeps its connection open but reads nothing of a stream: once the
    socket buffers fill, the router's send to it waited for good, and with it the slot and
    the backend's request (read_timeout_s does not apply: the backend is not slow)."""

    async def go() -> None:
        open_ = 0

        async def blast(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal open_
            open_ += 1
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"transfer-encoding: chunked\r\n\r\n")  # fmt: skip
            event = b"data: " + b"x" * 65536 + b"\n\n"
            try:
                while True:  # as fast as it is read, until the router closes
                    writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                    await writer.drain()
            except ConnectionError:
                open_ -= 1

        srv = await asyncio.start_server(blast, "127.0.0.1", 0)
        up = f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
        limits = {"max_concurrency": 1, "read_timeout_s": 0.5, "send_timeout_s": 0.5}
        r, _, _ = await router(urls={"edge-gpu": up, "cloud": up}, limits=limits)
        async with serving(r) as url:
            host, port = url.removeprefix("http://").split(":")
            _, w = await asyncio.open_connection(host, int(port))
            w.transport.pause_reading()  # (reads nothing; the connection stays open)
            body = json.dumps({**CHAT, "stream": True}).encode()
            w.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: r\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
            while not r._slots.locked():
                await asyncio.sleep(0.01)
            for _ in range(300):
                if not r._slots.locked():
                    break
                await asyncio.sleep(0.01)
            assert not r._slots.locked() and r.inflight == [0, 0]
            await asyncio.sleep(0.1)
            assert open_ == 0  # the backend's request was cancelled
            assert 'kind="client_stalled"} 1.0' in r.metrics.exposition().decode()
            w.close()
        await r.aclose()
        srv.close()

    run(go())


async def _queue(stubs: dict[str, StubBackend], urls: dict[str, str]) -> None:
    if True:
        r, _, c = await router(
            stubs,
            urls,
            limits={
                "max_concurrency": 1,
                "max_queue": 1,
                "queue_timeout_s": 0.2,
                "read_timeout_s": 1,
            },
        )
        first = asyncio.create_task(c.post("/v1/chat/completions", json=CHAT))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(c.post("/v1/chat/completions", json=CHAT))
        await asyncio.sleep(0.05)
        third = await c.post("/v1/chat/completions", json=CHAT)
        assert third.status_code == 503 and third.json()["error"]["type"] == "queue_full"
        assert (await second).status_code == 503
        assert (await second).json()["error"]["type"] == "queue_timeout"
        assert (await first).status_code == 504
        await r.aclose()


async def _call(
    app: Router, body: bytes, disconnect_after_chunks: int
) -> tuple[list[dict[str, Any]], int]:
    """Drive the ASGI app directly; the client goes away after N body chunks."""
    sent: list[dict[str, Any]] = []
    gone = asyncio.Event()
    calls = 0

    async def receive() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(m: dict[str, Any]) -> None:
        sent.append(m)
        chunks = sum(1 for x in sent if x["type"] == "http.response.body")
        if chunks >= disconnect_after_chunks:
            gone.set()

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [(b"content-type", b"application/json")],
    }
    call: Callable[..., Awaitable[None]] = app
    await call(scope, receive, send)
    return sent, calls


def test_client_disconnect_mid_stream_cancels_the_upstream() -> None:
    async def go() -> None:
        stubs = {
            "edge-gpu": StubBackend("e", tokens=1000, token_delay_s=0.01),
            "cloud": StubBackend("c", tokens=1000, token_delay_s=0.01),
        }
        async with serving(stubs["edge-gpu"]) as e, serving(stubs["cloud"]) as cl:
            r, _, _ = await router(stubs, {"edge-gpu": e, "cloud": cl})
            body = json.dumps({**CHAT, "stream": True}).encode()
            sent, _ = await _call(r, body, disconnect_after_chunks=3)
            assert sent[0]["status"] == 200
            assert len(sent) < 50  # stopped long before 1000 tokens
            await asyncio.sleep(0.1)
            assert sum(s.active for s in stubs.values()) == 0
            assert sum(s.cancelled for s in stubs.values()) == 1
            assert r.inflight == [0, 0]
            assert "client_disconnect" in r.metrics.exposition().decode()
            await r.aclose()

    run(go())


def test_a_model_level_config_error_has_no_empty_location() -> None:
    """A check of the whole config (no pydantic location) read `r.yaml: : Value error,
    backends: names must be unique`: the field is in its message."""
    twice = [BACKENDS[0], {**BACKENDS[1], "name": BACKENDS[0]["name"]}]
    with pytest.raises(RouterConfigError) as e:
        parse_config({"scenario": "demo", "service_class": "chat", "backends": twice}, "r.yaml")
    assert str(e.value) == "r.yaml: backends: names must be unique"
    with pytest.raises(RouterConfigError) as e:  # a field's own check: no prefix either
        parse_config({"scenario": "demo", "service_class": "chat",
                      "backends": [{**BACKENDS[0], "url": "http://"}]}, "r.yaml")  # fmt: skip
    assert str(e.value).startswith("r.yaml: backends.0.url: 'http://'"), e.value
    assert "Value error" not in str(e.value)


def test_config_errors_are_clear(tmp_path: Any) -> None:
    with pytest.raises(RouterConfigError, match="backends"):
        parse_config({"scenario": "demo", "service_class": "chat", "backends": []})
    with pytest.raises(RouterConfigError, match="service_class"):
        Router(parse_config({"scenario": "demo", "service_class": "nope", "backends": BACKENDS}))
    bad = [{**BACKENDS[0], "hardware": "abacus"}]
    with pytest.raises(RouterConfigError, match="abacus"):
        Router(parse_config({"scenario": "demo", "service_class": "chat", "backends": bad}))
    p = tmp_path / "r.yaml"
    p.write_text(json.dumps({"scenario": "demo", "service_class": "chat", "backends": BACKENDS}))
    assert load_config(p).backends[1].name == "cloud"
    p.write_text("a: b: c\n")
    with pytest.raises(RouterConfigError, match=r"not valid YAML: line 1, column 5: mapping"):
        load_config(p)
    # a key given twice is refused (PyYAML kept the last: `shed: true` then `shed: false`
    # shed nothing), as in a scenario; a binary file is no traceback
    p.write_text("scenario: demo\nservice_class: chat\nshed: true\nshed: false\n")
    with pytest.raises(RouterConfigError, match=r"line 4, column 1: duplicate key 'shed'"):
        load_config(p)
    p.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(RouterConfigError, match="not a text file"):
        load_config(p)
    # A URL the upstream pool cannot connect to is the config's error, naming the field
    # (it was a ValueError traceback from the pool when the router started).
    for url in ("http://", "http://h:99999", "http://h:abc", "http://[::1"):
        bad = [{**BACKENDS[0], "url": url}]
        with pytest.raises(RouterConfigError, match=r"backends\.0\.url: .*" + re.escape(url)):
            parse_config({"scenario": "demo", "service_class": "chat", "backends": bad})
    bad = [{**BACKENDS[0], "url": "https://me:s3cret@llm.example.com"}]
    with pytest.raises(RouterConfigError, match=r"backends\.0\.url: .*token_file") as e:
        parse_config({"scenario": "demo", "service_class": "chat", "backends": bad})
    assert "s3cret" not in str(e.value)
    # CSUCBConfig's fields are refused by name, not turned into NaN decisions (an
    # output_prior_sigma of 0 made every class's output-length quantiles 1 token).
    for field, v in (("output_prior_sigma", 0.0), ("prior_n", math.nan), ("memory", math.nan)):
        with pytest.raises(RouterConfigError, match=rf"csucb[.:] ?{field}: "):
            Router(config(csucb={field: v}))
    # inf where CS-UCB gives it a meaning (memory: no forgetting) stays accepted
    assert config(csucb={"memory": math.inf, "backlog_waiting": math.inf}).csucb_config()
    # An infinite energy weight (was accepted: every option's normalised energy NaN).
    with pytest.raises(RouterConfigError, match=r"weights\.tran: .*finite"):
        config(weights={"tran": math.inf})
    # Seconds that pass `> 0` but would hang a request or stop a loop (were accepted).
    base = {"scenario": "demo", "service_class": "chat", "backends": BACKENDS}
    for section, field in (
        ("limits", "read_timeout_s"),
        ("limits", "queue_timeout_s"),
        ("limits", "eject_max_s"),
        ("discovery", "interval_s"),
        ("discovery", "status_interval_s"),
    ):
        extra = {"service": "ns/svc"} if section == "discovery" else {}
        for v in (math.inf, math.nan, 1e300):
            with pytest.raises(RouterConfigError, match=rf"{section}\.{field}: "):
                parse_config({**base, section: {**extra, field: v}})


def test_upstream_pool_keeps_connections_alive_and_reconnects() -> None:
    from perllm.router.upstream import Pool, UpstreamError

    async def go() -> None:
        async with serving(StubBackend("s", tokens=3)) as url:
            pool = Pool(url, 1.0, 2.0)
            connects = 0
            orig = pool._connect

            async def counting() -> Any:
                nonlocal connects
                connects += 1
                return await orig()

            pool._connect = counting  # type: ignore[method-assign]
            body = json.dumps({**CHAT, "stream": True}).encode()
            for _ in range(5):
                resp = await pool.post("/v1/chat/completions", body, [(b"x-a", b"1")])
                data = b""
                while (chunk := resp.take()) != b"":
                    if chunk is None:
                        await resp.wait()
                    else:
                        data += chunk
                resp.release()
                assert resp.status == 200 and data.count(b"data:") == 4
            assert connects == 1 and len(pool.idle) == 1
            pool.idle[0].close()  # gone while idle: a fresh connection, no error
            resp = await pool.post("/v1/chat/completions", body)
            assert resp.status == 200 and connects == 2
            resp.release()  # not read to the end: closed, not pooled
            assert not pool.idle
            pool.close()
        with pytest.raises(UpstreamError) as e:
            await Pool(url, 1.0, 1.0).post("/v1/chat/completions", body)
        assert e.value.kind == "connect"

    run(go())


def test_a_backend_that_left_is_forgotten_once_its_requests_end() -> None:
    """A rollout replaces backend X (pod names change): while its request is in flight its
    series, load and connection stay; when it ends (answered in full) X's labelled series,
    its metrics and its load are gone, its connection is closed rather than pooled, and
    its requests still count in the status' totals (its tier's)."""
    from perllm.router.asgi import Refused
    from perllm.router.status import GONE, StatusWriter

    async def go() -> None:
        stubs = {n: StubBackend(n, tokens=4, token_delay_s=0.05) for n in ("edge-gpu", "cloud")}
        r, _, c = await router(stubs)
        w = StatusWriter(r, "ns", "chat")
        for _ in range(2):  # unplayed arms go first: one each
            assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 200
        assert r.metrics.served() and len(r.metrics.served()) == 2
        t1 = 1000.0
        w.snapshot(t1)
        slow = asyncio.ensure_future(c.post("/v1/chat/completions", json=CHAT))
        while not any(s.active for s in stubs.values()):
            await asyncio.sleep(0.005)
        x = next(n for n, s in stubs.items() if s.active)
        y = next(n for n in stubs if n != x)
        pool = r.members.pools[r.members.names.index(x)] if r.members else None
        new = await _STACK.get().enter_async_context(serving(StubBackend("new")))
        stay = next(b for b in r.backends if b.name == y)
        r.set_backends([stay, stay.model_copy(update={"name": "new", "url": new})])
        assert r._leaving == {x} and len(r.backlog(x)) == 1
        busy = f'perllm_router_inflight_requests{{backend="{x}"}} 1.0'
        assert busy in (await c.get("/metrics")).text
        resp = await slow
        assert resp.status_code == 200 and resp.json()["backend"] == x
        text = (await c.get("/metrics")).text
        assert f'backend="{x}"' not in text and f'backend="{y}"' in text
        assert all(k[0] != x for k in r.metrics._backends) and x not in r._inflight
        assert not r._leaving and pool is not None and pool.closed and not pool.idle
        r._refused(Refused(x, "late"))  # a refusal from before it left: nothing recreated
        assert f'backend="{x}"' not in r.metrics.exposition().decode() and not r.refusing()
        for _ in range(4):
            resp = await c.post("/v1/chat/completions", json=CHAT)
            assert resp.status_code == 200 and resp.json()["backend"] in (y, "new")
        status, _ = w.snapshot(t1 + 61)  # the window starts at t1: X had 1 of 3 then
        assert status["requests"] == 7 and sum(t["requests"] for t in status["tiers"]) == 7
        assert status["recent"]["requests"] == 5
        assert sum(t["requests"] for t in status["recent"]["tiers"]) == 5
        names = [b["name"] for b in status["backends"]]
        assert x not in names and not any(n.startswith(GONE) for n in names)
        await r.aclose()

    run(go())


def _reachable(r: Router) -> tuple[bool, str, str]:
    """The `BackendsReachable` condition the status writer would write now."""
    from perllm.router.status import StatusWriter

    return StatusWriter(r, "ns", "chat").snapshot(1e9)[1]


def test_a_hanging_backend_is_ejected_and_its_request_not_retried() -> None:
    """A backend that accepts the connection but sends no response head: the client gets
    504 upstream_timeout naming it (the request is not sent elsewhere: it may have reached
    the backend), the condition says it does not answer in time, the next requests go to
    the other backend; once it answers again the condition clears."""

    async def go() -> None:
        stubs = {"edge-gpu": StubBackend("edge-gpu", hang=True), "cloud": StubBackend("cloud")}
        # (timeouts with room: on a loaded CI machine a healthy stub can take 0.2 s)
        limits = {"read_timeout_s": 1.0, "eject_s": 2.0, "eject_max_s": 2.0}
        r, _, c = await router(stubs, limits=limits)
        for _ in range(2):  # unplayed arms go first: one of these reaches the edge
            before = stubs["cloud"].requests
            resp = await c.post("/v1/chat/completions", json=CHAT)
            if resp.status_code != 200:
                break
        assert resp.status_code == 504, resp.text
        err = resp.json()["error"]
        assert err["type"] == "upstream_timeout"
        assert err["message"] == "backend edge-gpu: no response within 1s"
        assert stubs["cloud"].requests == before  # not retried elsewhere
        assert r.down() == ["edge-gpu"] and r.refusing()["edge-gpu"].timeouts == 1
        ok, reason, msg = _reachable(r)
        assert (ok, reason) == (False, "BackendsEjected"), msg
        assert msg.startswith("edge-gpu (edge, http://127.0.0.1:")
        assert " does not answer in time since " in msg and "refuses" not in msg
        assert "(1 timeout(s), last: backend edge-gpu: no response within 1s)" in msg
        assert msg.endswith("requests go to cloud")
        for _ in range(4):
            resp = await c.post("/v1/chat/completions", json=CHAT)
            assert resp.status_code == 200 and resp.json()["backend"] == "cloud"
        assert (await c.get("/readyz")).json() == {"status": "degraded", "down": ["edge-gpu"]}
        m = (await c.get("/metrics")).text
        assert 'perllm_router_backend_ejected{backend="edge-gpu"} 1.0' in m
        assert 'perllm_router_upstream_errors_total{backend="edge-gpu",kind="timeout"} 1.0' in m
        assert "perllm_router_retries_total 0.0" in m

        await asyncio.sleep(2.0)  # the ejection is over: one probe, the others elsewhere
        burst = [c.post("/v1/chat/completions", json=CHAT) for _ in range(8)]
        codes = sorted(x.status_code for x in await asyncio.gather(*burst))
        assert codes in ([200] * 8, [200] * 7 + [504]), codes
        assert r.refusing()["edge-gpu"].timeouts == codes.count(504) + 1

        stubs["edge-gpu"].hang = False  # it answers again
        # CS-UCB learned its timed-out requests (a second each) and sends little there for
        # a while; with the edge alone the next request after its ejection is its probe.
        both = r.backends
        r.set_backends([b for b in both if b.name == "edge-gpu"])
        await asyncio.sleep(2.0)  # (the probe's ejection, if it timed out, is over)
        resp = await c.post("/v1/chat/completions", json=CHAT)
        assert resp.status_code == 200 and resp.json()["backend"] == "edge-gpu"
        assert "edge-gpu" not in r.refusing()
        r.set_backends(both)
        assert _reachable(r)[:2] == (True, "AllReachable") and not r.down()
        m = (await c.get("/metrics")).text
        assert 'perllm_router_backend_ejected{backend="edge-gpu"} 0.0' in m
        await r.aclose()

    run(go())


def test_a_backend_not_accepting_connections_in_time_is_ejected_and_skipped() -> None:
    """A connect that times out sent nothing: the request goes to the other backend, and
    the one that did not accept is ejected, said not to answer in time."""
    import socket

    async def go() -> None:
        # A listener whose accept queue is full: the kernel drops further SYNs.
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(0)
        url = f"http://127.0.0.1:{srv.getsockname()[1]}"
        fill = [socket.socket() for _ in range(4)]
        for s in fill:
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(srv.getsockname())
        try:
            cloud = await _STACK.get().enter_async_context(serving(StubBackend("cloud")))
            limits = {"connect_timeout_s": 0.2, "eject_s": 5}
            r, _, c = await router(urls={"edge-gpu": url, "cloud": cloud}, limits=limits)
            for _ in range(3):
                resp = await c.post("/v1/chat/completions", json=CHAT)
                assert resp.status_code == 200 and resp.json()["backend"] == "cloud"
            assert r.down() == ["edge-gpu"]
            f = r.refusing()["edge-gpu"]
            assert (f.refusals, f.timeouts) == (0, 1), f
            assert f.why == "backend edge-gpu: connect timed out (0.2s)"
            ok, reason, msg = _reachable(r)
            assert not ok and reason == "BackendsEjected" and "does not answer in time" in msg
            assert "perllm_router_retries_total 1.0" in (await c.get("/metrics")).text
            await r.aclose()
        finally:
            for s in [*fill, srv]:
                s.close()

    run(go())


def test_a_slow_backend_answering_within_the_timeouts_is_never_ejected() -> None:
    """Slow is not hanging: answers whose head, and each chunk, come within the read
    timeout (a stream as a whole much longer) eject nothing; a stream that stalls longer
    than it is cut, and its backend ejected (said not to answer in time)."""

    async def go() -> None:
        # (with room: a loaded CI machine delays a stub's answer by a good part of 0.2 s)
        stubs = {n: StubBackend(n, tokens=4, token_delay_s=0.2) for n in ("edge-gpu", "cloud")}
        r, _, c = await router(stubs, limits={"read_timeout_s": 1.0, "eject_s": 5})
        streamed = {**CHAT, "stream": True}  # 0.8 s in all, a chunk every 0.2 s
        short = {**CHAT, "max_tokens": 2}  # the head after 0.4 s
        for body in (streamed, short, streamed, short, streamed, short):
            resp = await c.post("/v1/chat/completions", json=body)
            assert resp.status_code == 200
        assert not r.refusing() and not r.down() and _reachable(r)[0]
        assert "perllm_router_upstream_errors_total{" not in (await c.get("/metrics")).text

        for s in stubs.values():
            s.token_delay_s = 3.0  # the head at once, then nothing for 3 s
        # Over a real server: the answer is aborted, so the client sees it truncated (not
        # a complete 200 without [DONE]).
        async with serving(r) as url, httpx.AsyncClient(base_url=url) as real:
            with pytest.raises(httpx.RemoteProtocolError):
                await real.post("/v1/chat/completions", json=streamed)
        (name, f), *_ = r.refusing().items()
        assert f.timeouts == 1 and f.why == f"backend {name}: answer stalled, no data within 1s"
        assert r.down() == [name] and "does not answer in time" in _reachable(r)[2]
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


def test_a_body_not_sent_in_time_is_408_before_taking_a_slot() -> None:
    """A client that sends its head and then nothing (slowloris) is answered 408 after
    body_timeout_s and holds nothing: no slot, no backend request."""

    async def go() -> None:
        r, stubs, _ = await router(limits={"body_timeout_s": 0.2, "max_concurrency": 1})
        sent: list[dict[str, Any]] = []

        async def never() -> dict[str, Any]:
            await asyncio.Event().wait()
            return {}

        async def send(m: Any) -> None:
            sent.append(dict(m))

        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
                 "headers": [(b"content-length", b"100")]}  # fmt: skip
        await asyncio.wait_for(r(scope, never, send), 5)
        assert sent[0]["status"] == 408 and (b"connection", b"close") in sent[0]["headers"]
        assert b"not received within 0.2s" in sent[1]["body"]
        assert not r._slots.locked() and sum(s.requests for s in stubs.values()) == 0
        await r.aclose()

    run(go())


def test_an_answer_cut_off_mid_body_reaches_the_client_truncated() -> None:
    """A backend that closes after part of a JSON body it announced whole: the client's
    response is aborted (a protocol error for it), not a complete 200 with half a body."""

    async def go() -> None:
        async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                         b"content-length: 100\r\n\r\n{\"partial\":")  # fmt: skip
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(cut, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        r, _, _ = await router(urls={"edge-gpu": url, "cloud": url})
        async with serving(r) as base, httpx.AsyncClient(base_url=base) as c:
            with pytest.raises(httpx.RemoteProtocolError):
                await c.post("/v1/chat/completions", json=CHAT)
        await r.aclose()
        server.close()

    run(go())


def test_a_stream_flag_that_is_no_boolean_is_a_400() -> None:
    """`bool(body["stream"])` read "false" (a string) as streaming, while the backend the
    body is forwarded to reads it as a flag or refuses it."""
    from perllm.router.request import BadRequest, parse

    b = '{"model": "m", "messages": [], "stream": '
    for v in ('"false"', '"true"', "1", "0", "[]", "{}"):
        with pytest.raises(BadRequest) as e:
            parse((b + v + "}").encode(), True)
        assert e.value.status == 400 and e.value.message == "stream: must be true or false"
    assert [parse((b + v + "}").encode(), True).stream for v in ("true", "false", "null")] == [
        True,
        False,
        False,
    ]


def test_a_backend_answering_a_redirect_is_failing_not_relayed_nor_learned() -> None:
    """A 3xx from a model server (its url wrong: http redirected to https, a moved path)
    was relayed without its Location (a redirect the client could do nothing with) and
    learned as a fast answer. The router follows no redirect (it may point anywhere, and
    a remote tier's token would go along): the backend is failing like one refusing the
    connection (ejected, the request decided again, the condition says why), and with
    none left the client gets a 502 naming the redirect."""
    from perllm.router.status import reachable

    async def redirecting(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        where = [(b"location", b"https://10.1.2.3/v1/chat/completions")]
        await send({"type": "http.response.start", "status": 308, "headers": where})
        await send({"type": "http.response.body", "body": b""})

    async def go() -> None:
        st = _STACK.get()
        moved = await st.enter_async_context(serving(redirecting))
        edge = await st.enter_async_context(serving(StubBackend("edge-gpu")))
        r, _, c = await router(urls={"edge-gpu": edge, "cloud": moved})
        for _ in range(3):
            resp = await c.post("/v1/chat/completions", json=CHAT)
            assert resp.status_code == 200, resp.text
            assert resp.json()["backend"] == "edge-gpu"
        # (learned: the edge's three answers only; the statistics are shared by deciders)
        assert r.down() == ["cloud"] and r.decider.bandit.stats.n.sum() == pytest.approx(3, 0.01)
        ok, _, message = reachable(r.backends, [], r.refusing())
        assert not ok and "backend cloud: HTTP 308, a redirect (not followed" in message
        assert (
            r.metrics.registry.get_sample_value(
                "perllm_router_upstream_errors_total", {"backend": "cloud", "kind": "redirect"}
            )
            == 1.0
        )
        await r.aclose()

        r, _, c = await router(urls={"edge-gpu": moved, "cloud": moved}, limits={"retries": 0})
        resp = await c.post("/v1/chat/completions", json=CHAT)
        assert resp.status_code == 502 and resp.json()["error"]["type"] == "upstream_unavailable"
        assert "HTTP 308, a redirect (not followed" in resp.json()["error"]["message"]
        assert "10.1.2.3" not in resp.text and "location" not in resp.headers
        assert r.inflight == [0, 0] and r.decider.bandit.stats.n.sum() == 0  # none learned
        await r.aclose()

    run(go())


def test_stream_options_without_streaming_is_a_400_naming_it() -> None:
    """`stream_options` on a request that does not stream was forwarded (OpenAI and vLLM
    answer it 400: the options are of a stream), and the twin, reading requests as the
    router does, answered it as if it were not there."""
    from perllm.router.request import BadRequest, parse

    b = '{"model": "m", "messages": [], "stream_options": {"include_usage": true}'
    for rest in ("}", ', "stream": false}', ', "stream": null}'):
        with pytest.raises(BadRequest) as e:
            parse((b + rest).encode(), True)
        assert e.value.status == 400
        assert e.value.message == "stream_options: only allowed when stream is true"
    assert parse((b + ', "stream": true}').encode(), True).include_usage
    off = '{"model": "m", "messages": [], "stream_options": null}'  # null: not given
    assert not parse(off.encode(), True).stream

    async def go() -> None:
        r, stubs, c = await router()
        body = {**CHAT, "stream_options": {"include_usage": True}}
        resp = await c.post("/v1/chat/completions", json=body)
        assert resp.status_code == 400 and "stream_options" in resp.json()["error"]["message"]
        assert sum(s.requests for s in stubs.values()) == 0
        await r.aclose()

    run(go())


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
        seen: list[float] = []
        orig = r.decider.learn_one
        r.decider.learn_one = lambda t, d, lo, dl, e=None: (seen.append(lo), orig(t, d, lo, dl, e))  # type: ignore[method-assign,func-returns-value,assignment]
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


def test_backends_down_says_why_each_is_out_without_their_addresses() -> None:
    """503 `backends_down` said "every backend refuses connections or does not answer in
    time" whichever it was: now how many are out, and which way each fails (as the
    status condition counts them), by name, never by address."""

    async def go() -> None:
        hang = StubBackend("edge-gpu", hang=True)
        edge = await _STACK.get().enter_async_context(serving(hang))
        urls = {"edge-gpu": edge, "cloud": "http://127.0.0.1:9"}  # (nothing listens there)
        limits = {"read_timeout_s": 0.2, "eject_s": 30, "eject_max_s": 30, "probe": False}
        r, _, c = await router(urls=urls, limits=limits)
        while len(r.down()) < 2:  # the hanging one times out (504), the other is refused
            assert (await c.post("/v1/chat/completions", json=CHAT)).status_code in (503, 504)
        resp = await c.post("/v1/chat/completions", json=CHAT)
        assert resp.status_code == 503 and resp.json()["error"]["type"] == "backends_down"
        said = resp.json()["error"]["message"]
        assert said == (
            "every backend is left out of decisions: 1 refusing connections (cloud), "
            "1 not answering in time (edge-gpu)"
        )
        ready = await c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["error"]["message"] == said
        await r.aclose()

    run(go())
