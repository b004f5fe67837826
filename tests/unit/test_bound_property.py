"""Property test of the hindsight bound (docs/bound.md, "Why it is a valid bound") on small
randomised worlds: overload, tiny and collapsing bandwidth, bursty (gamma) arrivals,
quality floors and tier restrictions, one-slot servers, every admission mode.

For every policy's run it checks the proof's claim itself, not only its consequence: the
run (x = where it ran each request, y = where it met one, beta = each server's real busy
time, e = its real inference + idle energy) is a feasible point of the very LPs that are
solved, costing at most the run's energy; and then that the solved bound is above the run's
success and below its energy at that success."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

import perllm.world.sim as sim
from perllm import policies
from perllm.bound import HindsightBound, build_pairs, compute_bound, demand_rows
from perllm.profiles import default_catalogue
from perllm.scenario import Scenario
from perllm.world.result import RunResult

HARDWARE = ["xeon-silver-4214r", "a100-80gb-sxm", "a100-40gb-pcie", "nvidia-l4"]
MODELS = ["llama2-7b", "yi-6b", "llama3-8b"]
POLICIES = [
    "perllm",
    "clairvoyant-greedy",
    "cloud-only",
    "edge-only",
    "greedy-deadline",
    "fineinfer",  # holds requests at the server (release times)
    "least-loaded",
    "round-robin",
]
FLAVOURS = ["overload", "tiny-bandwidth", "bursty", "floors"]
CASES = 40


def random_scenario(k: int) -> Scenario:
    """A small random world; `FLAVOURS[k % 4]` forces its stress on top of the dice."""
    rng = np.random.default_rng([k, 0xB0])
    flavour = FLAVOURS[k % len(FLAVOURS)]
    cat = default_catalogue()
    hardware: dict[str, Any] = {}
    servers = []
    for g in range(int(rng.integers(1, 3))):
        hw = cat.hardware[str(rng.choice(HARDWARE))].model_dump(mode="json")
        hw["max_seqs"] = int(rng.choice([1, 2, 8, 256]))  # one-slot servers queue hard
        if rng.random() < 0.3:  # idle power above busy power, or none
            hw["power_idle_w"] = float(rng.choice([0.0, 300.0]))
        hardware[f"hw{g}"] = hw
        mbps = [0.2, 2.0] if flavour == "tiny-bandwidth" else [2.0, 20.0, 300.0]
        link = {
            "bandwidth_mbps": float(rng.choice(mbps)),
            "noise": 0.2,
            "rtt_ms": float(rng.choice([1.0, 20.0, 200.0])),
            "energy_uj_per_bit": float(rng.choice([0.0, 0.1, 5.0])),
        }
        tier = "edge" if g == 0 else str(rng.choice(["edge", "cloud"]))
        count = int(rng.integers(1, 3))
        servers.append(
            {"name": f"s{g}", "tier": tier, "hardware": f"hw{g}", "count": count, "link": link}
        )
    tiers = {s["tier"] for s in servers}
    classes = []
    for c in range(int(rng.integers(1, 3))):
        floor = 0.7 if flavour == "floors" else float(rng.choice([0.3, 0.5]))
        cl: dict[str, Any] = {
            "name": f"c{c}",
            "model": str(rng.choice(MODELS)),
            "input_tokens": {"kind": "lognormal", "mu": float(rng.uniform(3, 6.5)), "sigma": 0.8},
            "output_tokens": {"kind": "lognormal", "mu": float(rng.uniform(2, 5)), "sigma": 0.8},
            "deadline": {
                "seconds": float(rng.choice([0.3, 1.0, 3.0])),
                "per_output_token_s": float(rng.choice([0.02, 0.06, 0.15])),
            },
            "min_quality": {"values": [0.0, floor], "weights": [0.6, 0.4]},
        }
        if flavour == "floors" or rng.random() < 0.2:
            cl["allowed_tiers"] = [str(rng.choice(sorted(tiers)))]
        if rng.random() < 0.3:
            cl["attachment_bytes"] = {"kind": "uniform", "low": 1e4, "high": 1e6}
        if flavour == "bursty" or rng.random() < 0.2:
            cl["arrivals"] = {"kind": "gamma", "cv": 3.0}
        classes.append(cl)
    rate = 15.0 if flavour == "overload" else float(rng.choice([2.0, 6.0]))
    data: dict[str, Any] = {
        "name": f"prop-{k}-{flavour}",
        "duration_s": float(rng.choice([8.0, 15.0])),
        "slot_s": float(rng.choice([0.5, 1.0, 2.0])),
        "hardware": hardware,
        "servers": servers,
        "workload": {"arrivals": {"kind": "poisson", "rate_rps": rate}, "classes": classes},
        "admission": {
            "mode": str(rng.choice(["none", "reject-late", "timeout"])),
            "timeout_s": 2.0,
        },
    }
    if flavour == "tiny-bandwidth" or rng.random() < 0.2:
        data["bandwidth"] = {"windows": [{"at_s": 1.0, "until_s": 5.0, "factor": 0.01}]}
    return Scenario.model_validate(data)


def _check_feasible(a: sp.csr_matrix, b: np.ndarray, v: np.ndarray, what: str) -> None:
    """a·v <= b up to floating-point noise (relative to the row's terms)."""
    scale = abs(a) @ np.abs(v) + np.abs(b) + 1.0
    excess = (a @ v - b) / scale
    k = int(np.argmax(excess)) if len(excess) else 0
    assert not len(excess) or excess[k] <= 1e-9, (what, k, (a @ v)[k], b[k])


def _run_point(hb: HindsightBound, r: RunResult, world: sim.World) -> tuple[float, float]:
    """Check the run is a feasible point of both LPs; (its met count, its energy)."""
    ran = ~r.shed & ~r.rejected
    met = int(r.met.sum())
    ycol = {(int(i), int(j)): k for k, (i, j) in enumerate(zip(hb.fi, hb.fj, strict=True))}
    xcol = {(int(i), int(j)): k for k, (i, j) in enumerate(zip(hb.ai, hb.aj, strict=True))}
    y = np.zeros(len(hb.fi))
    for i in np.flatnonzero(r.met):
        pair = (int(i), int(r.server[i]))
        assert pair in ycol, f"met pair {pair} is not deadline-feasible in the bound"
        y[ycol[pair]] = 1.0
    if len(y):
        lp = hb.success_lp()
        _check_feasible(lp.a_ub, lp.b_ub, y, "success LP")
    lp = hb.energy_lp(float(met))
    ny = lp.ox
    v = np.zeros(len(lp.c))
    v[:ny] = y[:ny]
    for i in np.flatnonzero(ran):
        v[lp.ox + xcol[(int(i), int(r.server[i]))]] = 1.0
    m = len(world.servers)
    v[lp.oe - m : lp.oe] = [s.busy for s in world.servers]
    v[lp.oe :] = r.energy_infer_j + r.energy_idle_j
    _check_feasible(lp.a_ub, lp.b_ub, v, "energy LP")
    assert np.all(v >= lp.bounds[:, 0]) and np.all(v <= lp.bounds[:, 1])
    energy = float(sum(r.energy_breakdown_j.values()))
    assert lp.c @ v <= energy * (1 + 1e-9) + 1e-9
    return met, energy


@pytest.mark.parametrize("k", range(CASES))
def test_every_run_is_a_point_of_the_relaxation(k: int, monkeypatch: pytest.MonkeyPatch) -> None:
    sc = random_scenario(k)
    worlds: list[sim.World] = []

    class Recorded(sim.World):  # the world each run ends in (its servers' busy time)
        def __init__(self, sc: Scenario, seed: int) -> None:
            super().__init__(sc, seed)
            worlds.append(self)

    monkeypatch.setattr(sim, "World", Recorded)
    b = compute_bound(sc, 1)
    pairs = build_pairs(sim.World(sc, 1))
    hb = HindsightBound(pairs, demand_rows(pairs, b.grid_s))
    hb.max_met()
    for name in POLICIES:
        r = sim.simulate(sc, policies.make(name), 1)
        met, energy = _run_point(hb, r, worlds[-1])
        assert met <= b.met_ub, (name, met, b.met_ub)
        assert energy >= b.energy_lb_at(met), (name, energy, b.energy_lb_at(met))
