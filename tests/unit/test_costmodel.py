"""The cost model reproduces the calibration tables (docs/calibration.md)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from perllm.contract import EnergyWeights, Precision
from perllm.costmodel import (
    build_cost_table,
    busy_times,
    cpu_times,
    download_bits,
    gpu_times,
    idle_energy_saved,
    inference_energy,
    marginal_energy,
    server_energy,
    upload_bits,
)
from perllm.profiles import default_catalogue, perf_profile
from perllm.scenario import load_scenario

CAT = default_catalogue()
EDGE = CAT.hardware["xeon-silver-4214r"]
A100 = CAT.hardware["a100-80gb-sxm"]


def edge(model: str, prec: Precision = Precision.Q4_K_M):
    return perf_profile(CAT.models[model], prec, EDGE)


def cloud(model: str):
    return perf_profile(CAT.models[model], Precision.FP16, A100)


# Per model, docs/calibration.md: edge (Q4_K_M) prefill and single-stream decode, t/s;
# cloud (A100, FP16) prefill rate and single-stream decode, t/s.
CALIBRATION = {
    "yi-6b": {"pp": 42, "tg_q4": 15.0, "r_pf": 14_200, "tg1": 99},
    "llama2-7b": {"pp": 38, "tg_q4": 13.5, "r_pf": 12_700, "tg1": 90},
    "llama3-8b": {"pp": 32, "tg_q4": 11.2, "r_pf": 10_700, "tg1": 76},
    "yi-9b": {"pp": 29, "tg_q4": 10.3, "r_pf": 9_700, "tg1": 70},
}


@pytest.mark.parametrize("model", CALIBRATION)
def test_edge_prefill_and_single_stream_decode(model: str) -> None:
    pp, tg_q4 = CALIBRATION[model]["pp"], CALIBRATION[model]["tg_q4"]
    p = edge(model)
    assert p.pp == pytest.approx(pp, rel=0.03)
    _, dec = cpu_times(0.0, 100.0, 1, p.weights_bytes, p.kv_bytes, p.bw, p.pp, p.kappa)
    assert 100.0 / dec == pytest.approx(tg_q4, rel=0.03)


def test_edge_context_slows_decode_llama2() -> None:
    p = edge("llama2-7b")
    # ctx = L_in + L_out/2 = 1024 tokens → 11.9 t/s (docs/calibration.md)
    _, dec = cpu_times(1024.0, 0.002, 1, p.weights_bytes, p.kv_bytes, p.bw, p.pp, p.kappa)
    assert 0.002 / dec == pytest.approx(11.9, rel=0.02)


@pytest.mark.parametrize(
    ("prec", "conc"),
    [
        (Precision.Q4_K_M, 3),
        (Precision.Q8_0, 5),
        (Precision.FP16, 9),
    ],
)
def test_edge_useful_concurrency(prec: Precision, conc: int) -> None:
    assert edge("yi-6b", prec).max_conc == conc


def test_edge_aggregate_decode_saturates_at_kappa_pp() -> None:
    p = edge("llama2-7b")
    _, dec = cpu_times(0.0, 100.0, 3, p.weights_bytes, p.kv_bytes, p.bw, p.pp, p.kappa)
    assert 3 * 100.0 / dec == pytest.approx(0.8 * 38.1, rel=0.02)  # ≈30 t/s


def test_short_qa_on_edge_matches_calibration_check() -> None:
    """100 in / 150 out on edge LLaMA2-7B Q4_K_M: 2.6 s + 11 s ≈ 14 s (docs/calibration.md)."""
    p = edge("llama2-7b")
    pre, dec = cpu_times(100.0, 150.0, 1, p.weights_bytes, p.kv_bytes, p.bw, p.pp, p.kappa)
    assert pre == pytest.approx(2.6, abs=0.1)
    assert pre + dec == pytest.approx(14.0, rel=0.05)


@pytest.mark.parametrize("model", CALIBRATION)
def test_cloud_prefill_rate_and_decode(model: str) -> None:
    r_pf, tg1 = CALIBRATION[model]["r_pf"], CALIBRATION[model]["tg1"]
    p = cloud(model)
    assert p.r_pf == pytest.approx(r_pf, rel=0.02)
    _, dec = gpu_times(0.0, 100.0, 1, p.kv_bytes, p.bw, p.r_pf, p.ttft0, p.step0, p.per_seq_flop_s)
    assert 100.0 / dec == pytest.approx(tg1, rel=0.03)


def test_cloud_ttft_at_1k_tokens() -> None:
    p = cloud("llama2-7b")
    pre, _ = gpu_times(1000.0, 0.0, 1, p.kv_bytes, p.bw, p.r_pf, p.ttft0, p.step0, p.per_seq_flop_s)
    assert pre == pytest.approx(0.094, abs=0.003)


@pytest.mark.parametrize(
    ("model", "kv_tokens"),
    [
        ("yi-6b", 950e3),
        ("llama2-7b", 116e3),
        ("llama3-8b", 444e3),
        ("yi-9b", 576e3),
    ],
)
def test_kv_budget_matches_calibration(model: str, kv_tokens: float) -> None:
    p = cloud(model)
    # docs/calibration.md uses 80 GiB; the catalogue's 85.9 GB is the same memory
    assert p.kv_budget_bytes / p.kv_bytes == pytest.approx(kv_tokens, rel=0.04)


def test_yi34b_fp16_does_not_fit_a_40gb_card() -> None:
    small = perf_profile(CAT.models["yi-34b"], Precision.FP16, CAT.hardware["a100-40gb-pcie"])
    assert not small.fits
    assert perf_profile(CAT.models["yi-34b"], Precision.FP16, A100).fits


def test_energy_attribution() -> None:
    # CPU: busy power shared by the b streams; GPU: prefill alone, decode shared.
    bp, bd = busy_times(2.0, 10.0, 3, False)
    assert inference_energy(bp, bd, 170.0, 170.0) == pytest.approx(170 * 12 / 3)
    bp, bd = busy_times(0.1, 2.0, 4, True)
    assert inference_energy(bp, bd, 400.0, 250.0) == pytest.approx(400 * 0.1 + 250 * 2.0 / 4)
    assert idle_energy_saved(bp, bd, 60.0) == pytest.approx(60 * (0.1 + 2.0 / 4))


@pytest.mark.parametrize("is_gpu", [False, True])
def test_scalar_and_vectorised_attribution_agree(is_gpu: bool) -> None:
    """The world (scalar) and the predictor (numpy) attribute energy with the same
    functions: equal floats, element by element."""
    rng = np.random.default_rng(3)
    pre, dec = rng.uniform(0.01, 5.0, 50), rng.uniform(0.1, 60.0, 50)
    b = rng.integers(1, 9, 50).astype(float)
    p_idle, p_busy, p_pre = 60.0, 250.0, 400.0 if is_gpu else 250.0
    bp, bd = busy_times(pre, dec, b, np.full(50, is_gpu))
    e_inf, e_idle = inference_energy(bp, bd, p_pre, p_busy), idle_energy_saved(bp, bd, p_idle)
    for k in range(50):
        sp, sd = busy_times(float(pre[k]), float(dec[k]), float(b[k]), is_gpu)
        assert (sp, sd) == (bp[k], bd[k])
        assert inference_energy(sp, sd, p_pre, p_busy) == e_inf[k]
        assert idle_energy_saved(sp, sd, p_idle) == e_idle[k]


def test_server_energy() -> None:
    # GPU: busy seconds at busy power, the prefill part at prefill power; idle the rest.
    assert server_energy(100.0, 30.0, 5.0, True, 60.0, 250.0, 400.0) == pytest.approx(
        (250 * 30 + 150 * 5, 60 * 70)
    )
    assert server_energy(100.0, 30.0, 5.0, False, 60.0, 170.0, 170.0) == (170 * 30, 60 * 70)
    assert server_energy(10.0, 30.0, 0.0, False, 60.0, 170.0, 170.0)[1] == 0.0


def test_marginal_energy_never_negative() -> None:
    w = EnergyWeights(tran=1.0, infer=1.0, idle=1.0)
    assert marginal_energy(w, 1.0, 2.0, 5.0) == 0.0
    assert marginal_energy(w, 1.0, 5.0, 2.0) == 4.0
    assert list(marginal_energy(w, np.array([1.0, 1.0]), np.array([2.0, 5.0]), 2.0)) == [1.0, 4.0]


def test_wire_bits() -> None:
    assert upload_bits(1000.0, 0.0) == pytest.approx(8 * 1000 * 4 * 1.2)
    assert upload_bits(0.0, 1e6) == pytest.approx(8e6)
    assert download_bits(10.0) == pytest.approx(8 * 10 * 4 * 1.2)


def test_every_catalogue_entry_cites_a_source() -> None:
    for name, m in CAT.models.items():
        assert m.source, name
    for name, h in CAT.hardware.items():
        assert h.source, name


def test_subset_derived_tables_are_the_parents_columns() -> None:
    """`subset` slices the parent's per-server derived tables instead of recomputing them;
    recomputed on the subset they are the same floats."""
    sc = load_scenario("large-fleet")
    t = build_cost_table(sc.services(), sc.expanded_servers(), sc.catalogue)
    rng = np.random.default_rng(0)
    for _ in range(10):
        size = int(rng.integers(1, 200))
        cols = np.sort(rng.choice(t.n_servers, size=size, replace=False)).astype(np.intp)
        sub = t.subset(cols)
        fresh = replace(sub)  # a new instance: its cached properties are computed anew
        assert np.array_equal(sub.round_coeffs, fresh.round_coeffs)
        for a, b in zip(sub.typical_service_s, fresh.typical_service_s, strict=True):
            assert np.array_equal(a, b)
