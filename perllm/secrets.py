"""Credentials read from files (a mounted Secret key): the bearer token the router's
clients must present (`auth.token_file`), the ones it presents to remote backends
(`backends[].token_file`, e.g. another cluster's router) and the one every component
presents to Prometheus (`perllm.telemetry.prom`, `PERLLM_PROMETHEUS_TOKEN_FILE`), and the
CAs a remote backend is verified against (`backends[].ca_file`, `CaFile`). A file is
re-read when it changes (the kubelet swaps a new file into a mounted Secret, and projected
service-account tokens rotate), at most every `every_s`; a token's value is never logged."""

from __future__ import annotations

import os
import ssl
import time
from abc import ABC, abstractmethod
from typing import Generic, TypeVar

T = TypeVar("T")


class SecretError(RuntimeError):
    """The file cannot be read or is empty (the message names the file, not the value)."""


class WatchedFile(ABC, Generic[T]):
    """A value read from a file (`_read`), read again when the file changes, at most every
    `every_s`. While the file is unreadable or its content invalid (rewritten in place:
    truncated, then written; or a bad file swapped in) the last good value serves and
    `error` says why (None: the value is the file's current content)."""

    def __init__(self, path: str, every_s: float = 10.0) -> None:
        self.path, self._every = path, every_s
        self._value: T | None = None
        self.error: str | None = None
        # The file read last: (device, inode, mtime in ns, size). The kubelet swaps in a
        # new file (a new inode), whose mtime alone may equal the old one's.
        self._seen: tuple[int, int, int, int] | None = None
        self._checked = 0.0
        self.current()  # fail at start, not on the first request

    @abstractmethod
    def _read(self) -> T:
        """The value in the file (OSError or SecretError: none)."""

    def current(self) -> T:
        now = time.monotonic()
        if self._value is not None and now - self._checked < self._every:
            return self._value
        self._checked = now
        try:
            st = os.stat(self.path)
            seen = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
            if seen != self._seen:
                self._value, self._seen, self.error = self._read(), seen, None
            else:  # the file read last (back after being briefly gone): no error now
                self.error = None
        except (OSError, SecretError, ValueError) as e:  # (ssl.SSLError is an OSError)
            if isinstance(e, SecretError):
                why = str(e)
            elif isinstance(e, OSError):
                why = f"{self.path}: {e.strerror or e}"
            else:  # a NUL in the path (YAML can spell one): shown escaped
                why = f"{self.path!r}: {e}"
            if self._value is None:
                raise SecretError(why) from None
            self.error = why
        assert self._value is not None  # (read at least once, else raised)
        return self._value


class SecretFile(WatchedFile[bytes]):
    """A bearer token: the file's content, stripped (empty is no token)."""

    def _read(self) -> bytes:
        with open(self.path, "rb") as f:
            v = f.read().strip()
        if not v:
            raise SecretError(f"{self.path}: empty")
        return v

    def value(self) -> bytes:
        """The current value; the last good one while the file is briefly unreadable or
        empty (rewritten in place: truncated, then written)."""
        return self.current()

    def bearer(self) -> bytes:
        return b"Bearer " + self.value()


class CaFile(WatchedFile[ssl.SSLContext]):
    """A TLS client context verifying against the PEM CAs in the file (rotated CAs: the
    connections made since verify against the new ones; those open stay as they are)."""

    def _read(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.path)
