"""Backends that refuse connections are left out of decisions for a while (outlier
ejection, as Envoy does it). A refused or timed-out connect means nothing was sent, so the
router decides the request again among the other backends. The ejection lasts `base_s`,
doubling on each consecutive refusal up to `max_s`; a request the backend answers clears
it. When the ejection ends the backend is decided on again like any other, so the first
request that lands there is the probe (refused again: ejected again, for twice as long)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Refusing:
    """A backend refusing since its first refusal of the streak (what the status says)."""

    refusals: int
    since: float  # wall clock (time.time) of the streak's first refusal
    why: str  # the last refusal's message


class Ejections:
    def __init__(
        self, base_s: float, max_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.base_s, self.max_s, self._clock = base_s, max_s, clock
        self._until: dict[str, float] = {}
        self._streak: dict[str, int] = {}
        self._why: dict[str, tuple[float, str]] = {}

    def refused(self, name: str, why: str = "") -> float:
        """Eject `name`; returns for how long (s)."""
        n = self._streak.get(name, 0)
        self._streak[name] = n + 1
        since = self._why[name][0] if name in self._why else time.time()
        self._why[name] = (since, why)
        cooldown = min(self.base_s * 2.0**n, self.max_s)
        self._until[name] = self._clock() + cooldown
        return cooldown

    def answered(self, name: str) -> bool:
        """`name` answered a request: not ejected any more. Returns whether it had been."""
        if not self._streak or name not in self._streak:
            return False
        del self._streak[name]
        self._until.pop(name, None)
        self._why.pop(name, None)
        return True

    def refusing(self) -> dict[str, Refusing]:
        """Backends refused and not answered since (ejected now or waiting for their
        probe request), with why."""
        return {n: Refusing(k, *self._why[n]) for n, k in self._streak.items()}

    def out(self, names: Iterable[str]) -> frozenset[str]:
        """The ones of `names` ejected now."""
        if not self._until:
            return frozenset()
        now = self._clock()
        return frozenset(n for n in names if self._until.get(n, 0.0) > now)

    def forget(self, keep: Iterable[str]) -> None:
        """Drop the state of backends no longer members."""
        k = set(keep)
        for d in (self._until, self._streak, self._why):
            for n in [n for n in d if n not in k]:
                del d[n]
