"""Hard constraints hold on every decision path, whatever the round: random rounds on the
built-in fleets (6 servers: the Python-float and vectorised paths; 1,000: the pooled,
compiled path), under both infeasibility rules, with client deadline caps, heavy loads and
narrow links, while the bandit learns between rounds (docs/algorithm.md, "hard
constraints")."""

from __future__ import annotations

import numpy as np
import pytest

from perllm.costmodel import CostTable, build_cost_table
from perllm.csucb import CSUCB, CSUCBConfig
from perllm.scenario import load_scenario


def _table(name: str) -> CostTable:
    sc = load_scenario(name)
    return build_cost_table(sc.services(), sc.expanded_servers(), sc.catalogue)


@pytest.mark.parametrize(
    "scenario, rounds",
    [("paper-llama2-7b", 60), ("edge-gpu", 60), ("demo", 60), ("large-fleet", 8)],
)
@pytest.mark.parametrize("rule", ["least-late", "shed"])
def test_random_rounds_never_break_a_hard_constraint(scenario: str, rounds: int, rule: str) -> None:
    t = _table(scenario)
    b = CSUCB(t, config=CSUCBConfig(on_infeasible=rule))
    rng = np.random.default_rng(len(scenario) * 7 + len(rule))
    c, m = t.quality.shape
    floors = np.unique(np.concatenate([[0.0, 0.99], t.quality[t.allowed]]))
    small = m <= b.cfg.max_candidates
    placed_any = shed_any = 0
    for _ in range(rounds):
        n = int(rng.choice([1, 3, 16, 17, 40, 90] if small else [1, 17, 60]))
        cls = rng.integers(0, c, n)
        l_in = rng.integers(1, 6000, n).astype(float)
        l_out = rng.integers(1, 1500, n).astype(float)
        attach = rng.choice([0.0, 2e5, 5e6], n)
        floor = rng.choice(floors, n)
        running = rng.integers(0, 60, m) * (rng.random(m) < 0.5)
        waiting = rng.integers(0, 40, m) * (rng.random(m) < 0.3)
        bw = t.link_mbps * rng.choice([0.01, 0.3, 1.0], m)
        cap = rng.uniform(0.2, 30.0, n) if rng.random() < 0.4 else None
        explain = small and rng.random() < 0.3
        d = b.decide(
            cls, l_in, l_out, attach, floor, running.astype(float), waiting.astype(float), bw,
            explain=explain, deadline_cap=cap,
        )  # fmt: skip
        hard = CSUCB.static(t, cls, floor)  # tier allowed and the variant meets the floor
        placed = d.choice >= 0
        k = np.flatnonzero(placed)
        assert hard[k, d.choice[k]].all(), "a request was placed where a hard constraint fails"
        # shed only under the shed rule, or where no server meets the hard constraints
        # (and then always)
        none_ok = ~hard.any(axis=1)
        assert (d.shed == ~placed).all()
        assert d.shed[none_ok].all()
        if rule == "least-late":
            assert not d.shed[~none_ok].any()
        assert np.isfinite(d.predicted_time[placed]).all()
        placed_any += int(placed.sum())
        shed_any += int(d.shed[~none_ok].sum())
        if k.size:  # learn from made-up outcomes, so later rounds see other arm estimates
            time = d.predicted_time[k] * rng.uniform(0.5, 3.0, k.size)
            b.update(
                cls[k], d.choice[k], time, d.predicted_time[k], d.predicted_energy[k],
                np.full(k.size, 5.0), l_out[k],
            )  # fmt: skip
    assert placed_any > 0
    assert shed_any > 0 or rule == "least-late" or not small  # the shed rule was exercised
