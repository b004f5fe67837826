"""The demo's live view (`perllm.demo.view`)."""

from __future__ import annotations

from rich.console import Console

from perllm.demo.observe import Sample
from perllm.demo.view import explanation_panel


def test_the_latest_decision_says_which_candidate_the_link_hold_rank_put_last() -> None:
    """A held candidate's score carries −10⁴ (docs/algorithm.md step 3): the panel says
    why, as it says "unplayed" for the lift, instead of an unexplained −10,000."""
    cand = {"node": "cloud", "tier": "cloud", "feasible": True, "mean": -0.4, "bonus": 0.3,
            "score": -1e4 - 0.1, "predicted_time_s": 5.0, "predicted_energy_j": 9.0}  # fmt: skip
    placement = {"chosen": "e1", "explanation": {"candidates": [cand]}}
    console = Console(width=200, record=True)
    for held in (False, True):
        cand["link_hold"] = held
        console.print(explanation_panel(Sample(t=0, status={"chat": {"placement": placement}})))
        assert ("yes (link hold)" in console.export_text()) is held
