"""The predictor and the world model agree on an idle server.

CS-UCB predicts with `estimate.round_view`; the world model runs requests with
`World.execute`. Both read the formulas of `perllm.costmodel`, so for a request alone on
an idle server at nominal bandwidth, with no speed noise, they must give the same
processing time and marginal energy. What the two compute in a different order, by
design, and therefore agree on to rounding only: the time, because the world splits the
RTT in halves around the FIFO upload, the admission and the download (it has absolute
times) while the predictor adds the transfer and the RTT at once; and the energy, which
inherits the transmission term's rounding. The decode time, computed by the same calls, is
equal exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

from perllm.costmodel import download_bits, marginal_energy, upload_bits
from perllm.estimate import round_view
from perllm.scenario import load_scenario
from perllm.world.sim import World


@pytest.mark.parametrize("scenario", ["paper-llama2-7b", "demo"])
def test_round_view_matches_world_execute_on_an_idle_server(scenario: str) -> None:
    sc = load_scenario(scenario).model_copy(update={"duration_s": 60.0})
    world = World(sc, seed=0)
    assert len(world.req) > 0
    t = world.table
    m = t.n_servers
    # Request 0 becomes each class's typical request in turn: arrival 0, no speed noise,
    # every link at its nominal bandwidth (level 0 of the policy's view).
    world._arrival[0], world._speed[0] = 0.0, 1.0
    world.perf = [1.0] * m
    world._bw = [t.link_mbps.tolist()]
    checked = 0
    for c, svc in enumerate(t.services):
        tr = svc.traffic
        l_in, l_out, att = (
            np.array([float(x)]) for x in (tr.prompt_tokens, tr.output_tokens, tr.payload_bytes)
        )
        view = round_view(
            t,
            sc.weights,
            np.array([c], np.intp),
            l_in,
            l_out,
            att,
            np.zeros(m),
            np.zeros(m),
            t.link_mbps,
        )
        world._cls[0], world._l_in[0], world._l_out[0] = c, float(l_in[0]), float(l_out[0])
        world.up[0] = float(upload_bits(l_in, att)[0])
        world.down[0] = float(download_bits(l_out)[0])
        for j in range(m):
            if not t.allowed[c, j]:
                continue
            d, out, e_tran = world.execute(0, j, 0, commit=False)
            assert out.conc == 1  # alone on the server, admitted on arrival
            assert out.start == pytest.approx(world.up[0] / (t.link_mbps[j] * 1e6) + t.rtt_s[j] / 2)
            assert view.decode[0, j, 0] == out.decode
            assert view.time[0, j, 0] == pytest.approx(d, rel=1e-9, abs=0)
            e_world = marginal_energy(sc.weights, e_tran, out.e_infer, out.e_idle_saved)
            assert view.energy[0, j, 0] == pytest.approx(e_world, rel=1e-9, abs=1e-12)
            checked += 1
    assert checked >= t.n_classes
