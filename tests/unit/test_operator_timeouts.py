"""Every Kubernetes API call of the operator has a time limit: against an API server that
accepts the connection and never answers (a stalled load balancer, a partition), each call
fails within the limit instead of holding its handler's thread, and with a timer's the
LLMService's deletion, for good."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import kopf
import kubernetes
import pytest
from perllm_operator import conditions, kube, reads, reconcile, render

Obj = dict[str, Any]


@pytest.fixture
def silent_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The client's default configuration points at a server that accepts and is silent;
    its connections are closed at the end, so no call outlives the test."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    cfg = kubernetes.client.Configuration()
    cfg.host = f"http://127.0.0.1:{srv.getsockname()[1]}"
    monkeypatch.setattr(kubernetes.client.Configuration, "_default", cfg)
    monkeypatch.setattr(kube, "REQUEST_TIMEOUT_S", 0.2)
    try:
        yield
    finally:
        stop.set()
        t.join()
        for c in held:
            c.close()
        srv.close()


def _deployment() -> Obj:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x", "namespace": "ns"},
    }


def _account() -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "x-model", "namespace": "ns"},
    }


def _svc() -> Obj:
    return {"metadata": {"name": "x", "namespace": "ns", "uid": "uid-1"}}


class _Logger:
    def warning(self, *a: Any) -> None: ...


def _follow() -> None:
    """follow_tier says a read left unanswered (`reads`: a log line and an Event) and
    returns, the next tick trying again: the failure it recorded is raised here."""
    reads.forget("uid-1")
    with mock.patch.object(kopf, "warn", lambda *a, **k: None):
        reconcile.follow_tier(kopf.Body(_svc()), _svc(), _Logger())
    failed = reads.pending("uid-1")
    reads.forget("uid-1")
    if failed is not None:
        raise RuntimeError(failed[1])


DEP = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"}
SA = {"apiVersion": "v1", "kind": "ServiceAccount", "name": "x-model"}
ISVC = {"apiVersion": f"{render.KSERVE_GROUP}/v1beta1", "kind": "InferenceService", "name": "x"}
CALLS: list[tuple[str, Callable[[], Any]]] = [
    ("kserve_installed", kube.kserve_installed),
    ("apply", lambda: kube.apply(_deployment())),
    ("read_child Deployment", lambda: kube.read_child("ns", DEP)),
    ("read_child InferenceService", lambda: kube.read_child("ns", ISVC)),
    ("delete_child", lambda: kube.delete_child("ns", DEP, "uid-1")),
    ("apply ServiceAccount", lambda: kube.apply(_account())),
    ("read_child ServiceAccount", lambda: kube.read_child("ns", SA)),
    ("delete_child ServiceAccount", lambda: kube.delete_child("ns", SA, "uid-1")),
    ("pods", lambda: kube.pods("ns", "x")),
    ("evict", lambda: kube.evict("ns", "x-1")),
    ("sync_status", lambda: conditions.sync_status("ns", "x", "uid-1")),
    ("follow_tier", _follow),
]


@pytest.mark.usefixtures("silent_api")
@pytest.mark.parametrize(("what", "call"), CALLS, ids=[c[0] for c in CALLS])
def test_a_silent_api_server_fails_the_call_in_bounded_time(
    what: str, call: Callable[[], Any]
) -> None:
    out: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            out.append(None)
        except BaseException as e:  # what the handler would see
            out.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(10)  # the limit is 0.2 s; a GET is retried 3 times by urllib3
    assert not t.is_alive(), f"{what}: still waiting on a silent API server"
    assert out and out[0] is not None, f"{what}: returned without an answer"
