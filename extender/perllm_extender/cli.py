"""`perllm extender`: serve the extender with uvicorn."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("extender")
    def extender_cmd(
        host: str = typer.Option("127.0.0.1", help="Listen address (loopback by default)."),
        port: int = typer.Option(8888, help="Listen port (the devcluster's urlPrefix uses 8888)."),
        prefix: str = typer.Option("/scheduler", help="Path prefix of /filter and /prioritize."),
        default_model: str = typer.Option(
            "llama2-7b", help="Model of PerLLM pods whose service is not registered."),
        kube: bool = typer.Option(
            True, help="Read Nodes missing from the node cache from the API server "
            "(KUBECONFIG or in-cluster)."),
        log_level: str = typer.Option("info"),
    ) -> None:
        """Run the PerLLM kube-scheduler extender (FastAPI, uvicorn)."""
        import uvicorn

        from perllm_extender.app import ExtenderConfig, create_app
        from perllm_extender.nodes import api_node_source

        source = api_node_source() if kube else None
        cfg = ExtenderConfig(prefix=prefix, default_model=default_model, node_source=source)
        uvicorn.run(create_app(cfg),
                    host=host, port=port, log_level=log_level)
