"""The experiment report as rich tables (`perllm simulate`, bench/paper.py)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

TOTALS_COLUMNS = (
    "policy",
    "throughput rps",
    "goodput rps",
    "J/service",
    "tran",
    "infer",
    "idle",
    "edge %",
    "thr. ratio",
    "energy ratio",
    "regret vs clairvoyant greedy",
)


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


# A value a policy's runs leave undefined: none of its seeds had a request (the
# scenario's `note` says so); "—" is a value that is not there (a policy not run).
NA = "n/a"


def metric(m: dict[str, Any] | None, key: str) -> str:
    """A success-like share of policy entry `m` in %: "—" without `m`, n/a if undefined."""
    if m is None:
        return "—"
    return NA if m[key] is None else pct(m[key])


def print_report(console: Console, report: dict[str, Any], order: list[str], detail: bool) -> None:
    """Success rates per scenario, the totals, the distance to the hindsight bound (when
    solved) and, with `detail`, per-class success rates."""
    scs = report["scenarios"]
    console.print(success_table(scs, order))
    for s, e in scs.items():  # why a value is n/a, said once
        if "note" in e:
            console.print(f"n/a: {s}: {e['note']}")
    console.print(totals_table(scs, order))
    if any("bound" in s for s in scs.values()):
        console.print(bound_table(scs, order))
    if detail:
        for s, entry in scs.items():
            console.print(class_table(s, entry, order))


def success_table(scs: dict[str, Any], order: list[str]) -> Table:
    t = Table(title="Processing-time success rate (%) per model (scenario), mean over seeds")
    t.add_column("policy")
    for s in scs:
        t.add_column(s, justify="right")
    for p in order:
        t.add_row(p, *[metric(scs[s]["policies"].get(p), "success_rate") for s in scs])
    return t


def totals_table(scs: dict[str, Any], order: list[str]) -> Table:
    t = Table(title="Throughput, goodput and energy (mean over scenarios); ratios: PerLLM / policy")
    for c in TOTALS_COLUMNS:
        t.add_column(c, justify="right" if c != "policy" else "left")
    for p in order:
        ms = [s["policies"][p] for s in scs.values() if p in s["policies"]]
        if ms:
            t.add_row(p, *_totals_cells(scs, p, ms))
    return t


def _totals_cells(scs: dict[str, Any], p: str, ms: list[dict[str, Any]]) -> list[str]:
    """Policy p's totals row (after its name): means over the scenarios it ran in."""

    def over(vals: list[float | None]) -> float | None:
        """Mean over the scenarios where defined (None: in none, no request arrived)."""
        v = [x for x in vals if x is not None]
        return sum(v) / len(v) if v else None

    def mean(k: str) -> float | None:
        return over([m[k] for m in ms])

    def br(k: str) -> float | None:
        return over([m["energy_breakdown_j"][k] for m in ms])

    def num(x: float | None, digits: int) -> str:
        return NA if x is None else f"{x:.{digits}f}"

    rat = [s.get("ratios_vs_perllm", {}).get(p) for s in scs.values()]
    rat = [r for r in rat if r]

    def defined(k: str) -> float | None:
        """Mean of the scenarios where the ratio is defined (None: a zero denominator)."""
        v = [r[k] for r in rat if r[k] is not None]
        return sum(v) / len(v) if v else None

    thr, en = defined("throughput_ratio"), defined("energy_ratio")
    reg = [s.get("regret_vs_clairvoyant_greedy", {}).get(p) for s in scs.values()]
    reg = [r for r in reg if r is not None]
    return [
        num(mean("throughput_rps"), 2),
        num(mean("goodput_rps"), 2),
        num(mean("energy_j_per_service"), 1),
        num(br("tran"), 2),
        num(br("infer"), 1),
        num(br("idle"), 1),
        metric({"e": mean("edge_share")}, "e"),
        "—" if thr is None else f"{thr:.2f}×",
        "—" if en is None else f"{en:.2f}×",
        "—" if not reg else f"{sum(reg) / len(reg):.1f}",
    ]


def bound_table(scs: dict[str, Any], order: list[str]) -> Table:
    t = Table(
        title="Distance to the hindsight bound (docs/bound.md): success gap in points "
        "(bound − policy) / energy ratio (policy J ÷ the least J at the policy's success)"
    )
    t.add_column("policy")
    for s in scs:
        t.add_column(s, justify="right")
    partial = False
    cells = []
    for e in scs.values():
        if "bound" not in e:
            cells.append("—")
            continue
        b = e["bound"]
        cell = f"{pct(b['success_rate_ub'])} %, {b['energy_lb_j_per_service']:.1f}"
        ran = max(m["seeds"] for m in e["policies"].values())
        if b["seeds"] < ran:  # some seeds' bounds skipped: not a mean over the same seeds
            cell += f" ({b['seeds']} of {ran} seeds)"
            partial = True
        cells.append(cell)
    t.add_row("[bold]bound[/bold] (success ≤, J/service ≥)", *cells)
    if partial:
        t.caption = (
            "k of n seeds: the others' bounds were skipped (bound_skipped); the bound and "
            "the gaps are over those k seeds only (each run against its own seed's bound), "
            "the success rates above over all n"
        )
    for p in order:
        cells = []
        for e in scs.values():
            d = e.get("vs_bound", {}).get(p)
            cells.append(
                "—" if d is None else f"{d['success_gap_points']:.2f} / {d['energy_ratio']:.2f}×"
            )
        t.add_row(p, *cells)
    return t


def class_table(s: str, entry: dict[str, Any], order: list[str]) -> Table:
    t = Table(title=f"{s}: success rate (%) per service class")
    classes = list(next(iter(entry["policies"].values()))["per_class"])
    t.add_column("policy")
    for c in classes:
        t.add_column(c, justify="right")
    for p in order:
        if p in entry["policies"]:
            pc = entry["policies"][p]["per_class"]
            t.add_row(p, *[metric(pc[c], "success_rate") for c in classes])
            if any(pc[c]["success_rate"] is None for c in classes):
                t.caption = "n/a: no request of the class arrived"
    return t
