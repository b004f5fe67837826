"""`perllm demo`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from perllm.cli_args import number
from perllm.cli_outputs import ensure_writable, output_path
from perllm.twin.cli import MAX_SPEED


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo_cmd(
        scenario: str = typer.Option(
            "demo",
            help="Scenario name or file (its servers become "
            "KWOK nodes; the twin simulates its world).",
        ),
        duration: float = number(180.0, min=10, help="Wall-clock seconds to watch."),
        speed: float = number(
            10.0, min=0.1, max=MAX_SPEED, help="Twin: simulated seconds per second."
        ),
        out: Path = output_path(Path("out/demo"), help="Summary JSON, PNG and logs (run/)."),  # noqa: B008
        live: bool = typer.Option(True, "--live/--no-live", help="Live terminal view."),
        warmup: float | None = number(
            None, min=0, help="Seconds excluded from the totals (default: a quarter of --duration)."
        ),
        services: list[Path] = typer.Option(  # noqa: B008
            [],
            "--services",
            help="LLMService manifests (files/folders) instead of the defaults (repeatable).",
        ),
        router: bool = typer.Option(
            True,
            "--router/--no-router",
            help="Then the routed phase: chat through perllm router over an edge and a cloud "
            "replica under a burst, against each replica alone.",
        ),
        router_duration: float = number(
            60.0, min=15, help="Routed phase: seconds of arrivals (answers then finish)."
        ),
        burst: float = number(
            5.0, min=1, help="Routed phase: the rate factor over the middle third."
        ),
    ) -> None:
        """Run the closed loop locally, then per-request routing under a burst.

        Control plane, Prometheus, twin, extender, operator, the example LLMServices; a
        live view; then per-request routing under a burst; a summary table and PNG at
        the end."""
        from rich.markup import escape

        from perllm.demo.config import DemoConfig
        from perllm.demo.run import run_demo
        from perllm.demo.stack import demo_inputs
        from perllm.devcluster.binaries import BinariesMissing
        from perllm.devcluster.process import StartError
        from perllm.scenario import ScenarioError

        err = Console(stderr=True)
        if warmup is not None and warmup >= duration:
            err.print(
                f"[red]error:[/red] --warmup: {warmup:g} s leaves nothing of --duration "
                f"{duration:g} s to total; give less"
            )
            raise typer.Exit(2)
        ensure_writable("--out", out, err)
        cfg = DemoConfig(
            scenario=scenario,
            duration_s=duration,
            speed=speed,
            out=out,
            live=live,
            warmup_s=warmup,
            services=services,
            router=router,
            router_duration_s=router_duration,
            burst=burst,
        )
        try:  # a bad --scenario or --services is a usage error, as in simulate and sweep
            inputs = demo_inputs(cfg)
        except (ScenarioError, FileNotFoundError, ValueError) as e:
            err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False)
            raise typer.Exit(2) from None
        try:
            res = run_demo(cfg, inputs=inputs)
        except (BinariesMissing, StartError, ScenarioError, FileNotFoundError, ValueError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:  # before the cluster (the build): nothing left running
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        if res.error:
            raise typer.Exit(1)
        if res.interrupted:
            raise typer.Exit(130)
