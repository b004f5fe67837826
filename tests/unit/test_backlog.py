"""The shed rule on a backlogged server (docs/algorithm.md, step 5): where a server reports
`backlog_waiting` or more requests waiting to start, a request late there even in
expectation is shed (no margin) if it would hold its slot (its decode) for longer than the
margin, since the queue behind it waits for that slot; elsewhere, or with a short hold,
the `SHED_SLACK` margin applies."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from perllm.csucb import CSUCB, CSUCBConfig
from perllm.csucb.assign import SHED_SLACK
from tests.unit.test_csucb import decide, table

FLOOR = 0.45  # only the cloud's fp16 variant meets it
L_OUT = 150.0  # `decide`'s expected output length
# qa's ΔD at L_OUT: 1 s + 0.1 s/token (its decode on the cloud, ~9.9 s, holds its slot for
# longer than the margin, SHED_SLACK·ΔD = 8 s), or + 0.15 s/token (a 11.75 s margin)
LONG_HOLD, SHORT_HOLD = 0.1, 0.15


def _round(
    n: int, cloud_waiting: float, per_token: float = LONG_HOLD, explain: bool = False, **cfg: Any
) -> tuple[Any, float]:
    t = table(qa_per_token=per_token)
    waiting = np.zeros(t.n_servers)
    waiting[t.tiers.index("cloud")] = cloud_waiting
    b = CSUCB(t, config=CSUCBConfig(**cfg))
    d = decide(b, [0] * n, waiting=waiting, quality=FLOOR, explain=explain)
    return d, 1.0 + per_token * L_OUT


def test_a_late_request_on_a_backlogged_server_is_shed_only_there() -> None:
    # 330 waiting: expected 1.27·ΔD on the cloud (the only server meeting the floor),
    # pessimistically infeasible: within SHED_SLACK, so only the backlog rule sheds it.
    d, deadline = _round(1, 330.0, on_infeasible="least-late")
    assert not d.feasible[0] and d.choice[0] == 3
    assert deadline < d.predicted_time[0] <= (1 + SHED_SLACK) * deadline
    assert d.predicted_per_token[0] * L_OUT > SHED_SLACK * deadline  # the hold
    assert _round(1, 330.0, on_infeasible="shed")[0].shed[0]  # default backlog_waiting: 8
    for cfg in ({"backlog_waiting": math.inf}, {"backlog_waiting": 331.0}):
        kept = _round(1, 330.0, on_infeasible="shed", **cfg)[0]
        assert not kept.shed[0] and kept.choice[0] == 3
    # Backlogged but on time in expectation (late only pessimistically): placed.
    d, deadline = _round(1, 200.0, on_infeasible="shed")
    assert not d.feasible[0] and not d.shed[0] and d.predicted_time[0] < deadline
    # Late in expectation with a hold within the margin: it keeps the margin.
    d, deadline = _round(1, 450.0, SHORT_HOLD, on_infeasible="shed")
    assert deadline < d.predicted_time[0] <= (1 + SHED_SLACK) * deadline and not d.shed[0]
    assert d.predicted_per_token[0] * L_OUT < SHED_SLACK * deadline


@pytest.mark.parametrize("n, explain", [(12, False), (40, False), (40, True)])
def test_a_backlogged_round_admits_only_what_is_on_time_in_expectation(
    n: int, explain: bool
) -> None:
    # 12: the Python-float path; 40: the list assignment; with explanations: numpy. Each
    # placement lengthens the queue for the next, until one is late in expectation: it
    # and (identical) the rest are shed, not placed late into the backlog.
    d, deadline = _round(n, 255.0, explain=explain, on_infeasible="shed")
    placed = ~d.shed
    assert 0 < placed.sum() < n and (d.choice[placed] == 3).all()
    assert (d.predicted_time[placed] <= deadline).all()
    margin, _ = _round(n, 255.0, explain=explain, on_infeasible="shed", backlog_waiting=math.inf)
    assert (~margin.shed).sum() > placed.sum()  # the 0.5 margin lets later ones in
    assert (margin.predicted_time[~margin.shed] > deadline).any()


@pytest.mark.parametrize("per_token", [LONG_HOLD, SHORT_HOLD])
def test_the_fast_path_applies_the_backlog_rule_as_the_vectorised_path(per_token: float) -> None:
    # Rounds of up to 16 requests take the Python-float path; with explanations the
    # vectorised one: the same sheds and placements, backlogged or not, bit for bit.
    t = table(qa_per_token=per_token)
    cfg = CSUCBConfig(on_infeasible="shed")
    fast, ref = CSUCB(t, config=cfg), CSUCB(t, config=cfg)
    rng = np.random.default_rng(7)
    sheds = 0
    for _ in range(60):
        n = int(rng.integers(1, 17))
        waiting = rng.choice([0.0, 7.0, 8.0, 200.0, 330.0, 450.0], t.n_servers)
        args = (
            rng.integers(0, 2, n).astype(np.intp),
            np.round(rng.uniform(10, 3000, n)),
            np.full(n, L_OUT),
            np.zeros(n),
            rng.choice([0.0, FLOOR], n),
            rng.integers(0, 4, t.n_servers).astype(float),
            waiting,
            t.link_mbps,
        )
        a, b = fast.decide(*args), ref.decide(*args, explain=True)
        for f in ("choice", "shed", "feasible", "predicted_time", "predicted_per_token"):
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
        sheds += int(a.shed.sum())
    assert sheds > 0
