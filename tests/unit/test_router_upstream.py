"""`perllm router`'s upstream client against backends that answer badly or not at all
(raw asyncio servers or stubs on loopback, router_harness.py): timeouts, unreachable
backends, malformed heads and bodies, and its connection pool."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import httpx
import pytest
from router_harness import BACKENDS, CHAT, config, router, run

from perllm.router.app import Router
from perllm.router.serving import serving
from perllm.router.stub import StubBackend


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


@pytest.mark.parametrize(
    ("answer", "kind", "why"),
    [
        (b"", "connect", "connection closed: EOF"),  # closed, nothing answered
        (b"\x15\x03\x03\x00\x02\x02\x46", "disconnect", "bad HTTP response"),  # a TLS alert
    ],
)
def test_a_backend_that_drops_a_sent_request_is_a_missed_request_and_ejected(
    answer: bytes, kind: str, why: str
) -> None:
    """Sent, then the connection closed without an answer or answered with no HTTP: the
    502 was counted as an upstream `connect` error alone, neither judged (attainment
    stayed 100 %) nor ejected, so a backend dropping every request kept getting them."""

    async def go() -> None:
        async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
            writer.close()

        srv = await asyncio.start_server(drop, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
        limits = {"retries": 0, "eject_s": 30}
        r, _, c = await router(urls={"edge-gpu": url, "cloud": url}, limits=limits)
        resp = await c.post("/v1/chat/completions", json=CHAT)
        assert resp.status_code == 502 and resp.json()["error"]["type"] == "upstream_unavailable"
        assert why in resp.json()["error"]["message"]
        assert r.inflight == [0, 0]
        (tried,) = r.down()  # the next ones go elsewhere
        text = r.metrics.exposition().decode()
        assert f'upstream_errors_total{{backend="{tried}",kind="{kind}"}} 1.0' in text, text
        assert f'requests_judged_total{{backend="{tried}",met="false"' in text
        assert r.metrics.attainment._value.get() == 0.0
        await r.aclose()
        srv.close()

    run(go())
