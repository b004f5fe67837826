"""Candidate pruning on large fleets (`csucb.pools`) and `CostTable.subset`: the fast
paths return exactly what the reference rule and `dataclasses.replace` would."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from numpy.typing import NDArray

from perllm.costmodel import CostTable
from perllm.csucb.pools import prune_candidates, reference_candidates
from perllm.scenario import load_scenario
from perllm.world.sim import World

Fleet = tuple[NDArray[np.intp], NDArray[np.float64], NDArray[np.float64]]


def _fleet(rng: np.random.Generator, m: int, pools: int, max_load: int, ties: bool) -> Fleet:
    pool_of = rng.integers(0, pools, m).astype(np.intp)
    # Mostly idle servers (one large group per pool), a tail of loaded ones.
    load = np.where(rng.random(m) < 0.8, 0, rng.integers(0, max_load + 1, m)).astype(float)
    bw = rng.choice([100.0, 300.0], m) if ties else rng.uniform(50, 350, m)
    return pool_of, load, bw


@pytest.mark.parametrize("seed", range(40))
def test_prune_candidates_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, 1500))
    pool_of, load, bw = _fleet(rng, m, int(rng.integers(1, 5)), 30, ties=seed % 2 == 0)
    for n in (0, 1, 4, 16, 160, 2000):
        got = prune_candidates(n, pool_of, load, bw)
        assert got.dtype == np.intp
        np.testing.assert_array_equal(got, reference_candidates(n, pool_of, load, bw))


def test_prune_candidates_odd_loads_take_the_reference_path() -> None:
    rng = np.random.default_rng(7)
    pool_of, load, bw = _fleet(rng, 300, 2, 5, ties=True)
    bw[:5] = np.nan
    for odd in (load + 0.5, load - 1.0, load + 1e6):
        for n in (0, 3, 50):
            np.testing.assert_array_equal(
                prune_candidates(n, pool_of, odd, bw), reference_candidates(n, pool_of, odd, bw)
            )
    empty = np.zeros(0)
    assert len(prune_candidates(3, np.zeros(0, np.intp), empty, empty)) == 0


def test_pruning_keeps_at_most_n_plus_one_per_group() -> None:
    pool_of = np.repeat(np.arange(3, dtype=np.intp), 1000)
    load, bw = np.zeros(3000), np.linspace(1, 2, 3000)
    got = prune_candidates(10, pool_of, load, bw)
    assert len(got) == 33  # grows with pools (and load levels), not servers
    best = {j for p in range(3) for j in range(p * 1000 + 989, p * 1000 + 1000)}
    assert set(got.tolist()) == best


def _replace_subset(t: CostTable, cols: NDArray[np.intp]) -> CostTable:
    arrays = {
        f.name: getattr(t, f.name)
        for f in dataclasses.fields(t)
        if isinstance(getattr(t, f.name), np.ndarray)
    }
    idx = cols.tolist()
    return dataclasses.replace(
        t,
        server_names=tuple(t.server_names[j] for j in idx),
        tiers=tuple(t.tiers[j] for j in idx),
        pools=tuple(t.pools[j] for j in idx),
        **{k: (a[:, cols] if a.ndim == 2 else a[cols]) for k, a in arrays.items()},
    )


def test_subset_equals_replace_and_derived_tables() -> None:
    sc = load_scenario("large-fleet").model_copy(update={"duration_s": 2.0})
    t = World(sc, 1).table
    cols = np.sort(np.random.default_rng(3).choice(t.n_servers, 97, replace=False))
    sub, ref = t.subset(cols), _replace_subset(t, cols)
    for f in dataclasses.fields(t):
        a, b = getattr(sub, f.name), getattr(ref, f.name)
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)
        else:
            assert a == b, f.name
    np.testing.assert_array_equal(sub.round_coeffs, ref.round_coeffs)
    for x, y in zip(sub.typical_service_s, ref.typical_service_s, strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(sub.stacked, ref.stacked)
    again = sub.subset(np.array([0, 5, 96], np.intp))  # a subset of a subset
    np.testing.assert_array_equal(again.round_coeffs, t.round_coeffs[:, :, cols[[0, 5, 96]]])
    assert again.server_names == tuple(t.server_names[j] for j in cols[[0, 5, 96]])
