"""What `perllm load` reports: each request's `Outcome` and the `Report` over them
(`summarise`: statuses, attainment, latency and TTFT percentiles, shares per tier and
backend, failures by kind, and the same per class), and its table (`print_report`)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class Outcome:
    cls: str
    status: int  # 0: transport error
    latency_s: float
    ttft_s: float | None  # to the first SSE data event; None without streaming
    tokens: float
    met: bool
    backend: str = ""
    tier: str = ""
    error: str = ""
    at: float = 0.0  # when it was planned to be sent (s after the start): windows by arrival
    # a 200 that failed: "stream_error", "truncated", or "error_answer" (a whole answer
    # that is an error object) (`error` says)
    failure: str = ""
    whole: bool = False  # a stream was asked, the answer came whole (JSON): no TTFT of its own

    @property
    def answered(self) -> bool:
        """A complete 200 answer."""
        return self.status == 200 and not self.failure


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
    # 200 streams that failed (an error event, or no `data: [DONE]`), by kind and reason
    stream_failures: dict[str, int] = field(default_factory=dict)
    # answers other than 200, by status and the reason the body or Location gives
    http_errors: dict[str, int] = field(default_factory=dict)
    whole: int = 0  # answered whole (JSON) though a stream was asked: no TTFT of theirs
    interrupted: bool = False  # stopped (Ctrl-C): the requests then in flight are not here
    streamed: bool = True  # False (--no-stream): no time to first token is measured
    # Per class (its own deadline): sent, answered, attainment, latency and TTFT
    # percentiles of its answers, output tokens of an answer (mean) and in all
    per_class: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens: float = 0.0  # output tokens of the answered requests

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def _pct(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {}
    a = np.asarray(xs)
    return {f"p{q}": float(np.percentile(a, q)) for q in (50, 90, 99)} | {"mean": float(a.mean())}


def summarise(target: str, results: list[Outcome], wall: float) -> Report:
    ok = [o for o in results if o.answered]
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
        stream_failures=dict(
            Counter(f"{o.failure}: {o.error}" for o in results if o.failure).most_common()
        ),
        http_errors=dict(
            Counter(
                f"{o.status}: {o.error}" if o.error else str(o.status)
                for o in results
                if o.status not in (0, 200)
            ).most_common()
        ),
        whole=sum(o.whole for o in ok),
        per_class={c: _class(rs) for c, rs in sorted(_by_class(results).items())},
        tokens=float(sum(o.tokens for o in ok)),
    )


def _by_class(results: list[Outcome]) -> dict[str, list[Outcome]]:
    out: dict[str, list[Outcome]] = {}
    for o in results:
        out.setdefault(o.cls, []).append(o)
    return out


def _class(rs: list[Outcome]) -> dict[str, Any]:
    """One class's row: the classes differ in deadline and size, so the overall numbers
    can hide a class that misses every deadline behind one that never does."""
    ok = [o for o in rs if o.answered]
    tokens = sum(o.tokens for o in ok)
    return {
        "sent": len(rs),
        "answered": len(ok),
        "attainment": sum(o.met for o in rs) / len(rs),
        "latency_s": _pct([o.latency_s for o in ok]),
        "ttft_s": _pct([o.ttft_s for o in ok if o.ttft_s is not None]),
        "tokens": float(tokens),
        "tokens_per_answer": tokens / len(ok) if ok else None,
    }


def printable(text: str) -> str:
    """`text` with each control character as its escape (`\\x1b`): what a target says (a
    refusal's reason, a listed model name) would else reach the terminal as its escape
    sequences (rich passes ESC through: a cleared screen, a title set, colours)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def print_report(r: Report) -> None:
    from rich.console import Console
    from rich.table import Table

    # (no markup: a target's error text, e.g. `[/x]`, was read as rich markup, a
    # MarkupError traceback after the run and no --json written)
    c = Console(markup=False)
    t = Table(title=f"perllm load → {r.target}")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("requests sent / answered", f"{r.sent} / {r.ok}")
    t.add_row("statuses", ", ".join(f"{k}: {v}" for k, v in r.statuses.items()))
    for err, n in r.errors.items():  # status 0: no complete HTTP response (aborted ones too)
        t.add_row("transport error", f"{n} × {printable(err)}")
    for err, n in r.http_errors.items():  # status and the reason its body gives
        t.add_row("HTTP error", f"{n} × {printable(err)}")
    for err, n in r.stream_failures.items():  # a 200 whose stream failed: not answered
        t.add_row("failed stream", f"{n} × {printable(err)}")
    t.add_row("deadline attainment", f"{r.attainment:.1%}")
    for name, d in (("latency", r.latency_s), ("time to first token", r.ttft_s)):
        if d:
            t.add_row(name, " ".join(f"{k} {v:.3f}s" for k, v in d.items()))
    if not r.streamed:  # (a whole answer's first byte is its last: no TTFT of its own)
        t.add_row("time to first token", "not measured (--no-stream: an answer comes whole)")
    elif r.whole:  # (the target does not stream: the TTFT above is not of these)
        t.add_row("answered whole, not streamed", f"{r.whole} (no time to first token)")
    t.add_row("throughput (answered)", f"{r.throughput_rps:.1f} req/s over {r.wall_s:.1f}s")
    t.add_row("output tokens (answered)", f"{r.tokens:.0f}")
    for k, v in r.tiers.items():  # (the target's x-perllm-decision header)
        t.add_row(f"tier {printable(k)}", f"{v:.1%}")
    for k, v in r.backends.items():
        t.add_row(f"backend {printable(k)}", f"{v:.1%}")
    c.print(t)
    if len(r.per_class) > 1:
        c.print(class_table(r))


def class_table(r: Report) -> Any:
    """The report per class (a rich Table)."""
    from rich.table import Table

    def p(d: dict[str, float], q: str) -> str:
        return f"{d[q]:.3f}" if q in d else "-"

    t = Table(title="per class")
    for name in ("class", "sent", "answered", "attainment", "latency p50 / p99 s",
                 "TTFT p50 s", "tokens / answer"):  # fmt: skip
        t.add_column(name, justify="left" if name == "class" else "right")
    for cls, row in r.per_class.items():
        lat, ttft, per = row["latency_s"], row["ttft_s"], row["tokens_per_answer"]
        t.add_row(
            cls, str(row["sent"]), str(row["answered"]), f"{row['attainment']:.1%}",
            f"{p(lat, 'p50')} / {p(lat, 'p99')}", p(ttft, "p50"),
            "-" if per is None else f"{per:.1f}",
        )  # fmt: skip
    return t
