"""Run a sweep: points × policies × seeds simulations, and the hindsight bound of every
(point, seed), in this process or in a pool of processes (`outputs` writes the files)."""

from __future__ import annotations

import functools
import math
import multiprocessing
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from perllm import policies
from perllm.report import finite_json
from perllm.scenario import Scenario, ScenarioError
from perllm.scenario.load import check_services
from perllm.sweep.metrics import BOUND_METRICS, METRICS, run_row
from perllm.sweep.transforms import SweepError, scale_load, set_cloud_bandwidth, set_load

Axis = Literal["load_rps", "load_x", "cloud_mbps"]
AXIS_LABEL: dict[str, str] = {
    "load_rps": "arrival rate (req/s)",
    "load_x": "arrival-rate multiplier (× the scenario's)",
    "cloud_mbps": "cloud link (Mbps, nominal)",
}
AXIS_SHORT: dict[str, str] = {"load_rps": "load", "load_x": "load", "cloud_mbps": "cloud-bw"}
# The `perllm sweep` option that sets each axis: a point the scenario refuses is its error.
AXIS_FLAG: dict[str, str] = {
    "load_rps": "--load",
    "load_x": "--load-x",
    "cloud_mbps": "--cloud-mbps",
}
OnDone = Callable[[str], None]


@dataclass(frozen=True)
class SweepPoint:
    value: float
    scenario: Scenario


@dataclass(frozen=True)
class Sweep:
    """One curve family: a base scenario transformed along one axis."""

    name: str
    base: str
    axis: Axis
    points: tuple[SweepPoint, ...]

    @classmethod
    def build(cls, sc: Scenario, axis: Axis, values: Sequence[float]) -> Sweep:
        if not values:
            raise SweepError(f"{AXIS_SHORT[axis]} sweep of {sc.name}: no values")
        if len(set(values)) != len(values):
            raise SweepError(f"{AXIS_SHORT[axis]} sweep of {sc.name}: repeated values")
        tf: Callable[[Scenario, float], Scenario] = {
            "load_rps": set_load,
            "load_x": scale_load,
            "cloud_mbps": set_cloud_bandwidth,
        }[axis]
        pts = tuple(SweepPoint(float(v), tf(sc, float(v))) for v in values)
        flag = AXIS_FLAG[axis]
        for pt in pts:  # a transformed point must still be a scenario that runs
            if axis != "cloud_mbps":
                _check_rates(sc, pt, flag)
            try:
                check_services(pt.scenario, sc.name)
            except ScenarioError as e:
                # (named by the option: the field the message names is one the sweep set)
                raise SweepError(f"{flag} {pt.value:g}: at it, {e}") from None
        return cls(f"{sc.name}-{AXIS_SHORT[axis]}", sc.name, axis, pts)


def _check_rates(sc: Scenario, pt: SweepPoint, flag: str) -> None:
    """A load point takes no class above the contract's `MAX_RATE_RPS`: refused naming the
    option and its largest value for this scenario (the contract's error named
    `workload.classes[k].arrivals.rate_rps`, a field the sweep set, not the user)."""
    from perllm.contract import MAX_RATE_RPS

    rates = [pt.scenario.declared_rate(k) for k in range(len(sc.workload.classes))]
    k = max(range(len(rates)), key=rates.__getitem__)
    if rates[k] > MAX_RATE_RPS:
        most = pt.value * MAX_RATE_RPS / rates[k]
        raise SweepError(
            f"{flag}: {pt.value:g} is too high for {sc.name}: its class "
            f"{sc.workload.classes[k].name!r} would arrive at {rates[k]:,.6g} req/s, more than "
            f"the {MAX_RATE_RPS:,.0f} req/s a class (at most {most:.4g} here)"
        )


@dataclass
class SweepResult:
    sweep: Sweep
    policies: list[str]
    seeds: list[int]
    bound: bool
    per_seed: list[dict[str, Any]] = field(default_factory=list)  # one per run
    bound_per_seed: list[dict[str, Any]] = field(default_factory=list)  # one per point, seed
    # (point, seed) whose bound was skipped (too large, LP unsolved), with the reason
    bound_skipped: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0

    def rows(self) -> list[dict[str, Any]]:
        """Per (point, policy): seed means (and `_std`) of every metric and the bound's.
        The bound's columns are means over the `bound_seeds` seeds that have a bound
        (each run against its own seed's), possibly fewer than `seeds` (some skipped)."""
        out = []
        for pt in self.sweep.points:
            b = [d for d in self.bound_per_seed if d["value"] == pt.value]
            for p in self.policies:
                runs = [d for d in self.per_seed if d["value"] == pt.value and d["policy"] == p]
                if not runs:
                    continue
                row: dict[str, Any] = {
                    "sweep": self.sweep.name,
                    "scenario": self.sweep.base,
                    "axis": self.sweep.axis,
                    "value": pt.value,
                    "policy": p,
                    "seeds": len(runs),
                    "duration_s": pt.scenario.duration_s,
                    "requests": float(np.mean([d["requests"] for d in runs])),
                }
                keys = [m.key for m in METRICS if m.key not in BOUND_METRICS]
                for k in keys:  # (None: undefined in that seed, a run without requests)
                    vals = [d[k] for d in runs if d[k] is not None]
                    row[k] = float(np.mean(vals)) if vals else None
                    row[f"{k}_std"] = float(np.std(vals)) if vals else None
                row["seeds_without_requests"] = sum(d["requests"] == 0 for d in runs)
                row["bound_seeds"] = len(b)
                row["bound_success_rate"] = _mean([d["success_rate_ub"] for d in b])
                row["bound_energy_j_per_service"] = _mean([d["energy_lb_j_per_service"] for d in b])
                dist = [d["distances"][p] for d in b if p in d["distances"]]
                for k in BOUND_METRICS:
                    row[k] = _mean([x[k] for x in dist])
                # JSON has no infinity (null there): the count says the mean is infinite.
                row["energy_ratio_inf_seeds"] = sum(math.isinf(x["energy_ratio"]) for x in dist)
                out.append(row)
        return out

    def bound_points(self) -> list[dict[str, Any]]:
        out = []
        for pt in self.sweep.points:
            b = [d for d in self.bound_per_seed if d["value"] == pt.value]
            if b:
                out.append(
                    {
                        "value": pt.value,
                        "success_rate_ub": _mean([d["success_rate_ub"] for d in b]),
                        "energy_lb_j_per_service": _mean([d["energy_lb_j_per_service"] for d in b]),
                        "energy_lb_floor_j_per_service": _mean(
                            [d["energy_lb_floor_j_per_service"] for d in b]
                        ),
                        "solve_s": float(sum(d["build_s"] + d["solve_s"] for d in b)),
                        "seeds": len(b),
                    }
                )
        return out

    def to_dict(self) -> dict[str, Any]:
        sw = self.sweep
        data: dict[str, Any] = finite_json(
            {
                "sweep": sw.name,
                "scenario": sw.base,
                "axis": sw.axis,
                "axis_label": AXIS_LABEL[sw.axis],
                "values": [p.value for p in sw.points],
                "policies": self.policies,
                "seeds": self.seeds,
                "duration_s": sw.points[0].scenario.duration_s if sw.points else None,
                "bound": self.bound,
                "metrics": [{"key": m.key, "label": m.label, "scale": m.scale} for m in METRICS],
                "rows": self.rows(),
                "bound_points": self.bound_points(),
                "per_seed": self.per_seed,
                "bound_per_seed": self.bound_per_seed,
                "bound_skipped": self.bound_skipped,
                "wall_s": self.wall_s,
            }
        )
        return data


def _mean(xs: Iterable[float | None]) -> float | None:
    """Mean of the values (None: none). An infinite one (an energy ratio to a 0 J
    bound) makes it infinite: dropping it hid that seed's run."""
    v = [x for x in xs if x is not None]
    return float(np.mean(v)) if v else None


# Jobs run in worker processes: module-level functions with picklable arguments.
def _run_job(sc: Scenario, policy: str, seed: int) -> dict[str, float | None]:
    from perllm.world.sim import simulate

    return run_row(simulate(sc, policies.make(policy), seed))


def _bound_job(sc: Scenario, seed: int, runs: list[tuple[str, float, float]]) -> dict[str, Any]:
    from perllm.bound import BoundSkipped, compute_bound

    try:
        b = compute_bound(sc, seed)
    except BoundSkipped as e:  # beyond the bound's size limits, or its LP unsolved
        return {"skipped": str(e)}
    dist = {}
    for p, met, energy_j in runs:
        d = b.distance(int(met), energy_j)
        dist[p] = {
            "success_gap_points": d["success_gap_points"],
            "energy_ratio": d["energy_ratio"],
            "bound_energy_lb_j_per_service": d["energy_lb_j_per_service"],
        }
    return {
        "success_rate_ub": b.success_ub,
        "energy_lb_j_per_service": b.energy_lb_j_per_service,
        "energy_lb_floor_j_per_service": b.energy_lb_floor_j / max(b.n_requests, 1),
        "build_s": b.build_s,
        "solve_s": b.solve_s,
        "distances": dist,
    }


class _Inline(Executor):
    """The jobs in this process (processes = 1), one per `step`, in the order submitted:
    each is reported (progress) before the next starts. (Run at submission, every job ran
    while the sweep was being set up, and the progress bar sat at 0 until all were done.)"""

    def __init__(self) -> None:
        self._queue: deque[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = deque()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        f: Future[Any] = Future()
        self._queue.append((f, functools.partial(fn, **kwargs), args))
        return f

    def step(self) -> Future[Any]:
        """Run the next job (an error propagates at once); its future."""
        f, fn, args = self._queue.popleft()
        f.set_result(fn(*args))
        return f


def total_jobs(sweeps: Sequence[Sweep], n_policies: int, n_seeds: int, bound: bool) -> int:
    pts = sum(len(s.points) for s in sweeps)
    return pts * n_seeds * (n_policies + (1 if bound else 0))


def check_policies(names: Sequence[str]) -> None:
    why = policies.name_error(names)
    if why is not None:
        raise SweepError(why)


def run_sweep(
    sweeps: Sequence[Sweep],
    policy_names: Sequence[str],
    seeds: Sequence[int],
    processes: int = 1,
    bound: bool = True,
    on_done: OnDone | None = None,
) -> list[SweepResult]:
    """Every policy at every point of every sweep with every seed, and (with `bound`) the
    hindsight bound of each (point, seed) with each run's distance to it."""
    if not policy_names:
        raise SweepError("policies: none chosen")
    check_policies(policy_names)
    if not seeds:
        raise SweepError("seeds: none chosen")
    if processes < 1:
        raise SweepError(f"processes: must be ≥ 1, got {processes}")
    say = on_done or (lambda _label: None)
    results = [SweepResult(sw, list(policy_names), list(seeds), bound) for sw in sweeps]
    t0 = time.perf_counter()
    ex: Executor = (
        _Inline()
        if processes == 1
        else ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))
    )
    with ex:
        # Two runs a worker: each has the next at hand when it ends.
        jobs = _Jobs(ex, sweeps, results, policy_names, seeds, bound, 2 * processes)
        while jobs.pending:
            if isinstance(ex, _Inline):
                done = {ex.step()}
            else:
                done, _ = wait(list(jobs.pending), return_when=FIRST_COMPLETED)
            for fut in done:
                say(jobs.collect(fut))
    wall = time.perf_counter() - t0
    for res in results:
        res.wall_s = wall
        order = {p: k for k, p in enumerate(policy_names)}
        vals = {p.value: k for k, p in enumerate(res.sweep.points)}
        res.per_seed.sort(key=lambda d: (vals[d["value"]], order[d["policy"]], d["seed"]))
        res.bound_per_seed.sort(key=lambda d: (vals[d["value"]], d["seed"]))
        res.bound_skipped.sort(key=lambda d: (vals[d["value"]], d["seed"]))
    return results


class _Jobs:
    """The jobs of `run_sweep` in flight: the runs submitted as workers free up (`ahead`
    at a time: submitted all at once, a sweep of many seeds and points held every job in
    memory before the first ran), and the bound of a (point, seed) when its last run is in."""

    def __init__(
        self,
        ex: Executor,
        sweeps: Sequence[Sweep],
        results: list[SweepResult],
        policy_names: Sequence[str],
        seeds: Sequence[int],
        bound: bool,
        ahead: int,
    ) -> None:
        self.ex, self.sweeps, self.results, self.bound = ex, sweeps, results, bound
        self.ahead = ahead
        self.pending: dict[Future[Any], tuple[Any, ...]] = {}
        self.waiting: dict[tuple[int, int, int], int] = {}  # (sweep, point, seed) -> runs left
        self.runs_pending = 0
        self.todo = (
            (si, pi, seed, p)
            for si, sw in enumerate(sweeps)
            for pi in range(len(sw.points))
            for seed in seeds
            for p in policy_names
        )
        for si, sw in enumerate(sweeps):
            for pi in range(len(sw.points)):
                for seed in seeds:
                    self.waiting[(si, pi, seed)] = len(policy_names)
        self._fill()

    def _fill(self) -> None:
        """Submit runs until `ahead` are pending (or none is left)."""
        while self.runs_pending < self.ahead:
            job = next(self.todo, None)
            if job is None:
                return
            si, pi, seed, p = job
            fut = self.ex.submit(_run_job, self.sweeps[si].points[pi].scenario, p, seed)
            self.pending[fut] = ("run", si, pi, seed, p)
            self.runs_pending += 1

    def collect(self, fut: Future[Any]) -> str:
        """Record a finished job (submitting a bound it completes, and the next runs);
        returns its label."""
        label = self._record(fut)
        self._fill()
        return label

    def _record(self, fut: Future[Any]) -> str:
        kind, si, pi, seed, *rest = self.pending.pop(fut)
        sw, res = self.sweeps[si], self.results[si]
        pt = sw.points[pi]
        label = f"{sw.name} {pt.value:g} · {rest[0] if rest else 'bound'} · seed {seed}"
        if kind == "run":
            self.runs_pending -= 1
            row = fut.result()
            res.per_seed.append({"value": pt.value, "policy": rest[0], "seed": seed, **row})
            self.waiting[(si, pi, seed)] -= 1
            if self.bound and self.waiting[(si, pi, seed)] == 0:
                runs = [
                    (d["policy"], d["met"], d["energy_j"])
                    for d in res.per_seed
                    if d["value"] == pt.value and d["seed"] == seed
                ]
                bf = self.ex.submit(_bound_job, pt.scenario, seed, runs)
                self.pending[bf] = ("bound", si, pi, seed)
        else:
            b = fut.result()
            if "skipped" in b:
                res.bound_skipped.append({"value": pt.value, "seed": seed, "reason": b["skipped"]})
                label += " (bound skipped)"
            else:
                res.bound_per_seed.append({"value": pt.value, "seed": seed, **b})
        return label
