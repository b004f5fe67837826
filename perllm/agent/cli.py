"""`perllm agent`: run the node agent until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import signal
import socket
import threading
from pathlib import Path
from types import FrameType

import typer

from perllm.agent.probe import DEFAULT_BYTES, MAX_BYTES, MIN_BYTES
from perllm.agent.rapl import DEFAULT_ROOT
from perllm.cli_args import port as cli_port
from perllm.cli_args import wait_seconds
from perllm.logsetup import configure


# The command is one typer declaration per flag: long by nature, not by logic.
def register(app: typer.Typer) -> None:
    @app.command("agent")
    def agent_cmd(
        node: str = typer.Option(
            "",
            envvar="NODE_NAME",
            help="Kubernetes node name (the `node`/`Hostname` label; default: the hostname).",
        ),
        host: str = typer.Option("0.0.0.0", help="Listen address."),
        port: int = cli_port(9401, zero=True, help="Listen port (0: any free)."),
        peer: list[str] = typer.Option(  # noqa: B008
            [],
            "--peer",
            help="Peer agent to probe, URL or NAME=URL, e.g. http://cloud-1:9401 (repeatable).",
        ),
        probe_interval: float = wait_seconds(
            300.0, min=0.001, help="Seconds between path probes (each loads the link)."
        ),
        probe_bytes: int = typer.Option(
            DEFAULT_BYTES,
            min=MIN_BYTES,
            max=MAX_BYTES,
            help="Bytes downloaded per probe (at least 64 KiB: less measures no bandwidth).",
        ),
        probe_timeout: float = wait_seconds(30.0, min=0.001, help="Deadline of one probe, s."),
        rapl_root: Path = typer.Option(  # noqa: B008
            DEFAULT_ROOT, help="powercap directory holding intel-rapl:N zones."
        ),
        nvml: bool = typer.Option(True, help="Read GPUs through NVML (--no-nvml: never)."),
        log_level: str = typer.Option("info", help="critical, error, warning, info or debug."),
    ) -> None:
        """Run the node agent: GPU (NVML, DCGM names), CPU package (RAPL) power, path bandwidth."""
        from perllm.agent.agent import Agent, AgentConfig

        configure(log_level)
        log = logging.getLogger("perllm.agent")
        if not node:
            node = socket.gethostname()
            log.warning("no --node or NODE_NAME; using the hostname %r as the node name", node)
        cfg = AgentConfig(
            node=node,
            host=host,
            port=port,
            peers=list(peer),
            probe_interval_s=probe_interval,
            probe_bytes=probe_bytes,
            probe_timeout_s=probe_timeout,
            rapl_root=rapl_root,
            nvml=nvml,
        )
        try:
            agent = Agent(cfg)
        except ValueError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        stop = threading.Event()

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("%s: shutting down", signal.Signals(signum).name)
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        try:
            agent.start()
        except OSError as e:
            typer.echo(f"error: cannot listen on {host}:{port}: {e}", err=True)
            raise typer.Exit(1) from None
        try:
            while not stop.wait(1.0):
                pass
        finally:
            agent.stop()
