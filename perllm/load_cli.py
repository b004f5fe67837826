"""`perllm load SCENARIO --target URL`: the command around `perllm.load.replay`, with
progress, a report table (and `--json`), Ctrl-C reporting what ended."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import typer

from perllm.cli_args import number
from perllm.cli_args import seed as cli_seed
from perllm.cli_outputs import ensure_writable, output_path, writing
from perllm.contract import MAX_DEADLINE_S
from perllm.load import plan, replay
from perllm.load_report import Report, print_report, printable
from perllm.load_target import models_listed, parse_header, parse_models
from perllm.urls import http_url_error, redact


def target_error(target: str) -> str | None:
    """Why `target` is no base URL to send requests to (None: it is one)."""
    if why := http_url_error(target):
        return why
    try:
        httpx.URL(target)
    except httpx.InvalidURL as e:
        return str(e)
    u = urlsplit(target)
    if u.query or u.fragment:  # (the request path is appended to it)
        return "a base URL has no query or fragment"
    return None


def register(app: typer.Typer) -> None:
    @app.command("load")
    def load_cmd(
        scenario: str = typer.Argument(..., help="Scenario file or built-in name."),
        target: str = typer.Option(..., "--target", help="Base URL, e.g. http://127.0.0.1:8080."),
        seed: int = cli_seed(0, help="Seed of arrivals and lengths."),
        speed: float = number(1.0, min=0.01, max=1000.0, help="Time compression."),
        max_requests: int = typer.Option(200, min=1, max=100_000),
        max_duration: float = number(60.0, min=0.1, max=3600.0, help="Seconds of sending."),
        concurrency: int = typer.Option(256, min=1, max=10_000),
        service_class: list[str] = typer.Option(  # noqa: B008
            [], "--class", help="Only these classes (repeatable)."
        ),
        model: list[str] = typer.Option(  # noqa: B008
            [],
            "--model",
            help="Model name to send: NAME (every class), CLASS=NAME (that class's; "
            "repeatable, NAME then the rest's); default: the class's name.",
        ),
        stream: bool = typer.Option(True, "--stream/--no-stream"),
        timeout: float = number(  # (a day: past any class's deadline, MAX_DEADLINE_S)
            120.0, min=0.1, max=MAX_DEADLINE_S, help="Per-request timeout (s), in all."
        ),
        json_out: Path | None = output_path(None, "--json", help="Write the report here."),  # noqa: B008
        token_file: str | None = typer.Option(
            None,
            "--token-file",
            help="File with a bearer token (API key) to send; never printed.",
        ),
        ca_file: str | None = typer.Option(
            None, "--ca-file", help="PEM CAs to verify an https target against (a private CA)."
        ),
        insecure: bool = typer.Option(
            False, "--insecure", help="Do not verify an https target's certificate."
        ),
        header: list[str] = typer.Option(  # noqa: B008
            [],
            "--header",
            help="'Name: value' sent with every request (repeatable), e.g. a KServe "
            "ingress' Host; values never printed.",
        ),
    ) -> None:
        """Replay a scenario's workload against an OpenAI-compatible endpoint; report."""
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        from perllm.scenario import ScenarioError, load_scenario
        from perllm.secrets import CaFile, SecretError, SecretFile

        why = target_error(target)
        if why is not None:
            typer.echo(
                f"error: --target {redact(target)}: {why} (e.g. http://127.0.0.1:8080)", err=True
            )
            raise typer.Exit(2)
        if token_file is not None and redact(target) != target:  # (httpx: basic auth wins)
            typer.echo(
                "error: --token-file and credentials in --target (basic auth): one or the other",
                err=True,
            )
            raise typer.Exit(2)
        headers: dict[str, str] = {}
        for spec in header:
            try:
                name, value = parse_header(spec, token=token_file is not None)
            except ValueError as e:
                typer.echo(f"error: --header: {e}", err=True)
                raise typer.Exit(2) from None
            if name.lower() in {n.lower() for n in headers}:
                typer.echo(f"error: --header: {name} given twice", err=True)
                raise typer.Exit(2)
            headers[name] = value
        if ca_file is not None and insecure:
            typer.echo("error: --ca-file and --insecure: verify against it, or not", err=True)
            raise typer.Exit(2)
        # (read once, before anything is sent; an error names the file, never its content)
        token: bytes | None = None
        verify: ssl.SSLContext | bool = not insecure
        for flag, path in (("--token-file", token_file), ("--ca-file", ca_file)):
            try:
                if path is not None and flag == "--token-file":
                    token = SecretFile(path).value()
                elif path is not None:
                    verify = CaFile(path).current()
            except SecretError as e:
                typer.echo(f"error: {flag}: {e}", err=True)
                raise typer.Exit(2) from None
        try:
            sc = load_scenario(scenario)
        except ScenarioError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        known = [c.name for c in sc.workload.classes]
        unknown = [c for c in service_class if c not in known]
        if unknown:
            typer.echo(
                f"error: --class {', '.join(unknown)}: not a class of {sc.name} "
                f"(its classes: {', '.join(known)})",
                err=True,
            )
            raise typer.Exit(2)
        try:
            models = parse_models(model, known, sc.name)
        except ValueError as e:
            typer.echo(f"error: --model: {e}", err=True)
            raise typer.Exit(2) from None
        planned = plan(sc, seed, speed, max_requests, service_class or None, models, stream)
        if not planned:
            typer.echo(f"error: {sc.name} generates no requests of these classes", err=True)
            raise typer.Exit(2)
        first = planned[0].at
        planned = [p for p in planned if p.at <= max_duration]  # (what will be sent)
        if not planned:
            typer.echo(
                f"error: no request arrives within --max-duration {max_duration:g}s "
                f"(the first at {first:.1f}s)",
                err=True,
            )
            raise typer.Exit(2)
        if json_out is not None:  # before the run, not after it (the results were lost)
            err = Console(stderr=True, soft_wrap=True)
            ensure_writable("--json", json_out.parent, err, json_out)

        async def run() -> Report:
            stop = asyncio.Event()  # Ctrl-C: stop, and report what ended
            loop = asyncio.get_running_loop()
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
                loop.add_signal_handler(signal.SIGINT, stop.set)  # (main thread only)
            names: dict[str, set[str]] = {}  # model name: the classes sending it
            for p in planned:
                names.setdefault(p.model, set()).add(p.cls)
            check = asyncio.create_task(
                models_listed(target, min(timeout, 10.0), token, verify, headers)
            )
            stopped = asyncio.create_task(stop.wait())  # (Ctrl-C does not wait for it)
            await asyncio.wait({check, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            check.cancel()
            listed = check.result() if check.done() and not check.cancelled() else None
            if listed is not None and (missing := sorted(set(names) - set(listed))):
                shown = ", ".join(map(printable, listed[:8])) + (", ..." if len(listed) > 8 else "")
                named = ", ".join(
                    f"{printable(n)} (class {', '.join(sorted(names[n]))})" for n in missing
                )
                typer.echo(
                    f"warning: {redact(target)} lists the models {shown}; these requests name "
                    f"{named}, which it may refuse (--model NAME, or CLASS=NAME for one "
                    "class, sends another)",
                    err=True,
                )
            try:
                return await replay(target, planned, max_duration, concurrency, timeout,
                                    on_done=lambda o: pr.advance(task), stop=stop,
                                    token=token, verify=verify, headers=headers)  # fmt: skip
            finally:
                loop.remove_signal_handler(signal.SIGINT)

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()) as pr:
            task = pr.add_task("requests", total=len(planned))
            report = asyncio.run(run())
        print_report(report)
        if json_out is not None:
            with writing("--json", Console(stderr=True, soft_wrap=True)):
                json_out.write_text(report.to_json())
        if report.interrupted:
            typer.echo(
                f"interrupted: the report is of the {report.sent} of {len(planned)} requests "
                "that ended",
                err=True,
            )
            raise typer.Exit(130)
        if report.sent and not report.ok:
            typer.echo(
                f"error: none of {report.sent} requests got a complete 200 answer from "
                f"{report.target}",
                err=True,
            )
            raise typer.Exit(1)
