"""`perllm router`'s listener against slow and oversized clients (`perllm.httpguard`): a
connection that sends no request, a head trickled in, a body slower than the minimum
rate, or an endless head is answered 408/431 and closed; an upload at the minimum rate
or faster, however long it takes, and a streamed answer are not cut."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from router_harness import BACKENDS, CHAT
from router_harness import config as router_config
from test_extender_security import Listener
from test_extender_transport import answer, connect, oversized_head, trickle_head

from perllm.router.app import Router
from perllm.router.serving import config
from perllm.router.stub import StubBackend

TIMEOUT = 0.6


class Served(Listener):
    """uvicorn with `serving.config` (what `perllm router` runs) on a thread."""

    def __init__(self, app: Any, plain: bool = False) -> None:
        if plain:  # (a stub backend)
            super().__init__(
                lambda port: uvicorn.Config(app, port=port, log_level="warning", lifespan="off")
            )
        else:
            super().__init__(lambda port: config(app, "127.0.0.1", port, "warning"))


def router(url: str = "http://edge:8000", **limits: Any) -> Router:
    backends = [{**b, "url": url} for b in BACKENDS]
    limits = {"request_timeout_s": TIMEOUT} | limits
    return Router(router_config(backends=backends, limits=limits))


@pytest.fixture
def port() -> Iterator[int]:
    with Served(router()) as s:
        yield s.port


@pytest.mark.parametrize(
    "sent",
    [
        b"",  # connected, nothing sent
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n",  # a head never finished
        b"\r\n",  # blank lines (skipped by the parser) kept uvicorn's keep-alive timer off
    ],
)
def test_a_request_that_does_not_arrive_in_time_is_408_and_closed(port: int, sent: bytes) -> None:
    s = connect(port, sent)
    t0 = time.monotonic()
    got = answer(s, TIMEOUT + 5)
    assert got != b"<open>"
    assert time.monotonic() - t0 >= TIMEOUT * 0.9
    assert got.startswith(b"HTTP/1.1 408 "), got
    assert b"connection: close" in got
    doc = json.loads(got.split(b"\r\n\r\n", 1)[1])
    assert doc["error"]["code"] == 408 and doc["error"]["type"] == "invalid_request_error"
    assert doc["error"]["message"].startswith(f"request not received within {TIMEOUT:g} s")


def test_a_trickled_head_is_cut_at_the_deadline_not_at_each_byte(port: int) -> None:
    trickle_head(port, TIMEOUT)


def test_an_oversized_head_is_431_and_closed(port: int) -> None:
    """2 MB of headers were read and answered: nothing bounded a head."""
    got = oversized_head(port)
    assert got.startswith(b"HTTP/1.1 431 "), got[:200]
    doc = json.loads(got.split(b"\r\n\r\n", 1)[1])
    assert doc["error"]["message"] == "request head over 65536 bytes"


def test_a_body_trickled_after_its_answer_is_cut_at_the_deadline(port: int) -> None:
    """/healthz answers without reading the body: uvicorn then read (and dropped) what
    came, a byte at a time, forever (each byte stopped its keep-alive timer)."""
    s = connect(port, b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
    t0 = time.monotonic()
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        for _ in range(1000):
            s.sendall(b" ")
            time.sleep(TIMEOUT / 3)
            assert time.monotonic() - t0 < TIMEOUT + 3, "still open"


def slow_post(port: int, body: bytes, rate: float) -> tuple[bytes, float]:
    """`body` to /v1/chat/completions at `rate` bytes/s (20 pieces a second): the answer
    and the seconds the upload took."""
    s = connect(port)
    s.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    piece = max(1, int(rate / 20))
    t0 = time.monotonic()
    try:
        for i in range(0, len(body), piece):
            s.sendall(body[i : i + piece])
            time.sleep(piece / rate)
    except (BrokenPipeError, ConnectionResetError):
        pass
    took = time.monotonic() - t0
    return answer(s, 10), took


def padded(size: int) -> bytes:
    doc = json.dumps(CHAT).encode()
    return doc + b" " * (size - len(doc))  # (JSON allows trailing blanks)


def test_an_upload_at_the_minimum_rate_outlasts_the_deadline_a_slower_one_is_408() -> None:
    """The allowance: 1 s per `min_body_bytes_per_s` bytes received, so that a large body
    over a slow link is read whole, and one trickled slower than that is not."""
    stub = StubBackend("edge-gpu")
    with Served(stub, plain=True) as b:
        r = Served(router(f"http://127.0.0.1:{b.port}", min_body_bytes_per_s=4000))
        with r:
            got, took = slow_post(r.port, padded(12000), 8000)  # 1.5 s at twice the rate
            assert took > 2 * TIMEOUT
            assert got.startswith(b"HTTP/1.1 200 "), got[:300]
            assert stub.requests == 1
            got, took = slow_post(r.port, padded(12000), 1000)  # a quarter of the rate
            assert got.startswith(b"HTTP/1.1 408 "), got[:300]
            doc = json.loads(got.split(b"\r\n\r\n", 1)[1])
            assert doc["error"]["message"] == (
                f"request not received within {TIMEOUT:g} s (+1 s per 4000 body bytes)"
            )
            assert stub.requests == 1


def test_a_streamed_answer_longer_than_the_deadline_is_not_cut() -> None:
    """The deadline covers reading the request: the answer's time is not the client's."""
    stub = StubBackend("edge-gpu", tokens=8, token_delay_s=TIMEOUT / 3)
    with Served(stub, plain=True) as b, Served(router(f"http://127.0.0.1:{b.port}")) as r:
        conn = http.client.HTTPConnection("127.0.0.1", r.port, timeout=10)
        t0 = time.monotonic()
        for _ in range(2):  # and again on the kept-alive connection
            conn.request("POST", "/v1/chat/completions", json.dumps(CHAT | {"stream": True}))
            resp = conn.getresponse()
            text = resp.read()
            assert resp.status == 200 and text.rstrip().endswith(b"data: [DONE]"), text
        assert time.monotonic() - t0 > 4 * TIMEOUT


def test_the_router_listener_is_guarded_with_its_limits() -> None:
    r = router(request_timeout_s=90, min_body_bytes_per_s=1)
    cfg = config(r, "127.0.0.1", 1)
    cfg.load()
    assert cfg.http_protocol_class.bounds.timeout_s == 90  # type: ignore[attr-defined]
    assert cfg.http_protocol_class.bounds.min_rate == 1  # type: ignore[attr-defined]
    assert cfg.ws_protocol_class is None


def test_the_listeners_refusals_are_counted_in_the_rejected_requests() -> None:
    """The 408 and 431 of the listener were logged at INFO only: a router under a
    slowloris or an oversized-head attack showed nothing in its metrics."""
    r = router()
    with Served(r) as s:
        got = answer(connect(s.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n"), TIMEOUT + 5)
        assert got.startswith(b"HTTP/1.1 408 "), got
        big = connect(s.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        try:
            for i in range(100):
                big.sendall(b"X-A%d: %s\r\n" % (i, b"a" * 1000))
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert answer(big, 5).startswith(b"HTTP/1.1 431 ")
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    rejected = "perllm_router_rejected_requests_total"
    assert f'{rejected}{{reason="read_timeout",status="408"}} 1.0' in text, text
    assert f'{rejected}{{reason="head_too_large",status="431"}} 1.0' in text, text


def fast_upload(port: int, head: bytes, piece: bytes, within: float) -> tuple[bytes, float]:
    """`head`, then `piece` every 10 ms (far above the minimum rate) until the server
    closes or `within` passes: what it answered, and when it closed (inf: still open)."""
    s = connect(port, head)
    s.settimeout(0.01)
    got, t0 = b"", time.monotonic()
    try:
        while time.monotonic() - t0 < within:
            s.sendall(piece)
            try:
                data = s.recv(65536)
            except TimeoutError:
                continue
            if not data:
                return got, time.monotonic() - t0
            got += data
    except (BrokenPipeError, ConnectionResetError):
        return got, time.monotonic() - t0
    return got, float("inf")


@pytest.mark.parametrize(
    ("head", "piece", "status"),
    [
        (  # over max_body_bytes, chunked: 413 once 4 KiB are in
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"1000\r\n" + b"a" * 4096 + b"\r\n",
            b"413",
        ),
        (  # answered before its body is read: 413 from the length, 404 without a route
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n",
            b"a" * 4096,
            b"413",
        ),
        (
            b"POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n",
            b"a" * 4096,
            b"404",
        ),
    ],
)
def test_a_body_sent_on_after_its_answer_earns_no_time(
    head: bytes, piece: bytes, status: bytes
) -> None:
    """After an answer given without reading the body, uvicorn reads and drops the rest:
    at the minimum rate or faster every byte earned more time, so the connection (and
    the bandwidth) was kept for good, past max_body_bytes."""
    with Served(router(min_body_bytes_per_s=100_000, max_body_bytes=4096)) as r:
        got, closed = fast_upload(r.port, head, piece, TIMEOUT + 5)
        assert got.startswith(b"HTTP/1.1 " + status), got[:200]
        assert closed < TIMEOUT + 2, "still open"
        conn = http.client.HTTPConnection("127.0.0.1", r.port, timeout=10)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    assert 'reason="read_timeout"' not in text  # (answered: not counted again when closed)
