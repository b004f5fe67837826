"""The live terminal view (rich): placements, attainment, joules per request against the
counterfactuals, and the latest decision's explanation."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from perllm.demo.config import BASELINES
from perllm.demo.observe import OURS, Rates, Sample, window

RECENT_S = 30.0  # the "now" columns: the last half minute of wall time


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f} %"


def joules(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f}"


def _at_or_before(samples: list[Sample], t: float) -> Sample:
    best = samples[0]
    for s in samples:
        if s.t <= t:
            best = s
        else:
            break
    return best


def latest_decision(s: Sample) -> tuple[str, dict[str, Any]] | None:
    placed = [
        (svc, st["placement"])
        for svc, st in s.status.items()
        if isinstance(st.get("placement"), dict)
    ]
    if not placed:
        return None
    return max(placed, key=lambda kv: str(kv[1].get("decidedAt", "")))


def _services_table(samples: list[Sample]) -> Table:
    now = samples[-1]
    recent = _at_or_before(samples, now.t - RECENT_S)
    cfs = [p for p in BASELINES if p in now.counters]
    t = Table(
        title=f"services (twin figures over the last {RECENT_S:.0f} s)",
        title_justify="left",
        expand=False,
    )
    for col in (
        "service",
        "pods on",
        "tier",
        "decided",
        "attainment",
        "J/req PerLLM",
        *(f"J/req {p}" for p in cfs),
        "operator status",
    ):
        t.add_column(
            col, justify="left" if col in {"service", "pods on", "tier", "decided"} else "right"
        )
    names = sorted(set(now.status) | set(now.pods) | set(now.counters.get(OURS, {})))
    for svc in names:
        st = now.status.get(svc, {})
        pl = st.get("placement") or {}
        nodes = now.pods.get(svc, [])
        tiers = sorted({now.tiers.get(n, "?") for n in nodes if n})
        ours = window(recent, now, OURS, svc)
        obs = st.get("observed") or {}
        cond = {c.get("type"): c.get("status") for c in st.get("conditions") or []}
        op = (
            f"{pct(obs['attainment'])} met"
            if isinstance(obs.get("attainment"), int | float)
            else ",".join(f"{k}={v}" for k, v in cond.items()) or "—"
        )
        decided = f"{pl.get('tier', '?')} {str(pl.get('decidedAt', ''))[11:19]}" if pl else "—"
        t.add_row(
            svc,
            ", ".join(n or "pending" for n in nodes) or "—",
            ", ".join(tiers) or "—",
            decided,
            pct(ours.attainment),
            joules(ours.j_per_request),
            *(joules(window(recent, now, p, svc).j_per_request) for p in cfs),
            op,
        )
    return t


def totals(samples: list[Sample], since: float) -> dict[str, tuple[Rates, Rates]]:
    """policy -> (since `since`, last RECENT_S) over all services."""
    now = samples[-1]
    start = _at_or_before(samples, since)
    recent = _at_or_before(samples, now.t - RECENT_S)
    return {
        p: (window(start, now, p), window(recent, now, p))
        for p in (OURS, *BASELINES)
        if p == OURS or p in now.counters
    }


def _totals_table(samples: list[Sample], since: float) -> Table:
    t = Table(
        title=f"all services: since {since:.0f} s (after warm-up) and last {RECENT_S:.0f} s",
        title_justify="left",
    )
    for col in (
        "policy",
        "requests",
        "attainment",
        "J / request",
        "attainment (recent)",
        "J / request (recent)",
    ):
        t.add_column(col, justify="left" if col == "policy" else "right")
    for p, (run, rec) in totals(samples, since).items():
        style = "bold green" if p == OURS else ""
        t.add_row(
            "PerLLM (actual)" if p == OURS else f"{p} (counterfactual)",
            f"{run.requests:,.0f}",
            pct(run.attainment),
            joules(run.j_per_request),
            pct(rec.attainment),
            joules(rec.j_per_request),
            style=style,
        )
    return t


def explanation_panel(s: Sample) -> Panel:
    got = latest_decision(s)
    if got is None:
        return Panel(
            "no decision published yet (status.placement is empty)", title="latest decision"
        )
    svc, pl = got
    ex = pl.get("explanation") or {}
    head = Text.assemble(
        (f"{svc}", "bold"),
        " → ",
        (f"{pl.get('chosen', '?')}", "bold"),
        f" ({pl.get('tier', '?')})  predicted {_num(pl.get('predictedTimeSeconds'))} s vs "
        f"deadline {_num(ex.get('deadline_s'))} s, {_num(pl.get('predictedEnergyJ'))} J, "
        f"{'feasible' if pl.get('feasible', True) else 'NOTHING FEASIBLE: least violating'}"
        f"  at {pl.get('decidedAt', '?')}",
    )
    t = Table(box=None, pad_edge=False)
    for col in (
        "candidate",
        "tier",
        "feasible / why not",
        "pred. time s",
        "energy J",
        "mean R̂",
        "bonus",
        "score",
    ):
        t.add_column(
            col, justify="left" if col in {"candidate", "tier", "feasible / why not"} else "right"
        )
    for c in (ex.get("candidates") or [])[:8]:
        t.add_row(
            str(c.get("node")),
            str(c.get("tier")),
            # A held link's score carries the rank that puts it last (`link_hold`): say so.
            ("yes (link hold)" if c.get("link_hold") else "yes")
            if c.get("feasible")
            else str(c.get("reason") or "no"),
            _num(c.get("predicted_time_s")),
            _num(c.get("predicted_energy_j")),
            _num(c.get("mean")),
            # An unplayed arm's score carries the lift that puts it first: say so instead.
            "unplayed" if c.get("unplayed") else _num(c.get("bonus")),
            _num(c.get("score")) if c.get("feasible") else "—",
        )
    return Panel(Group(head, t), title="latest decision (status.placement.explanation)")


def _num(x: Any) -> str:
    if isinstance(x, int | float):
        return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"
    return "—"


def render(
    samples: list[Sample], *, header: str, warmup: float, notes: list[str]
) -> RenderableType:
    now = samples[-1]
    parts: list[RenderableType] = [Text(header, style="bold")]
    if not now.prometheus_ok:
        parts.append(
            Text("Prometheus not answering: figures are the last good ones", style="yellow")
        )
    if now.api_error:
        parts.append(Text(f"API server: {now.api_error}", style="yellow"))
    parts += [Text(n, style="yellow") for n in notes]
    parts += [_services_table(samples), _totals_table(samples, warmup), explanation_panel(now)]
    return Group(*parts)
