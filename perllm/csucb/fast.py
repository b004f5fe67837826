"""`CSUCB.decide` for a round of a few requests on a small fleet, on Python floats.

Most rounds hold 1-4 requests, and the vectorised path then pays numpy's per-call cost
about a hundred times for a few dozen numbers. Here every formula of
`estimate.round_view` and of the score is evaluated with the same operations in the same
order (so the same floats), and only where the assignment looks: each request's servers
at the load levels present when it is placed. What is per request or per pair calls the
cost model's functions (`perllm.costmodel.formulas`); what is per load level (the queue,
the decode step's batch term, the CPU's compute share) is written out with the operations
of `queue_wait`, `gpu_decode` and `cpu_decode`, the part that does not depend on the level
computed once per pair: a call costs ~0.1 µs and `predict` runs ~7 times a request
(`test_small_round_fast_path_decides_exactly_as_the_vectorised_path` pins both paths
to the same floats). The normal CDF goes through the same scipy ufunc as the vectorised
path. `FastRound.run` returns None, having changed nothing, where that equivalence is not
guaranteed (a NaN).

`play` runs a round given as Python lists and records it (the one-request path,
`single`, runs it too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray
from scipy.special import ndtr

from perllm.contract import EnergyWeights
from perllm.costmodel import (
    busy_times,
    context,
    download_bits,
    gpu_prefill,
    idle_energy_saved,
    inference_energy,
    marginal_energy,
    transmission_energy,
    transmission_time,
    upload_bits,
)
from perllm.csucb.assign import SHED, hopeless, least_late
from perllm.csucb.decision import Decision
from perllm.csucb.index import exploration, log_t
from perllm.csucb.tables import Coef, FastTables
from perllm.estimate import hold_rank_one

if TYPE_CHECKING:
    from perllm.csucb.bandit import CSUCB

F = NDArray[np.float64]
I = NDArray[np.intp]  # noqa: E741
# A round as Python lists: class, prompt, output, attachment, quality floor per request;
# running, waiting, bandwidth per server (`CSUCB.decide`'s arguments).
Lists = tuple[
    list[int], list[float], list[float], list[float], list[float], list[float], list[float],
    list[float],
]  # fmt: skip
Outcome = tuple[list[int], list[int], list[bool], list[bool], int]


@dataclass(slots=True)
class Pair:
    """A request on a server: what does not depend on the server's load level."""

    coef: Coef
    static: bool  # tier, memory and quality floor hold
    part0: float  # GPU: prefill time; CPU: memory-bound decode rate
    part1: float  # GPU: per-token growth of a decode step; CPU: unused
    tran: float  # transmission time
    e_tran: float  # transmission energy
    arm: int
    hold: float  # what the score loses: the upload holds the link (`estimate.hold_rank`)


@dataclass(slots=True)
class Request:
    l_in: float
    l_out: float
    l_out1: float  # max(l_out, 1): per-token time divides by it
    deadline: float  # ΔD at the expected output length
    q_lo: float  # output-length quantiles and ΔD at each
    q_hi: float
    rhs_lo: float
    rhs_hi: float
    scale: float  # the class's energy scale
    pairs: list[Pair]


@dataclass(slots=True)
class Entry:
    """A request on a server at a load level."""

    time: float
    decode: float
    prefill: float
    b: float  # concurrent requests sharing the server
    feasible: bool = False
    fixed: float = 0.0  # D ≈ fixed + per_token·L_out (set where the server may be chosen)
    per_token: float = 0.0
    energy: float | None = None  # only for feasible or chosen servers
    score: float = -math.inf  # −inf where infeasible


_UNMADE = Entry(math.nan, math.nan, math.nan, math.nan)  # a row's entry not made yet
# What a shed request's decision reports: no server, no prediction.
_SHED_ENTRY = Entry(math.nan, math.nan, math.nan, math.nan, False, math.nan, math.nan, math.nan)


class FastRound:
    """One round. `run` assigns; `decision` reads the chosen entries."""

    def __init__(
        self,
        tab: FastTables,
        w: EnergyWeights,
        posterior: tuple[list[float], list[float], list[float]],
        lq: list[list[float]],
        lift: list[float],
        theta: float,
        args: Lists,
        cap: list[float] | None = None,
    ) -> None:
        cls, l_in, l_out, attach, min_quality, running, waiting, bw_mbps = args
        self.tab, self.w, self.theta, self.lift = tab, w, theta, lift
        self.mu, self.sd, self.f = posterior
        self.m = len(tab.rtt)
        self.occ = [r + q for r, q in zip(running, waiting, strict=True)]
        self.wait = waiting
        # `estimate.kv_bound`: the running count where it may be the capacity, else inf
        self.kv_cap = [
            r if q > 0 and r > 0 else math.inf for r, q in zip(running, waiting, strict=True)
        ]
        self.bw = bw_mbps
        self.cls, self.min_quality = cls, min_quality
        self.req: list[Request] = []
        caps = cap if cap is not None else [math.inf] * len(cls)
        for c, li, lo, att, mq, cp in zip(
            self.cls, l_in, l_out, attach, self.min_quality, caps, strict=True
        ):
            ctx = context(li, lo)
            up = upload_bits(li, att)
            bits = up + download_bits(lo)
            pairs = []
            for j, (co, ok_j, q_j, arm) in enumerate(
                zip(tab.coef[c], tab.allowed[c], tab.quality[c], tab.arm[c], strict=True)
            ):
                ctx_kv = ctx * co.kv
                if co.is_gpu:
                    part = gpu_prefill(li, co.r_pf, co.ttft0), ctx_kv / co.bw + co.flop
                else:
                    part = co.bw / (co.w + ctx_kv), 0.0
                tran = transmission_time(bits, self.bw[j], tab.rtt[j])
                e_tran = transmission_energy(tab.e_bit[j], bits)
                hold = hold_rank_one(up, self.bw[j], tab.hold_limit[j])
                pairs.append(Pair(co, ok_j and q_j >= mq - 1e-9, *part, tran, e_tran, arm, hold))
            q_lo, q_hi = lq[c]
            dl_s, dl_tok = tab.dl_s[c], tab.dl_tok[c]
            # (`CSUCB.deadlines` on floats; min with inf keeps the class's exactly)
            self.req.append(
                Request(
                    li,
                    lo,
                    max(lo, 1.0),
                    min(dl_s + dl_tok * lo, cp),
                    q_lo,
                    q_hi,
                    min(dl_s + dl_tok * q_lo, cp),
                    min(dl_s + dl_tok * q_hi, cp),
                    tab.scale[c],
                    pairs,
                )
            )
        # Rows (request, load level) of entries per server, made on demand.
        self.rows: dict[tuple[int, int], list[Entry]] = {}

    def row(self, k: int, a: int) -> list[Entry]:
        r = self.rows.get((k, a))
        if r is None:
            r = self.rows[k, a] = [_UNMADE] * self.m
        return r

    def entry(self, k: int, j: int, a: int) -> Entry:
        """A made entry (`make` ran for it)."""
        return self.rows[k, a][j]

    def predict(self, k: int, j: int, a: int) -> Entry:
        """D of request k on server j at level a, as `round_view` computes it."""
        req = self.req[k]
        p = req.pairs[j]
        co = p.coef
        occ1 = (self.occ[j] + a) + 1
        cap = co.max_conc
        b = occ1 if occ1 <= cap else cap
        # `formulas.queue_wait` with its where/maximum written out: the same floats, without
        # five calls (+0.5 µs a prediction, 8 % of a reference run's time)
        pre_w = (self.wait[j] + a) * self.tab.gpu_pre[j]
        run = self.kv_cap[j]
        if co.is_gpu and run < cap:  # bound by its KV cache (`estimate.view_of`)
            ahead = occ1 - run
            slot_w = (0.0 if ahead < 0.0 else ahead) * co.svc_per_slot
            queue = pre_w if slot_w < pre_w else slot_w
        else:
            ahead = occ1 - cap
            queue = (0.0 if ahead < 0.0 else ahead) * co.svc_per_slot + pre_w
        if co.is_gpu:
            pre, dec = p.part0, req.l_out * (co.step0 + b * p.part1)
        else:
            comp = co.kappa_pp / b
            pre, dec = req.l_in * b / co.pp, req.l_out / (p.part0 if p.part0 <= comp else comp)
        return Entry(p.tran + (queue + (pre + dec)), dec, pre, b)

    def energy(self, p: Pair, e: Entry) -> float:
        """The weighted marginal energy of a placement (the cost model's formulas)."""
        co = p.coef
        busy_pre, busy_dec = busy_times(e.prefill, e.decode, e.b, co.is_gpu)
        e_inf = inference_energy(busy_pre, busy_dec, co.p_first, co.p_busy)
        e_idle = idle_energy_saved(busy_pre, busy_dec, co.p_idle)
        energy: float = marginal_energy(self.w, p.e_tran, e_inf, e_idle)
        return energy

    def make(self, keys: list[tuple[int, int, int]]) -> bool:
        """Fill the entries `keys` (request, server, level); one normal-CDF call for all.
        False on a NaN. Energy waits for `complete` on servers that are not feasible."""
        feasible: list[tuple[Entry, int, float, float]] = []
        args = []
        rk: list[Entry] = []
        ka: tuple[int, int] | None = None
        f_l, mu_l, sd_l = self.f, self.mu, self.sd
        for k, j, a in keys:
            if (k, a) != ka:
                ka, rk = (k, a), self.row(k, a)
            req = self.req[k]
            p = req.pairs[j]
            e = rk[j] = self.predict(k, j, a)
            time = e.time
            if time != time:
                return False
            if not p.static:
                continue
            e.fixed, e.per_token, f = time - e.decode, e.decode / req.l_out1, f_l[p.arm]
            if (
                f * (e.fixed + e.per_token * req.q_lo) <= req.rhs_lo
                and f * (e.fixed + e.per_token * req.q_hi) <= req.rhs_hi
            ):
                e.feasible = True
                energy = e.energy = self.energy(p, e)
                feasible.append((e, p.arm, energy * mu_l[p.arm] / req.scale, p.hold))
                args.append(
                    (req.deadline / (1e-9 if time < 1e-9 else time) - mu_l[p.arm]) / sd_l[p.arm]
                )
        if args:
            # One value: the ufunc on a scalar (same loop, same value, less wrapping).
            p_viol = (
                [float(1.0 - ndtr(args[0]))]
                if len(args) == 1
                else (1.0 - ndtr(np.array(args))).tolist()
            )
            theta, lift = self.theta, self.lift
            for (e, arm, e_hat, hold), pv in zip(feasible, p_viol, strict=True):
                raw = -e_hat - theta * pv + lift[arm] - hold
                if raw != raw:
                    return False
                e.score = raw
        return True

    def pick(self, k: int, added: list[int]) -> int | None:
        """Request k's best feasible server (-1: none), as the vectorised path's argmax
        with its tie-break (`assign.better`); None on a NaN."""
        present = {a: self.row(k, a) for a in set(added)}
        todo = [(k, j, a) for j, a in enumerate(added) if present[a][j] is _UNMADE]
        if todo and not self.make(todo):
            return None
        best, bt, bb = -math.inf, math.inf, -math.inf
        j = -1
        bw = self.bw
        for jj, a in enumerate(added):
            e = present[a][jj]
            v = e.score
            if v > best or (
                v == best and v != -math.inf and (e.time < bt or (e.time == bt and bw[jj] > bb))
            ):
                best, bt, bb, j = v, e.time, bw[jj], jj
        return j

    def least(self, k: int, added: list[int], shed: bool, backlog: float) -> int | None:
        """`assign.least_late` for request k (`SHED`: no server meets its hard
        constraints, or with `shed` it is hopeless there, a server with `backlog` requests
        waiting being backlogged); None on a NaN."""
        if not self.make([(k, j, a) for j, a in enumerate(added) if self.row(k, a)[j] is _UNMADE]):
            return None
        c, tab = self.cls[k], self.tab
        pess = [self.entry(k, j, a).time * self.f[tab.arm[c][j]] for j, a in enumerate(added)]
        hard_ok = [p.static for p in self.req[k].pairs]
        j = least_late(pess, self.req[k].deadline, hard_ok)
        if shed and j != SHED:
            arm = tab.arm[c][j]
            expect, hold = self.mu[arm] / self.f[arm], self.entry(k, j, added[j]).decode
            if hopeless(pess[j], expect, self.req[k].deadline, self.wait[j] >= backlog, hold):
                return SHED
        return j

    def run(self, shed_hopeless: bool = False, backlog: float = math.inf) -> Outcome | None:
        """Each request's server (`SHED`: none) and load level, whether it was feasible,
        whether it was shed, the requests with nothing feasible; None on a NaN. A round
        holds at most `SMALL_ROUND` requests, so every level is computed exactly."""
        n, m = len(self.req), self.m
        if not self.make([(k, j, 0) for k in range(n) for j in range(m)]):
            return None
        added = [0] * m
        choice, lvl_of, ok, shed = [0] * n, [0] * n, [False] * n, [False] * n
        infeasible = 0
        for k in range(n):  # arrival order (`assign`)
            j = self.pick(k, added)
            if j is not None and j < 0:
                j = self.least(k, added, shed_hopeless, backlog)
                infeasible += 1
                if j == SHED:
                    choice[k], shed[k] = SHED, True
                    continue
            elif j is not None:
                ok[k] = True
            if j is None:
                return None
            choice[k], lvl_of[k] = j, added[j]
            added[j] += 1
        return choice, lvl_of, ok, shed, infeasible

    def picked(self, k: int, j: int, a: int, shed: bool) -> Entry:
        """Request k's chosen entry (server j at level a), its energy completed where it
        was chosen without being feasible; `_SHED_ENTRY` where shed."""
        if shed:
            return _SHED_ENTRY
        e = self.entry(k, j, a)
        if e.energy is None:
            e.fixed, e.per_token = e.time - e.decode, e.decode / self.req[k].l_out1
            e.energy = self.energy(self.req[k].pairs[j], e)
        return e

    def decision(
        self, choice: list[int], lvl_of: list[int], ok: list[bool], shed: list[bool]
    ) -> Decision:
        picked = [
            self.picked(k, j, a, s)
            for k, (j, a, s) in enumerate(zip(choice, lvl_of, shed, strict=True))
        ]
        time, en, fixed, per_tok = np.array(
            [
                [e.time for e in picked],
                [e.energy for e in picked],
                [e.fixed for e in picked],
                [e.per_token for e in picked],
            ]
        )
        return Decision(
            choice=np.array(choice, np.intp),
            feasible=np.array(ok, bool),
            predicted_time=time,
            predicted_energy=en,
            predicted_fixed=fixed,
            predicted_per_token=per_tok,
            shed=np.array(shed, bool),
        )


def play(b: CSUCB, args: Lists, cap: list[float] | None = None) -> tuple[FastRound, Outcome] | None:
    """A small round on Python floats, its plays recorded in `b`'s statistics; None on a
    NaN (nothing recorded: the vectorised path decides it). `cap`: `CSUCB.decide`'s
    deadline_cap as a list."""
    st = b.stats
    if b._fast is None:
        b._fast = FastTables.of(
            b.t, b._arm_cj, b.deadline_s, b.deadline_per_token, b.energy_scale, b.hold_limit
        )
    posterior = st.arm_posterior_lists()
    lq = st.quantile_pair_lists()
    lq_of = [lq[c] for c in b._class_list]  # per class of the table
    _, lift = exploration(st.plays.ravel().tolist(), log_t(st.total), b.cfg.delta)
    r = FastRound(b._fast, b.w, posterior, lq_of, lift, b.cfg.theta, args, cap)
    out = r.run(b.cfg.on_infeasible == "shed", b.cfg.backlog_waiting)
    if out is None:
        return None
    choice, _, _, shed, infeasible = out
    arm = b._fast.arm
    st.record_round(
        [arm[c][j] for c, j, s in zip(r.cls, choice, shed, strict=True) if not s],
        len(choice),
        infeasible,
    )
    return r, out
