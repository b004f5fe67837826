"""`Periodic`: one daemon thread calling a function at an interval, stoppable at once.

The telemetry refresher, the learning loop and the state saver are all this; a failing
pass is logged and the loop goes on, since a dead background thread would silently
freeze the extender on stale telemetry or unsaved learning.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("perllm.extender")


class Periodic:
    def __init__(
        self,
        name: str,
        tick: Callable[[], object],
        interval_s: Callable[[], float],
        *,
        immediate: bool = False,
    ) -> None:
        """`interval_s` is read before every wait (owners may change it); `immediate`: the
        first pass runs at start rather than one interval later."""
        self.name, self.tick, self.interval_s, self.immediate = name, tick, interval_s, immediate
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        if not self.immediate and self._stop.wait(self.interval_s()):
            return
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("%s: pass failed", self.name)
            self._stop.wait(self.interval_s())
