"""The router's bounds on what a backend or a client can hold: the total time of a proxied
request (`limits.total_timeout_s`), against backends that answer, but never finish."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from router_harness import CHAT, _reachable, config, router, run

from perllm.router.asgi import UNFINISHED
from perllm.router.serving import serving


@contextlib.contextmanager
def uvicorn_errors() -> Iterator[list[logging.LogRecord]]:
    """What uvicorn's error logger emits (it does not propagate to pytest's handler; and
    entered once uvicorn is configured, which removes that logger's handlers)."""
    got: list[logging.LogRecord] = []
    h = logging.Handler()
    h.emit = got.append  # type: ignore[method-assign]
    lg = logging.getLogger("uvicorn.error")
    lg.addHandler(h)
    try:
        yield got
    finally:
        lg.removeHandler(h)


async def _dripping(head: bytes, drip: bytes) -> tuple[asyncio.Server, str, list[int]]:
    """A backend that writes `head`, then `drip` every 50 ms, for good (each one well
    within the read timeout); `open_[0]`: its connections still open."""
    open_ = [0]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        open_[0] += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(head)
            while True:
                writer.write(drip)
                await writer.drain()
                await asyncio.sleep(0.05)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            open_[0] -= 1

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    return srv, f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}", open_


LIMITS = {"read_timeout_s": 5, "total_timeout_s": 0.5, "probe": False}


def test_a_backend_dripping_its_answer_forever_is_cut_at_the_total_limit() -> None:
    """Each chunk comes within read_timeout_s, the answer never ends: once total_timeout_s
    has passed the client's response (its head sent) is aborted, the upstream request
    closed, the slot freed, the backend ejected and the timeout counted."""

    async def go() -> None:
        head = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\n\r\n")  # fmt: skip
        event = b'data: {"choices": [{"delta": {"content": "x"}}]}\n\n'
        srv, up, open_ = await _dripping(head, b"%x\r\n%s\r\n" % (len(event), event))
        r, _, _ = await router(urls={"edge-gpu": up, "cloud": up}, limits=LIMITS)
        async with serving(r) as url, httpx.AsyncClient(base_url=url, timeout=10) as c:
            logged = contextlib.ExitStack()
            errors = logged.enter_context(uvicorn_errors())
            t = time.perf_counter()
            body = {**CHAT, "stream": True}
            async with c.stream("POST", "/v1/chat/completions", json=body) as resp:
                assert resp.status_code == 200
                try:
                    async for _ in resp.aiter_raw():
                        pass
                    raise AssertionError("the stream ended as if complete")
                except httpx.RemoteProtocolError:
                    pass  # (truncated: no last chunk)
            assert time.perf_counter() - t < 3
            await asyncio.sleep(0.1)
            assert open_[0] == 0 and r.inflight == [0, 0] and not r._slots.locked()
            text = r.metrics.exposition().decode()
            assert 'kind="total_timeout"} 1.0' in text
            _, _, why = _reachable(r)
            assert "no complete answer within total_timeout_s=0.5s" in why
        # An abort on purpose: the router's warning says why, no ERROR from uvicorn.
        logged.close()
        assert [x.getMessage() for x in errors if x.levelno >= logging.ERROR] == []
        await r.aclose()
        srv.close()

    run(go())


def test_a_backend_dripping_interim_heads_gets_a_504_at_the_total_limit() -> None:
    """No answer's head yet (1xx heads, each within read_timeout_s): a 504 naming the
    limit, not a wait of as long as the heads drip."""

    async def go() -> None:
        srv, up, open_ = await _dripping(b"", b"HTTP/1.1 103 Early Hints\r\n\r\n")
        r, _, _ = await router(urls={"edge-gpu": up, "cloud": up}, limits=LIMITS)
        async with serving(r) as url, httpx.AsyncClient(base_url=url, timeout=10) as c:
            t = time.perf_counter()
            resp = await c.post("/v1/chat/completions", content=json.dumps(CHAT))
            assert time.perf_counter() - t < 3
            assert resp.status_code == 504, resp.text
            err = resp.json()["error"]
            assert err["type"] == "upstream_timeout"
            assert "total_timeout_s=0.5s" in err["message"]
            await asyncio.sleep(0.1)
            assert open_[0] == 0 and r.inflight == [0, 0] and not r._slots.locked()
            text = r.metrics.exposition().decode()
            assert 'kind="total_timeout"} 1.0' in text
            assert 'perllm_router_shed_requests_total{reason="upstream_timeout"} 1.0' in text
        await r.aclose()
        srv.close()

    run(go())


def test_an_app_leaving_a_response_unfinished_by_mistake_is_still_an_error() -> None:
    """The filter of deliberate aborts keeps uvicorn's ERROR for any other unfinished
    response (served by the same `serving`)."""

    async def broken(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})

    async def go() -> None:
        async with serving(broken) as url, httpx.AsyncClient(base_url=url) as c:
            with uvicorn_errors() as errors, contextlib.suppress(httpx.HTTPError):
                await c.get("/")
        assert [x.getMessage() for x in errors if x.levelno >= logging.ERROR] == [UNFINISHED]

    run(go())


def _answer(n_tokens: int) -> bytes:
    """A JSON answer with logprobs (~200 bytes a token, a top logprob keyed "usage" as a
    decoy), its usage, then more after it (vLLM's prompt_logprobs)."""
    lp = [
        {"token": "usage", "logprob": -0.1, "top_logprobs": {"usage": -0.5, "x": -1.0}}
    ] * n_tokens
    return json.dumps(
        {
            "choices": [{"message": {"content": "x" * n_tokens}, "logprobs": {"content": lp}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": n_tokens},
            "prompt_logprobs": [{"1": {"decoded_token": "usage", "logprob": -1.0}}] * 2000,
        }
    ).encode()


def test_a_large_json_answer_is_counted_without_being_kept_whole() -> None:
    """A non-streamed answer was kept whole (up to 16 MiB, 256 concurrent ones 4 GiB) to
    read its usage at the end: now past `WHOLE` only the bytes after each "usage" key
    are, and its count is the same."""
    import tracemalloc

    from perllm.router.proxy import WHOLE, TokenCounter

    body = _answer(200_000)  # ~16 MiB
    assert len(body) > 60 * WHOLE
    tc = TokenCounter(stream=False)
    tracemalloc.start()
    try:
        for i in range(0, len(body), 65536):
            tc.feed(body[i : i + 65536])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * WHOLE, peak
    assert tc.tokens() == 200_000
    # The same reading as a whole body's, below the size kept whole and at chunk edges.
    for n, step in ((100, 7), (3000, 4096), (3000, 1)):
        small, whole = _answer(n), TokenCounter(stream=False)
        for i in range(0, len(small), step):
            whole.feed(small[i : i + step])
        assert whole.tokens() == n, (n, step)
    # Over WHOLE without a usage that reads as one: ~4 bytes a token of all of it.
    tc = TokenCounter(stream=False)
    tc.feed(b'{"usage": {"completion_tokens": "many"}, "x": "' + b"y" * (2 * WHOLE) + b'"}')
    assert tc.tokens() == pytest.approx((2 * WHOLE + 60) / 4, rel=0.01)


def test_a_body_sent_as_another_type_than_json_is_a_415() -> None:
    """JSON with any parameters, or no Content-Type, is read; text/plain or form data (what
    a web page may send cross-site without a preflight) is a 415 naming the type, never
    decided nor sent."""

    async def go() -> None:
        r, stubs, c = await router()
        raw = json.dumps(CHAT)
        for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
            resp = await c.post(
                "/v1/chat/completions", content=raw, headers={"content-type": ctype}
            )
            assert resp.status_code == 415, resp.text
            assert resp.json()["error"]["message"] == (
                f"content-type {ctype!r}: the body must be JSON, sent as application/json"
            )
        for headers in ({}, {"content-type": "Application/JSON; charset=utf-8"}):
            resp = await c.post("/v1/chat/completions", content=raw, headers=headers)
            assert resp.status_code == 200, resp.text
        assert sum(s.requests for s in stubs.values()) == 2
        series = '{reason="unsupported_media_type",status="415"} 3.0'
        assert f"perllm_router_rejected_requests_total{series}" in r.metrics.exposition().decode()
        await r.aclose()

    run(go())


def test_bodies_held_at_once_are_bounded_by_the_body_budget() -> None:
    """Bodies are read before a slot is taken, so each connection could hold up to
    max_body_bytes (and the queue and the slots 1,280 of them): with one body being
    uploaded, another that would take the bodies held past `body_budget_bytes` is a 503
    `body_budget` with Retry-After before it is read (declared) or as it comes (chunked),
    counted; once the first is answered its bytes are given back and the second is served."""

    async def go() -> None:
        limits = {"max_body_bytes": 4096, "body_budget_bytes": 6000}
        r, stubs, c = await router(limits=limits)
        body = json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * 3400}]})
        raw = body.encode()
        first_in = asyncio.Event()
        release = asyncio.Event()

        async def slow() -> Any:  # a chunked upload that stops half-way for a while
            yield raw[:3000]
            first_in.set()
            await release.wait()
            yield raw[3000:]

        first = asyncio.create_task(c.post("/v1/chat/completions", content=slow()))
        await first_in.wait()
        await asyncio.sleep(0.05)
        assert r._bodies.held == 3000 and len(raw) > 3000
        second = await c.post("/v1/chat/completions", content=raw)  # declared: ~3,470 bytes
        assert second.status_code == 503 and second.headers["retry-after"] == "1"
        assert second.json()["error"]["type"] == "body_budget"
        assert "limits.body_budget_bytes (6000)" in second.json()["error"]["message"]

        async def chunked() -> Any:
            yield raw[:2000]
            yield raw[2000:]

        third = await c.post("/v1/chat/completions", content=chunked())  # as it comes
        assert third.status_code == 503 and third.json()["error"]["type"] == "body_budget"
        release.set()
        assert (await first).status_code == 200
        assert r._bodies.held == 0
        assert (await c.post("/v1/chat/completions", content=raw)).status_code == 200
        assert sum(s.requests for s in stubs.values()) == 2
        text = r.metrics.exposition().decode()
        assert 'perllm_router_shed_requests_total{reason="body_budget"} 2.0' in text
        assert "perllm_router_body_bytes 0.0" in text
        await r.aclose()

    run(go())


def test_a_body_budget_below_one_body_is_a_config_error() -> None:
    with pytest.raises(ValueError, match=r"body_budget_bytes \(2048\) below max_body_bytes"):
        config(limits={"max_body_bytes": 4096, "body_budget_bytes": 2048})
    assert config(limits={"body_budget_bytes": 0}).limits.body_budget_bytes == 0
