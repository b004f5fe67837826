"""A `perllm router` over stub backends served on loopback, for the test_router* files:
`router()` builds one inside `run()` (which serves the stubs for the test), `decision()`
reads its decision header, `_reachable()` its `BackendsReachable` condition."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Awaitable
from typing import Any

import httpx

from perllm.router.app import Router
from perllm.router.config import RouterConfig, parse_config
from perllm.router.serving import serving
from perllm.router.stub import StubBackend

BACKENDS: list[dict[str, Any]] = [
    {
        "name": "edge-gpu",
        "url": "http://edge:8000",
        "tier": "edge",
        "hardware": "nvidia-l4",
        "link": {"bandwidth_mbps": 100, "rtt_ms": 5},
    },
    {
        "name": "cloud",
        "url": "http://cloud:8000",
        "tier": "cloud",
        "hardware": "a100-80gb-sxm",
        "link": {"bandwidth_mbps": 300, "rtt_ms": 40},
    },
]
CHAT = {"model": "llama3-8b", "messages": [{"role": "user", "content": "hello " * 50}]}


def config(**kw: Any) -> RouterConfig:
    return parse_config({"scenario": "demo", "service_class": "chat", "backends": BACKENDS} | kw)


_STACK: contextvars.ContextVar[contextlib.AsyncExitStack] = contextvars.ContextVar("stack")


async def router(
    stubs: dict[str, StubBackend] | None = None, urls: dict[str, str] | None = None, **kw: Any
) -> tuple[Router, dict[str, StubBackend], httpx.AsyncClient]:
    """A router over stubs served on loopback for this test (or at `urls`)."""
    stubs = stubs or {"edge-gpu": StubBackend("edge-gpu"), "cloud": StubBackend("cloud")}
    if urls is None:
        st = _STACK.get()
        urls = {n: await st.enter_async_context(serving(s)) for n, s in stubs.items()}
    backends = [{**b, "url": urls[b["name"]]} for b in BACKENDS]
    r = Router(config(backends=backends, **kw))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=r), base_url="http://router")
    return r, stubs, client


def decision(resp: httpx.Response) -> dict[str, str]:
    h = resp.headers["x-perllm-decision"]
    return dict(p.strip().split("=", 1) for p in h.split(";"))


def run(coro: Awaitable[None]) -> None:
    async def main() -> None:
        async with contextlib.AsyncExitStack() as st:
            _STACK.set(st)
            await asyncio.wait_for(coro, 30)

    asyncio.run(main())


def _reachable(r: Router) -> tuple[bool, str, str]:
    """The `BackendsReachable` condition the status writer would write now."""
    from perllm.router.status import StatusWriter

    return StatusWriter(r, "ns", "chat").snapshot(1e9)[1]


def learned_lengths(r: Router) -> list[float]:
    """The output lengths `r` learns from, in order (its decider's `learn_one`, spied on:
    it still learns)."""
    seen: list[float] = []
    orig = r.decider.learn_one

    def spy(ticket: Any, time: Any, l_out: Any, deadline: Any, energy: Any = None) -> None:
        seen.append(l_out)
        orig(ticket, time, l_out, deadline, energy)

    r.decider.learn_one = spy  # type: ignore[method-assign]
    return seen
