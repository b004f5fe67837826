"""The scheduler's view of a round: cost-model predictions from telemetry.

Shared by CS-UCB, the greedy deadline-aware baseline and the extender. Within a round,
each placement adds load to its server, so predictions are computed for every load
level a round can reach ([N, M, K]: request, server, requests already added this round)
in one vectorised pass; the super-arm assignment then only indexes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from perllm.contract import EnergyWeights
from perllm.costmodel import CostTable, Gathered, predict

F = NDArray[np.float64]

MAX_LEVELS = 16  # within-round load levels modelled exactly; beyond, the last level is reused


@dataclass
class RoundView:
    """Predicted D and marginal energy per request × server × load level added this round."""

    time: F  # [N, M, K]
    decode: F  # [N, M, K] the part of `time` that grows with the output length
    energy: F  # [N, M, K]
    levels: int


def round_view(
    t: CostTable,
    w: EnergyWeights,
    cls: NDArray[np.intp],
    l_in: F,
    l_out: F,
    attach: F,
    running: F,
    waiting: F,
    bw_mbps: F,
) -> RoundView:
    n = len(cls)
    k = max(1, min(n, MAX_LEVELS))
    add = np.arange(k, dtype=float)  # requests this round placed on the server before this one
    occupied = (running + waiting)[None, :, None] + add[None, None, :]  # [1, M, K]
    g = Gathered(t, cls)
    cap = g.max_conc  # [N, M, 1]
    conc = np.minimum(occupied + 1, cap)  # batch size joined, [N, M, K]
    # Wait: each request ahead beyond the free slots holds a slot for about one full-batch
    # service time of the server's typical request, shared by `cap` slots; and on a GPU
    # each waiting request and each one placed earlier this round is prefilled first
    # (prefills are serialised).
    svc, gpu_pre = t.typical_service_s
    ahead = np.maximum(occupied + 1 - cap, 0.0)
    queue = ahead * (svc[None, :, None] / np.maximum(cap, 1.0)) + (
        (waiting[None, :, None] + add[None, None, :]) * gpu_pre[None, :, None]
    )
    p = predict(t, g, w, l_in, l_out, attach, conc, queue, bw_mbps)
    return RoundView(time=p.time, decode=p.decode_time, energy=p.energy, levels=k)


def energy_scale(t: CostTable, w: EnergyWeights) -> F:
    """Per class: the largest marginal energy of a typical request on any allowed idle
    server. Rewards divide energy by it, so they are comparable across classes."""
    cls = np.arange(t.n_classes)
    l_in = np.array([s.traffic.prompt_tokens for s in t.services])
    l_out = np.array([s.traffic.output_tokens for s in t.services])
    att = np.array([s.traffic.payload_bytes for s in t.services])
    m = t.n_servers
    v = round_view(t, w, cls, l_in, l_out, att, np.zeros(m), np.zeros(m), t.link_mbps)
    e = np.where(t.allowed, v.energy[:, :, 0], 0.0)
    return np.asarray(np.maximum(e.max(axis=1), 1e-3), dtype=float)
