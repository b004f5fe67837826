"""`perllm router --config FILE --host --port`."""

from __future__ import annotations

import typer

from perllm.cli_args import port as cli_port
from perllm.logsetup import configure


def register(app: typer.Typer) -> None:
    @app.command("router")
    def router_cmd(
        config: str = typer.Option(
            ..., "--config", envvar="PERLLM_ROUTER_CONFIG", help="Router YAML (docs/router.md)."
        ),
        host: str = typer.Option("127.0.0.1", envvar="PERLLM_ROUTER_HOST", help="Listen address."),
        port: int = cli_port(8080, envvar="PERLLM_ROUTER_PORT", help="Listen port."),
        log_level: str = typer.Option("info"),
    ) -> None:
        """OpenAI-compatible endpoint that places every request with CS-UCB (edge or cloud)."""
        from perllm.httpguard import ListenError
        from perllm.router.app import Router
        from perllm.router.config import RouterConfigError, load_config
        from perllm.router.serving import run

        configure(log_level)
        try:
            router = Router(load_config(config))
        except RouterConfigError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        try:
            run(router, host, port, log_level.lower())
        except ListenError as e:  # a port in use, a bad address
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
