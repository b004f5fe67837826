"""Whether a telemetry source is producing metrics, and why not (said once per reason)."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("perllm.agent")


class SourceHealth:
    """Up/down state of one source (`nvml`, `rapl`, `probe`) for perllm_agent_source_up.

    A source that cannot work logs the reason once, not at every scrape or retry."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.up = False
        self.reason: str | None = "not started"
        self._said: set[str] = set()
        self._lock = threading.Lock()

    def ok(self, note: str | None = None) -> None:
        with self._lock:
            was_down = not self.up
            self.up, self.reason = True, None
            if was_down:  # a failure after a recovery is news again (not at every good read)
                self._said.clear()
        if was_down and note:
            log.info("%s: %s", self.source, note)

    def down(self, reason: str) -> None:
        with self._lock:
            self.up, self.reason = False, reason
            new = reason not in self._said
            self._said.add(reason)
        if new:
            log.warning("%s unavailable: %s", self.source, reason)

    def warn_once(self, message: str) -> None:
        """A partial problem (one field of one GPU) that does not take the source down."""
        with self._lock:
            new = message not in self._said
            self._said.add(message)
        if new:
            log.warning("%s: %s", self.source, message)
