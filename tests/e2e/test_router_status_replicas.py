"""Two replicas of one router write `status.routing` through a real API server: the totals
are the sum of both, each entry comes back as written (the CRD's structural schema prunes
none of its fields), an entry not written for `stale_s` is deleted by the next write (the
merge patch's null) and leaves the totals and the condition, and the operator's
conditions beside the router's are kept. No pods: two `Router`s over static backends in
this process, each with its own `StatusWriter`; time passes by dating entries back."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import yaml

from perllm.crd import PLURAL, condition
from perllm.devcluster.kube import Kube
from perllm.router.app import Router
from perllm.router.config import parse_config
from perllm.router.health import Refusing
from perllm.router.status import CONDITION, StatusWriter, merge_condition, stale_s
from perllm.timefmt import rfc3339

from .test_llmservice_crd import ROOT, crd  # noqa: F401 (the fixture installing the CRD)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

Obj = dict[str, Any]
LINK = {"bandwidth_mbps": 100, "rtt_ms": 5}
BACKENDS = [
    {"name": "e1", "url": "http://e1:8000", "tier": "edge", "hardware": "nvidia-l4", "link": LINK},
    {"name": "c1", "url": "http://c1:8000", "tier": "cloud", "hardware": "a100-80gb-sxm",
     "link": LINK},
]  # fmt: skip


class Recording:
    """The writer's `CustomObjectsApi`, keeping the status bodies it patched."""

    def __init__(self, api: Any) -> None:
        self.api = api
        self.bodies: list[Obj] = []

    def get_namespaced_custom_object(self, *args: Any, **kw: Any) -> Any:
        return self.api.get_namespaced_custom_object(*args, **kw)

    def patch_namespaced_custom_object_status(self, *args: Any, **kw: Any) -> Any:
        out = self.api.patch_namespaced_custom_object_status(*args, **kw)
        self.bodies.append(args[5])  # after the API took it (a 409 raised before)
        return out


def _replica(kube: Kube, namespace: str, pod: str) -> tuple[Router, StatusWriter, Recording]:
    from kubernetes import client

    from perllm.router.discovery import api_client

    r = Router(parse_config({"scenario": "demo", "service_class": "chat", "backends": BACKENDS}))
    w = StatusWriter(r, namespace, "chat", kubeconfig=str(kube.kubeconfig), pod=pod)
    w._client = api_client(str(kube.kubeconfig))
    w._custom = rec = Recording(client.CustomObjectsApi(w._client))
    return r, w, rec


def _judge(r: Router, name: str, tier: str, requests: int, met: int) -> None:
    b = r.metrics.backend(name, tier)
    for i in range(requests):
        b.judge(i < met)


def _write(w: StatusWriter) -> None:
    assert asyncio.run(w.tick()), f"not written: {w._failing}"


def _status(kube: Kube, ns: str) -> Obj:
    return kube.get(PLURAL, "chat", "-n", ns)["status"]  # type: ignore[no-any-return]


def _patch_status(kube: Kube, ns: str, status: Obj) -> None:
    body = json.dumps({"status": status})
    kube.kubectl("patch", PLURAL, "chat", "-n", ns, "--subresource=status", "--type=merge",
                 "-p", body)  # fmt: skip


def _without_nulls(o: Any) -> Any:
    """What a merge patch `o` leaves (its nulls delete)."""
    if isinstance(o, dict):
        return {k: _without_nulls(v) for k, v in o.items() if v is not None}
    return o


def _tiers(rt: Obj) -> dict[str, int]:
    return {t["tier"]: t["requests"] for t in rt["tiers"]}


def test_two_replicas_sum_drop_a_stale_one_and_keep_the_operators_conditions(
    crd: Kube,  # noqa: F811
    namespace: str,
) -> None:
    kube = crd
    svc = yaml.safe_load((ROOT / "manifests/chat-assistant.yaml").read_text())
    svc["metadata"]["name"] = "chat"
    kube.apply(svc, namespace)
    # The operator's condition, written first (as its reconcile does).
    ready = condition("Ready", True, "Reconciled", "child up", [])
    _patch_status(kube, namespace, {"conditions": [ready]})

    ra, wa, reca = _replica(kube, namespace, "router-a")
    rb, wb, recb = _replica(kube, namespace, "router-b")
    try:
        _judge(ra, "e1", "edge", 6, 5)
        _judge(ra, "c1", "cloud", 2, 2)
        _judge(rb, "e1", "edge", 3, 3)
        _judge(rb, "c1", "cloud", 4, 1)
        # b sees c1 refuse: its view False, a's True.
        rb.refusing = lambda: {"c1": Refusing(2, time.time(), "connection refused")}  # type: ignore[method-assign]
        _write(wa)
        _write(wb)
        st = _status(kube, namespace)
        rt = st["routing"]
        assert rt["requests"] == 15 and rt["attainment"] == round(11 / 15, 4), rt
        assert _tiers(rt) == {"edge": 9, "cloud": 6} and rt["router"] == "router-b"
        assert {b["name"]: b["requests"] for b in rt["backends"]} == {"e1": 9, "c1": 6}
        assert rt["recent"]["requests"] == 15
        # Every field written comes back: the entries, and the sum beside them.
        assert sorted(rt["routers"]) == ["router-a", "router-b"]
        sent_a = reca.bodies[-1]["status"]["routing"]
        sent_b = recb.bodies[-1]["status"]["routing"]
        assert rt["routers"]["router-a"] == sent_a["routers"]["router-a"]
        assert rt["routers"]["router-b"] == sent_b["routers"]["router-b"]
        assert {k: v for k, v in rt.items() if k != "routers"} == _without_nulls(
            {k: v for k, v in sent_b.items() if k != "routers"}
        )
        conds = {c["type"]: c for c in st["conditions"]}
        assert conds["Ready"] == ready  # the operator's, kept
        assert (conds[CONDITION]["status"], conds[CONDITION]["reason"]) == (
            "False",
            "BackendsEjected",
        )
        assert conds[CONDITION]["message"].startswith("router router-b: BackendsEjected: c1 ")
        assert conds[CONDITION]["message"].endswith("router router-a: all backends answer")

        # The operator writes its conditions as it does: read, replace its own type.
        after = merge_condition(st["conditions"], "Ready", (False, "ChildMissing", "child gone"))
        _patch_status(kube, namespace, {"conditions": after})
        # b goes away: its entry dated back past `stale_s`, through the API, beside that of
        # a replica gone earlier.
        old = rfc3339(time.time() - stale_s(wa.interval_s) - 60)
        _patch_status(kube, namespace, {"routing": {"routers": {
            "router-b": {"updatedAt": old},
            "router-old": {**sent_a["routers"]["router-a"], "updatedAt": old},
        }}})  # fmt: skip
        assert sorted(_status(kube, namespace)["routing"]["routers"]) == [
            "router-a", "router-b", "router-old",
        ]  # fmt: skip
        _judge(ra, "e1", "edge", 1, 1)  # a changed: it writes
        _write(wa)
        sent = reca.bodies[-1]["status"]["routing"]["routers"]
        assert sent["router-b"] is None and sent["router-old"] is None
        st = _status(kube, namespace)
        rt = st["routing"]
        assert sorted(rt["routers"]) == ["router-a"]
        assert rt["requests"] == 9 and _tiers(rt) == {"edge": 7, "cloud": 2}
        assert rt["routers"]["router-a"] == sent["router-a"]
        conds = {c["type"]: c for c in st["conditions"]}
        assert (conds["Ready"]["status"], conds["Ready"]["reason"]) == ("False", "ChildMissing")
        assert (conds[CONDITION]["status"], conds[CONDITION]["reason"]) == (
            "True",
            "AllReachable",
        )
        assert wa.errors == wb.errors == 0
    finally:
        for w in (wa, wb):
            asyncio.run(w.stop())  # its ApiClient's connections and threads
