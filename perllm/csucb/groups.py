"""Servers that differ only in their link: the unit a large fleet is decided in.

Two servers of one *kind* (same pool, so the same arm, coefficients, tiers, quality,
typical service times, RTT and energy per bit) with the same running and waiting
requests differ only in their measured bandwidth, which enters a prediction through the
transmission time alone. Energy does not depend on it, and the time, the violation
probability, the infeasibility and the link-hold rank (`estimate.link_hold_limit`: it
follows the classes a server may run) only get worse as it drops; so within such a *group*
the best-connected server is at least as good as every other at the same load level,
and with the tie-break (score, then time, then bandwidth, then server index) it wins.

A round is then scored per group (its best-connected server, the *representative*), and
the assignment keeps, per group, the servers in that order: the next request on the
group's level-a option goes to its first server at level a.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from perllm.costmodel import CostTable

F = NDArray[np.float64]
I = NDArray[np.intp]  # noqa: E741


def server_kinds(t: CostTable, pool_of: I) -> I:
    """[M] an id per server; equal ids: every input of a prediction but the bandwidth
    (and the load) is equal."""
    svc, pre = t.typical_service_s
    m = t.n_servers
    rows = np.column_stack(
        [
            pool_of.astype(float),
            t.round_coeffs.transpose(2, 0, 1).reshape(m, -1),
            t.allowed.T.astype(float),
            t.quality.T,
            svc,
            pre,
            t.rtt_s,
            t.e_bit,
        ]
    )
    _, kind = np.unique(rows, axis=0, return_inverse=True)
    return np.asarray(kind, dtype=np.intp).reshape(m)


@dataclass
class Groups:
    """A round's groups: `order` lists the servers group by group, each group's
    best-connected first (then lowest index); group g is order[start[g]:start[g+1]]."""

    order: I
    start: I  # [G + 1]
    group: I  # [M] the group of each server

    @property
    def reps(self) -> I:
        """Each group's representative: its best-connected server (then lowest index)."""
        return self.order[self.start[:-1]]

    @property
    def sizes(self) -> I:
        return np.diff(self.start)


def group_round(kind: I, running: F, waiting: F, bw_mbps: F) -> Groups:
    order = np.lexsort((-bw_mbps, waiting, running, kind))  # stable: ties by index
    ks, rs, ws = kind[order], running[order], waiting[order]
    new = np.ones(len(order), bool)
    new[1:] = (ks[1:] != ks[:-1]) | (rs[1:] != rs[:-1]) | (ws[1:] != ws[:-1])
    start = np.append(np.flatnonzero(new), len(order))
    group = np.empty(len(order), np.intp)
    group[order] = np.cumsum(new) - 1
    return Groups(order, start, group)
