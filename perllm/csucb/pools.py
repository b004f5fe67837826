"""Candidate pruning on large fleets: the best-connected servers of each (pool, load) group.

Servers of one pool at the same load differ only in their link, and the one with more
bandwidth is at least as fast at the same energy; a round of N requests uses at most N
servers, so the N + 1 best-connected servers of every group lose no decision (`CSUCB.
candidates`). The rule is fixed by `reference_candidates` (a lexsort over all servers);
`prune_candidates` returns the same indices without sorting the fleet: loads are counts,
so a group is one integer key, groups no larger than N + 1 are kept whole (one bincount),
and only the oversized ones (typically a pool's idle servers) are ordered by bandwidth.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

F = NDArray[np.float64]
I = NDArray[np.intp]  # noqa: E741

# Loads above this (or not whole numbers) take the reference path: the group key would
# need a table of n_pools × (max load + 1) counts.
MAX_LOAD_KEY = 1 << 16


def reference_candidates(n_requests: int, pool_of: I, load: F, bw_mbps: F) -> I:
    """Sorted indices of the servers ranked ≤ `n_requests` within their (pool, load) group
    by bandwidth, descending (ties: lower index first)."""
    order = np.lexsort((-bw_mbps, load, pool_of))
    group = np.stack([pool_of[order], load[order]])
    new = np.ones(len(order), bool)
    new[1:] = (group[:, 1:] != group[:, :-1]).any(axis=0)
    start = np.maximum.accumulate(np.where(new, np.arange(len(order)), 0))
    rank = np.arange(len(order)) - start
    return np.sort(order[rank <= n_requests])


def prune_candidates(n_requests: int, pool_of: I, load: F, bw_mbps: F) -> I:
    """`reference_candidates` with one bincount over the fleet and a stable sort of the
    oversized groups only: identical indices."""
    m, keep_n = len(load), n_requests + 1
    if m == 0 or keep_n < 1:
        return reference_candidates(n_requests, pool_of, load, bw_mbps)
    whole = load.astype(np.intp)
    top = int(whole.max())
    if not (np.array_equal(whole, load) and whole.min() >= 0 and top < MAX_LOAD_KEY):
        return reference_candidates(n_requests, pool_of, load, bw_mbps)
    key = pool_of * (top + 1) + whole
    size = np.bincount(key)
    big = size > keep_n
    if not big.any():
        return np.arange(m, dtype=np.intp)
    keep = ~big[key]
    for g in np.flatnonzero(big).tolist():
        members = np.flatnonzero(key == g)  # ascending: lexsort's order among equal bw
        best = np.argsort(-bw_mbps[members], kind="stable")[:keep_n]
        keep[members[best]] = True
    return np.flatnonzero(keep)
