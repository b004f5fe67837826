"""Both listeners against slow and oversized clients (`transport.GuardedHttp`): a
connection that sends no request, a head or body trickled in, or an endless head is
answered and closed; kube-scheduler's requests on a kept-alive connection are not."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import uvicorn
from perllm_extender import ExtenderConfig, create_app
from perllm_extender.serve import main_config, probe_config
from perllm_extender.transport import GuardedHttp
from test_extender_security import Served, body, pod

TIMEOUT = 0.6


@pytest.fixture(autouse=True)
def short_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(GuardedHttp, "bounds", replace(GuardedHttp.bounds, timeout_s=TIMEOUT))


@pytest.fixture(params=["main", "probe"])
def listener(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    app = create_app(ExtenderConfig())
    if request.param == "main":
        with Served(app, None) as s:
            yield "main", s.port
        return
    srv = Served(app, None)  # a free port and a thread, serving the probe app instead
    srv.server = uvicorn.Server(probe_config(app, "127.0.0.1", srv.port, "warning"))
    srv.thread = threading.Thread(target=srv.server.run, daemon=True)
    with srv:
        yield "probe", srv.port


@pytest.fixture
def port(listener: tuple[str, int]) -> int:
    return listener[1]


def answer(s: socket.socket, within: float) -> bytes:
    """Everything the server sends until it closes (or `within` passes: b"<open>")."""
    s.settimeout(within)
    got = b""
    try:
        while chunk := s.recv(65536):
            got += chunk
    except TimeoutError:
        return b"<open>"
    except ConnectionResetError:
        pass
    return got or b"<closed>"


def connect(port: int, first: bytes = b"") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    if first:
        s.sendall(first)
    return s


@pytest.mark.parametrize(
    "sent",
    [
        b"",  # connected, nothing sent
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n",  # a head never finished
        b"POST /scheduler/filter HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",
        b"POST /scheduler/filter HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"1\r\n{\r\n",
        b"\r\n",  # blank lines (skipped by the parser) kept uvicorn's keep-alive timer off
    ],
)
def test_a_request_that_does_not_arrive_in_time_is_408_and_closed(
    listener: tuple[str, int], sent: bytes
) -> None:
    side, port = listener
    s = connect(port, sent)
    t0 = time.monotonic()
    got = answer(s, TIMEOUT + 5)
    assert got != b"<open>"
    assert time.monotonic() - t0 >= TIMEOUT * 0.9
    if side == "probe" and b"filter" in sent:  # answered 404 at once, closed at the deadline
        assert got.startswith(b"HTTP/1.1 404 "), got
    else:
        assert got.startswith(b"HTTP/1.1 408 "), got
        assert b"connection: close" in got
        doc = json.loads(got.split(b"\r\n\r\n", 1)[1])
        assert doc == {"Error": f"request not received within {TIMEOUT:g} s"}


def trickle_head(port: int, timeout: float) -> None:
    """A head sent a byte every third of `timeout`: the connection is cut at the deadline
    (not at each byte, nor never). The router's tests use it too."""
    s = connect(port)
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    t0 = time.monotonic()
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        for b in head:
            s.sendall(bytes([b]))
            time.sleep(timeout / 3)
            assert time.monotonic() - t0 < timeout + 3, "still open"
    assert time.monotonic() - t0 >= timeout * 0.9


def oversized_head(port: int) -> bytes:
    """The answer to 2 MB of headers."""
    s = connect(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    try:
        for i in range(2000):
            s.sendall(b"X-A%d: %s\r\n" % (i, b"a" * 1000))
        s.sendall(b"\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    return answer(s, 5)


def test_a_trickled_head_is_cut_at_the_deadline_not_at_each_byte(port: int) -> None:
    """A byte every third of the deadline: uvicorn restarted nothing and kept it forever."""
    trickle_head(port, TIMEOUT)


def test_an_oversized_head_is_431_and_closed(port: int) -> None:
    """2 MB of headers were read and answered 200: nothing bounded a head."""
    got = oversized_head(port)
    assert got.startswith(b"HTTP/1.1 431 "), got[:200]
    assert json.loads(got.split(b"\r\n\r\n", 1)[1]) == {
        "Error": f"request head over {GuardedHttp.bounds.max_head_bytes} bytes"
    }


def test_kept_alive_requests_spread_over_several_deadlines_are_served(port: int) -> None:
    """The deadline is per request: waiting between requests is uvicorn's keep-alive (5 s),
    and the processing of a request is not the client's time."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for _ in range(4):
        conn.request("GET", "/healthz")
        r = conn.getresponse()
        assert r.status == 200 and r.read() == b'{"status":"ok"}'
        time.sleep(TIMEOUT * 0.7)
    big = json.dumps(body(pod())).encode()  # ~10 kB of Nodes, read in pieces
    conn.request("POST", "/scheduler/filter", big, {"Content-Type": "application/json"})
    assert conn.getresponse().status in (200, 404)  # 404: the probe port has no filter


def test_a_slow_client_does_not_hold_up_the_others() -> None:
    app = create_app(ExtenderConfig())
    with Served(app, None) as s:
        stuck = [connect(s.port, b"POST /scheduler/filter HTTP/1.1\r\n") for _ in range(20)]
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=5)
        conn.request("POST", "/scheduler/filter", json.dumps(body(pod())).encode())
        r = conn.getresponse()
        doc: dict[str, Any] = json.loads(r.read())
        assert r.status == 200 and doc["Nodes"]["items"][0]["metadata"]["name"] == "cloud"
        assert all(answer(x, TIMEOUT + 5).startswith(b"HTTP/1.1 408 ") for x in stuck)


def test_both_listeners_use_the_guarded_protocol_and_no_websockets() -> None:
    app = create_app(ExtenderConfig())
    for cfg in (main_config(app, "127.0.0.1", 1, None, "info"), probe_config(app, "h", 2, "info")):
        cfg.load()
        assert cfg.http_protocol_class is GuardedHttp
        assert cfg.ws_protocol_class is None
