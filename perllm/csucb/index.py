"""The UCB index: score = R̂ + δ·sqrt(ln t / n(a)), with unplayed arms lifted above every
played one. The only place the rule is written; the vectorised path, the fast path and
the explanations all read it from here."""

from __future__ import annotations

import math

# Added to an unplayed arm's score: above any played arm's (|R̂| + bonus stays far below),
# so every arm is tried once, the cheapest unplayed first.
UNPLAYED_LIFT = 1e6


def log_t(total: int) -> float:
    """ln t of the bonus, t counting decisions from 2 (ln 1 = 0 would silence it)."""
    return math.log(total + 2.0)


def exploration(plays: list[float], lt: float, delta: float) -> tuple[list[float], list[float]]:
    """Per arm: the bonus δ·sqrt(ln t / n) (0 for an unplayed arm) and what the score adds,
    the bonus or, for an unplayed arm, `UNPLAYED_LIFT`. Python floats: a round has a few
    dozen arms, and math.sqrt rounds as numpy's does."""
    bonus = [delta * math.sqrt(lt / (p if p > 1.0 else 1.0)) if p > 0 else 0.0 for p in plays]
    lift = [UNPLAYED_LIFT if p == 0 else b for p, b in zip(plays, bonus, strict=True)]
    return bonus, lift
