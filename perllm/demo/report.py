"""The end of a run: numbers (JSON), a summary table and a PNG of attainment and joules
per request over time, PerLLM against the counterfactual baselines, and the routed
phase's edge share over time (perllm/demo/routed.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from rich.table import Table

from perllm.demo.config import BASELINES
from perllm.demo.observe import OURS, Sample, window
from perllm.demo.view import _at_or_before, joules, pct

PLOT_WINDOW_S = 20.0  # each plotted point: the preceding 20 s of wall time


def _rates(r: Any) -> dict[str, Any]:
    return {"requests": r.requests, "attainment": r.attainment, "j_per_request": r.j_per_request}


def summarise(
    samples: list[Sample], warmup: float, meta: dict[str, Any], final: Sample | None = None
) -> dict[str, Any]:
    """Totals after the warm-up per policy (and per service); the placements, pods and
    observed status of `final` (a read after the run, once settled), else the last sample."""
    if not samples:
        return {**meta, "policies": {}, "services": {}, "placements": {}}
    end, start = samples[-1], _at_or_before(samples, warmup)
    last = final or end
    pols = [OURS, *(p for p in BASELINES if p in end.counters)]
    svcs = sorted(set(end.counters.get(OURS, {})) | set(last.status) | set(last.pods))
    return {
        **meta,
        "window_s": [start.t, end.t],
        "policies": {p: _rates(window(start, end, p)) for p in pols},
        "services": {s: {p: _rates(window(start, end, p, s)) for p in pols} for s in svcs},
        "placements": {s: last.status.get(s, {}).get("placement") for s in svcs},
        "pods": {s: last.pods.get(s, []) for s in svcs},
        "observed": {s: last.status.get(s, {}).get("observed") for s in svcs},
    }


def summary_table(summary: dict[str, Any]) -> Table:
    w = summary.get("window_s") or [0, 0]
    t = Table(
        title=f"demo summary: {summary.get('scenario')}, wall {w[0]:.0f}-{w[1]:.0f} s "
        "(warm-up excluded)",
        title_justify="left",
    )
    for col in ("policy", "requests", "deadline attainment", "J / request", "vs PerLLM"):
        t.add_column(col, justify="left" if col == "policy" else "right")
    ours = summary["policies"].get(OURS, {}).get("j_per_request")
    for p, r in summary["policies"].items():
        ratio = (
            f"{r['j_per_request'] / ours:.2f}x"
            if p != OURS and ours and r.get("j_per_request")
            else "—"
        )
        t.add_row(
            "PerLLM (actual)" if p == OURS else f"{p} (counterfactual)",
            f"{r['requests']:,.0f}",
            pct(r["attainment"]),
            joules(r["j_per_request"]),
            ratio,
            style="bold green" if p == OURS else "",
        )
    return t


def timeline(samples: list[Sample]) -> dict[str, dict[str, list[float | None]]]:
    """policy -> {t, attainment, j_per_request}, each point over the preceding window."""
    out: dict[str, dict[str, list[float | None]]] = {}
    if not samples:
        return out
    pols = [OURS, *(p for p in BASELINES if p in samples[-1].counters)]
    for p in pols:
        ts: list[float | None] = []
        att: list[float | None] = []
        jpr: list[float | None] = []
        for s in samples:
            r = window(_at_or_before(samples, s.t - PLOT_WINDOW_S), s, p)
            ts.append(s.t)
            att.append(r.attainment)
            jpr.append(r.j_per_request)
        out[p] = {"t": ts, "attainment": att, "j_per_request": jpr}
    return out


def plot(
    samples: list[Sample],
    warmup: float,
    path: Path,
    title: str,
    routed: dict[str, Any] | None = None,
) -> Path | None:
    series = timeline(samples)
    if not series:
        return None
    fig = plt.figure(figsize=(9, 10.5 if routed else 7))
    grid = fig.add_gridspec(3 if routed else 2, 1)
    # Any: the series hold None (no requests in a window), which matplotlib leaves as gaps
    ax1: Any = fig.add_subplot(grid[0])
    ax2: Any = fig.add_subplot(grid[1], sharex=ax1)
    for p, s in series.items():
        label = "PerLLM (actual)" if p == OURS else p
        kw: dict[str, Any] = (
            {"linewidth": 2.4, "color": "black"}
            if p == OURS
            else {"linewidth": 1.2, "linestyle": "--"}
        )
        ax1.plot(
            s["t"], [None if a is None else 100 * a for a in s["attainment"]], label=label, **kw
        )
        ax2.plot(s["t"], s["j_per_request"], label=label, **kw)
    for ax in (ax1, ax2):
        ax.axvspan(0, warmup, color="grey", alpha=0.12, label="warm-up" if ax is ax1 else None)
        ax.grid(alpha=0.3)
    ax1.set_ylabel(f"deadline attainment (%)\n(last {PLOT_WINDOW_S:.0f} s)")
    ax1.set_ylim(0, 105)
    ax2.set_ylabel(f"joules per request\n(last {PLOT_WINDOW_S:.0f} s)")
    if any(v for ser in series.values() for v in ser["j_per_request"]):
        ax2.set_yscale("log")
    ax2.set_xlabel("wall-clock time since the services were applied (s)")
    ax1.set_title(title)
    ax1.legend(loc="lower right", fontsize=8)
    if routed:
        _routed_panel(fig.add_subplot(grid[2]), routed)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _routed_panel(ax: Any, routed: dict[str, Any]) -> None:
    """The routed phase: the router's edge share per window of arrivals, the requests per
    window behind it, the burst shaded; each arm's totals in the title."""
    wins = routed["windows"].get("router") or []
    mid = [(w["t"][0] + w["t"][1]) / 2 for w in wins]
    width = routed["window_s"] * 0.9
    b = routed["burst"]
    ax.axvspan(b["at_s"], b["until_s"], color="red", alpha=0.1, label=f"x{b['factor']:g} burst")
    ax.plot(mid, [None if w["edge"] is None else 100 * w["edge"] for w in wins], "o-",
            color="green", linewidth=2.2, label="router: edge share")  # fmt: skip
    ax.set_ylim(0, 105)
    ax.set_ylabel(f"share served at the edge (%)\n(requests sent per {routed['window_s']:g} s)")
    ax.set_xlabel("seconds into the routed phase (arrival time)")
    n = ax.twinx()
    n.bar(mid, [w["n"] for w in wins], width=width, color="grey", alpha=0.25)
    n.set_ylabel("requests per window")
    ax.set_zorder(n.get_zorder() + 1)  # the share line above the bars
    ax.patch.set_visible(False)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    arms = "; ".join(
        f"{name} {pct(r['attainment'])}, {joules(r['j_per_request'])} J/req"
        for name, r in routed["arms"].items()
    )
    ax.set_title(f"routed phase, chat, same requests: {arms}", fontsize=9)


def write_json(summary: dict[str, Any], samples: list[Sample], path: Path) -> Path:
    doc = {**summary, "timeline": timeline(samples)}
    path.write_text(json.dumps(doc, indent=2, default=str))
    return path
