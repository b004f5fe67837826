"""Node agent's HTTP server under resource exhaustion: a connection it could not serve
gives back its place (no leak)."""

from __future__ import annotations

import socketserver
import threading
import urllib.error
import urllib.request
from typing import Any

import pytest

from perllm.agent import server
from perllm.agent.server import AgentHTTPServer


def test_a_thread_that_cannot_start_gives_its_place_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection whose thread could not be started (RuntimeError "can't start new
    thread" under a thread or memory limit) kept its place of MAX_CONNECTIONS: after that
    many, every later connection was closed at once, for good, the agent alive but deaf."""
    monkeypatch.setattr(server, "MAX_CONNECTIONS", 2)
    real = socketserver.ThreadingMixIn.process_request
    fail = [3]

    def flaky(self: Any, request: Any, client_address: Any) -> None:
        if fail[0]:
            fail[0] -= 1
            raise RuntimeError("can't start new thread")
        real(self, request, client_address)

    monkeypatch.setattr(socketserver.ThreadingMixIn, "process_request", flaky)
    monkeypatch.setattr(AgentHTTPServer, "handle_error", lambda *a: None)  # (no traceback)
    srv = AgentHTTPServer(("127.0.0.1", 0), lambda: b"")
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/healthz"
    got = []
    try:
        for _ in range(6):  # three are closed unserved (no thread), the next are served
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    got.append(r.status)
            except (urllib.error.URLError, ConnectionError) as e:
                got.append(type(e).__name__)
    finally:
        srv.shutdown()
        srv.server_close()
    assert got[3:] == [200, 200, 200], got
    assert srv.refused == 0  # the cap was never reached: no place was lost
