"""`perllm load SCENARIO --target URL`: replay a scenario's workload against any
OpenAI-compatible endpoint (the router, a model server, the twin's pods).

Requests come from `perllm.world.workload.generate` (arrival times, class, prompt and
output tokens, attachment bytes): a chat body whose text is the prompt's ~4 bytes a token,
an image data URL of the attachment's size, `max_tokens` = the drawn output length. The
report: deadline attainment (D ≤ seconds + per_output_token_s × output tokens, with the
class's deadline), latency and time-to-first-token percentiles, and the share of
requests per backend and tier from the router's `x-perllm-decision` header.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import typer

from perllm.cli_args import number
from perllm.costmodel import BYTES_PER_TOKEN
from perllm.scenario import Scenario
from perllm.world.workload import generate

WORDS = "the quick brown fox jumps over a lazy dog "


@dataclass(frozen=True)
class Planned:
    at: float  # wall seconds after start
    cls: str
    model: str
    body: dict[str, Any]
    deadline_s: float  # fixed part of the class's deadline
    per_token_s: float


@dataclass
class Outcome:
    cls: str
    status: int  # 0: transport error
    latency_s: float
    ttft_s: float | None
    tokens: float
    met: bool
    backend: str = ""
    tier: str = ""
    error: str = ""
    at: float = 0.0  # when it was planned to be sent (s after the start): windows by arrival


@dataclass
class Report:
    target: str
    sent: int
    ok: int
    attainment: float
    latency_s: dict[str, float]
    ttft_s: dict[str, float]
    wall_s: float
    throughput_rps: float
    statuses: dict[str, int] = field(default_factory=dict)
    backends: dict[str, float] = field(default_factory=dict)
    tiers: dict[str, float] = field(default_factory=dict)
    classes: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # transport errors (status 0), by kind
    interrupted: bool = False  # stopped (Ctrl-C): the requests then in flight are not here

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def body_for(model: str, l_in: float, attach: float, l_out: float, stream: bool) -> dict[str, Any]:
    n = int(l_in * BYTES_PER_TOKEN)
    text = (WORDS * (n // len(WORDS) + 1))[:n]
    content: Any = text
    if attach > 0:
        raw = int(attach * 3 / 4)  # the data URL's base64 is `attach` bytes
        url = "data:image/jpeg;base64," + base64.b64encode(b"\0" * raw).decode()
        content = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": int(l_out),
        "stream": stream,
    }


def plan(
    sc: Scenario,
    seed: int = 0,
    speed: float = 1.0,
    max_requests: int = 200,
    classes: list[str] | None = None,
    model: str | None = None,
    stream: bool = True,
) -> list[Planned]:
    """The first `max_requests` requests of the scenario's workload (of `classes`), arrival
    times divided by `speed`. The model sent is `model`, else the class's name."""
    req = generate(sc, seed)
    specs = sc.workload.classes
    out: list[Planned] = []
    for i in range(len(req)):
        c = specs[int(req.cls[i])]
        if classes and c.name not in classes:
            continue
        m = model or c.name
        body = body_for(m, float(req.l_in[i]), float(req.attach[i]), float(req.l_out[i]), stream)
        out.append(Planned(float(req.arrival[i]) / speed, c.name, m, body,
                           c.deadline.seconds, c.deadline.per_output_token_s))  # fmt: skip
        if len(out) >= max_requests:
            break
    return out


def _decision(h: str | None) -> dict[str, str]:
    if not h:
        return {}
    return dict(p.strip().split("=", 1) for p in h.split(";") if "=" in p)


# Called with a planned request and the router's decision ({} without a router) once its
# 200 response has started: where a request went is known long before its end.
OnStart = Callable[[Planned, dict[str, str]], None]


def _completion_tokens(answer: Any) -> float | None:
    """`usage.completion_tokens` of an answer or stream event (None: not given); a
    ValueError if it is no OpenAI answer (not an object, usage not one, not a count)."""
    if not isinstance(answer, dict):
        raise ValueError(f"answer is not a JSON object: {json.dumps(answer)[:60]}")
    usage = answer.get("usage")
    if usage is None:
        return None
    n = usage.get("completion_tokens") if isinstance(usage, dict) else "?"
    if n is None:
        return None
    if not isinstance(n, int | float) or isinstance(n, bool) or not 0 <= n < float("inf"):
        raise ValueError(f"usage.completion_tokens is no count: {json.dumps(usage)[:60]}")
    return float(n)


async def _one(
    client: httpx.AsyncClient,
    url: str,
    p: Planned,
    on_start: OnStart | None = None,
    timeout_s: float | None = None,
) -> Outcome:
    """One request; `timeout_s` bounds it whole (httpx's timeout is per read: a target
    that sends a byte now and then would hold it for ever)."""
    t0 = time.perf_counter()
    first: float | None = None
    events = 0
    usage: float | None = None
    try:
        async with asyncio.timeout(timeout_s), client.stream("POST", url, json=p.body) as resp:
            dec = _decision(resp.headers.get("x-perllm-decision"))
            if on_start is not None and resp.status_code == 200:
                on_start(p, dec)
            buf = bytearray()
            async for chunk in resp.aiter_raw():
                if first is None:
                    first = time.perf_counter() - t0
                buf += chunk
            d = time.perf_counter() - t0
            text = bytes(buf)
            if p.body.get("stream"):
                events = text.count(b"data:") - text.count(b"data: [DONE]")
                for line in text.split(b"\n") if resp.status_code == 200 else ():
                    if b'"usage"' in line and line.startswith(b"data:"):
                        n = _completion_tokens(json.loads(line[5:]))
                        usage = usage if n is None else n
            elif resp.status_code == 200:
                usage = _completion_tokens(json.loads(text))
    except TimeoutError:
        err = f"Timeout: no complete answer within {timeout_s:g}s"
        return Outcome(p.cls, 0, time.perf_counter() - t0, None, 0, False, error=err, at=p.at)
    except (httpx.HTTPError, ValueError, RecursionError) as e:  # (ValueError: not an answer)
        err = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        return Outcome(p.cls, 0, time.perf_counter() - t0, None, 0, False, error=err, at=p.at)
    tokens = float(usage if usage is not None else max(events, 1))
    ok = resp.status_code == 200
    met = ok and d <= p.deadline_s + p.per_token_s * tokens
    return Outcome(p.cls, resp.status_code, d, first, tokens, met,
                   dec.get("backend", ""), dec.get("tier", ""), at=p.at)  # fmt: skip


def _pct(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {}
    a = np.asarray(xs)
    return {f"p{q}": float(np.percentile(a, q)) for q in (50, 90, 99)} | {"mean": float(a.mean())}


async def replay(
    target: str,
    planned: list[Planned],
    max_duration_s: float = 60.0,
    concurrency: int = 256,
    timeout_s: float = 120.0,
    path: str = "/v1/chat/completions",
    on_done: Any = None,
    on_start: OnStart | None = None,
    stop: asyncio.Event | None = None,
) -> Report:
    """Send `planned` at their times (bounded: `concurrency` in flight, `max_duration_s`
    of sending; each request gets `timeout_s` in all). When `stop` is set (Ctrl-C), the
    requests in flight are abandoned and the report is of those that ended."""
    url = target.rstrip("/") + path
    sem = asyncio.Semaphore(concurrency)
    results: list[Outcome] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:

        async def fire(p: Planned) -> None:
            async with sem:
                o = await _one(client, url, p, on_start, timeout_s)
            results.append(o)
            if on_done is not None:
                on_done(o)

        tasks: list[asyncio.Task[None]] = []

        async def send_all() -> None:
            for p in planned:
                wait = p.at - (time.perf_counter() - t0)
                if p.at > max_duration_s:
                    break
                if wait > 0:
                    await asyncio.sleep(wait)
                tasks.append(asyncio.create_task(fire(p)))
            await asyncio.gather(*tasks)

        sender = asyncio.create_task(send_all())
        stopped = asyncio.create_task((stop or asyncio.Event()).wait())
        try:
            await asyncio.wait({sender, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # (cancelled itself, or stopped: nothing is left running)
            stopped.cancel()
            interrupted = not sender.done()
            for t in (sender, *tasks):
                t.cancel()
            await asyncio.gather(sender, *tasks, return_exceptions=True)
        if not interrupted:
            sender.result()
    wall = time.perf_counter() - t0
    report = summarise(target, results, wall)
    report.interrupted = interrupted
    return report


def summarise(target: str, results: list[Outcome], wall: float) -> Report:
    ok = [o for o in results if o.status == 200]
    n_ok = max(len(ok), 1)
    backends = Counter(o.backend or "-" for o in ok)
    tiers = Counter(o.tier or "-" for o in ok)
    return Report(
        target=target,
        sent=len(results),
        ok=len(ok),
        attainment=sum(o.met for o in results) / max(len(results), 1),
        latency_s=_pct([o.latency_s for o in ok]),
        ttft_s=_pct([o.ttft_s for o in ok if o.ttft_s is not None]),
        wall_s=wall,
        throughput_rps=len(ok) / max(wall, 1e-9),  # answered (200), not merely sent
        statuses={str(k): v for k, v in sorted(Counter(o.status for o in results).items())},
        backends={k: v / n_ok for k, v in sorted(backends.items())},
        tiers={k: v / n_ok for k, v in sorted(tiers.items())},
        classes=dict(sorted(Counter(o.cls for o in results).items())),
        errors=dict(Counter(o.error for o in results if o.status == 0).most_common()),
    )


def print_report(r: Report) -> None:
    from rich.console import Console
    from rich.table import Table

    c = Console()
    t = Table(title=f"perllm load → {r.target}")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("requests sent / 200 OK", f"{r.sent} / {r.ok}")
    t.add_row("statuses", ", ".join(f"{k}: {v}" for k, v in r.statuses.items()))
    for err, n in r.errors.items():  # status 0: no complete HTTP response (aborted ones too)
        t.add_row("transport error", f"{n} × {err}")
    t.add_row("deadline attainment", f"{r.attainment:.1%}")
    for name, d in (("latency", r.latency_s), ("time to first token", r.ttft_s)):
        if d:
            t.add_row(name, " ".join(f"{k} {v:.3f}s" for k, v in d.items()))
    t.add_row("throughput (200 OK)", f"{r.throughput_rps:.1f} req/s over {r.wall_s:.1f}s")
    for k, v in r.tiers.items():
        t.add_row(f"tier {k}", f"{v:.1%}")
    for k, v in r.backends.items():
        t.add_row(f"backend {k}", f"{v:.1%}")
    c.print(t)


def target_error(target: str) -> str | None:
    """Why `target` is no base URL to send requests to (None: it is one)."""
    try:
        u = urlsplit(target)
        u.port  # noqa: B018  (raises on a port out of range or not a number)
        httpx.URL(target)
    except (ValueError, httpx.InvalidURL) as e:
        return str(e)
    if u.scheme not in ("http", "https"):
        return "not an http(s) URL"
    if u.query or u.fragment:  # (the request path is appended to it)
        return "a base URL has no query or fragment"
    return None if u.hostname else "no host"


def register(app: typer.Typer) -> None:
    @app.command("load")
    def load_cmd(
        scenario: str = typer.Argument(..., help="Scenario file or built-in name."),
        target: str = typer.Option(..., "--target", help="Base URL, e.g. http://127.0.0.1:8080."),
        seed: int = typer.Option(0),
        speed: float = number(1.0, min=0.01, max=1000.0, help="Time compression."),
        max_requests: int = typer.Option(200, min=1, max=100_000),
        max_duration: float = number(60.0, min=0.1, max=3600.0, help="Seconds of sending."),
        concurrency: int = typer.Option(256, min=1, max=10_000),
        service_class: list[str] = typer.Option(  # noqa: B008
            [], "--class", help="Only these classes (repeatable)."
        ),
        model: str | None = typer.Option(None, help="Model name to send (default: class name)."),
        stream: bool = typer.Option(True, "--stream/--no-stream"),
        timeout: float = number(120.0, min=0.1, help="Per-request timeout (s)."),
        json_out: str | None = typer.Option(None, "--json", help="Write the report here."),
    ) -> None:
        """Replay a scenario's workload against an OpenAI-compatible endpoint; report."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        from perllm.scenario import ScenarioError, load_scenario

        why = target_error(target)
        if why is not None:
            typer.echo(f"error: --target {target}: {why} (e.g. http://127.0.0.1:8080)", err=True)
            raise typer.Exit(2)
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
        planned = plan(sc, seed, speed, max_requests, service_class or None, model, stream)
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

        async def run() -> Report:
            stop = asyncio.Event()  # Ctrl-C: stop, and report what ended
            loop = asyncio.get_running_loop()
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
                loop.add_signal_handler(signal.SIGINT, stop.set)  # (main thread only)
            try:
                return await replay(target, planned, max_duration, concurrency, timeout,
                                    on_done=lambda o: pr.advance(task), stop=stop)  # fmt: skip
            finally:
                loop.remove_signal_handler(signal.SIGINT)

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()) as pr:
            task = pr.add_task("requests", total=len(planned))
            report = asyncio.run(run())
        print_report(report)
        if json_out:
            with open(json_out, "w") as f:
                f.write(report.to_json())
        if report.interrupted:
            typer.echo(
                f"interrupted: the report is of the {report.sent} of {len(planned)} requests "
                "that ended",
                err=True,
            )
            raise typer.Exit(130)
        if report.sent and not report.ok:
            typer.echo(f"error: none of {report.sent} requests got a 200 from {target}", err=True)
            raise typer.Exit(1)
