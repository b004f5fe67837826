"""CS-UCB's parameters and the constants its fast paths and persisted state depend on."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

OnInfeasible = Literal["least-late", "shed"]

STATE_VERSION = 1
OUT_BINS = 64  # log-spaced output-length bins per class, 1..65,536 tokens
QUANTILE_REFRESH = 64  # observations between refreshes of the output quantiles
SMALL_UPDATE = 32  # observations per update handled on Python floats
SMALL_ROUND = 16  # requests per round decided on Python floats (small fleets; measured)
# `CSUCB.decide` and `single.decide_one` refuse a cap that is not > 0 (NaN included: the
# paths would read it differently)
DEADLINE_CAP_ERROR = "deadline_cap: must be > 0 seconds (inf: the class's)"


@dataclass(frozen=True)
class CSUCBConfig:
    delta: float = 0.3  # exploration weight δ of the UCB bonus
    theta: float = 2.0  # violation penalty θ (in units of normalised energy)
    z: float = 1.65  # quantile of the time ratio used for feasibility (95 % one-sided)
    prior_n: float = 3.0  # pseudo-observations of the profile prior
    prior_sd: float = 0.2  # prior sd of the observed/predicted time ratio
    # Deadlines grow with the output length, which is unknown at decision time: a pair is
    # feasible only if it meets ΔD across the class's output lengths from this quantile
    # to its complement (D and ΔD are both affine in L_out, so the two ends suffice).
    output_quantile: float = 0.05
    output_prior_sigma: float = 0.9  # lognormal σ of the prior around the declared mean
    # Observations an arm remembers (exponential forgetting): load and links drift, so
    # old evidence about a pool decays; inf keeps the stationary running means.
    memory: float = 500.0
    # Above this many servers a round is decided per group of servers (`pooled`): servers
    # of one kind at the same load, which differ only in bandwidth.
    max_candidates: int = 64
    # A request no server can serve in time (pessimistically): "least-late" places it on
    # the server with the smallest pessimistic overshoot among those meeting its tiers
    # and quality floor; "shed" does the same unless it is late there even in
    # expectation, by more than `assign.SHED_SLACK` of ΔD, and then rejects it. Either way
    # tiers and quality floor are never traded: a request no server may run is shed.
    on_infeasible: OnInfeasible = "least-late"
    # Under "shed": a server reporting at least this many requests waiting to start is
    # backlogged; there a request late in expectation whose decode would hold its slot
    # longer than the margin is shed with no margin (`assign.BACKLOG_SLACK`): the queue
    # behind it waits for that slot. 8 ≈ what an A100 prefills in a second; fewer changed
    # decisions at the reference load (docs/algorithm.md); inf: `SHED_SLACK` everywhere.
    backlog_waiting: float = 8.0
    # A link is a FIFO queue: an upload that holds a server's link longer than this
    # factor × the shortest fixed deadline (`deadline.seconds`) of the classes that server
    # may run makes any such request sent behind it miss. Such a placement ranks after
    # every feasible placement that holds no link (`estimate.LINK_HOLD_RANK`); it stays
    # feasible, and the fallback rules do not read it. inf: off.
    link_hold: float = 1.0

    def __post_init__(self) -> None:
        # Each check is written so that NaN fails it (NaN compares False to everything):
        # a NaN or infinite parameter would otherwise reach the statistics as NaN
        # posteriors or output-length priors, and every decision with them.
        for k in ("delta", "theta", "z", "prior_sd"):
            x = getattr(self, k)
            if not (x >= 0 and math.isfinite(x)):
                raise ValueError(f"{k}: must be finite and >= 0, got {x}")
        for k in ("prior_n", "output_prior_sigma"):
            x = getattr(self, k)
            if not (x > 0 and math.isfinite(x)):
                raise ValueError(f"{k}: must be finite and > 0, got {x}")
        if not self.memory >= 1:  # inf: no forgetting
            raise ValueError(f"memory: must be >= 1 (or inf), got {self.memory}")
        if not 0.0 < self.output_quantile < 0.5:
            raise ValueError(f"output_quantile: must be in (0, 0.5), got {self.output_quantile}")
        m = self.max_candidates
        if not (m >= 0 and math.isfinite(m) and float(m).is_integer()):
            raise ValueError(f"max_candidates: must be a whole number >= 0, got {m}")
        if not self.backlog_waiting >= 0:  # inf: off
            raise ValueError(f"backlog_waiting: must be >= 0 (or inf), got {self.backlog_waiting}")
        if not self.link_hold > 0:  # inf: off
            raise ValueError(f"link_hold: must be > 0 (or inf), got {self.link_hold}")
        if self.on_infeasible not in ("least-late", "shed"):
            raise ValueError("on_infeasible: must be 'least-late' or 'shed'")
