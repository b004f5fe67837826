"""The link-hold rank (docs/algorithm.md, step 3): a placement whose upload alone would hold
its server's link longer than `CSUCBConfig.link_hold` × the shortest fixed deadline of the
classes that server may run ranks after every feasible placement that would not, on every
decision path; it stays feasible (a request only that server can take still goes there)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from perllm.contract import Tier
from perllm.costmodel import transmission_time, upload_bits
from perllm.csucb import CSUCB, CSUCBConfig
from perllm.estimate import LINK_HOLD_RANK, link_hold_limit
from tests.unit.test_csucb import table

BATCH = 1  # `table`'s lenient class (600 s); qa (1 s) runs on every tier
ATTACH = 2e6  # a 2 MB upload: 5.3 s on a 3 Mbps link, 0.16 s on the edge's 100 Mbps


def _decide(b: CSUCB, n: int, explain: bool = False, quality: float = 0.0) -> Any:
    m = b.t.n_servers
    return b.decide(
        np.full(n, BATCH, np.intp),
        np.full(n, 500.0),
        np.full(n, 150.0),
        np.full(n, ATTACH),
        np.full(n, quality),
        np.zeros(m),
        np.zeros(m),
        b.t.link_mbps,
        explain=explain,
    )


def _played(b: CSUCB) -> CSUCB:
    """Every arm observed once at its prediction and counted as played (`plays` counts
    decisions): no unplayed arm's lift decides."""
    m = b.t.n_servers
    cls = np.repeat([0, 1], m)
    server = np.tile(np.arange(m), 2)
    k = len(cls)
    b.update(cls, server, np.full(k, 1.0), np.full(k, 1.0), np.full(k, 10.0), np.full(k, 30.0),
             np.full(k, 150.0))  # fmt: skip
    b.stats.plays[:] = 10.0
    return b


def test_the_limit_is_the_tightest_fixed_deadline_a_server_may_run() -> None:
    t = table(cloud_mbps=3.0, qa_deadline=0.8)
    assert link_hold_limit(t, 1.0).tolist() == [0.8] * t.n_servers
    assert link_hold_limit(t, 2.5).tolist() == [2.0] * t.n_servers
    assert np.isinf(link_hold_limit(t, math.inf)).all()
    # qa kept off the cloud: there only the 600 s batch class runs
    t = table(cloud_mbps=3.0, allowed=(Tier.EDGE,))
    assert link_hold_limit(t, 1.0)[t.tiers.index("cloud")] == 600.0


@pytest.mark.parametrize("edge_count", [3, 90])  # small-fleet paths; the pooled path
def test_an_upload_that_would_hold_a_narrow_link_goes_where_it_does_not(edge_count: int) -> None:
    t = table(edge_count=edge_count, cloud_mbps=3.0)
    cloud = t.tiers.index("cloud")
    up_s = float(transmission_time(upload_bits(500.0, ATTACH), 3.0, 0.0))
    assert up_s > 1.0  # longer than qa's 1 s deadline, which the cloud also serves
    off = _played(CSUCB(t, config=CSUCBConfig(link_hold=math.inf)))
    # without the rule the A100 is the cheaper placement for this lenient request
    assert _decide(off, 1).choice.tolist() == [cloud]
    for n, explain in ((1, False), (3, False), (3, True)):  # fast, fast, vectorised
        on = _played(CSUCB(t))
        d = _decide(on, n, explain=explain)
        assert cloud not in d.choice.tolist(), (n, explain)
        assert d.feasible.all() and not d.shed.any()
        if explain:
            assert d.explanations is not None
            for e in d.explanations:
                held = {c.node for c in e.candidates if c.link_hold}
                assert held == {t.server_names[cloud]}
                c = next(c for c in e.candidates if c.link_hold)
                assert c.feasible and c.score is not None and c.score < -LINK_HOLD_RANK / 2


def test_a_held_link_that_is_the_only_way_is_still_taken() -> None:
    # Only the cloud's fp16 variant meets a 0.45 quality floor: the rank never excludes.
    t = table(cloud_mbps=3.0)
    cloud = t.tiers.index("cloud")
    for explain in (False, True):
        d = _decide(_played(CSUCB(t)), 2, explain=explain, quality=0.45)
        assert d.choice.tolist() == [cloud, cloud]
        assert d.feasible.all()


def test_wide_links_never_hold() -> None:
    """At the links the reference scenarios declare (100 and 300 Mbps) a 2 MB upload takes
    0.05-0.16 s: the rank changes nothing (`hold_rank` is None)."""
    b = CSUCB(table())
    n = 4
    assert b.hold_rank(np.full(n, 4000.0), np.full(n, ATTACH), b.t.link_mbps) is None


@pytest.mark.parametrize("value", [0.0, -1.0, math.nan])
def test_link_hold_must_be_positive(value: float) -> None:
    with pytest.raises(ValueError, match=r"^link_hold: "):
        CSUCBConfig(link_hold=value)


def test_the_extender_counts_a_held_link_avoided_as_neither_exploration_nor_regret() -> None:
    """The extender's exploration flag ("won by its UCB bonus over a feasible node with a
    better mean") and estimated regret compare means: the cloud, held, has the better mean
    but lost to the rank, not to a bonus (every arm played alike); both read 0 there."""
    from perllm_extender.decide import _placed

    t = table(cloud_mbps=3.0)
    b = _played(CSUCB(t))
    e = _decide(b, 1, explain=True).explanations[0]
    cloud = next(c for c in e.candidates if c.link_hold)
    chosen = next(c for c in e.candidates if c.node == e.chosen)
    assert e.feasible and cloud.feasible and cloud.mean > chosen.mean  # the rank decided
    names = [c.node for c in e.candidates]
    d = _placed("llm/p", t.services[BATCH], names, {}, dict.fromkeys(names, 0), e)
    assert not d.exploration and d.regret == 0.0
    # with the rule off the cloud wins on its mean: nothing to count either
    off = _decide(_played(CSUCB(t, config=CSUCBConfig(link_hold=math.inf))), 1, explain=True)
    assert off.explanations[0].chosen == cloud.node
