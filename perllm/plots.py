"""PNG plots of a `perllm simulate` run (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from numpy.typing import NDArray

F = NDArray[np.float64]


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _pct(x: float | None) -> float:
    """A share in %, NaN (no bar) where undefined or absent."""
    return np.nan if x is None else 100 * x


def success_per_model(report: dict[str, Any], out: Path) -> Path:
    """Grouped bars: deadline success rate per scenario (model) and policy."""
    scs = list(report["scenarios"])
    pols = sorted({p for s in scs for p in report["scenarios"][s]["policies"]})
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(scs) + 2), 4.8))
    width = 0.8 / max(len(pols), 1)
    x = np.arange(len(scs))
    for k, p in enumerate(pols):
        vals = [
            _pct(report["scenarios"][s]["policies"].get(p, {}).get("success_rate")) for s in scs
        ]
        ax.bar(x + k * width - 0.4 + width / 2, vals, width, label=p)
    ax.set_xticks(x, scs, rotation=15, ha="right")
    ax.set_ylabel("deadline success rate (%)")
    ax.set_ylim(0, 105)
    ax.axhline(97, color="k", lw=0.6, ls="--")
    # Below the axes: inside, it would cover the bars near 100 %.
    ax.legend(fontsize=7, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    ax.set_title("Processing-time success rate per model")
    return _save(fig, out / "success_per_model.png")


def energy_breakdown(report: dict[str, Any], out: Path) -> Path:
    """Stacked bars per policy (mean over scenarios): transmission, inference, idle J/service."""
    pols: dict[str, list[dict[str, float]]] = {}
    for s in report["scenarios"].values():
        for p, m in s["policies"].items():
            pols.setdefault(p, []).append(m["energy_breakdown_j"])

    def mean(p: str, part: str) -> float:
        """Over the scenarios where defined (none: no request arrived, no bar)."""
        v = [b[part] for b in pols[p] if b[part] is not None]
        return float(np.mean(v)) if v else 0.0

    names = sorted(pols, key=lambda p: sum(mean(p, k) for k in pols[p][0]))
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(names) + 2), 4))
    bottom = np.zeros(len(names))
    for part in ("tran", "infer", "idle"):
        vals = np.array([mean(p, part) for p in names])
        ax.bar(names, vals, bottom=bottom, label=part)
        bottom += vals
    ax.set_ylabel("energy per service (J)")
    if bottom.max(initial=0.0) > 0:  # (no bar at all: runs without requests)
        ax.set_yscale("log")
    ax.tick_params(axis="x", rotation=30)
    ax.legend()
    ax.set_title("Energy per service: transmission + inference + idle")
    return _save(fig, out / "energy_breakdown.png")


def cumulative_regret(curves: dict[str, dict[str, F]], out: Path) -> Path:
    """Cumulative regret against clairvoyant greedy, per scenario (first seed)."""
    n = len(curves)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.4), squeeze=False)
    for ax, (sc, pols) in zip(axes[0], curves.items(), strict=True):
        for p, c in pols.items():
            ax.plot(np.arange(1, len(c) + 1), c, label=p, lw=1.5 if p == "perllm" else 0.8)
        ax.set_title(sc, fontsize=9)
        ax.set_xlabel("services")
        ax.set_yscale("symlog")
    axes[0][0].set_ylabel("cumulative regret vs clairvoyant greedy")
    axes[0][-1].legend(fontsize=6)
    return _save(fig, out / "regret.png")


def learning_curve(series: dict[str, dict[str, tuple[F, F, F]]], out: Path) -> Path:
    """CS-UCB vs clairvoyant greedy over time: windowed success rate and energy per service."""
    n = len(series)
    fig, axes = plt.subplots(2, n, figsize=(4 * n, 5), squeeze=False, sharex="col")
    for col, (sc, pols) in enumerate(series.items()):
        for p, (t, succ, energy) in pols.items():
            axes[0][col].plot(t, succ * 100, label=p)
            axes[1][col].plot(t, energy, label=p)
        axes[0][col].set_title(sc, fontsize=9)
        axes[1][col].set_xlabel("time (s)")
    axes[0][0].set_ylabel("success (%)")
    axes[1][0].set_ylabel("marginal J / service")
    axes[0][-1].legend(fontsize=7)
    return _save(fig, out / "learning_curve.png")


def sweep_curves(data: dict[str, Any], path: Path) -> Path:
    """One sweep (`perllm sweep`): one panel per metric, one line per policy (seed mean,
    with ±1 std bars when there are several seeds) against the swept value; the hindsight
    bound as a dashed black line on the success and energy panels."""
    metrics = data["metrics"]
    rows = data["rows"]
    ncol = 4
    nrow = -(-len(metrics) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow), squeeze=False)
    log_x = data["axis"] == "cloud_mbps"
    bpts = sorted(data.get("bound_points", []), key=lambda b: b["value"])
    for k, m in enumerate(metrics):
        ax = axes[k // ncol][k % ncol]
        inf_key = f"{m['key']}_inf_seeds"  # null in the data, infinite in fact
        if all(r.get(m["key"]) is None and not r.get(inf_key) for r in rows):
            # a bound metric of a --no-bound sweep: nothing to draw (and with no data a log
            # axis has no positive limits, which matplotlib refuses)
            ax.set_title(m["label"], fontsize=9)
            ax.text(0.5, 0.5, "not computed", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        for p in data["policies"]:
            mine = sorted((r for r in rows if r["policy"] == p), key=lambda r: r["value"])
            xs = [r["value"] for r in mine]
            ys = np.array(
                [np.nan if r.get(m["key"]) is None else r[m["key"]] * m["scale"] for r in mine]
            )
            err = np.array([(r.get(f"{m['key']}_std") or 0.0) * m["scale"] for r in mine])
            if len(data["seeds"]) > 1 and err.any():
                line = ax.errorbar(xs, ys, yerr=err, marker="o", ms=3, lw=1.2, capsize=2, label=p)
                color = line.lines[0].get_color()
            else:
                color = ax.plot(xs, ys, marker="o", ms=3, lw=1.2, label=p)[0].get_color()
            for r in mine:
                if r.get(inf_key):  # off the scale: "∞" at the top, in the policy's colour
                    ax.annotate(
                        "∞",
                        (r["value"], 0.97),
                        xycoords=("data", "axes fraction"),
                        ha="center",
                        va="top",
                        color=color,
                    )
        bkey = {
            "success_rate": ("success_rate_ub", 100.0),
            "energy_j_per_service": ("energy_lb_j_per_service", 1.0),
        }.get(m["key"])
        if bkey and bpts:
            by = [np.nan if b[bkey[0]] is None else b[bkey[0]] * bkey[1] for b in bpts]
            # (a marker too: a one-point sweep's line has no length)
            xb = [b["value"] for b in bpts]
            ax.plot(xb, by, "k--", marker="_", ms=8, lw=1.2, label="hindsight bound")
            for b, y in zip(bpts, by, strict=True):
                if b["seeds"] < len(data["seeds"]):  # the others' bounds were skipped
                    ax.annotate(
                        f"{b['seeds']}/{len(data['seeds'])} seeds",
                        (b["value"], y),
                        fontsize=6,
                        textcoords="offset points",
                        xytext=(2, 3),
                    )
        if m["key"] == "energy_ratio":
            ax.axhline(1.0, color="k", ls="--", lw=1.0)
        if m["key"] == "success_gap_points":
            ax.axhline(0.0, color="k", ls="--", lw=1.0)
        if log_x:
            ax.set_xscale("log")
        ax.set_title(m["label"], fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if k // ncol == nrow - 1 or k + ncol >= len(metrics):
            ax.set_xlabel(data["axis_label"], fontsize=8)
    for k in range(len(metrics), nrow * ncol):
        axes[k // ncol][k % ncol].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower right", fontsize=8, ncol=1, frameon=False)
    seeds = len(data["seeds"])
    fig.suptitle(
        f"{data['scenario']}: sweep over {data['axis_label']} "
        f"({data['duration_s']:g} s, {seeds} seed{'s' if seeds != 1 else ''})",
        fontsize=11,
    )
    return _save(fig, path)
