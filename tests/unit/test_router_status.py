"""The router's `status.routing` and `BackendsReachable` condition in its LLMService: the
shape (pure functions), and the writer against a fake API server with merge-patch
semantics: other writers' conditions kept, conflicts retried, failures visible but
harmless to routing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fake_kube import ApiError, FakeStatusApi
from test_router_discovery import FakeApi, FakeCustom, _chat
from test_router_remote import backend

from perllm.contract import Tier
from perllm.router import status as status_mod
from perllm.router.app import Router
from perllm.router.config import Backend, Link, parse_config
from perllm.router.decision import Ticket
from perllm.router.health import Ejections, Refusing
from perllm.router.serving import serving
from perllm.router.status import (
    CONDITION,
    REFRESH_TICKS,
    StatusWriter,
    merge_condition,
    reachable,
    stale_s,
)
from perllm.router.stub import StubBackend
from perllm.router.tally import combine, combined, routing
from perllm.timefmt import rfc3339

Obj = dict[str, Any]
# Short answers: the deadline (1 s + 0.15 s a token) is near what the edge takes loaded.
CHAT = {"model": "chat", "max_tokens": 8, "messages": [{"role": "user", "content": "hi " * 400}]}
LLMS = ("perllm.io", "v1alpha1", "ns", "llmservices", "chat")


def test_routing_counts_shares_per_tier_and_backend() -> None:
    counts = {"e1": ("edge", 6, 6), "e2": ("edge", 2, 1), "cloud-cluster": ("cloud", 4, 4)}
    recent = {"e1": ("edge", 1, 1), "e2": ("edge", 0, 0), "cloud-cluster": ("cloud", 3, 3)}
    r = routing(counts, recent, 59.6, ["cloud-cluster"], since=0.0)
    assert r["since"] == "1970-01-01T00:00:00Z" and r["router"]
    assert r["requests"] == 12 and r["attainment"] == round(11 / 12, 4)
    assert r["tiers"] == [
        {"tier": "cloud", "requests": 4, "share": round(4 / 12, 4), "attainment": 1.0},
        {"tier": "edge", "requests": 8, "share": round(8 / 12, 4), "attainment": 0.875},
    ]
    assert r["backends"][0] == {
        "name": "cloud-cluster", "tier": "cloud", "requests": 4, "share": round(4 / 12, 4),
        "attainment": 1.0, "remote": True,
    }  # fmt: skip
    assert [b["name"] for b in r["backends"]] == ["cloud-cluster", "e1", "e2"]
    assert r["recent"] == {
        "windowSeconds": 60,
        "requests": 4,
        "attainment": 1.0,
        "tiers": [
            {"tier": "cloud", "requests": 3, "share": 0.75, "attainment": 1.0},
            {"tier": "edge", "requests": 1, "share": 0.25, "attainment": 1.0},
        ],
    }
    empty = routing({}, {}, 0, [], since=0.0)
    assert empty["requests"] == 0 and empty["attainment"] is None and empty["tiers"] == []


def _patch(api: FakeStatusApi, routing_: Obj) -> Obj:
    rv = api.obj["metadata"]["resourceVersion"]
    body = {"metadata": {"resourceVersion": rv}, "status": {"routing": routing_}}
    api.patch_namespaced_custom_object_status(*LLMS, body)
    return api.obj["status"]["routing"]  # type: ignore[no-any-return]


def test_an_unknown_attainment_is_deleted_not_left_from_a_previous_write() -> None:
    """A merge patch merges nested objects: an attainment left out would survive from the
    previous write next to `requests: 0`; it is sent as null, which deletes it."""
    api = FakeStatusApi()
    busy = _patch(api, routing({"e1": ("edge", 2, 1)}, {"e1": ("edge", 2, 1)}, 60, [], 0.0))
    assert busy["recent"]["attainment"] == 0.5 and busy["attainment"] == 0.5
    idle = _patch(api, routing({"e1": ("edge", 2, 1)}, {"e1": ("edge", 0, 0)}, 60, [], 0.0))
    assert idle["recent"]["requests"] == 0 and "attainment" not in idle["recent"]
    assert idle["attainment"] == 0.5 and idle["recent"]["tiers"] == []
    fresh = _patch(api, routing({}, {}, 0, [], since=1.0))  # a new router: nothing yet
    assert fresh["requests"] == 0 and "attainment" not in fresh
    assert "attainment" not in fresh["recent"] and fresh["backends"] == []


def _b(name: str, tier: str) -> Backend:
    hw = "nvidia-l4" if tier == "edge" else "a100-80gb-sxm"
    link = Link(bandwidth_mbps=100, rtt_ms=5)
    return Backend(name=name, url=f"http://{name}:8000", tier=Tier(tier), hardware=hw, link=link)


def test_reachable_names_the_refusing_backends_and_why() -> None:
    members = [_b("e1", "edge"), _b("cloud-cluster", "cloud")]
    no = Refusing(3, 0.0, "backend cloud-cluster: connection refused")
    ok, reason, msg = reachable(members, ["cloud-cluster"], {})
    assert ok and reason == "AllReachable" and "remote tier cloud-cluster" in msg
    ok, reason, msg = reachable(members, ["cloud-cluster"], {"cloud-cluster": no})
    assert not ok and reason == "RemoteUnreachable"
    assert msg.startswith("remote tier cloud-cluster (cloud, http://cloud-cluster:8000) refuses")
    assert "since 1970-01-01T00:00:00Z (3 refusal(s), last: backend cloud-cluster: conn" in msg
    assert msg.endswith("requests go to e1")
    ok, reason, msg = reachable(members, [], {"e1": no})
    assert (ok, reason) == (False, "BackendsEjected") and msg.startswith("e1 (edge")
    ok, reason, msg = reachable(members, [], {"e1": no, "cloud-cluster": no})
    assert (ok, reason) == (False, "NoBackendReachable") and "backends_down" in msg
    assert reachable([], [], {})[:2] == (False, "NoBackends")


def test_a_refusal_streak_keeps_its_start_and_the_last_reason() -> None:
    ej = Ejections(1.0, 5.0)
    ej.refused("a", "first")
    since = ej.refusing()["a"].since
    ej.refused("a", "second")
    assert ej.refusing() == {"a": Refusing(2, since, "second")}
    assert ej.answered("a") and ej.refusing() == {}
    ej.forget([])


def test_timeouts_are_a_streak_like_refusals_and_the_condition_says_which() -> None:
    """Not answering in time backs off like refusing (one streak, one doubling); the
    message tells them apart (and says both when a streak had both)."""
    now = [0.0]
    ej = Ejections(1.0, 8.0, clock=lambda: now[0])
    assert ej.refused("a", "backend a: no response within 30s", timeout=True) == 1.0
    assert ej.refused("a", "backend a: cannot connect: refused") == 2.0
    f = ej.refusing()["a"]
    assert (f.refusals, f.timeouts, f.why) == (1, 1, "backend a: cannot connect: refused")
    members = [_b("a", "edge"), _b("b", "edge")]
    hangs = Refusing(0, 0.0, "backend a: no response within 30s", timeouts=2)
    assert reachable(members, [], {"a": hangs}) == (
        False,
        "BackendsEjected",
        "a (edge, http://a:8000) does not answer in time since 1970-01-01T00:00:00Z "
        "(2 timeout(s), last: backend a: no response within 30s): requests go to b",
    )
    msg = reachable(members, [], {"a": f})[2]
    assert "a (edge, http://a:8000) refuses connections and does not answer in time" in msg
    assert "(1 refusal(s), 1 timeout(s), last: backend a: cannot connect: refused)" in msg
    now[0] = 100.0  # the ejection is over: decided on again, but one probe at a time
    assert ej.out(["a", "b"]) == set() and ej.out(["a", "b"], lambda n: True) == {"a"}
    assert ej.answered("a") and ej.refusing() == {} and ej.out(["a"]) == set()
    assert ej.refused("a", "again", timeout=True) == 1.0  # a fresh streak


def test_merge_condition_replaces_only_its_own_type() -> None:
    ready = {"type": "Ready", "status": "True", "reason": "R", "message": "m",
             "lastTransitionTime": "2026-01-01T00:00:00Z"}  # fmt: skip
    first = merge_condition([ready], CONDITION, (True, "AllReachable", "a"))
    assert first[0] is ready and first[1]["type"] == CONDITION and len(first) == 2
    since = first[1]["lastTransitionTime"]
    first[1]["lastTransitionTime"] = "2026-01-02T00:00:00Z"
    same = merge_condition(first, CONDITION, (True, "AllReachable", "b"))
    assert same[1]["lastTransitionTime"] == "2026-01-02T00:00:00Z"  # no transition
    flipped = merge_condition(first, CONDITION, (False, "RemoteUnreachable", "c"))
    assert flipped[0] is ready and flipped[1]["status"] == "False" and since


def cond_of(api: FakeStatusApi) -> Obj:
    cond = api.cond(CONDITION)
    assert cond is not None, api.obj.get("status")
    return cond


def test_the_status_follows_the_remote_tier_and_keeps_other_conditions(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An edge pod (discovered) and a remote tier (static): requests are counted per tier;
    the remote refusing flips the condition to RemoteUnreachable naming it, its answer
    again flips it back; the operator's `Ready` and other status fields stay."""

    async def go() -> None:
        async with contextlib.AsyncExitStack() as st:
            edge = await st.enter_async_context(serving(StubBackend("edge")))
            remote = contextlib.AsyncExitStack()
            cloud = await remote.enter_async_context(serving(StubBackend("remote")))
            port = int(cloud.rsplit(":", 1)[1])
            cfg = {
                "scenario": "demo",
                "service_class": "chat",
                "discovery": {"service": "ns/chat", "url_template": edge},
                "backends": [backend("cloud-cluster", cloud, "cloud")],
                "limits": {"eject_s": 0.05, "eject_max_s": 0.05},
            }
            r = Router(parse_config(cfg))
            assert r.discovery is not None and r.status_writer is not None
            w, api = r.status_writer, FakeStatusApi(conflicts=1, expect=LLMS)
            r.discovery._api, w._custom = FakeApi(), api
            r.discovery._custom = FakeCustom(_chat())  # (its children: the pods' owner)
            await r.discovery.refresh()
            assert [b.name for b in r.backends] == ["a", "cloud-cluster"]
            c = httpx.AsyncClient(transport=httpx.ASGITransport(app=r), base_url="http://r")
            used = set()
            for _ in range(30):
                resp = await c.post("/v1/chat/completions", json=CHAT)
                assert resp.status_code == 200
                used.add(resp.headers["x-perllm-decision"].split(";")[0])
            assert used == {"backend=a", "backend=cloud-cluster"}, used
            assert await w.tick() and len(api.patches) == 1  # after one conflict, read again
            s = api.obj["status"]
            assert s["child"] == {"k": 1} and s["conditions"][0] == {
                "type": "Ready",
                "status": "True",
            }
            assert cond_of(api)["status"] == "True" and cond_of(api)["reason"] == "AllReachable"
            rt = s["routing"]
            assert rt["requests"] == 30 and {t["tier"] for t in rt["tiers"]} == {"edge", "cloud"}
            assert sum(t["share"] for t in rt["tiers"]) == pytest.approx(1, abs=1e-3)
            assert rt["recent"]["requests"] == 30 and rt["updatedAt"]
            assert not await w.tick() and len(api.patches) == 1  # nothing changed: no write

            await remote.aclose()  # cut the path
            burst = [c.post("/v1/chat/completions", json=CHAT) for _ in range(20)]
            assert {x.status_code for x in await asyncio.gather(*burst)} == {200}
            assert list(r.refusing()) == ["cloud-cluster"]
            assert await w.tick()
            cond = cond_of(api)
            assert (cond["status"], cond["reason"]) == ("False", "RemoteUnreachable")
            assert cond["message"].startswith("remote tier cloud-cluster (cloud, http://")
            assert "requests go to a" in cond["message"]
            edge_n = next(t for t in api.obj["status"]["routing"]["tiers"] if t["tier"] == "edge")
            assert edge_n["requests"] >= 10

            back = await remote.enter_async_context(serving(StubBackend("remote"), port=port))
            assert back == cloud
            for _ in range(20):  # the ejection ends; CS-UCB's next choice of it is the probe
                await asyncio.sleep(0.06)
                burst = [c.post("/v1/chat/completions", json=CHAT) for _ in range(10)]
                await asyncio.gather(*burst)
                if not r.refusing():
                    break
            assert not r.refusing()
            assert await w.tick() and cond_of(api)["status"] == "True"
            assert api.obj["status"]["conditions"][0]["type"] == "Ready"

            # The API refusing the write (RBAC): one log line, a metric, routing goes on.
            api.fail = ApiError(403, "Forbidden")
            caplog.set_level(logging.WARNING, "perllm.router.status")
            await c.post("/v1/chat/completions", json=CHAT)
            assert not await w.tick()
            await c.post("/v1/chat/completions", json=CHAT)
            assert not await w.tick()
            said = [m for m in caplog.messages if "cannot write the status" in m]
            assert len(said) == 1 and "HTTP 403 Forbidden" in said[0], caplog.messages
            resp = await c.post("/v1/chat/completions", json=CHAT)
            assert resp.status_code == 200
            m = (await c.get("/metrics")).text
            assert 'perllm_router_status_writes_total{result="error"} 2.0' in m
            assert 'perllm_router_status_writes_total{result="ok"} 3.0' in m
            await remote.aclose()
            await r.aclose()

    asyncio.run(asyncio.wait_for(go(), 60))


def test_status_writes_can_be_turned_off() -> None:
    cfg = {"scenario": "demo", "service_class": "chat"}
    off = Router(parse_config({**cfg, "discovery": {"service": "ns/chat", "status_interval_s": 0}}))
    assert off.status_writer is None
    assert Router(parse_config({**cfg, "discovery": {"service": "ns/chat"}})).status_writer


def test_the_operators_status_write_keeps_the_routers_condition() -> None:
    """The operator's condition list (`conditions._merged`) carries the router's condition
    over (its patch, `sync_status`, sends only the conditions and its own fields, so
    `status.routing` is never touched)."""
    from perllm_operator.conditions import _merged

    mine = {"type": CONDITION, "status": "False", "reason": "RemoteUnreachable", "message": "m"}
    st = {"conditions": [{"type": "Ready", "status": "True"}, mine], "routing": {"requests": 3}}
    llms = {"metadata": {"name": "chat", "uid": "u"}, "status": st}
    got = _merged("ns", llms, [], False, ("Applied", "ok"), {"Placed": (True, "Placed", "p")})
    assert mine in got and {c["type"] for c in got} == {"Ready", "Placed", "Reconciled", CONDITION}


def test_a_condition_another_writer_dropped_is_written_again() -> None:
    """Nothing changed on the router's side: no write, but every `REFRESH_TICKS` rounds
    one anyway, which restores a condition the operator's write dropped; closing the
    router closes the writer's API client."""

    async def go() -> None:
        async with serving(StubBackend("edge")) as edge:
            cfg = {
                "scenario": "demo",
                "service_class": "chat",
                "discovery": {"service": "ns/chat", "url_template": edge},
            }
            r = Router(parse_config(cfg))
            assert r.discovery is not None and r.status_writer is not None
            w, api = r.status_writer, FakeStatusApi(expect=LLMS)
            r.discovery._api, w._custom = FakeApi(), api
            r.discovery._custom = FakeCustom(_chat())  # (its children: the pods' owner)
            await r.discovery.refresh()
            assert await w.tick() and cond_of(api)["reason"] == "AllReachable"
            api.obj["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
            ticks = [await w.tick() for _ in range(REFRESH_TICKS)]
            assert ticks == [False] * (REFRESH_TICKS - 1) + [True]
            assert cond_of(api)["reason"] == "AllReachable" and len(api.patches) == 2
            assert api.obj["status"]["conditions"][0] == {"type": "Ready", "status": "True"}
            closed: list[int] = []
            w._client = SimpleNamespace(close=lambda: closed.append(1))
            await r.aclose()
            assert closed == [1] and w._custom is None

    asyncio.run(asyncio.wait_for(go(), 30))


def test_backends_gone_without_recent_requests_count_only_in_their_tier() -> None:
    """Discovered pods are renamed at each rollout: the status lists the members and any
    backend with requests in the window; the others only add to the totals."""
    counts = {"old": ("edge", 5, 5), "gone": ("edge", 3, 0), "new": ("edge", 2, 1)}
    recent = {"old": ("edge", 0, 0), "gone": ("edge", 1, 0), "new": ("edge", 2, 1)}
    r = routing(counts, recent, 60, [], since=0.0, members=["new"])
    assert [b["name"] for b in r["backends"]] == ["gone", "new"]
    assert r["requests"] == 10 and r["tiers"][0]["requests"] == 10
    assert r["tiers"][0]["attainment"] == 0.6 and r["backends"][1]["share"] == 0.2
    later = routing(counts, {n: (t, 0, 0) for n, (t, _, _) in counts.items()}, 60, [], 0.0, [])
    assert later["backends"] == [] and later["tiers"] == r["tiers"]
    assert [b["name"] for b in routing(counts, recent, 60, [], 0.0)["backends"]] == [
        "gone", "new", "old",
    ]  # fmt: skip


def test_the_load_of_backends_that_left_is_forgotten_once_idle() -> None:
    t = Ticket(0, 0, True, 1.0, 1.0, 0.5, 0.01, False, 0.1, 2.0)
    r = Router(parse_config({"scenario": "demo", "service_class": "chat",
                             "backends": [backend("e1", "http://e1:8000", "edge")]}))  # fmt: skip
    r.set_backends([_b("e1", "edge"), _b("e2", "edge")])
    key = r.backlog("e1").add(0.0, t)
    r.set_backends([_b("e3", "edge")])  # a rollout: e1 busy, e2 idle
    assert sorted(r._inflight) == ["e1", "e3"]
    r.backlog("e1").done(key, 1.0, prefilled=False)
    r.set_backends([_b("e3", "edge"), _b("e4", "edge")])
    assert sorted(r._inflight) == ["e3", "e4"] and r.inflight == [0, 0]


class Replica:
    """What a `StatusWriter` reads of its router: per backend the judged requests and
    those met (`count`), the remote tiers, the refusing backends."""

    def __init__(self, remote: tuple[str, ...] = ("cloud-cluster",)) -> None:
        self.backends = [_b("e1", "edge"), _b("cloud-cluster", "cloud")]
        self.static = [b for b in self.backends if b.name in remote]
        self.counts: dict[str, tuple[int, int]] = {}
        self.down: dict[str, Refusing] = {}
        self.discovery = None
        ok = SimpleNamespace(inc=lambda: None)
        self.metrics = SimpleNamespace(
            served=self.served, gone={}, status_writes=SimpleNamespace(labels=lambda _: ok)
        )

    def served(self) -> list[SimpleNamespace]:
        tiers = {b.name: b.tier.value for b in self.backends}
        return [SimpleNamespace(name=n, tier=tiers[n], requests=r, met_requests=m)
                for n, (r, m) in self.counts.items()]  # fmt: skip

    def count(self, name: str, requests: int, met: int) -> None:
        r, m = self.counts.get(name, (0, 0))
        self.counts[name] = (r + requests, m + met)

    def refusing(self) -> dict[str, Refusing]:
        return dict(self.down)

    def ca_errors(self) -> dict[str, str]:
        return {}


def _writer(api: FakeStatusApi, pod: str) -> tuple[Replica, StatusWriter]:
    rep = Replica()
    w = StatusWriter(rep, "ns", "chat")  # type: ignore[arg-type]
    w.pod, w._custom = pod, api
    return rep, w


def _tiers(rt: Obj) -> dict[str, int]:
    return {t["tier"]: t["requests"] for t in rt["tiers"]}


def test_replicas_of_one_router_sum_their_counts_and_lose_none() -> None:
    """Two replicas write interleaved, one between the other's read and its patch (a
    409: read again): the totals, tiers and backends are the sum of both, each keeps its
    own entry, and the condition stays theirs combined (no flip with the last writer)."""

    async def go() -> None:
        api = FakeStatusApi(expect=LLMS)
        a, wa = _writer(api, "router-a")
        b, wb = _writer(api, "router-b")
        a.count("e1", 6, 6)
        a.count("cloud-cluster", 2, 2)
        assert await wa.tick()
        b.count("e1", 3, 2)
        b.count("cloud-cluster", 1, 1)
        a.count("e1", 4, 3)  # a writes again in the gap of b's write
        api.before_patch = lambda: asyncio.run(wa.tick())
        assert await wb.tick() and api.refused == 1
        rt = api.obj["status"]["routing"]
        assert rt["requests"] == 16 and rt["attainment"] == round(14 / 16, 4)
        assert _tiers(rt) == {"edge": 13, "cloud": 3} and rt["router"] == "router-b"
        by_name = {x["name"]: x["requests"] for x in rt["backends"]}
        assert by_name == {"e1": 13, "cloud-cluster": 3}
        assert rt["recent"]["requests"] == 16 and sorted(rt["routers"]) == ["router-a", "router-b"]
        assert {r: e["backends"][1]["requests"] for r, e in rt["routers"].items()} == {
            "router-a": 10,
            "router-b": 3,
        }  # rows sorted by name: cloud-cluster, e1
        a.count("cloud-cluster", 5, 5)
        assert await wa.tick()
        rt = api.obj["status"]["routing"]
        assert rt["requests"] == 21 and _tiers(rt) == {"edge": 13, "cloud": 8}
        assert rt["router"] == "router-a" and cond_of(api)["reason"] == "AllReachable"

    asyncio.run(asyncio.wait_for(go(), 30))


def test_a_replica_not_heard_from_is_dropped_with_its_requests() -> None:
    """An entry older than `stale_s` (a replica scaled down or dead) is deleted by the next
    writer (null in the merge patch) and leaves the totals and the condition; one younger
    stays counted."""

    async def go() -> None:
        api = FakeStatusApi(expect=LLMS)
        a, wa = _writer(api, "router-a")
        b, wb = _writer(api, "router-b")
        c, wc = _writer(api, "router-c")
        a.count("e1", 5, 5)
        a.down = {"e1": Refusing(1, 0.0, "refused")}
        b.count("e1", 2, 2)
        c.count("cloud-cluster", 1, 1)
        for w in (wa, wb):
            assert await w.tick()
        assert api.obj["status"]["routing"]["requests"] == 7 and cond_of(api)["status"] == "False"
        routers = api.obj["status"]["routing"]["routers"]
        limit = stale_s(wc.interval_s)
        routers["router-a"]["updatedAt"] = rfc3339(time.time() - limit - 5)
        routers["router-b"]["updatedAt"] = rfc3339(time.time() - limit + 30)
        assert await wc.tick()
        assert api.patches[-1]["status"]["routing"]["routers"]["router-a"] is None
        rt = api.obj["status"]["routing"]
        assert sorted(rt["routers"]) == ["router-b", "router-c"]
        assert rt["requests"] == 3 and _tiers(rt) == {"edge": 2, "cloud": 1}
        assert cond_of(api)["status"] == "True"

    asyncio.run(asyncio.wait_for(go(), 30))


def test_the_condition_combines_the_replicas_views() -> None:
    """False while any replica sees a backend fail (the worst reason, naming who sees
    what), whichever wrote last; True again only when all see every backend answer."""

    async def go() -> None:
        api = FakeStatusApi(expect=LLMS)
        a, wa = _writer(api, "router-a")
        _, wb = _writer(api, "router-b")
        a.down = {"cloud-cluster": Refusing(2, 0.0, "backend cloud-cluster: refused")}
        assert await wa.tick() and await wb.tick()  # b, fine, writes last
        cond = cond_of(api)
        assert (cond["status"], cond["reason"]) == ("False", "RemoteUnreachable")
        assert cond["message"].startswith("router router-a: RemoteUnreachable: remote tier ")
        assert cond["message"].endswith(" | router router-b: all backends answer")
        a.down = {}
        assert await wa.tick()
        cond = cond_of(api)
        assert (cond["status"], cond["reason"]) == ("True", "AllReachable")
        assert cond["message"].startswith("all 2 routers reach every backend; router-a: 2 ")

    asyncio.run(asyncio.wait_for(go(), 30))
    ok = (True, "AllReachable", "fine")
    ej = (False, "BackendsEjected", "e1 refuses")
    assert combined({"a": ej}, "a") == ej  # one replica: its view as it is
    assert combined({"a": ej, "b": ej, "c": (False, "NoBackendReachable", "x"), "d": ok}, "d") == (
        False,
        "NoBackendReachable",
        "router c: NoBackendReachable: x | router a, b: BackendsEjected: e1 refuses"
        " | router d: all backends answer",
    )  # the worst view first


def test_one_replica_writes_what_it_wrote_alone_before() -> None:
    """A single replica: the aggregate fields are `routing` of its counts and the condition
    its own view, exactly; `routers` holds its one entry."""

    async def go() -> None:
        api = FakeStatusApi(expect=LLMS)
        a, wa = _writer(api, "router-a")
        a.count("e1", 6, 5)
        a.count("cloud-cluster", 3, 3)
        a.down = {"cloud-cluster": Refusing(1, 0.0, "refused")}
        assert await wa.tick()
        rt = dict(api.obj["status"]["routing"])
        assert set(rt.pop("routers")) == {"router-a"} and rt.pop("updatedAt")
        counts = {"e1": ("edge", 6, 5), "cloud-cluster": ("cloud", 3, 3)}
        window = rt["recent"]["windowSeconds"]
        alone = routing(counts, counts, window, ["cloud-cluster"], wa._since, ["e1"], "router-a")
        assert rt == alone
        mine = reachable(a.backends, ["cloud-cluster"], a.down)  # type: ignore[arg-type]
        assert (cond_of(api)["status"] == "True", cond_of(api)["reason"]) == mine[:2]
        assert cond_of(api)["message"] == mine[2]

    asyncio.run(asyncio.wait_for(go(), 30))


def test_an_entry_it_cannot_read_is_left_out_not_a_crash(caplog: pytest.LogCaptureFixture) -> None:
    """Another version's or a hand edit's entry: left out of the totals, left in place
    while fresh, one log line; `routers` not an object is replaced."""

    async def go() -> None:
        api = FakeStatusApi(expect=LLMS)
        a, wa = _writer(api, "router-a")
        a.count("e1", 2, 2)
        api.obj["status"]["routing"] = {"routers": ["junk"]}
        assert await wa.tick() and api.obj["status"]["routing"]["requests"] == 2
        now = rfc3339(time.time())
        odd = {"updatedAt": now, "backends": [{"tier": "edge", "requests": "many"}]}
        api.obj["status"]["routing"]["routers"]["router-x"] = odd
        a.count("e1", 1, 1)
        caplog.set_level(logging.WARNING, "perllm.router.status")
        assert await wa.tick()
        rt = api.obj["status"]["routing"]
        assert rt["requests"] == 3 and rt["routers"]["router-x"] == odd
        assert any("router-x" in m and "unreadable" in m for m in caplog.messages)

    asyncio.run(asyncio.wait_for(go(), 30))


def test_a_replicas_own_entry_stays_readable_when_a_backend_comes_back_or_the_clock_steps() -> None:
    """A pod unready for a moment is retired (its counts move into its tier's `gone`) and
    comes back under its name counting from 0; the window's base still held its old
    counts, so its recent requests were negative and the replica's own entry unreadable:
    its requests left the totals and the condition said "no router has written". Same
    with a clock stepped back past the window's start (a negative window)."""
    r = Router(parse_config({"scenario": "demo", "service_class": "chat",
                             "backends": [backend("e1", "http://e1:8000", "edge")]}))  # fmt: skip
    r.set_backends([_b("e1", "edge"), _b("e2", "edge")])
    w = StatusWriter(r, "ns", "chat", pod="router-a")
    t = w._since
    mine, _ = w.mine(t - 5)  # the clock stepped back 5 s since start
    assert mine["windowSeconds"] == 0 and combine({"a": mine}, "a")[2] == []
    for _ in range(5):
        r.metrics.backend("e1", "edge").judge(True)
    w.mine(t + 10)
    w.mine(t + 75)  # the window starts at t + 10: e1 at 5
    r.set_backends([_b("e2", "edge")])  # e1 unready: retired
    r.set_backends([_b("e1", "edge"), _b("e2", "edge")])  # ready again
    r.metrics.backend("e1", "edge").judge(True)
    mine, _ = w.mine(t + 80)
    rows = {row.get("name"): row for row in mine["backends"]}
    assert (rows["e1"]["recentRequests"], rows["e1"]["requests"]) == (1, 1)
    assert (rows[None]["recentRequests"], rows[None]["requests"]) == (0, 5)  # e1's old
    status, cond, unread = combine({"router-a": mine}, "router-a")
    assert unread == [] and status["requests"] == 6 and status["recent"]["requests"] == 1
    assert cond[:2] == (True, "AllReachable")


def test_staleness_outlasts_whole_second_stamps_and_a_date_ahead_does_not_count_for_ever() -> None:
    """With a short `status_interval_s` (0.02 s: 3 periods were 0.72 s), a live replica's
    entry, stamped in whole seconds and written a moment ago, read as stale: every writer
    deleted the others' and the totals were the last writer's again. An entry dated far
    ahead (a hand edit) was never stale and counted for ever; one a few seconds ahead (a
    clock a little fast) still counts."""

    async def go() -> None:
        api = FakeStatusApi(expect=LLMS)
        a, wa = _writer(api, "router-a")
        wa.interval_s = 0.02
        assert stale_s(wa.interval_s) >= 60 and stale_s(5.0) == 180
        a.count("e1", 1, 1)
        _, wb = _writer(api, "router-b")
        _, wc = _writer(api, "router-c")
        for w, n in ((wb, 2), (wc, 4)):
            w.router.count("e1", n, n)  # type: ignore[attr-defined]
            assert await w.tick()
        routers = api.obj["status"]["routing"]["routers"]
        routers["router-b"]["updatedAt"] = rfc3339(time.time() - 2)
        routers["router-c"]["updatedAt"] = rfc3339(time.time() + 365 * 86400)
        assert await wa.tick()
        rt = api.obj["status"]["routing"]
        assert sorted(rt["routers"]) == ["router-a", "router-b"] and rt["requests"] == 3
        routers = api.obj["status"]["routing"]["routers"]
        routers["router-b"]["updatedAt"] = rfc3339(time.time() + 10)
        a.count("e1", 1, 1)
        assert await wa.tick() and api.obj["status"]["routing"]["requests"] == 4

    asyncio.run(asyncio.wait_for(go(), 30))


def test_the_combined_condition_names_a_few_views_not_every_replica() -> None:
    """Every replica seeing a remote tier down has its own message (its `since`, its
    count): the combined message listed all of them, 300 replicas' in one condition
    (tens of KB), rewritten at every write. It names the worst views first, up to 5, and
    counts the rest."""
    down = (False, "RemoteUnreachable")
    views = {f"r{i:03}": (*down, f"cloud refuses since {i}") for i in range(300)}
    views["r999"] = (False, "NoBackendReachable", "all refuse")
    views |= {f"ok{i}": (True, "AllReachable", "fine") for i in range(20)}
    ok, reason, msg = combined(views, "r000")
    assert (ok, reason) == (False, "NoBackendReachable") and len(msg) < 1000
    assert msg.startswith("router r999: NoBackendReachable: all refuse | router r000: ")
    assert "296 more router(s) see a backend fail" in msg
    assert msg.endswith("router ok0, ok1, ok10, ok11, ok12 (+15 more): all backends answer")


def test_a_replica_is_judged_stale_by_its_own_period() -> None:
    """During a rollout that changes `status_interval_s`, a replica writing every 5 s (stale
    after 180 s) deleted the live entry of one writing every 20 s (which may go 240 s
    unwritten): each entry declares its `staleSeconds`, and the others go by it (within
    bounds: a hand-written year is not believed)."""

    async def go() -> None:
        api = FakeStatusApi(expect=LLMS)
        a, wa = _writer(api, "router-a")
        _, wslow = _writer(api, "router-slow")
        wslow.interval_s = 20.0
        _, wyear = _writer(api, "router-year")
        for w, n in ((wslow, 2), (wyear, 4)):
            w.router.count("e1", n, n)  # type: ignore[attr-defined]
            assert await w.tick()
        routers = api.obj["status"]["routing"]["routers"]
        assert routers["router-slow"]["staleSeconds"] == 720
        routers["router-slow"]["updatedAt"] = rfc3339(time.time() - 200)
        routers["router-year"]["staleSeconds"] = 365 * 86400
        routers["router-year"]["updatedAt"] = rfc3339(time.time() - 30 * 86400)
        a.count("e1", 1, 1)
        assert await wa.tick()
        rt = api.obj["status"]["routing"]
        assert sorted(rt["routers"]) == ["router-a", "router-slow"] and rt["requests"] == 3
        assert rt["routers"]["router-a"]["staleSeconds"] == round(stale_s(wa.interval_s))

    asyncio.run(asyncio.wait_for(go(), 30))


def test_routers_holds_a_bounded_number_of_entries(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`routers` took an entry from every replica that wrote, so scaling the router's
    Deployment up grew the status without bound. Past `MAX_ROUTERS` fresh entries a
    replica adds none: the totals and the condition stay those of the replicas counted,
    and it marks `uncounted` (naming itself, said once in its log) until a slot frees (a
    stale entry, deleted first), when it takes it. Entries over the cap (replicas without
    it) are cut to it, the same ones by every writer."""
    monkeypatch.setattr(status_mod, "MAX_ROUTERS", 3)
    caplog.set_level(logging.INFO, "perllm.router.status")

    async def go() -> None:
        api = FakeStatusApi(expect=LLMS)
        ws = {p: _writer(api, p) for p in ("router-a", "router-b", "router-c", "router-d")}
        for i, (rep, w) in enumerate(ws.values()):
            rep.count("e1", i + 1, i + 1)
            assert await w.tick()
        rt = api.obj["status"]["routing"]
        assert sorted(rt["routers"]) == ["router-a", "router-b", "router-c"]
        assert rt["requests"] == 6 and rt["router"] == "router-c"
        assert rt["uncounted"]["router"] == "router-d" and rt["uncounted"]["limit"] == 3
        assert "conditions" not in api.patches[-1]["status"]  # d's view left to the others
        flips = [m for m in caplog.messages if "BackendsReachable=" in m]
        assert len(flips) == 3  # a, b and c wrote the condition; d, left out, says none
        assert cond_of(api)["message"].startswith("all 3 routers reach every backend")
        ws["router-d"][0].count("e1", 1, 1)
        assert await ws["router-d"][1].tick()
        warned = [m for m in caplog.messages if "router-d" not in m and "left out" in m]
        assert len(warned) == 1 and "chat holds 3 other routers' entries" in warned[0]
        # b stops writing: stale, deleted, and d takes its place (its mark deleted)
        routers = api.obj["status"]["routing"]["routers"]
        routers["router-b"]["updatedAt"] = rfc3339(time.time() - stale_s(5.0) - 5)
        ws["router-d"][0].count("e1", 1, 1)
        assert await ws["router-d"][1].tick()
        rt = api.obj["status"]["routing"]
        assert sorted(rt["routers"]) == ["router-a", "router-c", "router-d"]
        assert rt["requests"] == 1 + 3 + 6 and "uncounted" not in rt
        assert any("counts this replica again" in m for m in caplog.messages)
        assert len([m for m in caplog.messages if "BackendsReachable=" in m]) == 4  # d's now
        # entries of 40 replicas (a version without the cap): cut to 3, the first by name
        now = rfc3339(time.time())
        entry = dict(rt["routers"]["router-a"], updatedAt=now)
        old = {f"old-{i:02}": entry for i in range(40)}
        api.obj["status"]["routing"]["routers"] = {**old, "router-a": entry}
        ws["router-a"][0].count("e1", 1, 1)
        assert await ws["router-a"][1].tick()
        rt = api.obj["status"]["routing"]
        assert sorted(rt["routers"]) == ["old-00", "old-01", "router-a"]

    asyncio.run(asyncio.wait_for(go(), 30))


def test_the_uncounted_mark_of_a_replica_gone_outlives_a_period_not_stale_s() -> None:
    """The mark of a replica left out, then gone, is kept while it could still be marking
    (it marks at least once a refresh period; kept for `stale_s`, 3 periods, as an entry)
    and deleted by a counted writer after that."""
    _, w = _writer(FakeStatusApi(expect=LLMS), "router-a")
    now = time.time()
    mine = {**w.mine(now)[0], "updatedAt": rfc3339(now)}
    period = status_mod.REFRESH_TICKS * w.interval_s

    def mark(age: float) -> Obj:
        return {"uncounted": {"router": "router-z", "at": rfc3339(now - age), "limit": 32}}

    assert "uncounted" not in w.merged(mark(period + 5), mine, now)[0]  # kept
    assert w.merged(mark(stale_s(w.interval_s) + 5), mine, now)[0]["uncounted"] is None
    # its own mark, now that it is counted, at once
    own = {"uncounted": {"router": "router-a", "at": rfc3339(now), "limit": 32}}
    assert w.merged(own, mine, now)[0]["uncounted"] is None
