"""`Periodic`: a router component's background loop (discovery, the status writer):
`step` every `interval_s` from `start` until `stop`."""

from __future__ import annotations

import abc
import asyncio
import contextlib


class Periodic(abc.ABC):
    """Base of a dataclass with fields `interval_s` and `_task` (None until started); a
    subclass without its `step` cannot be made."""

    interval_s: float
    _task: asyncio.Task[None] | None

    @abc.abstractmethod
    async def step(self) -> None:
        """One round of the loop."""

    async def run(self) -> None:
        while True:
            await self.step()
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
