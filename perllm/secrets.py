"""Credentials read from files (a mounted Secret key): the bearer token the router's
clients must present (`auth.token_file`), the ones it presents to remote backends
(`backends[].token_file`, e.g. another cluster's router) and the one every component
presents to Prometheus (`perllm.telemetry.prom`, `PERLLM_PROMETHEUS_TOKEN_FILE`). A file is
re-read when it changes (the kubelet swaps a new file into a mounted Secret, and projected
service-account tokens rotate), at most every `every_s`; the value is never logged."""

from __future__ import annotations

import os
import time


class SecretError(RuntimeError):
    """The file cannot be read or is empty (the message names the file, not the value)."""


class SecretFile:
    def __init__(self, path: str, every_s: float = 10.0) -> None:
        self.path, self._every = path, every_s
        self._value = b""
        # The file read last: (device, inode, mtime in ns, size). The kubelet swaps in a
        # new file (a new inode), whose mtime alone may equal the old one's.
        self._seen: tuple[int, int, int, int] | None = None
        self._checked = 0.0
        self.value()  # fail at start, not on the first request

    def value(self) -> bytes:
        """The current value; the last good one while the file is briefly unreadable or
        empty (rewritten in place: truncated, then written)."""
        now = time.monotonic()
        if self._value and now - self._checked < self._every:
            return self._value
        self._checked = now
        try:
            st = os.stat(self.path)
            seen = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
            if seen != self._seen:
                with open(self.path, "rb") as f:
                    v = f.read().strip()
                if not v:
                    raise SecretError(f"{self.path}: empty")
                self._value, self._seen = v, seen
        except OSError as e:
            if not self._value:
                raise SecretError(f"{self.path}: {e.strerror or e}") from None
        except SecretError:
            if not self._value:
                raise
        return self._value

    def bearer(self) -> bytes:
        return b"Bearer " + self.value()
