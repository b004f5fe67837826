"""`perllm extender`: serve the extender with uvicorn (flags: docs/extender.md)."""

from __future__ import annotations

import gc
import logging

import typer


# Over 60 lines: typer takes the flags as the command's parameters, one option each.
def register(app: typer.Typer) -> None:
    @app.command("extender")
    def extender_cmd(
        host: str = typer.Option("127.0.0.1", help="Listen address (loopback by default)."),
        port: int = typer.Option(8888, help="Listen port (the devcluster's urlPrefix uses 8888)."),
        prefix: str = typer.Option("/scheduler", help="Path prefix of /filter and /prioritize."),
        prometheus: str | None = typer.Option(
            None,
            envvar="PERLLM_PROMETHEUS_URL",
            help="Prometheus base URL for live telemetry and learning; none: profile priors.",
        ),
        state_namespace: str = typer.Option(
            "perllm-system",
            envvar="PERLLM_STATE_NAMESPACE",
            help="Namespace of the ConfigMap perllm-extender-state (learned state).",
        ),
        learn_interval: float = typer.Option(
            15.0, min=0.1, help="Seconds between learning passes over placed pods."
        ),
        telemetry_interval: float = typer.Option(
            2.0, min=0.1, help="Seconds between telemetry refreshes from Prometheus."
        ),
        state_interval: float = typer.Option(
            60.0, min=1.0, help="Seconds between saves of the learned state."
        ),
        default_model: str = typer.Option(
            "llama2-7b", help="Model of PerLLM pods whose service is not registered."
        ),
        kube: bool = typer.Option(
            True,
            help="Use the API server (KUBECONFIG or in-cluster): informers, node "
            "lookups on a cache miss, decision publication, the state ConfigMap. "
            "--no-kube: none of these.",
        ),
        log_level: str = typer.Option("info"),
    ) -> None:
        """Run the PerLLM kube-scheduler extender (FastAPI, uvicorn)."""
        import uvicorn

        from perllm_extender.app import create_app
        from perllm_extender.config import ExtenderConfig
        from perllm_extender.nodes import api_node_source, kube_api_client

        logging.basicConfig(
            level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        client = kube_api_client() if kube else None
        if kube and client is None:
            typer.echo(
                "warning: --kube but no cluster configuration found; running without "
                "the API server",
                err=True,
            )
        source = api_node_source(api_client=client) if client is not None else None
        cfg = ExtenderConfig(
            prefix=prefix,
            default_model=default_model,
            node_source=source,
            prometheus_url=prometheus or None,
            telemetry_interval_s=telemetry_interval,
            learn_interval_s=learn_interval,
            state_interval_s=state_interval,
            state_namespace=state_namespace,
            kube=client is not None,
            api_client=client,
        )
        app = create_app(cfg)
        # Everything imported and built so far lives as long as the process: keep it out of
        # the cyclic GC's full collections. Each Nodes request allocates ~10^4 containers
        # (1,000 decoded Nodes), which triggers full collections; over the whole heap they
        # took ~60 ms each (the objects-mode p99 at 1,000 nodes), over what is left ~4 ms.
        gc.collect()
        gc.freeze()
        uvicorn.run(app, host=host, port=port, log_level=log_level)
