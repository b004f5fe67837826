"""`perllm extender`: serve the extender with uvicorn (flags: docs/extender.md)."""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from perllm.cli_args import port as cli_port
from perllm.cli_args import wait_seconds
from perllm.logsetup import configure

if TYPE_CHECKING:
    from perllm_extender.serve import Tls

log = logging.getLogger("perllm.extender")
PROM_FLAGS = {  # PromAccess' fields as flags (in its errors)
    "url": "--prometheus",
    "token_file": "--prometheus-token-file",
    "ca_file": "--prometheus-ca-file",
    "insecure_skip_verify": "--prometheus-insecure-skip-verify",
}


def _tls(cert: str | None, key: str | None, ca: str | None, insecure: bool) -> Tls | None:
    """HTTPS with client authentication, or (only with --insecure-http) plain HTTP."""
    from perllm_extender.serve import Tls

    given = [p for p in (cert, key, ca) if p is not None]
    if insecure:
        if given:
            raise typer.BadParameter(
                "--insecure-http contradicts --tls-cert/--tls-key/--tls-client-ca"
            )
        log.warning(
            "--insecure-http: serving plain HTTP WITHOUT client authentication; anyone who "
            "reaches the port can make the extender decide and publish (development only)"
        )
        return None
    if cert is None or key is None or ca is None:
        raise typer.BadParameter(
            "--tls-cert, --tls-key and --tls-client-ca are required (or --insecure-http for "
            "development)"
        )
    tls = Tls(Path(cert), Path(key), Path(ca))
    if missing := tls.missing():
        raise typer.BadParameter(f"TLS files not found: {', '.join(missing)}")
    return tls


# Over 60 lines: typer takes the flags as the command's parameters, one option each.
def register(app: typer.Typer) -> None:
    @app.command("extender")
    def extender_cmd(
        host: str = typer.Option("127.0.0.1", help="Listen address (loopback by default)."),
        port: int = cli_port(8888, help="Listen port (the devcluster's urlPrefix uses 8888)."),
        prefix: str = typer.Option("/scheduler", help="Path prefix of /filter and /prioritize."),
        prometheus: str | None = typer.Option(
            None,
            envvar="PERLLM_PROMETHEUS_URL",
            help="Prometheus base URL for live telemetry and learning; none: profile priors.",
        ),
        prometheus_token_file: str | None = typer.Option(
            None,
            envvar="PERLLM_PROMETHEUS_TOKEN_FILE",
            help="File with a bearer token for Prometheus (re-read when it changes).",
        ),
        prometheus_ca_file: str | None = typer.Option(
            None,
            envvar="PERLLM_PROMETHEUS_CA_FILE",
            help="PEM file of the CAs that sign an https Prometheus (default: the system's).",
        ),
        prometheus_insecure_skip_verify: bool = typer.Option(
            False,
            envvar="PERLLM_PROMETHEUS_INSECURE_SKIP_VERIFY",
            help="Do not verify an https Prometheus' certificate (a token goes to anyone).",
        ),
        state_namespace: str = typer.Option(
            "perllm-system",
            envvar="PERLLM_STATE_NAMESPACE",
            help="Namespace of the ConfigMap perllm-extender-state (learned state).",
        ),
        learn_interval: float = wait_seconds(
            15.0, min=0.1, help="Seconds between learning passes over placed pods."
        ),
        telemetry_interval: float = wait_seconds(
            2.0, min=0.1, help="Seconds between telemetry refreshes from Prometheus."
        ),
        state_interval: float = wait_seconds(
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
        tls_cert: str | None = typer.Option(
            None, help="Serving certificate (PEM): serve HTTPS.", envvar="PERLLM_EXTENDER_TLS_CERT"
        ),
        tls_key: str | None = typer.Option(
            None, help="Its private key (PEM).", envvar="PERLLM_EXTENDER_TLS_KEY"
        ),
        tls_client_ca: str | None = typer.Option(
            None,
            help="CA (PEM) that signs the clients' certificates: only clients presenting one "
            "are served (kube-scheduler's tlsConfig).",
            envvar="PERLLM_EXTENDER_TLS_CLIENT_CA",
        ),
        insecure_http: bool = typer.Option(
            False,
            "--insecure-http",
            help="Development only: serve plain HTTP without client authentication.",
        ),
        debug_routes: bool = typer.Option(
            False,
            "--debug-routes",
            help="Serve /telemetry, /telemetry/refresh, /learn, /state/save, /decisions "
            "(to authenticated clients).",
        ),
        api_docs: bool = typer.Option(
            False,
            "--api-docs",
            help="Serve /openapi.json, /docs and /redoc (development; to authenticated clients).",
        ),
        verify_pods: bool = typer.Option(
            True,
            help="Act only on pods the API server knows as sent (uid, service label, "
            "schedulerName, unbound); --no-verify-pods: benchmarks with synthetic pods only.",
        ),
        metrics_port: int = cli_port(
            0,
            zero=True,
            help="Plain-HTTP port for /healthz, /readyz and /metrics only (kubelet probes, "
            "Prometheus); 0: none.",
        ),
        max_nodes: int = typer.Option(
            10_000,
            min=1,
            help="Candidate nodes one filter/prioritize request may carry (beyond: 413).",
        ),
        log_level: str = typer.Option("info"),
    ) -> None:
        """Run the PerLLM kube-scheduler extender (FastAPI, uvicorn)."""
        from perllm.httpguard import ListenError
        from perllm.telemetry.prom import PromAccess, PromAccessError
        from perllm_extender.app import create_app
        from perllm_extender.config import ExtenderConfig
        from perllm_extender.nodes import api_node_source, kube_api_client
        from perllm_extender.serve import serve

        configure(log_level)
        try:
            access = PromAccess(
                prometheus or None,
                prometheus_token_file or None,
                prometheus_ca_file,
                prometheus_insecure_skip_verify,
            )
        except PromAccessError as e:
            raise typer.BadParameter(e.why, param_hint=[PROM_FLAGS[f] for f in e.fields]) from None
        tls = _tls(tls_cert, tls_key, tls_client_ca, insecure_http)
        if not verify_pods:
            log.warning("--no-verify-pods: acting on any pod a request describes (benchmarks)")
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
            prometheus_access=access,
            telemetry_interval_s=telemetry_interval,
            learn_interval_s=learn_interval,
            state_interval_s=state_interval,
            state_namespace=state_namespace,
            kube=client is not None,
            api_client=client,
            debug_routes=debug_routes,
            api_docs=api_docs,
            client_auth=tls is not None,
            verify_pods=None if verify_pods else False,
            max_nodes=max_nodes,
        )
        app = create_app(cfg)
        # Everything imported and built so far lives as long as the process: keep it out of
        # the cyclic GC's full collections. Each Nodes request allocates ~10^4 containers
        # (1,000 decoded Nodes), which triggers full collections; over the whole heap they
        # took ~60 ms each (the objects-mode p99 at 1,000 nodes), over what is left ~4 ms.
        gc.collect()
        gc.freeze()
        try:
            serve(app, host, port, tls, metrics_port, log_level)
        except ListenError as e:  # a port in use, a bad address
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
