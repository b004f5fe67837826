"""The longest wait a thread or a socket takes: the one bound of every interval and timeout
setting that reaches `threading.Event.wait`, `socket.settimeout` or urllib3 (the
kubernetes client, Prometheus queries). Above it (inf included, which passes a `> 0`
check) they raise OverflowError: a background loop's thread dies, every request fails."""

from __future__ import annotations

import threading
from typing import Annotated

from pydantic import Field

MAX_WAIT_S = threading.TIMEOUT_MAX  # about 292 years on 64-bit Linux

# A pydantic field of seconds waited: positive (NaN fails too) and at most MAX_WAIT_S.
WaitSeconds = Annotated[float, Field(gt=0, le=MAX_WAIT_S)]
