"""CS-UCB: constraint-satisfying upper-confidence-bound placement (PerLLM).

Arms are keyed by (service class, server pool), a pool being the servers with the same
tier, hardware and link profile. The cost model already explains what differs between
servers of a pool (their current load and measured bandwidth), so what is left to learn,
the ratio between observed and predicted processing time and the resulting reward, is
shared by the pool. A 1,000-node fleet of a few hardware types thus has a few dozen arms
instead of tens of thousands, and a new node of a known pool starts with its pool's
experience. See docs/algorithm.md.

Each round (the requests of one slot, a super arm):
1. predict D and marginal energy for every (request, server, load level) from telemetry;
2. constraint satisfaction: keep pairs whose pessimistic D (predicted × the arm's upper
   ratio quantile; prior-dominated while samples are few) meets the deadline, whose
   variant meets the quality floor, and which the server can run at all;
3. UCB over the feasible pairs: score = R̂ + δ·sqrt(ln t / n(a)), unplayed arms first,
   with R̂ = −normalised energy − θ·P(violation);
4. assign jointly in arrival order (the order a server's FIFO queue runs them), adding
   each placement's load to its server; with nothing feasible, take the least-violating
   server (or shed the request) and record the violation.
Rewards r = −ê − θ·1[D > ΔD] arrive when requests complete; updates are O(1) running sums.

Modules: config (parameters), stats (what is learned, shareable between bandits), index
(the UCB bonus), assign (the super arm), fast (small rounds on Python floats), single
(one request at a time: the router), explain (why each candidate), decision (a round's
result), bandit (`CSUCB`).
"""

from perllm.csucb.bandit import CSUCB
from perllm.csucb.config import STATE_VERSION, CSUCBConfig
from perllm.csucb.decision import Decision, realised_prediction
from perllm.csucb.explain import Candidate, Constraint, Explanation
from perllm.csucb.index import UNPLAYED_LIFT
from perllm.csucb.stats import ArmStats

__all__ = [
    "CSUCB",
    "STATE_VERSION",
    "UNPLAYED_LIFT",
    "ArmStats",
    "CSUCBConfig",
    "Candidate",
    "Constraint",
    "Decision",
    "Explanation",
    "realised_prediction",
]
