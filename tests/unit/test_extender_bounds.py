"""Every map of the extender is bounded: learned state per live service (deleted ones
expire), the persisted state's size, the node cache, tracked placements, and node lookups
for names-only requests (once per name, off the event loop, within a budget)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from perllm_extender import ExtenderConfig, create_app
from perllm_extender.bandits import ArmStore, service_key
from perllm_extender.decide import Scheduler
from perllm_extender.learning import Learner, Placement
from perllm_extender.live import Live
from perllm_extender.lookup import BUSY, MISSING, TIMED_OUT
from perllm_extender.nodes import NodeCache
from perllm_extender.state import MemoryStore, StateKeeper, dumps
from test_extender_fakes import NAMES, NODES, StubProm, args, pod, spec

from perllm.profiles import default_catalogue

CAT = default_catalogue()
A, B = spec("alpha", 600.0), spec("beta", 600.0)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def scheduler(grace_s: float = 100.0) -> tuple[Scheduler, Clock]:
    sched = Scheduler(CAT, state_grace_s=grace_s)
    clock = Clock()
    sched.arms.clock = clock
    for n in NODES:
        sched.nodes.upsert(n)
    for s in (A, B):
        sched.services.add(s, "llm")
    return sched, clock


def decide(sched: Scheduler, s: object, i: int, names: list[str] = NAMES) -> None:
    d = sched.decide(pod(s, name=f"p{i}", uid=f"u{i}"), None, names, "filter")  # type: ignore[arg-type]
    assert d.chosen is not None


def test_a_deleted_service_expires_after_the_grace_period() -> None:
    sched, clock = scheduler(grace_s=100.0)
    ka, kb = service_key("llm", A), service_key("llm", B)
    decide(sched, A, 0)
    decide(sched, B, 1)
    decide(sched, B, 2, NAMES[:3])  # a second node set of B
    assert len(sched.arms) == 2 and len(sched.bandits) == 3
    sched.services.remove(B.name, "llm")  # the LLMService is deleted
    assert sched.arms.expire() == set()  # first seen gone now: the grace period starts
    clock.t += 99.0
    assert sched.arms.expire() == set()
    clock.t += 1.0
    assert sched.arms.expire() == {kb}
    assert sched.arms.peek(kb) is None and sched.arms.peek(ka) is not None
    assert len(sched.bandits) == 1  # B's CSUCBs went with its statistics
    clock.t += 10_000.0
    assert sched.arms.expire() == set()  # a live service never expires, used or not
    assert sched.arms.expired == 1


def test_a_used_service_without_an_llmservice_is_kept_while_used() -> None:
    """Pods annotated without an LLMService: kept while decided within the grace period."""
    sched, clock = scheduler(grace_s=100.0)
    sched.services.remove(A.name, "llm")
    decide(sched, A, 0)
    for i in range(1, 4):
        clock.t += 60.0
        sched.arms.expire()
        decide(sched, A, i)
    assert sched.arms.peek(service_key("llm", A)) is not None
    clock.t += 100.0
    assert sched.arms.expire() == {service_key("llm", A)}


def test_at_most_max_services_the_least_recently_used_go_first() -> None:
    clock = Clock()
    arms = ArmStore(max_services=3, clock=clock, live=lambda k: k == "ns/live@m")
    for k in ("ns/live@m", "ns/a@m", "ns/b@m", "ns/c@m"):
        clock.t += 1.0
        arms.stats(k)
    assert set(arms.keys()) == {"ns/live@m", "ns/b@m", "ns/c@m"}
    assert arms.keys()[0] == "ns/live@m"  # live first, then most recently used


def many_services(n: int) -> ArmStore:
    """`n` services with learned state, the first used longest ago."""
    sched, clock = scheduler()
    for i in range(n):
        clock.t += 1.0
        decide(sched, spec(f"svc{i:03d}", 600.0), i)
    return sched.arms


def test_the_saved_state_stays_within_its_budget_oldest_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    arms = many_services(30)
    full, dropped = dumps(arms)
    assert dropped == [] and len(json.loads(full)["services"]) == 30
    store = MemoryStore()
    budget = len(full) // 3
    sizes: list[tuple[int, int]] = []
    keeper = StateKeeper(
        store, arms, budget_bytes=budget, warn_bytes=budget // 2,
        on_size=lambda b, n: sizes.append((b, n)),
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, "perllm.extender.state"):
        assert keeper.save() is True  # never fails: leaves services out instead
        assert keeper.save() is True
    assert store.text is not None and len(store.text.encode()) <= budget
    kept = json.loads(store.text)["services"]
    assert 0 < len(kept) < 30 and keeper.left_out == 30 - len(kept)
    # the most recently used are the ones kept
    assert set(kept) == {
        service_key("llm", spec(f"svc{i:03d}", 600.0)) for i in range(30)[-len(kept) :]
    }
    assert sizes[-1] == (len(store.text.encode()), 30 - len(kept))
    assert keeper.size_warning and "left out" in keeper.size_warning
    assert sum("left out" in r.message for r in caplog.records) == 1  # once, not every save
    # the saved part restores as it was
    again = ArmStore()
    assert StateKeeper(MemoryStore(store.text), again).restore() == len(kept)


def test_near_the_budget_warns_in_readyz_and_metrics() -> None:
    store = MemoryStore()
    app = create_app(ExtenderConfig(state_store=store, prometheus=StubProm()))
    live: Live = app.state.live
    for n in NODES:
        live.scheduler.nodes.upsert(n)
    live.scheduler.services.add(A)
    c = TestClient(app)
    c.post("/scheduler/filter", json=args(pod(A)))
    assert live.keeper is not None
    live.keeper.warn_bytes = 100  # a small warning threshold, the budget as it is
    assert c.post("/state/save").json()["saved"] is True
    ready = c.get("/readyz").json()
    assert ready["degraded"] and "near its" in ready["reason"]
    text = c.get("/metrics").text
    assert f"perllm_extender_state_bytes {float(len(store.text or ''))}" in text
    assert "perllm_extender_state_services_left_out 0.0" in text
    assert "perllm_extender_learned_services 1.0" in text


def test_node_cache_holds_at_most_max_nodes() -> None:
    cache = NodeCache(max_nodes=3)
    for n in NODES[:5]:
        cache.upsert(n)
    assert len(cache) == 3 and cache.get(NAMES[0]) is None and cache.get(NAMES[4]) is not None
    cache.ingest(NODES, CAT)
    assert len(cache) == 3
    cache.replace(NODES)
    assert len(cache) == 3


def test_tracked_placements_are_bounded() -> None:
    learner = Learner(None, lambda _o: 0, max_tracked=3)
    sched, _ = scheduler()
    sched.listeners.append(lambda ev: learner.record(Placement.of(ev)))  # type: ignore[arg-type]
    for i in range(5):
        decide(sched, A, i)
    assert list(learner.tracked) == ["llm/p2", "llm/p3", "llm/p4"]
    assert all(len(p.predicted) <= 32 for p in learner.tracked.values())


class SlowSource:
    """A node source that knows nothing and takes `delay_s` per read (an API server)."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s, self.calls, self._lock = delay_s, 0, threading.Lock()

    def __call__(self, name: str) -> None:
        time.sleep(self.delay_s)
        with self._lock:
            self.calls += 1


def test_unknown_names_are_read_once_and_remembered_missing() -> None:
    src = SlowSource(0.0)
    c = TestClient(create_app(ExtenderConfig(node_source=src)))
    for n in NODES:
        c.app.state.scheduler.nodes.upsert(n)  # type: ignore[attr-defined]
    ghosts = [f"ghost-{i}" for i in range(20)]
    body = c.post("/scheduler/filter", json=args(pod(A, uid="a"), [*NAMES, *ghosts])).json()
    assert all(body["FailedNodes"][g] == MISSING for g in ghosts) and src.calls == 20
    body = c.post("/scheduler/filter", json=args(pod(A, uid="b"), [*NAMES, *ghosts])).json()
    assert all(body["FailedNodes"][g] == MISSING for g in ghosts)
    assert src.calls == 20  # the negative cache answered


def test_5000_unknown_names_answer_within_the_budget_and_healthz_stays_up() -> None:
    """A names-only /filter naming 5,000 nodes nobody knows, against a slow API (5 ms per
    read, 8 reads at a time: ~3 s for all) answers within the lookup budget (0.5 s) plus
    the decision, failing what is not read yet with a reason; meanwhile /healthz answers
    at once (the reads run off the event loop)."""
    src = SlowSource(0.005)
    app = create_app(ExtenderConfig(node_source=src))
    sched: Scheduler = app.state.scheduler
    for n in NODES:
        sched.nodes.upsert(n)
    ghosts = [f"ghost-{i:04d}" for i in range(5000)]

    async def run() -> tuple[float, httpx.Response, list[float]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as c:
            health: list[float] = []

            async def probe() -> None:
                await asyncio.sleep(0.05)
                for _ in range(5):
                    t0 = time.perf_counter()
                    assert (await c.get("/healthz")).status_code == 200
                    health.append(time.perf_counter() - t0)
                    await asyncio.sleep(0.05)

            t0 = time.perf_counter()
            task = asyncio.create_task(probe())
            r = await c.post("/scheduler/filter", json=args(pod(A), [*NAMES, *ghosts]))
            took = time.perf_counter() - t0
            await task
            return took, r, health

    took, r, health = asyncio.run(run())
    assert r.status_code == 200
    failed = r.json()["FailedNodes"]
    assert set(ghosts) <= set(failed) and r.json()["NodeNames"]
    # some read (missing), the others still queued, past max_pending (2,000) not queued
    assert {failed[g] for g in ghosts} == {TIMED_OUT, MISSING, BUSY}
    assert sum(failed[g] == BUSY for g in ghosts) == 3000
    assert took < 0.5 + 1.0, took
    assert max(health) < 0.2, health
    assert src.calls < 5000  # not every read was made before the answer


def test_close_cancels_queued_lookups_and_lookups_still_work_after() -> None:
    # Reads of 0.2 s: none may end before `resolve` has looked (budget 0), which takes a
    # few ms to queue 400 reads and start the workers, and more on a loaded machine (at
    # 0.01 s some ended first and came back MISSING, not TIMED_OUT).
    src = SlowSource(0.2)
    sched = Scheduler(CAT, node_source=src, lookup_budget_s=0.0)
    lk = sched.sets.lookup
    assert lk is not None
    got = lk.resolve([f"g{i}" for i in range(400)])
    assert set(got.values()) == {TIMED_OUT}
    sched.close()
    at_close = src.calls
    time.sleep(0.2)
    # Only the reads already running (one per worker) finish; the queued ones were cancelled.
    assert src.calls <= at_close + lk.workers
    assert src.calls < 400
    lk.budget_s = 1.0
    assert lk.resolve(["late"]) == {"late": MISSING}


def test_nothing_expires_as_deleted_before_the_llmservice_informer_has_listed() -> None:
    """RBAC refusing the LLMService list, or the API server down at start: the registry is
    empty, so every service looked deleted, and an idle one's learning was forgotten after
    the grace period (and left out of the next save) while its LLMService was there."""
    import kubernetes

    app = create_app(ExtenderConfig(api_client=kubernetes.client.ApiClient(), verify_pods=False))
    live: Live = app.state.live
    sched = live.scheduler
    for n in NODES:
        sched.nodes.upsert(n)
    clock = Clock()
    sched.arms.clock, sched.arms.grace_s = clock, 100.0
    decide(sched, A, 0)  # from the pod's annotations: no LLMService known
    ka = service_key("llm", A)
    svc_inf = next(i for i in live.informers if i.name == "llmservices")
    assert not svc_inf.synced
    for _ in range(3):  # the periodic sweeps (saves, decisions) while it cannot list
        assert sched.arms.expire() == set()
        clock.t += 5_000.0
    assert sched.arms.expire() == set() and sched.arms.peek(ka) is not None
    svc_inf.synced = True  # listed: A has no LLMService, its grace period starts now
    assert sched.arms.expire() == set()
    clock.t += 100.0
    assert sched.arms.expire() == {ka}


def test_decisions_kept_for_reuse_expire_with_the_reuse_window() -> None:
    """A filter's decision is kept for its prioritize (30 s) but was dropped only past 4,096
    pods: each holds a reason per candidate (~150 KB at 5,000 nodes), ~600 MB for the
    extender under its chart's 512 Mi limit. Past the window it can never be reused."""
    sched = Scheduler(CAT, reuse_s=0.5)
    for n in NODES:
        sched.nodes.upsert(n)
    sched.services.add(A, "llm")
    for i in range(3):
        decide(sched, A, i)
    time.sleep(0.6)
    decide(sched, A, 3)
    assert list(sched._recent) == ["u3"]
    # a decision still in the window is reused as before
    again = sched.decide(pod(A, name="p3", uid="u3"), None, NAMES, "prioritize")
    assert again.reused


def test_the_decision_log_keeps_at_most_32_nodes_of_each_map() -> None:
    """`/decisions` kept a reason and a score per candidate: ~150 KB a decision at 5,000
    nodes, 150 MB for its 1,000 entries. It keeps 32 of each (the explanation's nodes
    first, the best scores) and says how many there were."""
    sched, _ = scheduler()
    ghosts = [f"ghost-{i:04d}" for i in range(500)]
    d = sched.decide(pod(A, name="p", uid="u"), None, [*NAMES, *ghosts], "filter")
    assert d.chosen is not None and len(d.failed) >= 500
    e = sched.log[-1]
    assert e["nodes_total"] == len(NAMES) + 500 and e["failed_total"] == len(d.failed)
    assert len(e["failed"]) == 32 and len(e["scores"]) <= 32
    assert all(e["failed"][n] == d.failed[n] for n in e["failed"])
    assert next(iter(e["scores"])) == d.chosen == e["chosen"]  # the best score first
    shown = [c["node"] for c in e["explanation"]["candidates"]]
    assert [n for n in e["failed"] if n in shown] == [n for n in shown if n in d.failed][:32]
    assert len(json.dumps(e)) < 20_000
