"""The shed rule on a backlogged server (docs/algorithm.md, step 5): where a server reports
`backlog_waiting` or more requests waiting to start, a request late there even in
expectation is shed (no margin), since it would hold capacity the queue behind it needs;
elsewhere the `SHED_SLACK` margin applies."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from perllm.csucb import CSUCB, CSUCBConfig
from perllm.csucb.assign import SHED_SLACK
from tests.unit.test_csucb import decide, table

FLOOR = 0.45  # only the cloud's fp16 variant meets it
DEADLINE = 1.0 + 0.15 * 150.0  # qa's ΔD at the expected output length (`decide`: 150)


def _round(n: int, cloud_waiting: float, explain: bool = False, **cfg: Any) -> tuple[Any, int]:
    t = table()
    cloud = t.tiers.index("cloud")
    waiting = np.zeros(t.n_servers)
    waiting[cloud] = cloud_waiting
    b = CSUCB(t, config=CSUCBConfig(**cfg))
    return decide(b, [0] * n, waiting=waiting, quality=FLOOR, explain=explain), cloud


def test_a_late_request_on_a_backlogged_server_is_shed_only_there() -> None:
    # 450 waiting: expected 1.18·ΔD on the cloud (the only server meeting the floor),
    # pessimistically infeasible. Within SHED_SLACK, so only the backlog rule sheds it.
    d, cloud = _round(1, 450.0, on_infeasible="least-late")
    assert not d.feasible[0] and d.choice[0] == cloud
    assert DEADLINE < d.predicted_time[0] <= (1 + SHED_SLACK) * DEADLINE
    assert _round(1, 450.0, on_infeasible="shed")[0].shed[0]  # default backlog_waiting: 8
    for cfg in ({"backlog_waiting": math.inf}, {"backlog_waiting": 451.0}):
        kept = _round(1, 450.0, on_infeasible="shed", **cfg)[0]
        assert not kept.shed[0] and kept.choice[0] == cloud
    # Backlogged but on time in expectation (0.79·ΔD; late only pessimistically): placed.
    d = _round(1, 300.0, on_infeasible="shed")[0]
    assert not d.feasible[0] and not d.shed[0] and d.predicted_time[0] < DEADLINE


@pytest.mark.parametrize("n, explain", [(12, False), (40, False), (40, True)])
def test_a_backlogged_round_admits_only_what_is_on_time_in_expectation(
    n: int, explain: bool
) -> None:
    # 12: the Python-float path; 40: the list assignment; with explanations: numpy. Each
    # placement lengthens the queue for the next, until one is late in expectation: it
    # and (identical) the rest are shed, not placed late into the backlog.
    d, cloud = _round(n, 375.0, explain=explain, on_infeasible="shed")
    placed = ~d.shed
    assert 0 < placed.sum() < n and (d.choice[placed] == cloud).all()
    assert (d.predicted_time[placed] <= DEADLINE).all()
    margin, _ = _round(n, 375.0, explain=explain, on_infeasible="shed", backlog_waiting=math.inf)
    assert (~margin.shed).sum() > placed.sum()  # the 0.5 margin lets later ones in
    assert (margin.predicted_time[~margin.shed] > DEADLINE).any()
