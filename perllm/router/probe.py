"""The active health check: a backend left out of decisions (`perllm.router.health`) is
asked by the router itself whether it answers again, instead of by a request CS-UCB
decides there.

Every `interval_s` the loop looks for members failing whose ejection is over and with
nothing in flight (`Membership.due`), and sends each a `GET path` (default `/v1/models`,
which vLLM, llama.cpp, the twin's pods and another cluster's router all serve) through
its connection pool, with the token sent to it (a remote tier) and the requests' connect
and read timeouts. Any HTTP answer within those timeouts (its body read to the end, or
`MAX_BODY` bytes of it) re-admits the backend, but a refusal (`health.refusal`: a 401
or 403 to a backend sent a token, a redirect), a failure as a request's is: the
check is of reachability, like the ejection (its backoff is kept until a request is
answered there, `Ejections.answered`). A refused or closed connection, or a timeout,
ejects it again for twice as long, counted as a refusal or a timeout
(`Membership.probed`). So a backend is probed on its ejection's schedule (`eject_s`,
doubling up to `eject_max_s`), once at a time, never more often than every `eject_s`.
While the loop runs, a failing backend stays out of decisions until it answers its
probe: no client request is the probe (and pays a hanging backend's read timeout).
`stop` cancels the loop and the probes in flight.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from perllm.router.health import refusal
from perllm.router.periodic import Periodic
from perllm.router.upstream import Pool, Response, UpstreamError
from perllm.secrets import SecretFile

if TYPE_CHECKING:
    from perllm.router.membership import Membership

log = logging.getLogger("perllm.router.probe")

MAX_BODY = 1 << 20  # bytes of a probe's answer read; beyond, its connection is closed


def tick_s(eject_s: float) -> float:
    """The loop's interval: a probe starts at most this long after its ejection ends."""
    return max(0.01, min(eject_s / 4, 0.25))


@dataclass
class Prober(Periodic):
    membership: Membership
    path: str = "/v1/models"
    interval_s: float = 0.25
    started: int = 0  # probes sent since start
    _probes: set[asyncio.Task[None]] = field(default_factory=set, repr=False)
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        """Whether the loop runs (then only its probes re-admit a backend)."""
        return self._task is not None and not self._task.done()

    async def step(self) -> None:
        loop = asyncio.get_running_loop()
        for name, pool, token in self.membership.due():
            self.membership.probing.add(name)  # busy from now: no second probe, no request
            self.started += 1
            t = loop.create_task(self.probe(name, pool, token))
            self._probes.add(t)
            t.add_done_callback(self._probes.discard)

    async def probe(self, name: str, pool: Pool, token: SecretFile | None) -> None:
        """One probe of backend `name`; its outcome goes to the membership."""
        failure, timeout, answered = "", False, False
        what = f"backend {name}: probe GET {self.path}"
        resp = None
        try:
            headers = [] if token is None else [(b"authorization", token.bearer())]
            resp = await pool.get(self.path, headers)
            refused = refusal(resp.status, token is not None)  # (as a request's: forward)
            if refused is not None:
                failure, answered = f"{what}: {refused[1]}", True
            else:
                await _drain(resp)
        except UpstreamError as e:
            failure, timeout = f"{what}: {e}", e.kind == "timeout"
        except Exception as e:  # never the loop's end: counted as a failure
            log.exception("%s failed", what)
            failure = f"{what}: {type(e).__name__}: {e}"
        finally:
            if resp is not None:
                resp.release()
            self.membership.probing.discard(name)
        self.membership.probed(name, failure, timeout, answered)

    async def stop(self) -> None:
        """The loop, then the probes in flight (their connections closed), cancelled."""
        await super().stop()
        probes = list(self._probes)
        for t in probes:
            t.cancel()
        await asyncio.gather(*probes, return_exceptions=True)


async def _drain(resp: Response) -> None:
    """Read the answer to its end (its connection is then kept), or `MAX_BODY` of it."""
    n = 0
    while n <= MAX_BODY:
        chunk = resp.take()
        if chunk is None:
            await resp.wait()
        elif not chunk:
            return
        else:
            n += len(chunk)
