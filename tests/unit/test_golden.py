"""Refactors of the cost model, CS-UCB and the world model keep every outcome bit for bit:
fixed-seed runs (decisions, times, energies) against digests written before the change."""

from __future__ import annotations

import json

import pytest
from golden_runs import GOLDEN, RUNS, digest, key


@pytest.mark.parametrize("run", RUNS, ids=key)
def test_fixed_seed_outcomes_unchanged(run: tuple[str, str, int, float]) -> None:
    expected = json.loads(GOLDEN.read_text())[key(run)]
    assert digest(*run) == expected
