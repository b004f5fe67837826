"""CS-UCB one request at a time (the router): `CSUCB.decide` and `CSUCB.update` for a
round of one, on Python floats where the bandit would use them (`fast.play`,
`CSUCB._update_small`), without numpy's arrays of one, which cost more than the decision.
Same decisions and learned state as the batch calls (tests/unit/test_router_shared.py)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from perllm.csucb.config import DEADLINE_CAP_ERROR
from perllm.csucb.fast import Lists, play

if TYPE_CHECKING:
    from perllm.csucb.bandit import CSUCB


class One(NamedTuple):
    """One request's decision (`Decision`'s fields for a round of one, as floats)."""

    choice: int  # `SHED` where shed
    feasible: bool
    predicted_time: float
    predicted_energy: float
    predicted_fixed: float
    predicted_per_token: float
    shed: bool


def decide_one(b: CSUCB, req: Lists, cap: float = math.inf) -> One:
    """`b.decide` of a round of one request (`req`: its arguments as lists; `cap`: its
    deadline_cap, inf for none)."""
    if not cap > 0:
        raise ValueError(DEADLINE_CAP_ERROR)
    caps = None if cap == math.inf else [cap]
    small = b.t.n_servers <= b.cfg.max_candidates  # `decide`'s small-round path
    if small:
        b._current().rounds += 1
        got = play(b, req, caps)
        if got is not None:
            r, (choice, lvl_of, ok, shed, _) = got
            e = r.picked(0, choice[0], lvl_of[0], shed[0])
            assert e.energy is not None
            return One(choice[0], ok[0], e.time, e.energy, e.fixed, e.per_token, shed[0])
    f = [np.array(x, float) for x in req[1:]]
    args = (np.array(req[0], np.intp), f[0], f[1], f[2], f[3], f[4], f[5], f[6])
    cap_a = None if caps is None else np.array(caps)
    d = b._decide_arrays(args, None, False, cap_a) if small else b.decide(*args, deadline_cap=cap_a)
    return One(
        int(d.choice[0]), bool(d.feasible[0]), float(d.predicted_time[0]),
        float(d.predicted_energy[0]), float(d.predicted_fixed[0]),
        float(d.predicted_per_token[0]), bool(d.shed[0]),
    )  # fmt: skip


def update_one(
    b: CSUCB,
    cls: int,
    server: int,
    time: float,
    predicted_time: float,
    energy: float,
    deadline: float,
    l_out: float,
) -> None:
    """`b.update` with one observation."""
    b._current()
    obs = ([cls], [server], [time], [predicted_time], [energy], [deadline], [l_out])
    if not b._update_small(*obs):  # (a non-finite output length: the arrays' path)
        f = [np.array(x, float) for x in obs[2:]]
        b.update(np.array(obs[0], np.intp), np.array(obs[1], np.intp), *f)
