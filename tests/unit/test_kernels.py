"""The compiled large-fleet loop's building blocks give the floats that the cost model
gives on Python floats and on numpy arrays (`perllm/csucb/kernels.py`); the whole loop
is pinned to the per-server path by `test_pooled.py`."""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np
import pytest
from scipy.special import ndtr

from perllm.contract import EnergyWeights
from perllm.costmodel import formulas
from perllm.csucb import kernels


@numba.njit
def _ndtr_compiled(x: Any) -> Any:
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = kernels._ndtr(x[i], 0)
    return out


def test_compiled_ndtr_is_scipys() -> None:
    x = np.concatenate(
        (np.linspace(-40, 40, 4001), np.random.default_rng(0).normal(0, 3, 2000), [np.inf])
    )
    assert np.array_equal(_ndtr_compiled(x), ndtr(x))
    assert np.isnan(_ndtr_compiled(np.array([np.nan]))[0])


def _draw(rng: np.random.Generator, n: int) -> list[float]:
    return rng.uniform(0.01, 500.0, n).tolist()


@pytest.mark.parametrize(
    ("name", "arity"),
    [
        ("context", 2),
        ("gpu_prefill", 3),
        ("gpu_decode", 6),
        ("cpu_prefill", 3),
        ("cpu_decode", 6),
        ("transmission_energy", 2),
        ("transmission_time", 3),
        ("inference_energy", 4),
        ("idle_energy_saved", 3),
    ],
)
def test_compiled_formulas_equal_the_scalar_and_numpy_forms(name: str, arity: int) -> None:
    python, compiled = getattr(formulas, name), getattr(kernels, f"_{name}")
    rng = np.random.default_rng(1)
    args = [_draw(rng, 300) for _ in range(arity)]
    on_arrays = python(*(np.array(a) for a in args))
    for i, row in enumerate(zip(*args, strict=True)):
        expected = python(*row)
        assert compiled(*row) == expected == on_arrays[i]


def test_compiled_branches_equal_the_scalar_and_numpy_forms() -> None:
    """busy_times (`where`) and marginal_energy (`maximum`, negative sums clipped)."""
    rng = np.random.default_rng(2)
    pre, dec, b = (np.array(_draw(rng, 200)) for _ in range(3))
    gpu = rng.random(200) < 0.5
    w = EnergyWeights(tran=1.0, infer=0.7, idle=1.3)
    kw = kernels.Weights(w.tran, w.infer, w.idle)
    bp, bd = formulas.busy_times(pre, dec, b, gpu)
    e = formulas.marginal_energy(w, pre, dec, b)
    assert (e == 0.0).any() and (e > 0.0).any()
    for i in range(200):
        args = (float(pre[i]), float(dec[i]), float(b[i]))
        assert kernels._busy_times(*args, bool(gpu[i])) == (bp[i], bd[i])
        assert kernels._busy_times(*args, bool(gpu[i])) == formulas.busy_times(*args, gpu[i])
        assert kernels._marginal_energy(kw, *args) == e[i] == formulas.marginal_energy(w, *args)


def test_compiled_queue_wait_equals_the_scalar_and_numpy_forms() -> None:
    """Both of queue_wait's branches (free slots or not; KV-bound or not, the slot wait
    above or below the prefill wait), elementwise on arrays as on floats."""
    rng = np.random.default_rng(3)
    n = 400
    occ1, cap, run = (
        rng.integers(1, 40, n) * 1.0,
        rng.integers(1, 30, n) * 1.0,
        rng.integers(0, 30, n) * 1.0,
    )
    svc, pre_w = rng.uniform(0.0, 2.0, n), rng.uniform(0.0, 20.0, n) * (rng.random(n) < 0.8)
    full = rng.random(n) < 0.5
    q = formulas.queue_wait(occ1, cap, svc, pre_w, full, run)
    slot = np.where(full, np.maximum(occ1 - run, 0.0), np.maximum(occ1 - cap, 0.0)) * svc
    assert (full & (slot > pre_w)).any() and (full & (slot < pre_w)).any()
    assert ((occ1 < cap) & ~full).any() and ((occ1 > cap) & ~full).any()
    for i in range(n):
        args = (float(occ1[i]), float(cap[i]), float(svc[i]), float(pre_w[i]))
        expected = formulas.queue_wait(*args, bool(full[i]), float(run[i]))
        assert kernels._queue_wait(*args, bool(full[i]), float(run[i])) == expected == q[i]
        assert expected == (max(slot[i], pre_w[i]) if full[i] else slot[i] + pre_w[i])


def test_uncacheable_kernels_are_compiled_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where numba finds nowhere writable to cache (a read-only container without
    NUMBA_CACHE_DIR), the loop is compiled without a cache instead of failing."""
    calls: list[dict[str, object]] = []
    real = numba.njit

    def njit(**kw: object) -> object:
        calls.append(kw)
        if kw.get("cache"):
            raise RuntimeError("cannot cache function 'f': no locator available for file 'x'")
        return real(**kw)

    monkeypatch.setattr(kernels.numba, "njit", njit)
    f = kernels._jit(formulas.cpu_prefill)
    assert f(2.0, 4.0, 8.0) == 1.0
    assert f(2.0, 4.0, 0.0) == math.inf  # numpy's error model, not ZeroDivisionError
    assert calls == [{"cache": True, "error_model": "numpy"}, {"error_model": "numpy"}]


def test_cached_loop_is_dropped_when_the_formulas_change(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """numba checks only `levels`' own file; the formulas compiled into it are checked by
    a digest beside its cache."""
    cache = kernels.levels._cache
    flushed: list[int] = []
    monkeypatch.setattr(cache, "_cache_path", str(tmp_path))
    monkeypatch.setattr(cache, "flush", lambda: flushed.append(1))
    kernels._drop_stale_cache()  # no marker yet: dropped, marker written
    assert flushed == [1]
    assert (tmp_path / "kernels.levels.deps").read_text() == kernels._deps_digest()
    kernels._drop_stale_cache()  # unchanged: kept
    assert flushed == [1]
    (tmp_path / "kernels.levels.deps").write_text("formulas of another day")
    kernels._drop_stale_cache()
    assert flushed == [1, 1]
    monkeypatch.setattr(kernels, "ROUND", (*kernels.ROUND, "new_coefficient"))
    kernels._drop_stale_cache()  # ROUND's order is compiled in too
    assert flushed == [1, 1, 1]


@numba.njit
def _min_compiled(a: float, b: float) -> Any:
    return formulas.minimum(a, b)  # kernels' overload


@numba.njit
def _max_compiled(a: float, b: float) -> Any:
    return formulas.maximum(a, b)


def test_compiled_minimum_and_maximum_keep_numpys_nan_rule() -> None:
    """They stand in for the numpy form (`view_of`'s): a NaN wins on either side."""
    nan = math.nan
    for a, b in ((1.0, 2.0), (2.0, 1.0), (nan, 1.0), (1.0, nan), (-0.0, 0.0), (math.inf, 3.0)):
        for compiled, ufunc in ((_min_compiled, np.minimum), (_max_compiled, np.maximum)):
            got, want = compiled(a, b), float(ufunc(a, b))
            assert got == want or (math.isnan(got) and math.isnan(want)), (a, b)
    # a NaN coefficient: the compiled decode is NaN as the numpy one (the round falls back)
    args = (100.0, 50.0, 2.0, 1.0, 2.0, nan)
    assert math.isnan(kernels._cpu_decode(*args))
    assert np.isnan(formulas.cpu_decode(*(np.array([x]) for x in args)))[0]


def test_warm_up_compiles_what_a_pooled_round_calls() -> None:
    """One specialisation: the warm-up's argument types are the rounds' (else every
    process would compile the loop twice)."""
    from tests.unit.test_pooled import _pair

    pooled, _ = _pair(1, shed=False)
    kernels.warm()
    m, rng = pooled.t.n_servers, np.random.default_rng(0)
    pooled.decide(
        rng.integers(0, 2, 30).astype(np.intp), rng.uniform(10, 3000, 30),
        rng.uniform(20, 600, 30), np.zeros(30), np.zeros(30), np.zeros(m), np.zeros(m),
        pooled.t.link_mbps.copy(),
    )  # fmt: skip
    assert len(kernels.levels.signatures) == 1
