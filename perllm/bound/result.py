"""One call: the hindsight bound of a scenario and seed, and each policy's distance to it."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from perllm.bound.model import build_pairs, demand_rows
from perllm.bound.solve import ABS_MARGIN, BoundError, HindsightBound, Progress
from perllm.scenario import Scenario
from perllm.world.result import NO_REQUESTS
from perllm.world.sim import World

# Success targets of the energy LP are rounded down to this fraction of the requests, so
# that policies of nearly equal success share a solve; rounding down keeps the energy
# bound valid (the least energy can only fall when fewer requests must be met).
TARGET_GRID = 0.0025

# Size limits of the relaxation (docs/bound.md, "Limits"): its arrays are dense
# [requests, servers] and each server adds demand rows per interval, so a large fleet
# takes minutes even for a few seconds of traffic (1,000 servers, 198 requests: 3 min).
# Beyond either limit the bound is skipped (`BoundSkipped`), not solved.
MAX_SERVERS = 100
MAX_PAIRS = 1_000_000  # requests × servers


class BoundSkipped(BoundError):
    """The run has no bound: too large for it, or its LP was not solved (time limit,
    solver failure); the message says which."""


def check_size(name: str, seed: int, n_requests: int, n_servers: int) -> None:
    """Raise `BoundSkipped` when a world of this size is beyond the bound's limits."""
    why = (
        f"{n_servers:,} servers (more than {MAX_SERVERS:,})"
        if n_servers > MAX_SERVERS
        else f"{n_requests:,} requests × {n_servers:,} servers (more than {MAX_PAIRS:,})"
        if n_requests * n_servers > MAX_PAIRS
        else ""
    )
    if why:
        raise BoundSkipped(
            f"{name} seed {seed}: bound skipped: {why} is too large for the LP (docs/bound.md)"
        )


@dataclass
class BoundResult:
    """Upper bound on success and lower bounds on energy of one run (scenario, seed)."""

    scenario: str
    seed: int
    n_requests: int
    feasible_requests: int  # requests with at least one deadline-feasible server
    met_ub: float  # upper bound on requests meeting deadline and quality floor
    energy_lb_j: float  # lower bound on total J at success met_ub
    energy_lb_floor_j: float  # lower bound on total J at any success (no target)
    build_s: float
    solve_s: float
    grid_s: float
    lp_rows: int
    # lower bound on total J at a given number of met requests (grid targets solved)
    energy_at: dict[float, float] = field(default_factory=dict)
    _bound: HindsightBound | None = field(default=None, repr=False)

    @property
    def success_ub(self) -> float:
        return self.met_ub / max(self.n_requests, 1)

    @property
    def energy_lb_j_per_service(self) -> float:
        return self.energy_lb_j / max(self.n_requests, 1)

    def energy_lb_at(self, met: float) -> float:
        """Lower bound on total J of any run meeting at least `met` requests."""
        met = min(float(met), self.met_ub)
        step = max(1.0, math.ceil(TARGET_GRID * self.n_requests))
        target = math.floor(met / step) * step
        if target <= 0:
            return self.energy_lb_floor_j
        if self.energy_lb_floor_j >= self.energy_lb_j - 1e-9 * abs(self.energy_lb_j):
            return self.energy_lb_floor_j  # flat: meeting more costs no energy
        if target not in self.energy_at:
            assert self._bound is not None
            t0 = time.perf_counter()
            try:
                self.energy_at[target] = self._bound.min_energy(target).energy_j
            except BoundError:  # unsolved: the bound at any success is still below it
                self.energy_at[target] = self.energy_lb_floor_j
            self.solve_s += time.perf_counter() - t0
        return self.energy_at[target]

    def distance(self, met: int, energy_j: float) -> dict[str, float]:
        """A run's distance: success gap in points and energy ratio to the bound."""
        n = max(self.n_requests, 1)
        lb = self.energy_lb_at(met)
        return {
            "success_gap_points": 100.0 * (self.met_ub - met) / n,
            "energy_lb_j_per_service": lb / n,
            # A bound of 0 J is one below the LP's absolute margin (no power anywhere, or a
            # run of a microsecond): a run within that margin is at it (a 1e-9 s run of
            # 2e-7 J idle energy was `inf×` the bound).
            "energy_ratio": (
                energy_j / lb if lb > 0 else 1.0 if energy_j <= ABS_MARGIN else math.inf
            ),
        }

    def to_dict(self) -> dict[str, Any]:
        n = max(self.n_requests, 1)
        return {
            "seed": self.seed,
            "requests": self.n_requests,
            "feasible_requests": self.feasible_requests,
            "success_rate_ub": self.success_ub,
            "energy_lb_j_per_service": self.energy_lb_j / n,
            "energy_lb_floor_j_per_service": self.energy_lb_floor_j / n,
            "build_s": self.build_s,
            "solve_s": self.solve_s,
            "grid_s": self.grid_s,
            "lp_rows": self.lp_rows,
        }


def compute_bound(
    sc: Scenario,
    seed: int,
    grid_s: float | None = None,
    progress: Progress | None = None,
) -> BoundResult:
    """The hindsight bound of `sc` with `seed` (the world `simulate` builds for it);
    `BoundSkipped` when the world is beyond the bound's size limits (`check_size`) or an
    LP is not solved (`solve.SOLVE_TIME_LIMIT_S`, a solver failure)."""
    say = progress or (lambda _m: None)
    t0 = time.perf_counter()
    world = World(sc, seed)
    if not len(world.req):  # (success and energy per service are undefined)
        raise BoundSkipped(f"{sc.name} seed {seed}: bound skipped: {NO_REQUESTS}")
    check_size(sc.name, seed, len(world.req), world.table.n_servers)
    pairs = build_pairs(world)
    grid = grid_s if grid_s is not None else max(sc.slot_s, 1.0)
    rows = demand_rows(pairs, grid)
    build_s = time.perf_counter() - t0
    say(
        f"{sc.name} seed {seed}: {pairs.n:,} requests, {int(pairs.feasible.sum()):,} feasible "
        f"pairs, {rows.n_intervals:,} interval rows ({build_s:.1f} s)"
    )
    hb = HindsightBound(pairs, rows, say)
    t1 = time.perf_counter()
    try:
        met = hb.max_met()
        say(f"success ≤ {100 * met / max(pairs.n, 1):.2f} % ({hb.success_solve_s:.1f} s)")
        top = hb.min_energy(met)
        floor = hb.min_energy(0.0)
    except BoundError as e:
        raise BoundSkipped(f"{sc.name} seed {seed}: bound skipped: {e} (docs/bound.md)") from None
    solve_s = time.perf_counter() - t1
    n = max(pairs.n, 1)
    say(
        f"energy ≥ {top.energy_j / n:.1f} J/service at that success "
        f"(≥ {floor.energy_j / n:.1f} at any success; {solve_s:.1f} s in all)"
    )
    return BoundResult(
        scenario=sc.name,
        seed=seed,
        n_requests=pairs.n,
        feasible_requests=int(pairs.feasible.any(axis=1).sum()),
        met_ub=met,
        energy_lb_j=top.energy_j,
        energy_lb_floor_j=floor.energy_j,
        build_s=build_s,
        solve_s=solve_s,
        grid_s=grid,
        lp_rows=rows.n_intervals,
        energy_at={},
        _bound=hb,
    )


def bounds_for(
    scenarios: Iterable[Scenario],
    seeds: Iterable[int],
    progress: Progress | None = None,
    skipped: dict[tuple[str, int], str] | None = None,
) -> dict[tuple[str, int], BoundResult]:
    """The bound of every (scenario, seed) within the size limits; a skipped one is
    left out (the report then has no bound for it), `progress` is told why and
    `skipped` (if given) records it."""
    seeds = list(seeds)
    out: dict[tuple[str, int], BoundResult] = {}
    for sc in scenarios:
        for s in seeds:
            try:
                out[(sc.name, s)] = compute_bound(sc, s, progress=progress)
            except BoundSkipped as e:
                if skipped is not None:
                    skipped[(sc.name, s)] = str(e)
                if progress:
                    progress(str(e))
    return out
