"""Node agent, probe: the whole probe is bounded by its timeout also when the connection
itself (name resolution included) takes longer."""

from __future__ import annotations

import http.client
import socketserver
import threading
import time
from typing import Any

import pytest

from perllm.agent.probe import ProbeError, probe_once


def test_a_connect_past_the_deadline_ends_the_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """The watchdog shuts the socket down at the deadline, but while connect() still ran
    (a slow resolver: getaddrinfo knows no timeout) there was no socket to shut: it fired
    for nothing, and a peer then dripping its head held the probe as long as it liked."""

    class Drip(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.recv(4096)
            self.request.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nX-Slow: ")
            for _ in range(40):
                try:
                    self.request.sendall(b"a")
                except OSError:
                    return
                time.sleep(0.2)

    real = http.client.HTTPConnection.connect

    def slow_connect(self: Any) -> None:
        time.sleep(1.2)  # past the 1 s deadline, as a resolver timing out and retrying
        real(self)

    monkeypatch.setattr(http.client.HTTPConnection, "connect", slow_connect)
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Drip)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        t0 = time.monotonic()
        with pytest.raises(ProbeError, match="timed out after 1 s"):
            probe_once(f"http://127.0.0.1:{srv.server_address[1]}/probe", 100_000, timeout_s=1)
        assert time.monotonic() - t0 < 3
    finally:
        srv.shutdown()
        srv.server_close()
