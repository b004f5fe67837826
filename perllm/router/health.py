"""Backends that refuse connections or do not answer in time are left out of decisions for
a while (outlier ejection, as Envoy does it). A refused or timed-out connect means nothing
was sent, so the router decides the request again among the other backends; a request
sent and then not answered in time (no response head, or a stream stalled, within the
read timeout) is not sent again (it may have reached the backend), but the next ones go
elsewhere. The ejection lasts `base_s`, doubling on each consecutive failure up to
`max_s`; a request the backend answers clears it. When the ejection ends, the backend is
probed: by the router's health probe (`perllm.router.probe`: the backend stays out until
it answers that), or without one by the first request CS-UCB decides there (the backend is
decided on again like any other; while that request is in flight no other goes there).
A failed probe ejects it again for twice as long. An answered health probe re-admits it
but keeps its backoff until a request is answered there: a backend that answers the
probe but not requests is not tried more often than it would be without probes. A slow
backend that answers within the timeouts is never ejected (CS-UCB learns its times
instead)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass


def refusal(status: int, token: bool) -> tuple[str, str] | None:
    """A response head that refuses the request rather than answering it, as (the upstream
    error kind, why), or None; `token`: the router sent the backend a `token_file`'s
    token. Nothing was served, so the backend is failing as one refusing the connection
    (for a request and for its health probe alike):
    - 401/403 to the router's token: the remote tier refuses the router's credential (a
      Secret rotated on one side only), not the client's;
    - a 3xx: a model server answers a completion itself, so its url is wrong (http
      redirected to https, a moved path). The router follows no redirect (it may point
      anywhere, and a remote tier's token would go along) and relays none (the client
      could do nothing with it: its Location is the backend's business)."""
    if token and status in (401, 403):
        return "auth", f"HTTP {status}, the router's token_file refused"
    if 300 <= status <= 399:
        return "redirect", f"HTTP {status}, a redirect (not followed: check the backend's url)"
    return None


@dataclass(frozen=True)
class Refusing:
    """A backend failing since the first failure of its streak (what the status says):
    `refusals` refused connections, `timeouts` times not answering in time and `answers`
    answers that refused the request (`refusal`: a redirect, the router's token refused)."""

    refusals: int
    since: float  # wall clock (time.time) of the streak's first failure
    why: str  # the last failure's message
    timeouts: int = 0
    answers: int = 0

    @property
    def ways(self) -> str:
        """Which ways it fails in its streak: refusing connections, not answering in time,
        refusing requests (a redirect or the router's token refused: it is reachable, and
        its url or the token is what to check)."""
        kinds = [
            (self.refusals, "refusing connections"),
            (self.timeouts, "not answering in time"),
            (self.answers, "refusing requests"),
        ]
        return " and ".join(w for k, w in kinds if k)

    @property
    def failures(self) -> int:
        return self.refusals + self.timeouts + self.answers


class Ejections:
    def __init__(
        self, base_s: float, max_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.base_s, self.max_s, self._clock = base_s, max_s, clock
        self._until: dict[str, float] = {}
        self._failing: dict[str, Refusing] = {}
        # Failures of the streaks ended by a health probe's answer, not a request's: where
        # the next streak's backoff starts.
        self._kept: dict[str, int] = {}

    def refused(
        self, name: str, why: str = "", timeout: bool = False, answered: bool = False
    ) -> float:
        """Eject `name` (it refused the connection, with `timeout` did not answer in time,
        with `answered` answered with a refusal: `refusal`); returns for how long (s)."""
        f = self._failing.get(name) or Refusing(0, time.time(), "")
        n = f.failures + self._kept.get(name, 0)
        conn = not (timeout or answered)
        self._failing[name] = Refusing(
            f.refusals + conn, f.since, why, f.timeouts + timeout, f.answers + answered
        )
        cooldown = min(self.base_s * 2.0**n, self.max_s)
        self._until[name] = self._clock() + cooldown
        return cooldown

    def answered(self, name: str, probe: bool = False) -> bool:
        """`name` answered a request (with `probe`: its health probe): not ejected any
        more. Returns whether it had been. A probe's answer keeps the backoff: failing
        again before a request is answered, it is ejected as the streak's next failure
        would have been."""
        if self._kept and not probe:
            self._kept.pop(name, None)
        if not self._failing or name not in self._failing:
            return False
        f = self._failing.pop(name)
        self._until.pop(name, None)
        if probe:
            self._kept[name] = self._kept.get(name, 0) + f.failures
        return True

    def refusing(self) -> dict[str, Refusing]:
        """Backends failing and not answered since (ejected now or waiting for their
        probe), with why."""
        return dict(self._failing)

    def ended(self, names: Iterable[str]) -> list[str]:
        """The failing ones of `names` whose ejection is over: due for their probe."""
        if not self._until:
            return []
        now = self._clock()
        return [n for n in names if n in self._until and self._until[n] <= now]

    def out(
        self, names: Iterable[str], busy: Callable[[str], bool] | None = None
    ) -> frozenset[str]:
        """The ones of `names` ejected now, and (with `busy`: whether a backend's probe is
        in flight, a request there or the health probe's, or the health probe runs) those
        failing whose ejection ended but that are `busy`: the others wait for the probe's
        outcome (a hanging backend's probe takes the read timeout to fail)."""
        if not self._until:
            return frozenset()
        now = self._clock()
        return frozenset(
            n
            for n in names
            if self._until.get(n, 0.0) > now or (busy and n in self._until and busy(n))
        )

    def forget(self, keep: Iterable[str]) -> None:
        """Drop the state of backends no longer members."""
        k = set(keep)
        for d in (self._until, self._failing, self._kept):
            for n in [n for n in d if n not in k]:
                del d[n]
