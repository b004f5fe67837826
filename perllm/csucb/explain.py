"""Why a round placed each request where it did: every candidate server with its
prediction, UCB terms and, when it was excluded, which constraint excluded it. The dict
form is published in Kubernetes status (`LLMService.status.placement.explanation`)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

import numpy as np
from numpy.typing import NDArray

from perllm.costmodel import CostTable
from perllm.estimate import RoundView

F = NDArray[np.float64]
I = NDArray[np.intp]  # noqa: E741


class Constraint(StrEnum):
    """The constraint that made a candidate infeasible, in the order they are checked."""

    TIER = "tier"  # the service may not run on the server's tier
    MEMORY = "memory"  # no variant of the model fits the server
    QUALITY = "quality"  # the variant's quality is below the request's floor
    CAPACITY = "capacity"  # unused since rounds have no level cap (kept for readers)
    DEADLINE = "deadline"  # the pessimistic time misses the deadline


@dataclass
class Candidate:
    node: str
    tier: str
    feasible: bool
    reason: str  # why it was excluded, for people ("" when feasible)
    predicted_time_s: float
    pessimistic_time_s: float
    predicted_energy_j: float
    mean: float  # R̂
    bonus: float
    score: float | None  # the UCB index; None when infeasible (it could not be chosen on it)
    constraint: Constraint | None = None  # why it was excluded (None when feasible)
    unplayed: bool = False  # its arm was never played: explored before any played arm
    # predicted_time_s ≈ fixed + per_token · L_out (as `Decision.predicted_fixed` and
    # `predicted_per_token`): feedback re-evaluates it at the realised output length
    predicted_fixed_s: float = 0.0
    predicted_per_token_s: float = 0.0
    # its upload would hold the server's link longer than `CSUCBConfig.link_hold` allows:
    # its score is `estimate.LINK_HOLD_RANK` lower (ranked after every candidate that does not)
    link_hold: bool = False


@dataclass
class Explanation:
    service: str
    deadline_s: float
    min_quality: float
    chosen: str  # "" where shed
    feasible: bool  # False: nothing was feasible (least-late choice, or shed)
    round: int
    shed: bool = False  # rejected: see `fallback`
    fallback: str = ""  # with nothing feasible: the rule applied, and why
    candidates: list[Candidate] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """`dataclasses.asdict(self)` with plain JSON values, without its deep copy of
        every scalar (a third of a 200-node extender decision went there)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "candidates"}
        d["candidates"] = [_candidate_dict(c) for c in self.candidates]
        return d


def _candidate_dict(c: Candidate) -> dict[str, Any]:
    d = dict(vars(c))
    if c.constraint is not None:
        d["constraint"] = c.constraint.value
    return d


@dataclass
class ExplainContext:
    """What a vectorised round computed, [request, server(, level)]."""

    t: CostTable
    cls: I
    min_quality: F
    deadline: F
    static: NDArray[np.bool_]
    feas: NDArray[np.bool_]
    view: RoundView
    pess: F
    mean: F
    bonus: F  # [N, M]
    unplayed: NDArray[np.bool_]  # [N, M] before this round's plays
    score: F
    choice: I
    ok: NDArray[np.bool_]
    seen: I  # [N, M] each server's load level when the request was placed
    shed: NDArray[np.bool_]  # [N] rejected (`CSUCBConfig.on_infeasible`)
    q_lo: F
    q_hi: F
    fixed: F  # [N, M, levels] the prediction's part independent of the output length
    per_tok: F  # [N, M, levels] its part per output token
    held: NDArray[np.bool_] | bool = False  # [N, M] the upload holds the link (`link_hold`)


def _exclusion(k: int, j: int, lv: int, x: ExplainContext) -> tuple[Constraint | None, str]:
    t, c = x.t, int(x.cls[k])
    if not t.allowed[c, j]:
        if t.tiers[j] not in t.services[c].allowed_tiers:
            return Constraint.TIER, f"tier {t.tiers[j]} not allowed"
        return Constraint.MEMORY, "model variant does not fit in memory"
    if not x.static[k, j]:
        return Constraint.QUALITY, f"quality {t.quality[c, j]:.3f} < floor {x.min_quality[k]:.3f}"
    if not x.feas[k, j, lv]:
        return Constraint.DEADLINE, (
            f"deadline {x.deadline[k]:.2f}s: est. {x.view.time[k, j, lv]:.2f}s "
            f"(pessimistic {x.pess[k, j, lv]:.2f}s; must hold for "
            f"{x.q_lo[c]:.0f}-{x.q_hi[c]:.0f} output tokens)"
        )
    return None, ""


def explain(k: int, x: ExplainContext, round_no: int) -> Explanation:
    """Request k's explanation: every server at the load level it had when k was placed."""
    t, c = x.t, int(x.cls[k])
    cands = []
    for j in range(t.n_servers):
        lv = int(x.seen[k, j])
        constraint, reason = _exclusion(k, j, lv, x)
        cands.append(
            Candidate(
                node=t.server_names[j],
                tier=t.tiers[j],
                feasible=constraint is None,
                reason=reason,
                predicted_time_s=float(x.view.time[k, j, lv]),
                pessimistic_time_s=float(x.pess[k, j, lv]),
                predicted_energy_j=float(x.view.energy[k, j, lv]),
                mean=float(x.mean[k, j, lv]),
                bonus=float(x.bonus[k, j]),
                score=None if constraint is not None else float(x.score[k, j, lv]),
                constraint=constraint,
                unplayed=bool(x.unplayed[k, j]),
                predicted_fixed_s=float(x.fixed[k, j, lv]),
                predicted_per_token_s=float(x.per_tok[k, j, lv]),
                link_hold=bool(x.held if isinstance(x.held, bool) else x.held[k, j]),
            )
        )
    shed, j = bool(x.shed[k]), int(x.choice[k])
    return Explanation(
        service=t.services[c].name,
        deadline_s=float(x.deadline[k]),
        min_quality=float(x.min_quality[k]),
        chosen="" if shed else t.server_names[j],
        feasible=bool(x.ok[k]),
        round=round_no,
        candidates=cands,
        shed=shed,
        fallback=_fallback(cands, shed, bool(x.ok[k]), "" if shed else t.server_names[j]),
    )


def _fallback(cands: list[Candidate], shed: bool, feasible: bool, chosen: str) -> str:
    """Why a request with nothing feasible went where it went (or nowhere)."""
    if feasible:
        return ""
    hard = [c for c in cands if c.constraint is Constraint.DEADLINE]
    if not hard:
        return "shed: no server meets the tiers, memory and quality floor (hard constraints)"
    if shed:
        return "shed: no server meets the deadline (on_infeasible: shed)"
    return (
        f"least-late: no server meets the deadline; {chosen} has the smallest pessimistic "
        "overshoot among the servers meeting the tiers and quality floor"
    )
