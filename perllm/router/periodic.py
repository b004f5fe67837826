"""`Periodic`: a router component's background loop (discovery, the status writer):
`step` every `interval_s` from `start` until `stop`. A step that raises is logged and the
loop goes on: a dead loop froze the router silently (discovery on its last membership, no
more probes), and its exception surfaced only at shutdown."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging

log = logging.getLogger("perllm.router")


class Periodic(abc.ABC):
    """Base of a dataclass with fields `interval_s` and `_task` (None until started); a
    subclass without its `step` cannot be made."""

    interval_s: float
    _task: asyncio.Task[None] | None

    @abc.abstractmethod
    async def step(self) -> None:
        """One round of the loop."""

    async def run(self) -> None:
        failing = ""  # the last step's error: a traceback per streak, not per round
        while True:
            try:
                await self.step()
            except Exception as e:
                if repr(e) != failing:
                    log.exception("%s: a round failed (the loop goes on)", type(self).__name__)
                failing = repr(e)
            else:
                failing = ""
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
