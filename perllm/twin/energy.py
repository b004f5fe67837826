"""Attribution of a fleet's metered energy to the twin's services.

The services' totals add up to the fleet's energy (the simulator's transmission +
inference + idle): a server's energy since its last completions is carried and shared
among the requests completing on it, in proportion to their attributed inference energy;
when the server has nothing in flight, its carry (idle energy) joins a fleet-wide pool
shared equally among all requests completing in the fleet.
"""

from __future__ import annotations

from perllm.twin.fleet import Fleet
from perllm.twin.records import Counts, Done, SvcKey


def attribute(
    done: list[Done],
    carry: list[float],
    pool: float,
    fleet: Fleet,
    stats: dict[SvcKey, Counts],
    t: float,
) -> float:
    """Credit `stats` with the energy of the requests `done` since the last call at time t.

    `carry` (per server) is updated in place; returns the fleet-wide pool left over."""
    by_server: dict[int, list[Done]] = {}
    for d in done:
        by_server.setdefault(d.server, []).append(d)
    for j, e in enumerate(carry):
        group = by_server.get(j)
        if group:
            total = sum(d.e_infer for d in group)
            for d in group:
                share = d.e_infer / total if total > 0 else 1.0 / len(group)
                stats[d.service].energy_j += e * share
            carry[j] = 0.0
        elif fleet.states[j].busy_until <= t:
            pool += e
            carry[j] = 0.0
    if done:
        share = pool / len(done)
        for d in done:
            stats[d.service].energy_j += share
        pool = 0.0
    return pool
