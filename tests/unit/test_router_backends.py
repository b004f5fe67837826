"""`perllm router`'s backends that refuse, hang, stall or leave (over stub backends,
router_harness.py): ejection and its `BackendsReachable` condition, a request decided
again after a refusal, a backend that left forgotten once its requests end."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import pytest
from router_harness import _STACK, CHAT, _reachable, router, run

from perllm.router.health import Ejections
from perllm.router.serving import serving
from perllm.router.stub import StubBackend


def test_a_refused_request_is_decided_again_among_the_others() -> None:
    """Nothing was sent to a backend that refused the connection: the request goes to the
    next decision without the ejected one, and the client sees the other's answer."""

    async def go() -> None:
        edge = await _STACK.get().enter_async_context(serving(StubBackend("edge-gpu")))
        # The cloud (which CS-UCB prefers for this service) refuses connections.
        r, _, c = await router(urls={"edge-gpu": edge, "cloud": "http://127.0.0.1:9"})
        for _ in range(3):
            resp = await c.post("/v1/chat/completions", json=CHAT)
            assert resp.status_code == 200, resp.text
            assert resp.headers["x-perllm-decision"].startswith("backend=edge-gpu")
        assert r.down() == ["cloud"]
        assert r.inflight == [0, 0]
        m = (await c.get("/metrics")).text
        assert 'perllm_router_backend_ejected{backend="cloud"} 1.0' in m
        assert "perllm_router_retries_total 1.0" in m
        assert (await c.get("/readyz")).json() == {"status": "degraded", "down": ["cloud"]}

    run(go())


def test_ejections_double_per_refusal_up_to_the_cap_and_clear_on_an_answer() -> None:
    now = [100.0]
    ej = Ejections(1.0, 5.0, clock=lambda: now[0])
    assert [ej.refused("a") for _ in range(4)] == [1.0, 2.0, 4.0, 5.0]
    assert ej.out(["a", "b"]) == {"a"}
    now[0] += 5.01
    assert ej.out(["a", "b"]) == set()  # the ejection ended: decided on again (the probe)
    assert ej.refused("a") == 5.0  # the probe refused too: still at the cap
    assert ej.answered("a") and not ej.answered("a")
    assert ej.out(["a"]) == set() and ej.refused("a") == 1.0  # a fresh streak
    ej.forget([])
    assert ej.out(["a"]) == set()


def test_a_backend_that_left_is_forgotten_once_its_requests_end() -> None:
    """A rollout replaces backend X (pod names change): while its request is in flight its
    series, load and connection stay; when it ends (answered in full) X's labelled series,
    its metrics and its load are gone, its connection is closed rather than pooled, and
    its requests still count in the status' totals (its tier's)."""
    from perllm.router.asgi import Refused
    from perllm.router.status import StatusWriter
    from perllm.router.tally import GONE

    async def go() -> None:
        stubs = {n: StubBackend(n, tokens=4, token_delay_s=0.05) for n in ("edge-gpu", "cloud")}
        r, _, c = await router(stubs)
        w = StatusWriter(r, "ns", "chat")
        for _ in range(2):  # unplayed arms go first: one each
            assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 200
        assert r.metrics.served() and len(r.metrics.served()) == 2
        t1 = 1000.0
        w.snapshot(t1)
        slow = asyncio.ensure_future(c.post("/v1/chat/completions", json=CHAT))
        while not any(s.active for s in stubs.values()):
            await asyncio.sleep(0.005)
        x = next(n for n, s in stubs.items() if s.active)
        y = next(n for n in stubs if n != x)
        pool = r.members.pools[r.members.names.index(x)] if r.members else None
        new = await _STACK.get().enter_async_context(serving(StubBackend("new")))
        stay = next(b for b in r.backends if b.name == y)
        r.set_backends([stay, stay.model_copy(update={"name": "new", "url": new})])
        assert r._leaving == {x} and len(r.backlog(x)) == 1
        busy = f'perllm_router_inflight_requests{{backend="{x}"}} 1.0'
        assert busy in (await c.get("/metrics")).text
        resp = await slow
        assert resp.status_code == 200 and resp.json()["backend"] == x
        text = (await c.get("/metrics")).text
        assert f'backend="{x}"' not in text and f'backend="{y}"' in text
        assert all(k[0] != x for k in r.metrics._backends) and x not in r._inflight
        assert not r._leaving and pool is not None and pool.closed and not pool.idle
        r._refused(Refused(x, "late"))  # a refusal from before it left: nothing recreated
        assert f'backend="{x}"' not in r.metrics.exposition().decode() and not r.refusing()
        for _ in range(4):
            resp = await c.post("/v1/chat/completions", json=CHAT)
            assert resp.status_code == 200 and resp.json()["backend"] in (y, "new")
        status, _ = w.snapshot(t1 + 61)  # the window starts at t1: X had 1 of 3 then
        assert status["requests"] == 7 and sum(t["requests"] for t in status["tiers"]) == 7
        assert status["recent"]["requests"] == 5
        assert sum(t["requests"] for t in status["recent"]["tiers"]) == 5
        names = [b["name"] for b in status["backends"]]
        assert x not in names and not any(n.startswith(GONE) for n in names)
        await r.aclose()

    run(go())


def test_a_hanging_backend_is_ejected_and_its_request_not_retried() -> None:
    """A backend that accepts the connection but sends no response head: the client gets
    504 upstream_timeout naming it (the request is not sent elsewhere: it may have reached
    the backend), the condition says it does not answer in time, the next requests go to
    the other backend; once it answers again the condition clears."""

    async def go() -> None:
        stubs = {"edge-gpu": StubBackend("edge-gpu", hang=True), "cloud": StubBackend("cloud")}
        # (timeouts with room: on a loaded CI machine a healthy stub can take 0.2 s)
        limits = {"read_timeout_s": 1.0, "eject_s": 2.0, "eject_max_s": 2.0}
        r, _, c = await router(stubs, limits=limits)
        for _ in range(2):  # unplayed arms go first: one of these reaches the edge
            before = stubs["cloud"].requests
            resp = await c.post("/v1/chat/completions", json=CHAT)
            if resp.status_code != 200:
                break
        assert resp.status_code == 504, resp.text
        err = resp.json()["error"]
        assert err["type"] == "upstream_timeout"
        assert err["message"] == "backend edge-gpu: no response within 1s"
        assert stubs["cloud"].requests == before  # not retried elsewhere
        assert r.down() == ["edge-gpu"] and r.refusing()["edge-gpu"].timeouts == 1
        ok, reason, msg = _reachable(r)
        assert (ok, reason) == (False, "BackendsEjected"), msg
        assert msg.startswith("edge-gpu (edge, http://127.0.0.1:")
        assert " does not answer in time since " in msg and "refuses" not in msg
        assert "(1 timeout(s), last: backend edge-gpu: no response within 1s)" in msg
        assert msg.endswith("requests go to cloud")
        for _ in range(4):
            resp = await c.post("/v1/chat/completions", json=CHAT)
            assert resp.status_code == 200 and resp.json()["backend"] == "cloud"
        assert (await c.get("/readyz")).json() == {"status": "degraded", "down": ["edge-gpu"]}
        m = (await c.get("/metrics")).text
        assert 'perllm_router_backend_ejected{backend="edge-gpu"} 1.0' in m
        assert 'perllm_router_upstream_errors_total{backend="edge-gpu",kind="timeout"} 1.0' in m
        assert "perllm_router_retries_total 0.0" in m

        await asyncio.sleep(2.0)  # the ejection is over: one probe, the others elsewhere
        burst = [c.post("/v1/chat/completions", json=CHAT) for _ in range(8)]
        codes = sorted(x.status_code for x in await asyncio.gather(*burst))
        assert codes in ([200] * 8, [200] * 7 + [504]), codes
        assert r.refusing()["edge-gpu"].timeouts == codes.count(504) + 1

        stubs["edge-gpu"].hang = False  # it answers again
        # CS-UCB learned its timed-out requests (a second each) and sends little there for
        # a while; with the edge alone the next request after its ejection is its probe.
        both = r.backends
        r.set_backends([b for b in both if b.name == "edge-gpu"])
        await asyncio.sleep(2.0)  # (the probe's ejection, if it timed out, is over)
        resp = await c.post("/v1/chat/completions", json=CHAT)
        assert resp.status_code == 200 and resp.json()["backend"] == "edge-gpu"
        assert "edge-gpu" not in r.refusing()
        r.set_backends(both)
        assert _reachable(r)[:2] == (True, "AllReachable") and not r.down()
        m = (await c.get("/metrics")).text
        assert 'perllm_router_backend_ejected{backend="edge-gpu"} 0.0' in m
        await r.aclose()

    run(go())


def test_a_backend_not_accepting_connections_in_time_is_ejected_and_skipped() -> None:
    """A connect that times out sent nothing: the request goes to the other backend, and
    the one that did not accept is ejected, said not to answer in time."""
    import socket

    async def go() -> None:
        # A listener whose accept queue is full: the kernel drops further SYNs.
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(0)
        url = f"http://127.0.0.1:{srv.getsockname()[1]}"
        fill = [socket.socket() for _ in range(4)]
        for s in fill:
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(srv.getsockname())
        try:
            cloud = await _STACK.get().enter_async_context(serving(StubBackend("cloud")))
            limits = {"connect_timeout_s": 0.2, "eject_s": 5}
            r, _, c = await router(urls={"edge-gpu": url, "cloud": cloud}, limits=limits)
            for _ in range(3):
                resp = await c.post("/v1/chat/completions", json=CHAT)
                assert resp.status_code == 200 and resp.json()["backend"] == "cloud"
            assert r.down() == ["edge-gpu"]
            f = r.refusing()["edge-gpu"]
            assert (f.refusals, f.timeouts) == (0, 1), f
            assert f.why == "backend edge-gpu: connect timed out (0.2s)"
            ok, reason, msg = _reachable(r)
            assert not ok and reason == "BackendsEjected" and "does not answer in time" in msg
            assert "perllm_router_retries_total 1.0" in (await c.get("/metrics")).text
            await r.aclose()
        finally:
            for s in [*fill, srv]:
                s.close()

    run(go())


def test_a_slow_backend_answering_within_the_timeouts_is_never_ejected() -> None:
    """Slow is not hanging: answers whose head, and each chunk, come within the read
    timeout (a stream as a whole much longer) eject nothing; a stream that stalls longer
    than it is cut, and its backend ejected (said not to answer in time)."""

    async def go() -> None:
        # (with room: a loaded CI machine delays a stub's answer by a good part of 0.2 s)
        stubs = {n: StubBackend(n, tokens=4, token_delay_s=0.2) for n in ("edge-gpu", "cloud")}
        r, _, c = await router(stubs, limits={"read_timeout_s": 1.0, "eject_s": 5})
        streamed = {**CHAT, "stream": True}  # 0.8 s in all, a chunk every 0.2 s
        short = {**CHAT, "max_tokens": 2}  # the head after 0.4 s
        for body in (streamed, short, streamed, short, streamed, short):
            resp = await c.post("/v1/chat/completions", json=body)
            assert resp.status_code == 200
        assert not r.refusing() and not r.down() and _reachable(r)[0]
        assert "perllm_router_upstream_errors_total{" not in (await c.get("/metrics")).text

        for s in stubs.values():
            s.token_delay_s = 3.0  # the head at once, then nothing for 3 s
        # Over a real server: the answer is aborted, so the client sees it truncated (not
        # a complete 200 without [DONE]).
        async with serving(r) as url, httpx.AsyncClient(base_url=url) as real:
            with pytest.raises(httpx.RemoteProtocolError):
                await real.post("/v1/chat/completions", json=streamed)
        (name, f), *_ = r.refusing().items()
        assert f.timeouts == 1 and f.why == f"backend {name}: answer stalled, no data within 1s"
        assert r.down() == [name] and "does not answer in time" in _reachable(r)[2]
        await r.aclose()

    run(go())


def test_a_backend_answering_a_redirect_is_failing_not_relayed_nor_learned() -> None:
    """A 3xx from a model server (its url wrong: http redirected to https, a moved path)
    was relayed without its Location (a redirect the client could do nothing with) and
    learned as a fast answer. The router follows no redirect (it may point anywhere, and
    a remote tier's token would go along): the backend is failing like one refusing the
    connection (ejected, the request decided again, the condition says why), and with
    none left the client gets a 502 naming the redirect."""
    from perllm.router.status import reachable

    async def redirecting(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        where = [(b"location", b"https://10.1.2.3/v1/chat/completions")]
        await send({"type": "http.response.start", "status": 308, "headers": where})
        await send({"type": "http.response.body", "body": b""})

    async def go() -> None:
        st = _STACK.get()
        moved = await st.enter_async_context(serving(redirecting))
        edge = await st.enter_async_context(serving(StubBackend("edge-gpu")))
        r, _, c = await router(urls={"edge-gpu": edge, "cloud": moved})
        for _ in range(3):
            resp = await c.post("/v1/chat/completions", json=CHAT)
            assert resp.status_code == 200, resp.text
            assert resp.json()["backend"] == "edge-gpu"
        # (learned: the edge's three answers only; the statistics are shared by deciders)
        assert r.down() == ["cloud"] and r.decider.bandit.stats.n.sum() == pytest.approx(3, 0.01)
        ok, _, message = reachable(r.backends, [], r.refusing())
        assert not ok and "backend cloud: HTTP 308, a redirect (not followed" in message
        # (it answers: not "refuses connections", which sends one to the network)
        assert "refuses requests since" in message and "1 refused request(s)" in message
        assert (
            r.metrics.registry.get_sample_value(
                "perllm_router_upstream_errors_total", {"backend": "cloud", "kind": "redirect"}
            )
            == 1.0
        )
        await r.aclose()

        r, _, c = await router(urls={"edge-gpu": moved, "cloud": moved}, limits={"retries": 0})
        resp = await c.post("/v1/chat/completions", json=CHAT)
        assert resp.status_code == 502 and resp.json()["error"]["type"] == "upstream_unavailable"
        assert "HTTP 308, a redirect (not followed" in resp.json()["error"]["message"]
        assert "10.1.2.3" not in resp.text and "location" not in resp.headers
        assert r.inflight == [0, 0] and r.decider.bandit.stats.n.sum() == 0  # none learned
        while len(r.down()) < 2:
            assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 502
        resp = await c.post("/v1/chat/completions", json=CHAT)
        assert resp.status_code == 503 and resp.json()["error"]["message"] == (
            "every backend is left out of decisions: 2 refusing requests (cloud, edge-gpu)"
        )
        await r.aclose()

    run(go())


def test_backends_down_says_why_each_is_out_without_their_addresses() -> None:
    """503 `backends_down` said "every backend refuses connections or does not answer in
    time" whichever it was: now how many are out, and which way each fails (as the
    status condition counts them), by name, never by address."""

    async def go() -> None:
        hang = StubBackend("edge-gpu", hang=True)
        edge = await _STACK.get().enter_async_context(serving(hang))
        urls = {"edge-gpu": edge, "cloud": "http://127.0.0.1:9"}  # (nothing listens there)
        limits = {"read_timeout_s": 0.2, "eject_s": 30, "eject_max_s": 30, "probe": False}
        r, _, c = await router(urls=urls, limits=limits)
        while len(r.down()) < 2:  # the hanging one times out (504), the other is refused
            assert (await c.post("/v1/chat/completions", json=CHAT)).status_code in (503, 504)
        resp = await c.post("/v1/chat/completions", json=CHAT)
        assert resp.status_code == 503 and resp.json()["error"]["type"] == "backends_down"
        said = resp.json()["error"]["message"]
        assert said == (
            "every backend is left out of decisions: 1 refusing connections (cloud), "
            "1 not answering in time (edge-gpu)"
        )
        ready = await c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["error"]["message"] == said
        await r.aclose()

    run(go())
