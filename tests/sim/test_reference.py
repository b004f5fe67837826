"""Acceptance on the paper's reference scenarios (3 seeds, full length)."""

from __future__ import annotations

import pytest

from perllm.experiment import run_experiment
from perllm.scenario import REFERENCE_SCENARIOS, load_scenario

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report() -> dict:
    scs = [load_scenario(n) for n in REFERENCE_SCENARIOS]
    return run_experiment(scs, ["perllm", "clairvoyant-greedy"], [1, 2, 3]).report


@pytest.mark.parametrize("scenario", REFERENCE_SCENARIOS)
def test_perllm_meets_97_percent_for_every_model(report: dict, scenario: str) -> None:
    ours = report["scenarios"][scenario]["policies"]["perllm"]
    assert ours["seeds"] == 3
    for model, m in ours["per_model"].items():
        assert m["success_rate"] >= 0.97, (scenario, model, m)


@pytest.mark.parametrize("scenario", REFERENCE_SCENARIOS)
def test_energy_within_15_percent_of_clairvoyant_greedy_at_equal_or_better_success(
    report: dict, scenario: str
) -> None:
    pols = report["scenarios"][scenario]["policies"]
    ours, greedy = pols["perllm"], pols["clairvoyant-greedy"]
    assert ours["success_rate"] >= greedy["success_rate"]
    assert ours["energy_j_per_service"] <= 1.15 * greedy["energy_j_per_service"]
    # The regret against clairvoyant greedy is reported per scenario.
    assert "perllm" in report["scenarios"][scenario]["regret_vs_clairvoyant_greedy"]
