"""The paper's baselines: FineInfer (DCB), RewardlessGuidance (active inference), AGOD (D2SAC)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from perllm import policies
from perllm.policies.base import Batch, Observation
from perllm.policies.fineinfer import FineInfer
from perllm.policies.rewardless import (
    Ensemble,
    RewardlessGuidance,
    RGConfig,
    cem,
    guidance,
    info_gain,
)
from perllm.scenario import Scenario, load_scenario, parse_scenario
from perllm.world.result import RunResult
from perllm.world.server import Outcome
from perllm.world.sim import World, make_env, simulate


def short(duration: float = 120.0, rate: float | None = None) -> Scenario:
    data = load_scenario("paper-llama2-7b").model_dump(mode="json")
    data["duration_s"] = duration
    if rate is not None:
        data["workload"]["arrivals"]["rate_rps"] = rate
    return parse_scenario(data)


def check_valid(r: RunResult, sc: Scenario) -> None:
    t = World(sc, r.seed).table
    assert (r.server >= 0).all() and (r.server < t.n_servers).all()
    assert t.allowed[r.requests.cls, r.server].all()
    # A server meeting the quality floor exists for every request here: it must be used.
    assert r.quality_ok.all()


@pytest.mark.parametrize("name", ["fineinfer", "rewardless-guidance"])
def test_numpy_baselines_place_on_allowed_servers(name: str) -> None:
    sc = short()
    check_valid(simulate(sc, policies.make(name), seed=2), sc)


# -- FineInfer ----------------------------------------------------------------------------------


class Recording(FineInfer):
    """FineInfer that records, per round, whether it saw the site idle with no group pending."""

    def __init__(self) -> None:
        super().__init__()
        self.rounds: list[tuple[bool, np.ndarray, np.ndarray]] = []

    def assign(self, batch: Batch, obs: Observation) -> np.ndarray:
        j = int(self.sites[0])  # the paper testbed's one cloud server
        opens = obs.now >= self.release[j] and obs.running[j] == 0 and obs.waiting[j] == 0
        out = super().assign(batch, obs)
        self.rounds.append((bool(opens), batch.idx.copy(), batch.arrival.copy()))
        return out


def record_starts(monkeypatch: pytest.MonkeyPatch) -> dict[int, float]:
    """Spy on World.execute: the start time of every committed request, filled as it runs."""
    start: dict[int, float] = {}
    execute = World.execute

    def spy(
        self: World, i: int, j: int, slot: int, commit: bool = True, hold: float = 0.0
    ) -> tuple[float, Outcome, float]:
        d, out, et = execute(self, i, j, slot, commit, hold)
        if commit:
            start[i] = out.start
        return d, out, et

    monkeypatch.setattr(World, "execute", spy)
    return start


def run_recorded(
    sc: Scenario, monkeypatch: pytest.MonkeyPatch, seed: int = 1
) -> tuple[RunResult, Recording, dict[int, float]]:
    start = record_starts(monkeypatch)
    pol = Recording()
    return simulate(sc, pol, seed=seed), pol, start


def test_fineinfer_defers_on_an_idle_site(monkeypatch: pytest.MonkeyPatch) -> None:
    sc = short(300.0, rate=0.2)  # sparse: the cloud is often idle
    r, pol, start = run_recorded(sc, monkeypatch)
    opened = [(idx, arr) for opens, idx, arr in pol.rounds if opens]
    assert len(opened) > 10
    for idx, arr in opened:
        # Nothing of a group starts before its oldest request has waited the delay bound.
        assert min(start[int(i)] for i in idx) >= arr.min() + 1.0 - 1e-9
    first = 0
    assert start[first] >= r.requests.arrival[first] + 1.0
    # Deferral shows in D: at least the delay bound minus how late the request came.
    assert (r.time[opened[0][0]] >= 1.0 - (opened[0][1] - opened[0][1].min())).all()


def test_fineinfer_joins_a_running_batch_without_deferral(monkeypatch: pytest.MonkeyPatch) -> None:
    sc = short(120.0)  # busy: the cloud is rarely idle
    r, pol, start = run_recorded(sc, monkeypatch)
    cloud = r.server_names.index("cloud")
    assert (r.server == cloud).all()  # every class may run in the cloud here
    joined = [idx for opens, idx, _ in pol.rounds if not opens]
    assert joined
    waits = np.array([start[int(i)] - r.requests.arrival[int(i)] for idx in joined for i in idx])
    assert np.median(waits) < 0.5  # upload + RTT/2, no hold


def test_fineinfer_site_and_fallback() -> None:
    sc = short()
    t = World(sc, 1).table
    pol = FineInfer(site="edge-2")
    r = simulate(sc, pol, seed=1)
    edge2 = t.server_names.index("edge-2")
    floor = r.requests.min_quality > t.quality[r.requests.cls, edge2] + 1e-9
    assert (r.server[~floor] == edge2).all()
    assert (r.server[floor] != edge2).all()  # quality floor the site misses: fallback
    with pytest.raises(ValueError):
        simulate(sc, FineInfer(site="mars"), seed=1)


def test_fineinfer_without_its_site_tier_falls_back() -> None:
    """An edge-only fleet has no cloud tier: the default (cloud) site is empty, so every
    request takes the fallback (least-loaded, no deferral) instead of the run failing."""
    data = short(30.0).model_dump(mode="json")
    data["servers"] = [s for s in data["servers"] if s["tier"] == "edge"]
    sc = parse_scenario(data)
    r = simulate(sc, FineInfer(), seed=1)
    assert len(r.server) > 0
    assert (np.array(r.tiers)[r.server] == "edge").all()
    assert len(set(r.server.tolist())) > 1  # spread over the edge, not one server


def gpus(n: int = 3, rate: float = 12.0, duration: float = 120.0) -> Scenario:
    """The paper testbed with `n` cloud A100s and the load scaled to match."""
    data = load_scenario("paper-llama2-7b").model_dump(mode="json")
    data["duration_s"] = duration
    data["servers"][1]["count"] = n
    data["workload"]["arrivals"]["rate_rps"] = rate
    return parse_scenario(data)


def test_fineinfer_spreads_over_every_gpu_of_its_tier() -> None:
    sc = gpus(3)
    r = simulate(sc, FineInfer(), seed=1)
    check_valid(r, sc)
    cloud = [j for j, t in enumerate(r.tiers) if t == "cloud"]
    assert len(cloud) == 3
    counts = np.bincount(r.server, minlength=len(r.tiers))
    assert (counts[cloud] > 0.2 * len(r.server)).all()  # least loaded first: even spread
    assert counts[cloud].sum() == len(r.server)
    assert r.met.mean() > 0.95  # one GPU alone collapses at 12 req/s
    one = simulate(sc, FineInfer(site="cloud-2"), seed=1)  # a server name: that engine only
    assert (one.server == r.server_names.index("cloud-2")).all()
    assert one.met.mean() < 0.5


def test_fineinfer_defers_per_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """At a light load every idle GPU opens its own deferred group."""
    sc = gpus(3, rate=0.5, duration=300.0)
    start = record_starts(monkeypatch)
    r = simulate(sc, FineInfer(), seed=1)
    cloud = [j for j, t in enumerate(r.tiers) if t == "cloud"]
    held = np.array([start[i] - r.requests.arrival[i] >= 1.0 - 1e-9 for i in range(len(r.server))])
    for j in cloud:  # every GPU defers some of its requests by the delay bound
        assert held[r.server == j].sum() >= 5


# -- RewardlessGuidance ---------------------------------------------------------------------------


def test_guidance_is_tc_times_inverse_latency_plus_accuracy() -> None:
    lat = np.log(np.array([[0.5, 4.0, 2.0]], np.float32))  # one member, three actions
    rg = guidance(lat, np.array([3.0, 3.0, 3.0]), np.array([0.2, 0.9, 0.1]))
    assert rg == pytest.approx([1 / 0.5 + 0.2, 0.0, 1 / 2.0 + 0.1])  # 4 s misses t_max


def test_cem_returns_the_best_joint_plan() -> None:
    rng = np.random.default_rng(0)
    # Two tasks, three servers, two load levels: server 2 is best alone but bad when shared.
    score = np.array([[[0.1, 0.1], [0.5, 0.5], [2.0, 0.0]], [[0.1, 0.1], [0.5, 0.5], [2.0, 0.0]]])
    support = np.ones((2, 3), bool)
    plan = cem(score, support, RGConfig(), rng)
    assert sorted(plan.tolist()) == [1, 2]
    support[:, 2] = False  # never outside the support
    assert 2 not in cem(score, support, RGConfig(), rng).tolist()


def stub_policy(
    monkeypatch: pytest.MonkeyPatch, latency: np.ndarray, **cfg: Any
) -> tuple[RewardlessGuidance, Batch, Observation]:
    sc = short()
    world = World(sc, 1)
    pol = RewardlessGuidance(RGConfig(expl_scale=0.0, **cfg))
    pol.reset(make_env(world, 1))
    m = world.table.n_servers

    def predict(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        server = np.argmax(x[:, :m], axis=1)
        mean = np.log(latency[server]).astype(np.float32)[None].repeat(10, 0)
        return mean, np.full_like(mean, 1e-6)

    monkeypatch.setattr(pol.model, "predict", predict)
    pol.fitted = True
    z = np.zeros(m)
    batch = Batch(
        idx=np.array([0]),
        arrival=np.array([0.1]),
        cls=np.array([0]),
        l_in=np.array([100.0]),
        attach=np.array([0.0]),
        min_quality=np.array([0.0]),
        expected_out=np.array([100.0]),
        expected_deadline=np.array([3.0]),
    )
    obs = Observation(
        now=0.0, slot=0, running=z, waiting=z, kv_used=z, bw_mbps=world.table.link_mbps
    )
    return pol, batch, obs


def test_rewardless_prefers_the_higher_guidance(monkeypatch: pytest.MonkeyPatch) -> None:
    # Edge servers predicted at 5 s (miss the 3 s deadline: tc = 0), the cloud at 1 s.
    lat = np.array([5.0, 5.0, 5.0, 5.0, 5.0, 1.0])
    pol, batch, obs = stub_policy(monkeypatch, lat)
    assert pol.assign(batch, obs).tolist() == [5]
    # All meet the deadline at the same latency: accuracy decides. With the paper's
    # per-site values the edge (0.1892) beats the cloud (0.1159).
    pol, batch, obs = stub_policy(monkeypatch, np.full(6, 1.0), accuracy="paper")
    assert pol.assign(batch, obs).tolist()[0] != 5
    # A faster edge server wins on 1/L.
    lat = np.array([2.0, 0.4, 2.0, 2.0, 2.0, 1.0])
    pol, batch, obs = stub_policy(monkeypatch, lat)
    assert pol.assign(batch, obs).tolist() == [1]


def test_information_gain_grows_with_disagreement() -> None:
    rng = np.random.default_rng(0)
    var = np.full((10, 200), 0.01, np.float32)
    agree = (rng.standard_normal((10, 200)) * 0.1).astype(np.float32)
    spread = agree + np.linspace(-3, 3, 10, dtype=np.float32)[:, None]
    assert info_gain(var, spread).mean() > info_gain(var, agree).mean() + 1.0


def test_ensemble_fit_reduces_loss_with_censoring() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 4)).astype(np.float32)
    y = (x @ np.array([1.0, -0.5, 0.2, 0.0]) + 0.1 * rng.standard_normal(600)).astype(np.float32)
    cens = np.zeros(600, bool)
    cens[::5] = True  # some rows only bound the target from below
    model = Ensemble(replace(RGConfig(), fit_steps=1), 4, rng)
    model.fit(x, y, cens, rng)
    before = model.loss(x, y, cens)
    model = Ensemble(replace(RGConfig(), fit_steps=400), 4, np.random.default_rng(0))
    model.fit(x, y, cens, rng)
    assert model.loss(x, y, cens) < before - 5.0


# -- AGOD -------------------------------------------------------------------------------------

S_DIM = 3 * 6 + 5 + 5  # AGOD's state on the reference testbed: 6 servers, 5 classes


def test_agod_policy_is_a_distribution_over_unmasked_actions() -> None:
    jax = pytest.importorskip("jax")
    from perllm.policies.agod import AGODConfig, build, init_state

    cfg = AGODConfig()  # the shapes the policy uses, so compiled functions are shared
    fns, st = build(cfg), init_state(cfg, S_DIM, 6, 0)
    rng = np.random.default_rng(0)
    s = rng.random((40, 1, S_DIM)).astype(np.float32)
    mask = rng.random((40, 1, 6)) < 0.5
    mask[:, :, 0] = True
    p = np.stack(
        [np.asarray(fns.act(st.actor, s[k], mask[k], jax.random.PRNGKey(0), k)) for k in range(40)]
    )
    assert (p >= 0).all()
    assert np.allclose(p.sum(axis=-1), 1.0, atol=1e-5)
    assert (p[~mask] == 0).all()


def test_agod_training_reduces_critic_loss() -> None:
    jax = pytest.importorskip("jax")
    from perllm.policies.agod import AGODConfig, build, init_state

    cfg = AGODConfig()
    fns, st = build(cfg), init_state(cfg, S_DIM, 6, 0)
    n = cfg.batch
    rng = np.random.default_rng(1)
    s = rng.random((n, S_DIM)).astype(np.float32)
    a = rng.integers(0, 6, n).astype(np.int32)
    r = np.where(a == 2, 1.0, -2.0).astype(np.float32)
    m = np.ones((n, 6), bool)
    key = jax.random.PRNGKey(0)
    losses = []
    for step in range(150):
        st, lc, _ = fns.update(st, s, a, r, s, m, m, key, step)
        losses.append(float(lc))
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])


def test_agod_never_chooses_masked_servers() -> None:
    pytest.importorskip("jax")
    from perllm.policies.agod import AGOD

    sc = short(120.0)
    pol = AGOD(pretrain_episodes=0)
    pol.explore = True  # sample from π, not argmax: masked actions must still never appear
    r = simulate(sc, pol, seed=3)
    check_valid(r, sc)
    assert pol.updates > 0  # online training ran
    t = World(sc, 3).table
    edge_fails = r.requests.min_quality > t.quality[r.requests.cls, 0] + 1e-9
    assert edge_fails.any()
    assert (np.array(t.tiers)[r.server[edge_fails]] == "cloud").all()


def test_agod_runs_with_a_seed_beyond_64_bits() -> None:
    """The world takes any non-negative seed; JAX's PRNGKey only a 64-bit one."""
    pytest.importorskip("jax")
    from perllm.policies.agod import AGOD

    sc = short(10.0)
    for seed in (0, 2**63 - 1, 2**64 + 3):
        check_valid(simulate(sc, AGOD(pretrain_episodes=1), seed=seed), sc)


def test_agod_pretraining_uses_other_seeds(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("jax")
    from perllm.policies import agod

    seeds: list[int] = []
    monkeypatch.setattr(
        "perllm.world.sim.simulate", lambda sc, pol, seed, on_slot=None: seeds.append(seed)
    )
    pol = agod.AGOD(pretrain_episodes=2)
    pol.prepare(short(), 7)
    assert seeds == [7 + agod.TRAIN_SEED_OFFSET, 8 + agod.TRAIN_SEED_OFFSET]
    monkeypatch.setenv(agod.ENV_PRETRAIN, "0")
    assert agod.AGOD().cfg.pretrain_episodes == 0


def test_rewardless_scores_large_rounds_in_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    """A round too large to score at once (a big fleet) is scored request group by group,
    with the same rollout noise: the scores do not depend on the grouping."""
    from perllm.policies import rewardless

    sc = gpus(3)
    world = World(sc, 1)
    pol = RewardlessGuidance()
    pol.reset(make_env(world, 1))
    n, m = 7, world.table.n_servers
    rng = np.random.default_rng(3)
    batch = Batch(
        idx=np.arange(n),
        arrival=np.sort(rng.uniform(0, 1, n)),
        cls=rng.integers(0, 5, n),
        l_in=rng.uniform(10, 2000, n),
        attach=np.zeros(n),
        min_quality=np.zeros(n),
        expected_out=rng.uniform(10, 300, n),
        expected_deadline=rng.uniform(1, 10, n),
    )
    z = np.zeros(m)
    obs = Observation(
        now=1.0, slot=1, running=z + 2, waiting=z, kv_used=z, bw_mbps=world.table.link_mbps
    )
    support = pol.quality_ok(batch)
    levels = n
    one = pol._chunks(n, levels)
    assert len(one) == 1
    monkeypatch.setattr(rewardless, "SCORE_ROWS", 2 * m * levels)
    groups = pol._chunks(n, levels)
    assert [g.stop - g.start for g in groups] == [2, 2, 2, 1]
    pol.rng = np.random.default_rng(5)
    a = pol.score_round(batch, obs, levels, support, one)
    pol.rng = np.random.default_rng(5)
    b = pol.score_round(batch, obs, levels, support, groups)
    assert a.shape == (n, m, levels)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # and a whole run with groups places as it must
    sc_short = gpus(3, duration=30.0)
    check_valid(simulate(sc_short, RewardlessGuidance(), seed=2), sc_short)
