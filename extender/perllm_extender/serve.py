"""Serving the extender: the main listener (HTTPS with client-certificate authentication,
or plain HTTP with `--insecure-http`) and the optional plain-HTTP probe port for kubelet
and Prometheus (`app.probe_app`: /healthz, /readyz, /metrics only)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from perllm.httpguard import listen, log_listening
from perllm_extender.app import probe_app
from perllm_extender.transport import GuardedHttp


@dataclass(frozen=True)
class Tls:
    cert: Path  # the extender's serving certificate (PEM)
    key: Path
    client_ca: Path  # clients must present a certificate signed by this CA

    def missing(self) -> list[str]:
        return [str(p) for p in (self.cert, self.key, self.client_ca) if not p.is_file()]


class _SideServer(uvicorn.Server):
    """The probe port's server: the main server owns the signals and stops this one."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def main_config(
    app: FastAPI, host: str, port: int, tls: Tls | None, log_level: str
) -> uvicorn.Config:
    """The main listener. `proxy_headers=False`: the request scheme is the transport's, so an
    `X-Forwarded-Proto: https` header cannot pass for a verified client certificate. Both
    listeners bound how long a request may take to arrive and its head (`transport`)."""
    kw: dict[str, object] = {}
    if tls is not None:
        kw = {
            "ssl_certfile": str(tls.cert),
            "ssl_keyfile": str(tls.key),
            "ssl_ca_certs": str(tls.client_ca),
            "ssl_cert_reqs": ssl.CERT_REQUIRED,
        }
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        proxy_headers=False,
        http=GuardedHttp,  # a read deadline and a head limit (`transport`)
        ws="none",  # no WebSocket routes: no upgrades
        **kw,  # type: ignore[arg-type]
    )


def probe_config(app: FastAPI, host: str, port: int, log_level: str) -> uvicorn.Config:
    """The plain-HTTP probe port (`app.probe_app`); its lifespan is the main app's."""
    return uvicorn.Config(
        probe_app(app),
        host=host,
        port=port,
        log_level=log_level,
        lifespan="off",
        proxy_headers=False,
        http=GuardedHttp,
        ws="none",
    )


def serve(
    app: FastAPI, host: str, port: int, tls: Tls | None, metrics_port: int, log_level: str
) -> None:
    """Serve until stopped; a port in use (or a bad address) is a `ListenError` naming its
    flag, raised before the app starts."""
    socks = [listen(host, port, "--port")]
    try:
        if metrics_port:
            socks.append(listen(host, metrics_port, "--metrics-port"))
        _serve(app, socks, tls, log_level)
    finally:
        for s in socks:
            s.close()


def _serve(app: FastAPI, socks: list[socket.socket], tls: Tls | None, log_level: str) -> None:
    host, port = socks[0].getsockname()[:2]
    main = uvicorn.Server(main_config(app, host, port, tls, log_level))
    log_listening(socks[0], "https" if tls is not None else "http")
    if len(socks) == 1:
        main.run(sockets=socks[:1])
        return
    side = _SideServer(probe_config(app, host, socks[1].getsockname()[1], log_level))
    log_listening(socks[1])

    async def both() -> None:
        task = asyncio.create_task(side.serve(sockets=socks[1:]))
        try:
            await main.serve(sockets=socks[:1])
        finally:
            side.should_exit = True
            await task

    # the loop uvicorn would pick (uvloop with uvicorn[standard]), as `Server.run` does
    with asyncio.Runner(loop_factory=main.config.get_loop_factory()) as runner:
        runner.run(both())
