"""Large fleets are decided per group of servers (`csucb/pooled.py`); the decision must be
the per-server rule's, bit for bit: same choices, predictions, shedding and learned state."""

from __future__ import annotations

import numpy as np
import pytest

from perllm.csucb import CSUCB, CSUCBConfig
from perllm.csucb.config import OnInfeasible
from perllm.csucb.groups import group_round
from tests.unit.test_csucb import table


def _pair(seed: int, shed: bool) -> tuple[CSUCB, CSUCB]:
    t = table(edge_count=90, qa_deadline=1.0 + 4.0 * (seed % 3))
    rule: OnInfeasible = "shed" if shed else "least-late"
    pooled = CSUCB(t, config=CSUCBConfig(max_candidates=64, on_infeasible=rule))
    full = CSUCB(t, config=CSUCBConfig(max_candidates=10_000, on_infeasible=rule))
    for b in (pooled, full):
        r = np.random.default_rng(seed)
        n = 60
        b.update(
            r.integers(0, 2, n),
            r.choice([0, 90], n),  # every arm played (an unplayed one would take all)
            r.uniform(0.5, 20, n),
            r.uniform(0.5, 20, n),
            r.uniform(0, 500, n),
            r.uniform(1, 30, n),
            r.uniform(1, 800, n),
        )
    return pooled, full


@pytest.mark.parametrize("seed", range(8))
def test_pooled_path_decides_exactly_as_per_server(seed: int) -> None:
    pooled, full = _pair(seed, shed=seed % 2 == 1)
    rng = np.random.default_rng(100 + seed)
    m = pooled.t.n_servers
    crng = np.random.default_rng(200 + seed)  # (its own stream: the rounds stay as they were)
    held = 0
    for i in range(16):
        n = int(rng.integers(1, 60))
        # mostly idle fleets half the time: large groups, requests beyond their first server
        busy = rng.random(m) < (0.2 if i % 4 < 2 else 1.0)
        running = rng.integers(0, 3, m).astype(float) * busy
        running[-1] = rng.integers(0, 300)
        waiting = rng.integers(0, 2, m).astype(float) * busy
        if i % 3 == 0:  # backlogged servers (`backlog_waiting`: 8), for the shed rule
            waiting *= 9.0
        # equal links (ties within a group) half the time, noisy links otherwise
        if rng.random() < 0.5:
            bw = pooled.t.link_mbps * rng.choice([0.5, 1.0], m)
        else:
            bw = pooled.t.link_mbps * rng.uniform(0.05, 1.2, m)
        args = (
            rng.integers(0, 2, n).astype(np.intp),
            rng.uniform(10, 3000, n),
            rng.uniform(20, 600, n),
            rng.uniform(0, 2e6, n) * (rng.random(n) < 0.3),
            rng.choice([0.0, 0.45], n),
            running,
            waiting,
            bw,
        )
        # odd rounds: explanations (per candidate server) choose as the pooled path does
        # every third round: some requests with a tighter deadline (a client's header)
        cap = None
        if i % 3 == 1:
            cap = np.where(crng.random(n) < 0.5, np.inf, crng.uniform(0.5, 15, n))
        held += full.hold_rank(args[1], args[3], args[7]) is not None  # (2 MB, ≥ 5 Mbps)
        a = pooled.decide(*args, explain=i % 2 == 1, deadline_cap=cap)
        b = full.decide(*args, deadline_cap=cap)
        assert a.choice.tolist() == b.choice.tolist()
        assert a.shed.tolist() == b.shed.tolist()
        assert a.feasible.tolist() == b.feasible.tolist()
        for x, y in (
            (a.predicted_time, b.predicted_time),
            (a.predicted_energy, b.predicted_energy),
            (a.predicted_fixed, b.predicted_fixed),
            (a.predicted_per_token, b.predicted_per_token),
        ):
            np.testing.assert_array_equal(x, y)
    assert held > 0 or seed % 3  # the link-hold rank (1 s deadlines: seeds 0, 3, 6)
    sa, sb = pooled.export_state(), full.export_state()
    sa.pop("config"), sb.pop("config")  # max_candidates differs
    assert sa == sb


def test_groups_order_best_connected_first() -> None:
    kind = np.array([0, 0, 1, 0, 0])
    running = np.array([0.0, 0.0, 0.0, 1.0, 0.0])
    waiting = np.zeros(5)
    bw = np.array([10.0, 20.0, 5.0, 50.0, 20.0])
    g = group_round(kind, running, waiting, bw)
    assert g.reps.tolist() == [1, 3, 2]  # ties in bandwidth: the lower index first
    assert g.sizes.tolist() == [3, 1, 1]
    assert g.group.tolist() == [0, 0, 2, 1, 0]


def _round_work(
    edge_count: int, monkeypatch: pytest.MonkeyPatch
) -> tuple[dict[str, int], list[str | None]]:
    """What a pooled round evaluates on a fleet of `edge_count` identical edge CPUs and
    one A100 (five edge servers busy, the A100 backlogged, the rest idle, links as declared):
    load-level cells, level evaluations, exact per-server scores, options scanned; and
    the pool (edge or cloud) each request went to."""
    from perllm.csucb import pooled, pooled_scores

    work = dict.fromkeys(("cells", "evaluations", "exact", "options"), 0)
    compute, exact, best = pooled_scores.Scores.compute, pooled._Round.exact, pooled._Round.best

    def counted_compute(
        self: pooled_scores.Scores, gs: list[int], firsts: list[int], k: int, lo: int, hi: int
    ) -> bool:
        work["cells"] += len(gs) * k * (hi - lo)
        work["evaluations"] += 1
        return compute(self, gs, firsts, k, lo, hi)

    def counted_exact(
        self: pooled._Round, p: int, g: int, s: int, c: int
    ) -> tuple[float, float, float]:
        work["exact"] += 1
        return exact(self, p, g, s, c)

    def counted_best(
        self: pooled._Round, p: int, opts: list[pooled.Option]
    ) -> tuple[int, int, float]:
        work["options"] += len(opts)
        return best(self, p, opts)

    monkeypatch.setattr(pooled_scores.Scores, "compute", counted_compute)
    monkeypatch.setattr(pooled._Round, "exact", counted_exact)
    monkeypatch.setattr(pooled._Round, "best", counted_best)
    t = table(edge_count=edge_count, qa_deadline=5.0)
    b = CSUCB(t, config=CSUCBConfig(max_candidates=64, on_infeasible="shed"))
    r = np.random.default_rng(0)
    b.update(
        r.integers(0, 2, 60),
        r.choice([0, edge_count], 60),
        r.uniform(0.5, 20, 60),
        r.uniform(0.5, 20, 60),
        r.uniform(0, 500, 60),
        r.uniform(1, 30, 60),
        r.uniform(1, 800, 60),
    )
    m = t.n_servers
    running, waiting = np.zeros(m), np.zeros(m)
    running[:5], running[-1], waiting[-1] = 1.0, 250.0, 30.0
    n = 120
    d = b.decide(
        r.integers(0, 2, n).astype(np.intp),
        r.uniform(10, 3000, n),
        r.uniform(20, 600, n),
        np.zeros(n),
        np.zeros(n),
        running,
        waiting,
        t.link_mbps.copy(),
    )
    pools = [t.pools[c] if c >= 0 else None for c in d.choice.tolist()]
    monkeypatch.undo()
    return work, pools


def test_pooled_decision_work_grows_with_groups_not_servers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The issue's 'decision cost per request grows with pools, not servers', counted
    (not timed): ten times the servers of the same kinds and loads, the same work."""
    small, pools_small = _round_work(90, monkeypatch)
    large, pools_large = _round_work(900, monkeypatch)
    assert small["evaluations"] > 0 and small["options"] > 0
    assert large == small
    assert pools_large == pools_small


def test_without_the_compiled_loop_large_fleets_are_decided_per_server(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """numba missing or broken (an ImportError): the same decisions, per server, and one
    warning saying so."""
    import sys

    import perllm.csucb
    from perllm.csucb import pooled_scores

    monkeypatch.setattr(pooled_scores, "_loaded", None)
    monkeypatch.setattr(pooled_scores, "_failed", False)
    monkeypatch.setitem(sys.modules, "perllm.csucb.kernels", None)  # import fails
    monkeypatch.delattr(perllm.csucb, "kernels", raising=False)
    pooled, full = _pair(3, shed=True)
    rng = np.random.default_rng(7)
    m = pooled.t.n_servers
    with caplog.at_level("WARNING", logger="perllm.csucb"):
        for _ in range(3):
            n = 40
            args = (
                rng.integers(0, 2, n).astype(np.intp),
                rng.uniform(10, 3000, n),
                rng.uniform(20, 600, n),
                np.zeros(n),
                rng.choice([0.0, 0.45], n),
                rng.integers(0, 3, m).astype(float),
                np.zeros(m),
                pooled.t.link_mbps * rng.uniform(0.5, 1.0, m),
            )
            a, b = pooled.decide(*args), full.decide(*args)
            assert a.choice.tolist() == b.choice.tolist()
            np.testing.assert_array_equal(a.predicted_time, b.predicted_time)
    warned = [r for r in caplog.records if "decided per server" in r.getMessage()]
    assert len(warned) == 1 and "ModuleNotFoundError" in warned[0].getMessage()
    assert not pooled_scores.kernels_available()


def test_a_loop_that_does_not_compile_is_a_fallback_too(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Any failure of numba's when the loop is first built, not only an ImportError."""
    from perllm.csucb import kernels, pooled_scores

    def broken() -> None:
        raise RuntimeError("numba: cannot lower this")

    monkeypatch.setattr(pooled_scores, "_loaded", None)
    monkeypatch.setattr(pooled_scores, "_failed", False)
    monkeypatch.setattr(kernels, "warm", broken)
    with caplog.at_level("WARNING", logger="perllm.csucb"):
        assert not pooled_scores.kernels_available()
        assert not pooled_scores.kernels_available()
    warned = [r.getMessage() for r in caplog.records if "decided per server" in r.getMessage()]
    assert warned == [
        "large fleets decided per server (slower, same decisions): the compiled loop is "
        "unavailable: RuntimeError: numba: cannot lower this"
    ]
