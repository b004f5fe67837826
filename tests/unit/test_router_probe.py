"""The router's active health check (`perllm.router.probe`): an ejected backend is asked
by the router itself (`GET /v1/models`) whether it answers again, on its ejection's
backoff, once at a time; while the probe runs no client request goes there. Stub backends
on loopback, driven through tests/unit/router_harness.py (timeouts of 1 s and polled deadlines:
room for a loaded 2-core CI machine)."""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from router_harness import _STACK, CHAT, _reachable, router, run

from perllm.router.app import Router
from perllm.router.asgi import Message
from perllm.router.config import RouterConfigError, parse_config
from perllm.router.health import Ejections
from perllm.router.serving import serving
from perllm.router.stub import StubBackend

EDGE = "edge-gpu"


def free_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(ok: Callable[[], bool], within_s: float = 10.0, what: str = "") -> None:
    """Poll `ok` (every 20 ms) until it holds, failing after `within_s`."""
    deadline = time.monotonic() + within_s
    while not ok():
        assert time.monotonic() < deadline, f"not within {within_s:g}s: {what}"
        await asyncio.sleep(0.02)


def sample(r: Router, name: str, result: str) -> float:
    v = r.metrics.registry.get_sample_value(
        "perllm_router_probes_total", {"backend": name, "result": result}
    )
    return v or 0.0


def test_a_refusing_backend_is_readmitted_by_its_probe_without_a_request() -> None:
    """The edge refuses connections (its requests go to the cloud) and then starts
    listening: its probe re-admits it and clears the condition with no client request
    sent meanwhile, and the next request (its arm unplayed: refusals teach CS-UCB
    nothing) goes there."""

    async def go() -> None:
        port = free_port()
        edge = StubBackend(EDGE)
        cloud = await _STACK.get().enter_async_context(serving(StubBackend("cloud")))
        limits = {"eject_s": 0.5, "eject_max_s": 1.0}
        urls = {EDGE: f"http://127.0.0.1:{port}", "cloud": cloud}
        r, _, c = await router(urls=urls, limits=limits)
        await r.start()
        for _ in range(3):  # unplayed arms go first: one of these is decided at the edge
            resp = await c.post("/v1/chat/completions", json=CHAT)
            assert resp.status_code == 200 and resp.json()["backend"] == "cloud"
            if EDGE in r.refusing():
                break
        assert r.refusing()[EDGE].refusals >= 1 and r.down() == [EDGE]
        ok, reason, msg = _reachable(r)
        assert (ok, reason) == (False, "BackendsEjected") and "refuses connections" in msg

        await _STACK.get().enter_async_context(serving(edge, port=port))  # it is back
        await until(lambda: EDGE not in r.refusing(), what="re-admitted by its probe")
        assert edge.requests == 0 and edge.probes >= 1  # the probe alone, no client request
        assert r.prober is not None and sample(r, EDGE, "answered") == 1.0
        assert sample(r, EDGE, "refused") == r.prober.started - 1  # those before it was back
        assert _reachable(r)[:2] == (True, "AllReachable") and not r.down()
        assert (await c.get("/readyz")).json() == {"status": "ok"}
        m = (await c.get("/metrics")).text
        assert f'perllm_router_backend_ejected{{backend="{EDGE}"}} 0.0' in m
        resp = await c.post("/v1/chat/completions", json=CHAT)
        assert resp.status_code == 200 and resp.json()["backend"] == EDGE
        await r.aclose()

    run(go())


def test_a_hanging_backend_stays_out_until_its_probe_answers() -> None:
    """The edge, which CS-UCB prefers, stops answering: the request that finds it gets
    504 and the others go to the cloud; its probes time out (counted as timeouts, one in
    flight at a time) and no client request is sent there meanwhile. Once it answers, a
    probe re-admits it, and it gets most of the traffic again: its timed-out request was
    a miss, not a time CS-UCB learned (measured over 100 requests)."""

    async def go() -> None:
        stubs = {EDGE: StubBackend(EDGE), "cloud": StubBackend("cloud")}
        limits = {"read_timeout_s": 1.0, "eject_s": 0.5, "eject_max_s": 1.0}
        r, _, c = await router(stubs, limits=limits)
        await r.start()
        for _ in range(20):
            assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 200
        assert stubs[EDGE].requests > 10  # it is preferred (the cloud is explored once)
        stubs[EDGE].hang = True
        for _ in range(5):
            resp = await c.post("/v1/chat/completions", json=CHAT)
            if resp.status_code != 200:
                break
        assert resp.status_code == 504, resp.text
        sent = stubs[EDGE].requests
        assert r.refusing()[EDGE].timeouts == 1 and r.down() == [EDGE]

        # Until its first probe has timed out: every request answered by the cloud.
        active = 0
        deadline = time.monotonic() + 10
        while r.refusing()[EDGE].timeouts < 2:
            assert time.monotonic() < deadline, "no probe timed out within 10 s"
            resp = await c.post("/v1/chat/completions", json=CHAT)
            assert resp.status_code == 200 and resp.json()["backend"] == "cloud"
            active = max(active, stubs[EDGE].active)
            await asyncio.sleep(0.02)
        assert stubs[EDGE].requests == sent and active <= 1
        assert r.prober is not None and stubs[EDGE].probes == r.prober.started == 1
        assert sample(r, EDGE, "timeout") == 1.0
        f = r.refusing()[EDGE]
        assert f.why == f"backend {EDGE}: probe GET /v1/models: no data within 1s"
        assert "does not answer in time" in _reachable(r)[2] and r.down() == [EDGE]

        stubs[EDGE].hang = False
        await until(lambda: EDGE not in r.refusing(), what="re-admitted by its probe")
        assert stubs[EDGE].requests == sent and sample(r, EDGE, "answered") == 1.0
        assert _reachable(r)[:2] == (True, "AllReachable")
        # Eligible again, and preferred again: the timed-out request was a miss in the
        # metrics, not a time ratio for CS-UCB (`Feedback.failed`), so what the edge's pool
        # learned before the hang still holds. (When it was learned as a 1 s outcome for
        # a fixed part the stub answers in ms, the edge got none of 2,000 requests after.)
        assert not r.down()
        to_edge = 0
        for _ in range(100):
            resp = await c.post("/v1/chat/completions", json=CHAT)
            assert resp.status_code == 200
            to_edge += resp.json()["backend"] == EDGE
        assert to_edge > 50, f"the recovered edge got {to_edge} of 100"
        await r.aclose()

    run(go())


def test_probes_back_off_while_a_backend_stays_down() -> None:
    """A backend still refusing: each failed probe ejects it for twice as long (up to
    `eject_max_s`), so probes start no more often than that; each is counted (metrics,
    and as a refusal in the condition's streak)."""

    async def go() -> None:
        cloud = await _STACK.get().enter_async_context(serving(StubBackend("cloud")))
        dead = f"http://127.0.0.1:{free_port()}"
        limits = {"eject_s": 0.25, "eject_max_s": 1.0}
        r, _, c = await router(urls={EDGE: dead, "cloud": cloud}, limits=limits)
        starts: list[float] = []
        due = r.due

        def recorded() -> Any:
            out = due()
            starts.extend(time.monotonic() for _ in out)
            return out

        r.due = recorded  # type: ignore[method-assign]
        for _ in range(3):
            assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 200
            if EDGE in r.refusing():
                break
        await r.start()
        await until(lambda: sample(r, EDGE, "refused") >= 4, what="4 probes refused")
        assert r.prober is not None
        await r.prober.stop()
        # each failed probe ejects it for 0.5, 1, 1 s (the cap): the next starts after
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        for gap, eject in zip(gaps[:3], (0.5, 1.0, 1.0), strict=True):
            assert eject - 0.02 <= gap < eject + 1.0, (gaps, eject)
        n = len(starts)
        assert r.prober.started == n and sample(r, EDGE, "refused") == n
        f = r.refusing()[EDGE]
        assert (f.refusals, f.timeouts) == (1 + n, 0) and "probe GET /v1/models" in f.why
        assert r.down() == [EDGE] and sample(r, EDGE, "answered") == 0.0
        await r.aclose()

    run(go())


def test_probes_stop_on_shutdown() -> None:
    """The ASGI lifespan starts the probe loop and its shutdown stops it: a probe in
    flight at a hanging backend is cancelled (its connection closed, counted as nothing),
    and no task of the loop is left."""

    async def go() -> None:
        stubs = {EDGE: StubBackend(EDGE, hang=True), "cloud": StubBackend("cloud")}
        limits = {"read_timeout_s": 5.0, "eject_s": 0.25}
        r, _, _ = await router(stubs, limits=limits)
        inbox: asyncio.Queue[Message] = asyncio.Queue()
        sent: list[str] = []

        async def send(m: Message) -> None:
            sent.append(m["type"])

        life = asyncio.create_task(r({"type": "lifespan"}, inbox.get, send))
        await inbox.put({"type": "lifespan.startup"})
        await until(lambda: sent == ["lifespan.startup.complete"], what="startup")
        assert r.prober is not None and r.prober.running
        r.timed_out(EDGE, f"backend {EDGE}: no response within 5s")
        await until(lambda: stubs[EDGE].active == 1, what="a probe in flight")
        assert r.probing == {EDGE}

        await inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(life, 10)
        assert sent[-1] == "lifespan.shutdown.complete"
        assert not r.prober.running and r.prober._task is None and not r.prober._probes
        assert not r.probing
        loops = ("Prober.", "Periodic.run")  # (no discovery or status writer here)
        left = [t for t in asyncio.all_tasks() if any(x in repr(t.get_coro()) for x in loops)]
        assert not left, left
        await until(lambda: stubs[EDGE].active == 0, what="the probe's connection closed")
        assert r.refusing()[EDGE].timeouts == 1  # the cancelled probe counted as nothing
        assert sample(r, EDGE, "timeout") == sample(r, EDGE, "refused") == 0.0

    run(go())


def test_a_probes_answer_keeps_the_backoff_until_a_request_is_answered() -> None:
    """A probe answered re-admits (the streak ends: the condition clears), but a backend
    that answers probes and fails requests is ejected as long as its streak's next
    failure would have been; a request answered starts afresh."""
    now = [0.0]
    ej = Ejections(1.0, 8.0, clock=lambda: now[0])
    assert [ej.refused("a") for _ in range(2)] == [1.0, 2.0]
    assert ej.ended(["a", "b"]) == []
    now[0] += 2.01
    assert ej.ended(["a", "b"]) == ["a"] and ej.out(["a", "b"]) == set()
    assert ej.out(["a"], busy=lambda n: True) == {"a"}  # (the probe runs: still out)
    assert ej.answered("a", probe=True) and not ej.refusing() and ej.ended(["a"]) == []
    assert ej.refused("a", timeout=True) == 4.0  # the streak's third failure
    assert ej.refusing()["a"].timeouts == 1
    now[0] += 4.01
    assert ej.answered("a", probe=True) and not ej.answered("a")  # then a request
    assert ej.refused("a") == 1.0  # a fresh streak


def test_a_redirecting_backend_is_kept_out_by_its_probe() -> None:
    """A backend answering requests with a redirect is failing (`health.refusal`), and
    its probe's redirect fails the probe too: it stays out (it was re-admitted by any
    answer to the probe, then failed the next request)."""

    async def moved(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 301,
                    "headers": [(b"location", b"https://elsewhere/")]})  # fmt: skip
        await send({"type": "http.response.body", "body": b""})

    async def go() -> None:
        st = _STACK.get()
        urls = {EDGE: await st.enter_async_context(serving(moved)),
                "cloud": await st.enter_async_context(serving(StubBackend("cloud")))}  # fmt: skip
        r, _, c = await router(urls=urls, limits={"eject_s": 0.05, "eject_max_s": 0.1})
        await r.start()
        for _ in range(3):
            resp = await c.post("/v1/chat/completions", json=CHAT)
            assert resp.status_code == 200 and resp.json()["backend"] == "cloud"
            if EDGE in r.refusing():
                break
        await until(lambda: sample(r, EDGE, "refused") >= 2, what="two failed probes")
        assert sample(r, EDGE, "answered") == 0 and EDGE in r.refusing()
        assert "probe GET /v1/models: HTTP 301, a redirect" in r.refusing()[EDGE].why
        await r.aclose()

    run(go())


def test_probe_config() -> None:
    """`limits.probe` (default on) and `limits.probe_path` (an absolute path)."""
    base = {"scenario": "demo", "service_class": "chat"}
    backends = [
        {"name": "e", "url": "http://e:8000", "tier": "edge", "hardware": "nvidia-l4",
         "link": {"bandwidth_mbps": 100, "rtt_ms": 5}},
    ]  # fmt: skip
    cfg = parse_config({**base, "backends": backends})
    assert cfg.limits.probe and cfg.limits.probe_path == "/v1/models"
    r = Router(cfg)
    assert r.prober is not None and r.prober.path == "/v1/models"
    assert r.prober.interval_s == 0.25  # a probe starts within this of its ejection's end
    off = parse_config({**base, "backends": backends, "limits": {"probe": False}})
    assert Router(off).prober is None
    health = {"probe_path": "/health"}
    assert Router(parse_config({**base, "backends": backends, "limits": health})).prober
    for bad in ("v1/models", "/v1/models x", "/a\r\nx: y"):
        with pytest.raises(RouterConfigError, match=r"limits\.probe_path"):
            parse_config({**base, "backends": backends, "limits": {"probe_path": bad}})
