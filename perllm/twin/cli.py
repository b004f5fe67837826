"""`perllm twin --scenario FILE --host --port 9402 --speed X`."""

from __future__ import annotations

import typer

from perllm.cli_args import number, wait_seconds
from perllm.cli_args import port as cli_port
from perllm.cli_args import seed as cli_seed
from perllm.logsetup import configure
from perllm.twin.records import MAX_REQUESTS_PER_SLOT

# Simulated seconds per wall second the twin takes at most (`perllm demo --speed` too).
MAX_SPEED = 1000.0


# The command is one typer declaration per flag: long by nature, not by logic.
def register(app: typer.Typer) -> None:
    @app.command("twin")
    def twin_cmd(
        scenario: str = typer.Option(
            ...,
            "--scenario",
            envvar="PERLLM_TWIN_SCENARIO",
            help="Scenario file or built-in name (its servers must be the cluster's nodes).",
        ),
        host: str = typer.Option("127.0.0.1", envvar="PERLLM_TWIN_HOST", help="Listen address."),
        port: int = cli_port(9402, envvar="PERLLM_TWIN_PORT", help="Listen port (/metrics)."),
        speed: float = number(
            1.0,
            envvar="PERLLM_TWIN_SPEED",
            min=0.01,
            max=MAX_SPEED,
            help="Simulated seconds per wall second.",
        ),
        seed: int = cli_seed(0, help="Seed of arrivals, lengths, noise and bandwidth."),
        poll_interval: float = wait_seconds(
            1.0, min=0.1, help="Seconds between reads of services, pods and nodes."
        ),
        log_interval: float = wait_seconds(10.0, min=0.5, help="Seconds between progress lines."),
        max_requests_per_slot: int = typer.Option(
            MAX_REQUESTS_PER_SLOT,
            min=1,
            help="Requests simulated per service and slot at most (the rest is counted as "
            "dropped), so an absurd declared rate cannot stall the twin.",
        ),
        openai_port: int | None = cli_port(
            None,
            envvar="PERLLM_TWIN_OPENAI_PORT",
            help="Also serve each pod as an OpenAI endpoint (/pods/<ns>/<pod>/v1/...) here.",
        ),
        log_level: str = typer.Option("info"),
    ) -> None:
        """Serve the world model's metrics for the cluster's (KWOK) nodes and pods."""
        from perllm.scenario import ScenarioError, load_scenario
        from perllm.twin.kube import ClusterReader, KubeUnavailable, load_clients
        from perllm.twin.server import ListenError, serve

        configure(log_level)
        try:
            sc = load_scenario(scenario)
        except ScenarioError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        try:
            core, custom = load_clients()
        except KubeUnavailable as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        try:
            serve(
                sc,
                ClusterReader(sc, core, custom),
                host,
                port,
                speed,
                seed=seed,
                poll_s=poll_interval,
                log_every_s=log_interval,
                max_requests_per_slot=max_requests_per_slot,
                openai_port=openai_port,
            )
        except ListenError as e:  # --openai-port in use, ...
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        except OSError as e:  # port in use, bad address
            typer.echo(f"error: cannot listen on {host}:{port}: {e}", err=True)
            raise typer.Exit(2) from None


def register_openai(app: typer.Typer) -> None:
    @app.command("twin-openai")
    def twin_openai_cmd(
        scenario: str = typer.Option(..., "--scenario", help="Scenario file or built-in name."),
        host: str = typer.Option("127.0.0.1", help="Listen address."),
        port: int = cli_port(9403, help="Listen port."),
        speed: float = number(1.0, min=0.01, max=MAX_SPEED, help="Simulated s per wall s."),
        seed: int = cli_seed(0, help="Seed of output lengths and speed noise."),
    ) -> None:
        """Without a cluster: the scenario's model servers as OpenAI endpoints.

        Pod <class>-<node> in namespace default for every (class, node) of the scenario
        that can run, timed by the world model."""
        import uvicorn

        from perllm.scenario import ScenarioError, load_scenario
        from perllm.twin.openai import TwinOpenAI, listen, pod_url, static_pods, uvicorn_config

        try:
            sc = load_scenario(scenario)
        except ScenarioError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        try:  # (uvicorn's own bind logs and exits 1)
            sock = listen(host, port)
        except OSError as e:
            typer.echo(f"error: --port {port}: cannot listen on {host}:{port}: "
                       f"{e.strerror or e}", err=True)  # fmt: skip
            raise typer.Exit(2) from None
        for ns, pod in static_pods(sc):
            typer.echo(pod_url(f"http://{host}:{port}", ns, pod) + "/v1")
        uvicorn.Server(uvicorn_config(TwinOpenAI.standalone(sc, speed, seed))).run([sock])
