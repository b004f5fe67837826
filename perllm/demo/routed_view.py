"""What the routed phase shows: live, the router's edge share per window of arrivals, in
flight per tier and attainment so far per arm; at the end, the three arms side by side."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from perllm.burst import CLOUD_ALONE, EDGE_ALONE, ROUTER, Arm, Burst, shares
from perllm.demo.view import joules, pct

BAR = 30  # characters of a share bar


def labels(nodes: tuple[str, str]) -> dict[str, str]:
    return {
        ROUTER: "router (per request)",
        EDGE_ALONE: f"edge pod alone: per-pod placement ({nodes[0]})",
        CLOUD_ALONE: f"cloud pod alone: cloud-only ({nodes[1]})",
    }


def attainment(arm: Arm) -> float | None:
    """Of the requests answered (or failed) so far."""
    return sum(o.met for o in arm.outcomes) / len(arm.outcomes) if arm.outcomes else None


def _arms_table(arms: list[Arm], sent: int, nodes: tuple[str, str]) -> Table:
    t = Table(title="the same requests, three ways (so far)", title_justify="left")
    for col in ("arm", "sent", "answered", "in flight edge", "in flight cloud", "attainment"):
        t.add_column(col, justify="left" if col == "arm" else "right")
    t.add_column("J / request", justify="right")
    names = labels(nodes)
    for a in arms:
        fl = a.inflight(sent)
        t.add_row(
            names[a.name],
            str(sent),
            str(len(a.outcomes)),
            str(fl.get("edge", "—")),
            str(fl.get("cloud", "—")),
            pct(attainment(a)),
            joules(a.j_per_request),
            style="bold green" if a.name == ROUTER else "",
        )
    return t


def share_bar(edge: float | None) -> Text:
    """Edge share █ (green), cloud share ░ (blue): readable without colours too."""
    if edge is None:
        return Text("·" * BAR, style="dim")
    e = round(edge * BAR)
    return Text.assemble(("█" * e, "green"), ("░" * (BAR - e), "blue"))


def _shares_table(router: Arm, until: float, burst: Burst, window_s: float) -> Table:
    t = Table(
        title=f"router: where the requests sent in each {window_s:g} s went (█ edge, ░ cloud)",
        title_justify="left",
        box=None,
    )
    for col in ("sent at s", "", "edge / cloud", "edge", "placed", "answered", "met"):
        t.add_column(col, justify="left" if col in {"sent at s", "", "edge / cloud"} else "right")
    for w in shares(router, window_s, until):
        lo, hi = w["t"]
        in_burst = lo < burst.until_s and hi > burst.at_s
        t.add_row(
            f"{lo:4.0f}-{hi:<4.0f}",
            Text(f"x{burst.factor:g} burst", style="bold red") if in_burst else "",
            share_bar(w["edge"]),
            pct(w["edge"]),
            str(w["n"]),
            str(w["answered"]),
            pct(w["attainment"]),
        )
    return t


def render_routed(
    arms: list[Arm],
    t: float,
    sent: int,
    total: int,
    burst: Burst,
    nodes: tuple[str, str],
    window_s: float,
) -> RenderableType:
    now = "IN THE BURST" if burst.at_s <= t < burst.until_s else ""
    head = Text.assemble(
        (f"PerLLM demo · routed phase · chat · {min(t, burst.seconds):3.0f} / "
         f"{burst.seconds:.0f} s · {sent}/{total} sent · x{burst.factor:g} burst from "
         f"{burst.at_s:.0f} to {burst.until_s:.0f} s ", "bold"),
        (now, "bold red"),
        " · Ctrl-C stops",
    )  # fmt: skip
    router = next(a for a in arms if a.name == ROUTER)
    return Group(
        head,
        _arms_table(arms, sent, nodes),
        _shares_table(router, min(t, burst.seconds), burst, window_s),
    )


def progress_line(arms: list[Arm], t: float, sent: int, burst: Burst, window_s: float) -> str:
    """One line every 10 s without the live view; the router's edge share over the last
    window of `window_s` (the config's `share_window_s`, as the live view and demo.json)."""
    parts = [f"routed t={t:3.0f}s sent {sent}"]
    for a in arms:
        fl = a.inflight(sent)
        parts.append(
            f"{a.name} {pct(attainment(a))} met, in flight "
            + " ".join(f"{k} {v}" for k, v in sorted(fl.items()))
        )
    router = next(a for a in arms if a.name == ROUTER)
    w = [x for x in shares(router, window_s, min(t, burst.seconds)) if x["edge"] is not None]
    if w:
        lo, hi = w[-1]["t"]
        parts.append(f"router edge share of {lo:.0f}-{hi:.0f} s {pct(w[-1]['edge'])}")
    return " | ".join(parts)


def routed_table(routed: dict[str, Any]) -> Table:
    """The summary: the three arms on the same requests."""
    b = routed["burst"]
    nodes = (routed["nodes"]["edge"], routed["nodes"]["cloud"])
    t = Table(
        title=f"routed phase: {routed['requests']} chat requests over {routed['seconds']:g} s, "
        f"x{b['factor']:g} burst {b['at_s']:.0f}-{b['until_s']:.0f} s",
        title_justify="left",
    )
    cols = ("arm", "requests", "attainment", "p50 s", "p99 s", "J / request")
    for col in (*cols, "cloud share before / in / after the burst"):
        t.add_column(col, justify="left" if col == "arm" else "right")
    names = labels(nodes)
    for name, r in routed["arms"].items():
        lat = r.get("latency_s") or {}
        cs = r["cloud_share"]
        t.add_row(
            names.get(name, name),
            f"{r['requests']:,}",
            pct(r["attainment"]),
            f"{lat.get('p50', 0):.2f}",
            f"{lat.get('p99', 0):.2f}",
            joules(r["j_per_request"]),
            " / ".join(pct(cs[k]) for k in ("before", "burst", "after")),
            style="bold green" if name == ROUTER else "",
        )
    return t
