"""`perllm router` and `perllm extender` on a port in use: uvicorn's own bind logged
"ERROR: [Errno 98] ... address already in use" and exited 3, after the app had started
(the extender's informers and state ConfigMap read); the router CLI's `except OSError`
never saw it. The port is now bound first: one line naming the flag, exit 2, as the twin
and the agent say it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from perllm.cli import app

EXAMPLE = Path(__file__).parents[2] / "docs" / "examples" / "router-twin-demo.yaml"


@pytest.fixture
def busy() -> Iterator[int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        yield int(s.getsockname()[1])
    finally:
        s.close()


def _said(args: list[str]) -> str:
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    return r.output


def test_the_router_names_a_port_in_use(busy: int) -> None:
    out = _said(["router", "--config", str(EXAMPLE), "--host", "127.0.0.1", "--port", str(busy)])
    assert f"error: --port {busy}: cannot listen on 127.0.0.1:{busy}: Address already in use" in (
        out
    ), out


@pytest.mark.parametrize("flag", ["--port", "--metrics-port"])
def test_the_extender_names_a_port_in_use(busy: int, flag: str) -> None:
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    other = int(free.getsockname()[1])
    free.close()
    ports = {"--port": other, "--metrics-port": other}
    ports[flag] = busy
    args = ["extender", "--no-kube", "--insecure-http", "--host", "127.0.0.1"]
    args += [f"{k}={v}" for k, v in ports.items()]
    out = _said(args)
    assert f"error: {flag} {busy}: cannot listen on 127.0.0.1:{busy}: Address already in use" in (
        out
    ), out
