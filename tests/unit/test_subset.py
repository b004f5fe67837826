"""`CostTable.subset` (candidate pruning on large fleets): every field and derived table
equal to a subset built with `dataclasses.replace`."""

from __future__ import annotations

import dataclasses

import numpy as np
from numpy.typing import NDArray

from perllm.costmodel import CostTable
from perllm.scenario import load_scenario
from perllm.world.sim import World


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
