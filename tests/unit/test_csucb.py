"""CS-UCB properties: constraints, exploration, learning, persistence, the fast paths,
and statistics shared between bandits over different node sets."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from perllm.contract import (
    Deadline,
    EnergyWeights,
    Link,
    Requirements,
    Server,
    ServiceSpec,
    Tier,
    Traffic,
)
from perllm.costmodel import ROUND, CostTable, build_cost_table
from perllm.csucb import (
    CSUCB,
    UNPLAYED_LIFT,
    ArmStats,
    Constraint,
    CSUCBConfig,
    realised_prediction,
)
from perllm.estimate import RoundView, round_view
from perllm.profiles import default_catalogue

W = EnergyWeights()


def table(
    edge_count: int = 3,
    qa_deadline: float = 1.0,
    qa_per_token: float = 0.15,
    cloud_mbps: float = 300.0,
    allowed: tuple[Tier, ...] = (Tier.EDGE, Tier.CLOUD),
) -> CostTable:
    services = [
        ServiceSpec(
            name="qa",
            model="llama2-7b",
            requirements=Requirements(
                deadline=Deadline(seconds=qa_deadline, per_output_token_s=qa_per_token)
            ),
            traffic=Traffic(prompt_tokens=100, output_tokens=150),
            allowed_tiers=list(allowed),
        ),
        ServiceSpec(
            name="batch",
            model="llama2-7b",
            requirements=Requirements(deadline=Deadline(seconds=600)),
            traffic=Traffic(prompt_tokens=100, output_tokens=150),
        ),
    ]
    servers = [
        (
            "edge",
            Server(
                name="edge",
                tier=Tier.EDGE,
                hardware="xeon-silver-4214r",
                count=edge_count,
                link=Link(bandwidth_mbps=100),
            ),
        )
    ]
    servers = [(f"edge-{k}", servers[0][1]) for k in range(edge_count)]
    servers.append(
        (
            "cloud",
            Server(
                name="cloud",
                tier=Tier.CLOUD,
                hardware="a100-80gb-sxm",
                link=Link(bandwidth_mbps=cloud_mbps, rtt_ms=40, energy_uj_per_bit=1.1),
            ),
        )
    )
    return build_cost_table(services, servers, default_catalogue())


def decide(
    b: CSUCB,
    cls: list[int],
    running: np.ndarray | None = None,
    waiting: np.ndarray | None = None,
    quality: float = 0.0,
    explain: bool = False,
    l_in: float = 100.0,
    bw: np.ndarray | None = None,
):
    m = b.t.n_servers
    n = len(cls)
    return b.decide(
        np.array(cls, np.intp),
        np.full(n, l_in),
        np.full(n, 150.0),
        np.zeros(n),
        np.full(n, quality),
        np.zeros(m) if running is None else running,
        np.zeros(m) if waiting is None else waiting,
        b.t.link_mbps if bw is None else bw,
        explain=explain,
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Found by hypothesis: explanations must judge each server at its own load level.
@example(cls=[0] * 7, load=[0, 0, 0, 220], wait=[0, 2, 3, 50], quality=0.0, l_in=10.0, bw=1.0)
@given(
    cls=st.lists(st.integers(0, 1), min_size=1, max_size=12),
    load=st.lists(st.integers(0, 300), min_size=4, max_size=4),
    wait=st.lists(st.integers(0, 50), min_size=4, max_size=4),
    quality=st.sampled_from([0.0, 0.44, 0.45, 0.9]),
    l_in=st.floats(10, 3000),
    bw=st.floats(0.5, 400),
)
def test_never_infeasible_when_a_feasible_server_exists(cls, load, wait, quality, l_in, bw) -> None:
    b = CSUCB(table())
    d = decide(
        b,
        cls,
        np.array(load, float),
        np.array(wait, float),
        quality,
        explain=True,
        l_in=l_in,
        bw=np.full(4, bw),
    )
    assert d.explanations is not None
    for k, e in enumerate(d.explanations):
        feasible = {c.node for c in e.candidates if c.feasible}
        hard = b.t.allowed[cls[k]] & (b.t.quality[cls[k]] >= quality - 1e-9)
        if d.shed[k]:  # least-late (the default) sheds only what no server may run
            assert e.shed and e.chosen == "" and d.choice[k] == -1 and not hard.any()
            assert not d.feasible[k] and e.fallback.startswith("shed: no server meets the tiers")
            continue
        chosen = b.t.server_names[int(d.choice[k])]
        assert chosen == e.chosen
        # Hard constraints (tier, memory, quality floor) always hold.
        assert hard[d.choice[k]]
        if feasible:
            assert d.feasible[k] and chosen in feasible
        else:
            assert not d.feasible[k]
        for c in e.candidates:
            assert c.feasible == (c.reason == "")


def test_quality_floor_excludes_4bit_edge() -> None:
    b = CSUCB(table())
    d = decide(b, [1] * 6, quality=0.45, explain=True)
    assert all(b.t.tiers[j] == "cloud" for j in d.choice)
    assert d.explanations is not None
    edge = [c for c in d.explanations[0].candidates if c.tier == "edge"]
    assert all("quality 0.438 < floor 0.450" in c.reason for c in edge)


def test_unplayed_arms_first() -> None:
    b = CSUCB(table())
    # The batch class is feasible everywhere (600 s deadline). Both pools are unplayed:
    # the cheaper (cloud) goes first, then the edge, although it costs far more; after
    # that the cloud wins on its mean and the edge's bonus is not worth its energy.
    tiers = [b.t.tiers[decide(b, [1]).choice[0]] for _ in range(4)]
    assert tiers == ["cloud", "edge", "cloud", "cloud"]
    pools = {b.t.pools[b.t.tiers.index(t)] for t in ("edge", "cloud")}
    assert len(pools) == 2


def test_least_violating_when_nothing_is_feasible() -> None:
    b = CSUCB(table(qa_deadline=0.01, qa_per_token=0.0))
    d = decide(b, [0, 0], explain=True)
    assert not d.feasible.any()
    assert b.violations == 2
    assert d.explanations is not None
    times = {c.node: c.pessimistic_time_s for c in d.explanations[0].candidates}
    assert d.explanations[0].chosen == min(times, key=times.__getitem__)
    assert all("deadline" in c.reason for c in d.explanations[0].candidates)


def test_tier_not_allowed_is_explained() -> None:
    b = CSUCB(table(allowed=(Tier.CLOUD,)))
    d = decide(b, [0], explain=True)
    assert b.t.tiers[d.choice[0]] == "cloud"
    assert d.explanations is not None
    assert any(c.reason == "tier edge not allowed" for c in d.explanations[0].candidates)


def test_explanation_to_dict_is_asdict() -> None:
    import dataclasses

    b = CSUCB(table())
    d = decide(b, [0, 1], explain=True)
    assert d.explanations is not None
    for e in d.explanations:
        got = e.to_dict()
        assert got == dataclasses.asdict(e)
        assert list(got) == list(dataclasses.asdict(e))  # same key order
        json.dumps(got)  # plain JSON values


def _feedback(b: CSUCB, d, ratio: float, rng: np.random.Generator, l_out: float = 150.0) -> None:
    n = len(d.choice)
    t = d.predicted_time * ratio * rng.lognormal(0, 0.05, n)
    b.update(
        np.zeros(n, np.intp) + 1,
        d.choice,
        t,
        d.predicted_time,
        d.predicted_energy,
        np.full(n, 600.0),
        np.full(n, l_out),
    )


@pytest.mark.parametrize("memory", [float("inf"), 500.0])
def test_update_is_constant_size_and_learns_the_ratio(memory: float) -> None:
    b = CSUCB(table(), config=CSUCBConfig(memory=memory))
    rng = np.random.default_rng(0)
    size0 = len(json.dumps(b.export_state()))
    for _ in range(300):
        d = decide(b, [1] * 4)
        _feedback(b, d, 1.3, rng)
    mu, sd = b.ratio_posterior()
    cloud_pool = b.pool_of[b.t.tiers.index("cloud")]
    assert mu[1, cloud_pool] == pytest.approx(1.3, rel=0.03)
    assert sd[1, cloud_pool] < 0.1
    # The learned state is a fixed set of running sums: it does not grow with history.
    assert len(json.dumps(b.export_state())) < size0 + 600
    if np.isinf(memory):
        assert b.n.sum() == 1200
    else:  # exponential forgetting: an arm remembers about `memory` observations
        assert 400 < b.n.sum() < 520


def test_forgetting_tracks_a_change() -> None:
    b = CSUCB(table(), config=CSUCBConfig(memory=100))
    rng = np.random.default_rng(5)
    for ratio in (1.0, 2.0):
        for _ in range(150):
            _feedback(b, decide(b, [1] * 4), ratio, rng)
    mu, _ = b.ratio_posterior()
    assert mu[1, b.pool_of[b.t.tiers.index("cloud")]] == pytest.approx(2.0, rel=0.05)


def test_exploration_of_a_worse_arm_is_logarithmic() -> None:
    """Sublinear regret on a stationary instance: plays of the costlier pool (edge) grow
    like log t, so the second half of a run plays it far less than the first half."""
    b = CSUCB(table(), config=CSUCBConfig(delta=0.3))
    rng = np.random.default_rng(1)
    edge_plays = []
    for _ in range(2000):
        d = decide(b, [1])
        _feedback(b, d, 1.0, rng)
        edge_plays.append(b.t.tiers[d.choice[0]] == "edge")
    e = np.array(edge_plays)
    first, second = e[:1000].sum(), e[1000:].sum()
    assert first >= 1
    assert second <= max(first / 2, 3)
    assert e.mean() < 0.05


def test_pessimism_shrinks_with_samples() -> None:
    b = CSUCB(table())
    _, sd0 = b.ratio_posterior()
    rng = np.random.default_rng(2)
    for _ in range(50):
        _feedback(b, decide(b, [1] * 4), 1.0, rng)
    _, sd1 = b.ratio_posterior()
    cloud_pool = b.pool_of[b.t.tiers.index("cloud")]
    assert sd1[1, cloud_pool] < sd0[1, cloud_pool] / 2


def test_state_round_trip_gives_identical_decisions() -> None:
    a = CSUCB(table())
    rng = np.random.default_rng(3)
    for _ in range(40):
        _feedback(a, decide(a, [0, 1, 1]), 1.1, rng, l_out=80)
    state = json.loads(a.dumps())
    b = CSUCB(table())
    assert b.import_state(state) == len(state["arms"])
    np.testing.assert_allclose(b.stats.out_hist, a.stats.out_hist)
    load = np.array([1.0, 0.0, 2.0, 40.0])
    da, db = decide(a, [0, 1, 0, 1], load), decide(b, [0, 1, 0, 1], load)
    assert da.choice.tolist() == db.choice.tolist()


def test_import_rejects_other_versions_and_skips_unknown_arms() -> None:
    b = CSUCB(table())
    with pytest.raises(ValueError, match="version"):
        b.import_state({"version": 99})
    s = b.export_state()
    s["arms"]["gone|edge/x/1"] = {
        "n": 1,
        "sum_ratio": 1,
        "sumsq_ratio": 1,
        "sum_reward": 0,
        "plays": 1,
    }
    assert b.import_state(s) == 0


def test_output_quantiles_learn_from_feedback() -> None:
    b = CSUCB(table())
    lo0, _ = b.output_quantiles()
    rng = np.random.default_rng(4)
    for _ in range(200):
        _feedback(b, decide(b, [1] * 4), 1.0, rng, l_out=float(rng.integers(400, 500)))
    lo1, hi1 = b.output_quantiles()
    assert lo1[1] > lo0[1] and 300 < lo1[1] <= 420 and 450 <= hi1[1] <= 600


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="delta"):
        CSUCBConfig(delta=-1)
    with pytest.raises(ValueError, match="output_quantile"):
        CSUCBConfig(output_quantile=0.7)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("output_prior_sigma", 0.0),  # a NaN output-length prior: quantiles of 1 token
        ("output_prior_sigma", -0.9),
        ("output_prior_sigma", math.nan),
        ("output_prior_sigma", math.inf),
        ("prior_n", math.nan),  # a NaN ratio posterior on every arm
        ("prior_n", math.inf),
        ("prior_n", 0.0),
        ("memory", math.nan),  # was taken for inf (no forgetting)
        ("memory", 0.5),
        ("max_candidates", math.nan),  # every round pooled
        ("max_candidates", -1),
        ("max_candidates", 2.5),
        ("backlog_waiting", math.nan),
        ("link_hold", math.nan),
        ("link_hold", 0.0),
        ("z", math.inf),
    ],
)
def test_config_refuses_bad_numbers_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=rf"^{field}: "):
        CSUCBConfig(**{field: value})  # type: ignore[arg-type]


def test_config_keeps_the_documented_extremes() -> None:
    """inf memory (stationary means) and inf backlog_waiting (off) stay allowed, and a
    whole float count (what a YAML mapping of floats gives) is a count."""
    CSUCBConfig(memory=math.inf, backlog_waiting=math.inf, max_candidates=64.0)  # type: ignore[arg-type]
    CSUCBConfig(link_hold=math.inf)  # off
    CSUCBConfig(delta=0, theta=0, z=0, prior_sd=0, max_candidates=0)


def test_candidate_pruning_on_a_large_fleet_keeps_the_decision() -> None:
    t = table(edge_count=120)
    rng = np.random.default_rng(6)
    pruned = CSUCB(t, config=CSUCBConfig(max_candidates=64))
    full = CSUCB(t, config=CSUCBConfig(max_candidates=10_000))
    assert full.candidates(3, np.zeros(121), np.zeros(121), t.link_mbps) is None
    for _ in range(30):
        running = rng.integers(0, 4, t.n_servers).astype(float)
        running[-1] = rng.integers(0, 300)
        waiting = rng.integers(0, 2, t.n_servers).astype(float)
        bw = t.link_mbps * rng.uniform(0.8, 1.2, t.n_servers)
        cols = pruned.candidates(3, running, waiting, bw)
        assert cols is not None and len(cols) < 40
        assert t.tiers.index("cloud") in cols.tolist()
        a = decide(pruned, [0, 1, 1], running, waiting, bw=bw)
        b = decide(full, [0, 1, 1], running, waiting, bw=bw)
        assert a.choice.tolist() == b.choice.tolist()
        np.testing.assert_allclose(a.predicted_time, b.predicted_time)
        np.testing.assert_allclose(a.predicted_energy, b.predicted_energy)
        assert a.feasible.tolist() == b.feasible.tolist()


def _twin_bandits(
    seed: int, config: CSUCBConfig | None = None
) -> tuple[CSUCB, CSUCB, np.random.Generator]:
    """Two identical bandits with some learned state (played and unplayed arms). On odd
    seeds `qa` is lenient and edge-only, so equally loaded edge servers tie on score."""
    rng = np.random.default_rng(seed)
    kw: dict = {"qa_deadline": 600.0, "allowed": (Tier.EDGE,)} if seed % 2 else {}
    a, b = (CSUCB(table(edge_count=3, **kw), config=config) for _ in range(2))
    for bandit in (a, b):
        r = np.random.default_rng(seed)
        n = 40
        bandit.update(
            r.integers(0, 2, n),
            r.integers(0, 3, n),  # edge servers only: the cloud arms stay unplayed
            r.uniform(0.5, 20, n),
            r.uniform(0.5, 20, n),
            r.uniform(0, 500, n),
            r.uniform(1, 30, n),
            r.uniform(1, 800, n),
        )
    return a, b, rng


@pytest.mark.parametrize("n", [1, 4, 30])  # the small-round path, and the vectorised one
@pytest.mark.parametrize("shed", [False, True])
def test_a_deadline_cap_decides_as_a_class_with_that_deadline(n: int, shed: bool) -> None:
    """`deadline_cap` (a client's tighter deadline) is the class's deadline where shorter:
    the same decisions and predictions as a bandit whose class has that deadline."""
    cfg = CSUCBConfig(on_infeasible="shed" if shed else "least-late")
    rng = np.random.default_rng(n)
    for cap in (0.8, 2.5, 6.0):
        loose = CSUCB(table(qa_deadline=20.0, qa_per_token=0.0), config=cfg)
        tight = CSUCB(table(qa_deadline=cap, qa_per_token=0.0), config=cfg)
        m = loose.t.n_servers
        for b in (loose, tight):  # the same learned state
            r = np.random.default_rng(3)
            k = 40
            b.update(r.integers(0, 2, k), r.integers(0, m, k), r.uniform(0.5, 20, k),
                     r.uniform(0.5, 20, k), r.uniform(0, 500, k), r.uniform(1, 30, k),
                     r.uniform(1, 800, k))  # fmt: skip
        for _ in range(10):
            args = (
                np.zeros(n, np.intp),  # qa
                np.round(rng.uniform(10, 3000, n)),
                np.full(n, 150.0),
                rng.choice([0.0, 50_000.0], n),
                np.zeros(n),
                rng.integers(0, 6, m).astype(float),
                rng.integers(0, 2, m).astype(float),
                loose.t.link_mbps * rng.uniform(0.05, 1, m),
            )
            a = loose.decide(*args, deadline_cap=np.full(n, cap))
            b = tight.decide(*args)
            for f in ("choice", "feasible", "shed", "predicted_time", "predicted_energy"):
                np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
            assert not a.feasible.all() or cap > 2  # (the tight caps bind somewhere)
        # a cap above the class's deadline changes nothing (it never loosens)
        again = CSUCB(table(qa_deadline=cap, qa_per_token=0.0), config=cfg)
        ref = CSUCB(table(qa_deadline=cap, qa_per_token=0.0), config=cfg)
        d1 = again.decide(*args, deadline_cap=np.full(n, cap + 5.0))
        d2 = ref.decide(*args)
        np.testing.assert_array_equal(d1.choice, d2.choice)
        np.testing.assert_array_equal(d1.feasible, d2.feasible)
        # a scalar is every request's cap; NaN or ≤ 0 is refused (the paths differ on NaN)
        d3 = again.decide(*args, deadline_cap=cap + 5.0)
        np.testing.assert_array_equal(d3.feasible, d2.feasible)
        for bad in (math.nan, 0.0, -1.0):
            with pytest.raises(ValueError, match="deadline_cap"):
                again.decide(*args, deadline_cap=np.full(n, bad))


@pytest.mark.parametrize("seed, shed", [(s, False) for s in range(6)] + [(0, True), (1, True)])
def test_small_round_fast_path_decides_exactly_as_the_vectorised_path(
    seed: int, shed: bool
) -> None:
    # `decide` takes a Python-float path for rounds of a few requests; with explain=True it
    # always runs the vectorised one. Decisions, predictions and learned state must agree
    # bit for bit, ties in the speed rank (equal links) and violations included; with
    # `shed`, shedding too (test_backlog.py pins the backlog rule across the paths).
    cfg = CSUCBConfig(on_infeasible="shed", backlog_waiting=2.0) if shed else None
    fast, ref, rng = _twin_bandits(seed, cfg)
    m = fast.t.n_servers
    crng = np.random.default_rng(1000 + seed)  # (its own stream: the rounds stay as they were)
    held = 0
    for _ in range(80):
        n = int(rng.integers(1, 19))  # up to past SMALL_ROUND: both paths on both sides
        # Half the rounds are lenient batch work on equally loaded servers: equal scores
        # among the edge servers, so the speed rank decides (ties in time on equal links).
        lenient = rng.random() < 0.5
        cls = np.full(n, 1 - seed % 2) if lenient else rng.integers(0, 2, n)
        load = np.full(m, float(rng.integers(0, 3))) if lenient else rng.integers(0, 12, m)
        args = (
            cls,
            np.round(rng.uniform(10, 3000, n)),
            np.full(n, 150.0),
            np.where(crng.random() < 0.3, crng.choice([0.0, 2e6], n), rng.choice([0.0, 50e3], n)),
            np.zeros(n) if lenient else rng.choice([0.0, 0.45, 0.9], n),
            load.astype(float),
            np.zeros(m) if lenient else rng.integers(0, 3, m).astype(float),
            fast.t.link_mbps if rng.random() < 0.3 else fast.t.link_mbps * rng.uniform(0.05, 1, m),
        )
        # a third of the rounds: some requests with a tighter deadline (a client's header)
        cap = None
        if crng.random() < 0.33:
            cap = np.where(crng.random(n) < 0.5, np.inf, crng.uniform(0.5, 15, n))
        # (2 MB uploads on links cut to 5-100 %: placements ranked after by the link hold)
        held += ref.hold_rank(args[1], args[3], args[7]) is not None
        d1 = fast.decide(*args, deadline_cap=cap)
        d2 = ref.decide(*args, explain=True, deadline_cap=cap)
        for f in ("choice", "feasible", "shed", "predicted_time", "predicted_energy"):
            np.testing.assert_array_equal(getattr(d1, f), getattr(d2, f), err_msg=f)
        for f in ("predicted_fixed", "predicted_per_token"):
            np.testing.assert_array_equal(getattr(d1, f), getattr(d2, f), err_msg=f)
        # Feedback of various sizes exercises both update paths on both bandits.
        k = int(rng.integers(1, 40))
        obs = (
            rng.integers(0, 2, k),
            rng.integers(0, m, k),
            rng.uniform(0.5, 20, k),
            rng.uniform(0.5, 20, k),
            rng.uniform(0, 500, k),
            rng.uniform(1, 30, k),
            np.round(rng.uniform(1, 800, k)),
        )
        fast.update(*obs)
        ref.update(*obs)
    assert fast.dumps() == ref.dumps()
    assert (fast.violations, fast.total) == (ref.violations, ref.total)
    assert fast.violations > 0  # the least-violating branch was exercised
    assert held > 0 or seed % 2  # and the link-hold rank (odd seeds: 600 s limits, none)
    np.testing.assert_array_equal(fast.stats.out_hist, ref.stats.out_hist)


@pytest.mark.parametrize("memory", [500.0, float("inf")])
def test_small_update_fast_path_keeps_the_same_sums(
    memory: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small feedback batches update on Python floats; the sums must be numpy's, bit for bit.
    import perllm.csucb.config as csucb_config

    cfg = CSUCBConfig(memory=memory)
    fast, ref = CSUCB(table(), config=cfg), CSUCB(table(), config=cfg)
    rng = np.random.default_rng(3)
    m = fast.t.n_servers
    for _ in range(200):
        k = int(rng.integers(1, 12))
        obs = (
            rng.integers(0, 2, k),
            rng.integers(0, m, k),
            rng.uniform(0.1, 20, k),
            rng.uniform(0.0, 20, k),
            rng.choice([0.0, 100.0, 1e5], k) * rng.random(k),
            rng.uniform(1, 30, k),
            rng.choice([0.5, 1.0, 7.0, 65536.0, 1e6], k) * rng.random(k),
        )
        fast.update(*obs)
        with monkeypatch.context() as mp:
            mp.setattr(csucb_config, "SMALL_UPDATE", 0)
            ref.update(*obs)
    for f in ("n", "sum_ratio", "sumsq_ratio", "sum_reward", "out_hist"):
        np.testing.assert_array_equal(getattr(fast.stats, f), getattr(ref.stats, f), err_msg=f)
    assert fast.dumps() == ref.dumps()


# -- explanations: the constraint that excluded a candidate, unplayed arms ----------------
def test_constraint_names_why_a_candidate_is_infeasible() -> None:
    b = CSUCB(table(allowed=(Tier.CLOUD,)))
    d = decide(b, [0, 1], quality=0.45, explain=True)
    assert d.explanations is not None
    qa, batch = (e.candidates for e in d.explanations)
    assert {c.constraint for c in qa if c.tier == "edge"} == {Constraint.TIER}
    assert {c.constraint for c in batch if c.tier == "edge"} == {Constraint.QUALITY}
    tight = CSUCB(table(qa_deadline=0.01, qa_per_token=0.0))
    d = decide(tight, [0], explain=True)
    assert d.explanations is not None
    assert {c.constraint for c in d.explanations[0].candidates} == {Constraint.DEADLINE}
    for e in d.explanations:
        for c in e.candidates:
            # Infeasible: a constraint and no score; feasible: a score and no constraint.
            assert (c.constraint is None) == c.feasible == (c.score is not None)


def test_no_level_cap_a_round_beyond_the_precomputed_levels() -> None:
    # One allowed server, more requests than the levels computed up front: it takes them
    # all, each predicted at its real load (times keep growing), never a capacity cut.
    b = CSUCB(table(edge_count=1, qa_deadline=86400, allowed=(Tier.EDGE,)))
    d = decide(b, [0] * 40, explain=True)
    assert d.explanations is not None and not d.shed.any()
    assert (d.choice == 0).all()
    assert len(set(d.predicted_time.tolist())) == 40
    edge = [next(c for c in e.candidates if c.tier == "edge") for e in d.explanations]
    assert Constraint.CAPACITY not in {c.constraint for c in edge}
    assert sorted(c.predicted_time_s for c in edge) == sorted(d.predicted_time.tolist())


@pytest.mark.parametrize("path", ["small", "arrays", "pooled"])
def test_a_request_is_predicted_behind_the_earlier_arrivals_on_its_server(path: str) -> None:
    # Servers run their queues in arrival order, so the round is assigned in that order:
    # each request's prediction counts exactly the earlier arrivals placed on its server
    # (a level-k prediction is the prediction alone at level k there). Tight
    # deadlines arrive last here: an order by deadline would predict them ahead of
    # requests that the server runs first.
    edge_count = 90 if path == "pooled" else 3
    b = CSUCB(
        table(edge_count=edge_count, qa_deadline=30.0),
        config=CSUCBConfig(max_candidates=64),
    )
    rng = np.random.default_rng(7)
    m = b.t.n_servers
    n = 12 if path != "pooled" else 40
    cls = np.array([1] * (n // 2) + [0] * (n - n // 2), np.intp)  # batch (600 s), then qa
    l_in = rng.uniform(50, 2000, n)
    l_out = np.where(cls == 1, 400.0, rng.uniform(20, 200, n))
    running = rng.integers(0, 4, m).astype(float)
    waiting = rng.integers(0, 2, m).astype(float)
    bw = b.t.link_mbps * rng.uniform(0.5, 1.0, m)
    args = (cls, l_in, l_out, np.zeros(n), np.zeros(n), running, waiting, bw)
    d = b.decide(*args, explain=path == "arrays")
    assert not d.shed.any()
    ahead = np.zeros(m)
    for k, j in enumerate(d.choice.tolist()):
        alone = round_view(
            b.t, b.w, cls[k : k + 1], l_in[k : k + 1], l_out[k : k + 1], np.zeros(1),
            running, waiting, bw, first_level=ahead.copy(), n_levels=1,
        )  # fmt: skip
        assert d.predicted_time[k] == pytest.approx(alone.time[0, j, 0], rel=1e-12)
        ahead[j] += 1
    assert ahead.max() >= 2  # some server took several: the levels were exercised


def test_unplayed_flag_and_the_dict_published_in_status() -> None:
    b = CSUCB(table())
    d = decide(b, [1], explain=True)
    assert d.explanations is not None
    first = d.explanations[0].candidates
    assert all(c.unplayed for c in first)  # nothing played yet
    assert all(c.score is not None and c.score >= UNPLAYED_LIFT / 2 for c in first)
    chosen_tier = next(c.tier for c in first if c.node == d.explanations[0].chosen)
    d = decide(b, [1], explain=True)
    assert d.explanations is not None
    again = d.explanations[0].candidates
    assert {c.tier for c in again if not c.unplayed} == {chosen_tier}
    assert all(c.score is not None and c.score < 1e3 for c in again if not c.unplayed)
    got = d.explanations[0].to_dict()
    keys = {
        "node", "tier", "feasible", "reason", "predicted_time_s", "pessimistic_time_s",
        "predicted_energy_j", "mean", "bonus", "score", "constraint", "unplayed",
        "predicted_fixed_s", "predicted_per_token_s", "link_hold",
    }  # fmt: skip
    assert all(set(c) == keys for c in got["candidates"])
    # the prediction's parts: fixed + per_token · L_out at the expected length is the time
    for c in (c for c in again if c.feasible):
        assert c.predicted_per_token_s > 0
        assert c.predicted_fixed_s + c.predicted_per_token_s * 150 == pytest.approx(
            c.predicted_time_s, rel=1e-12
        )
    tight = CSUCB(table(qa_deadline=0.01, qa_per_token=0.0))
    d = decide(tight, [0], explain=True)
    assert d.explanations is not None
    out = json.loads(json.dumps(d.explanations[0].to_dict()))
    assert {c["constraint"] for c in out["candidates"]} == {"deadline"}
    assert all(c["score"] is None for c in out["candidates"])
    assert all(type(c["constraint"]) is str for c in d.explanations[0].to_dict()["candidates"])


# -- statistics shared between bandits over different node sets ------------------------------
def _subset(t: CostTable, names: list[str]) -> CostTable:
    return t.subset(np.array([t.server_names.index(n) for n in names], np.intp))


def test_shared_stats_between_node_sets_with_a_common_pool() -> None:
    t = table()
    stats = ArmStats()
    edge_only = CSUCB(_subset(t, ["edge-0", "edge-1"]), stats=stats)
    both = CSUCB(_subset(t, ["edge-2", "cloud"]), stats=stats)
    assert sorted(stats.pool_names) == sorted(set(t.pools))  # the edge pool once
    assert edge_only.pool_names is both.pool_names
    # Learning through one bandit is what the other decides with.
    rng = np.random.default_rng(7)
    for _ in range(30):
        _feedback(edge_only, decide(edge_only, [1, 1]), 1.6, rng)
    edge = stats.pool_index(t.pools[0])
    mu, _ = both.ratio_posterior()
    assert mu[stats.class_index("batch"), edge] == pytest.approx(1.6, rel=0.05)
    assert both.total == edge_only.total == 60 and stats.plays.sum() == 60
    d = decide(both, [1], explain=True)
    assert d.explanations is not None
    by_tier = {c.tier: c for c in d.explanations[0].candidates}
    assert not by_tier["edge"].unplayed and by_tier["cloud"].unplayed
    # A bandit built alone from the same history decides the same.
    alone = CSUCB(_subset(t, ["edge-2", "cloud"]))
    alone.import_state(stats.export_state())
    load = np.array([3.0, 1.0])
    assert decide(alone, [0, 1], load).choice.tolist() == decide(both, [0, 1], load).choice.tolist()


def test_stats_grow_a_pool_another_bandit_has_not_seen() -> None:
    t = table()
    stats = ArmStats()
    edge = CSUCB(_subset(t, ["edge-0", "edge-1"]), stats=stats)
    rng = np.random.default_rng(8)
    for _ in range(10):
        _feedback(edge, decide(edge, [1]), 1.2, rng)  # small rounds: the fast path's caches
    before = stats.export_state()
    layout = stats.layout
    cloud = CSUCB(_subset(t, ["cloud"]), stats=stats)  # a node set with a new pool
    assert stats.layout > layout and len(stats.pool_names) == 2
    assert stats.export_state()["arms"] == before["arms"]  # nothing learned was lost
    # The first bandit remaps to the grown arrays: its decisions and learning still land
    # on its own arms, and the new pool's arm learns through the second bandit.
    for _ in range(10):
        _feedback(edge, decide(edge, [1]), 1.2, rng)
        _feedback(cloud, decide(cloud, [1]), 0.9, rng)
    e, c = stats.pool_index(t.pools[0]), stats.pool_index(t.pools[-1])
    batch = stats.class_index("batch")
    assert stats.plays[batch, e] == 20 and stats.plays[batch, c] == 10
    mu, _ = stats.ratio_posterior()
    assert mu[batch, e] == pytest.approx(1.2, rel=0.05)
    assert mu[batch, c] == pytest.approx(0.9, rel=0.1)


def test_import_adds_pools_of_known_services() -> None:
    a = CSUCB(table())
    _feedback(a, decide(a, [1] * 4), 1.0, np.random.default_rng(9))
    edge_only = CSUCB(_subset(table(), ["edge-0"]))
    assert edge_only.import_state(a.export_state()) == len(a.export_state()["arms"])
    assert edge_only.stats.export_state()["arms"] == a.export_state()["arms"]


def test_shared_stats_refuse_another_config() -> None:
    stats = ArmStats(CSUCBConfig(delta=0.5))
    assert CSUCB(table(), stats=stats).cfg.delta == 0.5
    with pytest.raises(ValueError, match="config"):
        CSUCB(table(), config=CSUCBConfig(delta=0.1), stats=stats)


# -- the prediction feedback compares against ----------------------------------------------
def test_realised_prediction_on_floats_and_arrays() -> None:
    assert realised_prediction(0.5, 0.02, 100.0) == pytest.approx(2.5)
    fixed, per_tok, l_out = np.array([0.5, 1.0]), np.array([0.02, 0.01]), np.array([100.0, 7.0])
    np.testing.assert_array_equal(
        realised_prediction(fixed, per_tok, l_out), fixed + per_tok * l_out
    )
    # A decision's own prediction is the one at the expected output length.
    b = CSUCB(table())
    d = decide(b, [0, 1, 1])
    np.testing.assert_allclose(
        realised_prediction(d.predicted_fixed, d.predicted_per_token, np.full(3, 150.0)),
        d.predicted_time,
        rtol=1e-12,
    )


def test_a_gpu_that_keeps_requests_waiting_with_slots_free_is_full_at_its_running_count() -> None:
    # vLLM semantics: a GPU server holds requests back once its KV cache is full, so
    # "waiting beside running, slots free" means it holds `running`, not `max_conc`. The
    # queue then counts the requests ahead beyond `running`, and the wait for a slot and
    # for the prefills ahead overlap: the longer of the two. With free capacity (nothing
    # waiting) or all slots taken, the wait is unchanged: slots beyond `max_conc` plus the
    # serialised prefills.
    t = table()
    m = t.n_servers
    j = int(np.flatnonzero(t.is_gpu)[0])
    cap = float(t.max_conc[0, j])
    svc = float(t.round_coeffs[ROUND.index("svc_per_slot"), 0, j])
    gpu_pre = float(t.typical_service_s[1][j])
    assert cap > 8 and svc > 0 and gpu_pre > 0

    def view(j: int, running: float, waiting: float, n_levels: int = 1) -> RoundView:
        """One request of 500 / 150 tokens with server j at this load, the others idle."""
        run, wait = np.zeros(m), np.zeros(m)
        run[j], wait[j] = running, waiting
        one = np.array([1.0])
        return round_view(t, W, np.array([0], np.intp), one * 500, one * 150, one * 0, run,
                          wait, t.link_mbps, n_levels=n_levels)  # fmt: skip

    idle = view(j, 0, 0)
    prefill = idle.core[0, j, 0] - idle.decode[0, j, 0]

    def queue(running: float, waiting: float) -> float:
        v = view(j, running, waiting, n_levels=2)
        return float(v.core[0, j, 1] - v.decode[0, j, 1] - prefill)  # level 1: one placed before

    # 4 running, 3 waiting, 1 placed before it: with itself, 5 beyond the 4 it holds
    assert 5 * svc > 4 * gpu_pre  # (the slot wait is the longer: the rule shows)
    assert queue(4, 3) == pytest.approx(5 * svc, rel=1e-12)
    assert queue(4, 0) == pytest.approx(1 * gpu_pre, rel=1e-12)  # not bound: slots free
    assert queue(0, 3) == pytest.approx(4 * gpu_pre, rel=1e-12)  # prefills only
    # every slot taken: the slots beyond `max_conc` and the prefills add up
    assert queue(cap, 3) == pytest.approx(5 * svc + 4 * gpu_pre, rel=1e-12)
    # A CPU server has no KV-bound rule: 1 running and 1 waiting with a free slot is
    # predicted as 2 running (the rule would add a slot wait there).
    cpu = int(np.flatnonzero(~t.is_gpu)[0])
    assert t.max_conc[0, cpu] > 2 and t.round_coeffs[ROUND.index("svc_per_slot"), 0, cpu] > 0
    busy, same = view(cpu, 1, 1), view(cpu, 2, 0)
    assert busy.time[0, cpu, 0] == same.time[0, cpu, 0]
