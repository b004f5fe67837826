"""`perllm router` and its clients (over stub backends, router_harness.py): the queue's
bounds, clients that leave while queued or mid-stream, a client that stops reading."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from router_harness import CHAT, router, run

from perllm.router.app import Router
from perllm.router.serving import serving
from perllm.router.stub import StubBackend


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
                assert b"\nperllm_router_queued_requests 3.0\n" in r.metrics.exposition()
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
            assert b"\nperllm_router_queued_requests 0.0\n" in r.metrics.exposition()
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


def test_a_client_gone_mid_upload_is_abandoned_not_a_rejected_request() -> None:
    """A client that disconnects while sending its body (a cancelled upload) was counted
    as a rejected 400, an invalid request, with an answer nobody could read."""

    async def go() -> None:
        r, _, _ = await router(urls={"edge-gpu": "http://e", "cloud": "http://c"})
        pieces = [
            {"type": "http.request", "body": b'{"model": ', "more_body": True},
            {"type": "http.disconnect"},
        ]
        sent: list[Any] = []

        async def receive() -> Any:
            return pieces.pop(0)

        async def send(m: Any) -> None:
            sent.append(m)

        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
                 "headers": [(b"content-type", b"application/json")]}  # fmt: skip
        await r(scope, receive, send)
        assert sent == []  # nobody to answer
        assert r.metrics.abandoned._value.get() == 1
        assert "rejected_requests_total{" not in r.metrics.exposition().decode()
        assert r.inflight == [0, 0] and r._slots._value == r.limits.max_concurrency
        await r.aclose()

    run(go())
