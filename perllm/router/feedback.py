"""What the router learns from a proxied request when it ends: CS-UCB's update with the
observed end-to-end time and output tokens against the deadline, and the per-backend
outcome metrics (met/missed, latency, time to first token, upstream errors)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from perllm.router.decision import Backlog, Ticket
from perllm.router.members import Members
from perllm.router.proxy import TokenCounter


@dataclass
class Flight:
    """One proxied request: what learning needs when it ends."""

    members: Members
    ticket: Ticket
    start: float
    deadline_s: float | None  # the header's tightening, if any
    counter: TokenCounter
    first: float | None = None
    backlog: Backlog | None = None  # its backend's requests in flight, where it is `key`
    key: int = -1


class Feedback:
    """Learning from outcomes, against the service's deadline `seconds + per_token·L_out`."""

    def __init__(self, deadline_s: float, per_output_token_s: float) -> None:
        self._dl_s, self._dl_tok = deadline_s, per_output_token_s

    def set(self, deadline_s: float, per_output_token_s: float) -> None:
        """The service's deadline changed (its LLMService was edited)."""
        self._dl_s, self._dl_tok = deadline_s, per_output_token_s

    def budget(self, l_out: float) -> float:
        return self._dl_s + self._dl_tok * l_out

    def completed(self, f: Flight) -> None:
        now = time.perf_counter()
        self._learn(f, now - f.start, f.counter.tokens())
        bm = f.members.metrics[f.ticket.server]
        bm.latency.observe(now - f.start)
        if f.first is not None:
            bm.ttft.observe(f.first - f.start)

    def failed(self, f: Flight, kind: str) -> None:
        """A backend that timed out or broke off: a missed request, not a speed. Its
        elapsed time is censored (the answer never came, or came in part), and learned as
        a time ratio at the tokens seen so far it is hundreds: one such outcome sank the
        pool's learned reward for good, so a backend that recovered got no request again
        (it has no plays left to learn from). Availability is the ejection's and the
        health probe's (`probe`); CS-UCB learns from answers."""
        bm = f.members.metrics[f.ticket.server]
        bm.error(kind).inc()
        bm.judge(False)

    def _learn(self, f: Flight, d: float, l_out: float) -> None:
        met = self.learn(f.members, f.ticket, d, l_out, f.deadline_s)
        f.members.metrics[f.ticket.server].judge(met)

    def learn(
        self, members: Members, ticket: Ticket, d: float, l_out: float, tight: float | None = None
    ) -> bool:
        """CS-UCB's update with one outcome (`tight`: the header's deadline); whether the
        request met its deadline."""
        deadline = self.budget(l_out)
        if tight is not None:
            deadline = min(deadline, tight)
        members.decider.learn_one(ticket, d, l_out, deadline)
        return d <= deadline
