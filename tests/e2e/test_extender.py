"""The PerLLM extender behind the real perllm-scheduler (issue #5, e2e acceptance).

A `perllm extender` subprocess (KUBECONFIG: a token of its ServiceAccount when
extender/rbac.yaml exists, else the admin kubeconfig) reads link bandwidth from the
harness's Prometheus, which scrapes a tiny exporter run by this module on loopback
(`perllm_path_bandwidth_bits_per_second{node,peer}`, values the tests set). The
perllm-scheduler is restarted to call it (`nodeCacheCapable: true`, `ignorable: false`),
and restored to the harness default at the end. Pods are created directly (no operator)
with the label and annotations the operator renders, for LLMServices created up front.

What is asserted is read from the extender's own predictions (`GET /decisions`: the CS-UCB
explanation) or the cost model in process, never a tier hard-coded from the catalogue:
(a) a tight-deadline service lands on a tier that meets the deadline while another tier
cannot; (b) loose-deadline services land on the tier of lower predicted energy, and that
tier differs between a service without and one with a large upload; (c) lowering the edge
link bandwidth in the metrics (to a value the cost model says breaks the edge's deadline)
moves the next placement to the cloud; (e) the decision is published in the LLMService's
`status.placement` with an Event; (d, last) a killed extender with `ignorable: false`
leaves the next pod Pending, with `ignorable: true` the scheduler places it alone.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import yaml
from perllm_extender.nodes import to_server
from perllm_operator import podspec

from perllm.contract import Server, ServiceSpec
from perllm.costmodel import build_cost_table
from perllm.crd import CRD_PATH, PLURAL, service_spec
from perllm.csucb import CSUCB
from perllm.devcluster import config as dcfg
from perllm.devcluster.cluster import Cluster
from perllm.devcluster.exporter import TextExporter
from perllm.devcluster.kube import Kube
from perllm.devcluster.kube import wait_for as kube_wait_for
from perllm.devcluster.process import free_port
from perllm.labels import ANN_LINK_BANDWIDTH, LABEL_TIER, SCHEDULER_NAME
from perllm.profiles import default_catalogue
from perllm.telemetry.names import PATH_BANDWIDTH_BPS

from . import manifests
from .processes import LoggedProcess
from .promql import prom_query

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ROOT = Path(__file__).parents[2]
RBAC = ROOT / "extender" / "rbac.yaml"
JOB = "perllm-e2e-extender"
Obj = dict[str, Any]
T = TypeVar("T")


def wait_for(fn: Callable[[], T | None], what: str, timeout: float = 60, every: float = 0.3) -> T:
    return kube_wait_for(
        fn,
        what,
        timeout,
        every,
        retry_on=(AssertionError, KeyError, IndexError, ValueError, OSError),
    )


# ---- the exporter Prometheus scrapes --------------------------------------------------------
class Exporter(TextExporter):
    """Text exposition of per-node path bandwidth on loopback; `set()` changes it."""

    def __init__(self) -> None:
        self.bps: dict[str, float] = {}
        self._lock = threading.Lock()
        super().__init__()

    def set(self, values: dict[str, float]) -> None:
        with self._lock:
            self.bps.update(values)

    def render(self) -> str:
        with self._lock:
            lines = [f"# TYPE {PATH_BANDWIDTH_BPS} gauge"]
            lines += [
                f'{PATH_BANDWIDTH_BPS}{{node="{n}",peer="e2e"}} {v:g}'
                for n, v in sorted(self.bps.items())
            ]
        return "\n".join(lines) + "\n"


# ---- the extender process -------------------------------------------------------------------
class Extender(LoggedProcess):
    tail_lines = 60

    def __init__(self, kubeconfig: Path, log: Path, args: list[str]) -> None:
        super().__init__(log)
        self.kubeconfig, self.args = kubeconfig, args
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:  # kube-scheduler's urlPrefix
        return f"{self.base}/scheduler"

    def start(self) -> None:
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig), PYTHONWARNINGS="ignore")
        exe = Path(sys.executable).with_name("perllm")
        self.spawn(
            [str(exe), "extender", "--host", "127.0.0.1", "--port", str(self.port), *self.args],
            env,
        )
        wait_for(self._ready, f"the extender's /readyz (log {self.log})", timeout=60)

    def _ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"extender exited:\n{self.tail()}")
        try:
            r = self.get("/readyz")
        except (OSError, ValueError):
            return False
        # informers synced (when the extender reports them), so LLMServices are known
        return all((r.get("informers") or {}).values())

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.base}{path}", timeout=5) as r:
            return json.loads(r.read())

    def post(self, path: str) -> Any:
        req = urllib.request.Request(f"{self.base}{path}", data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def decision(self, pod_key: str) -> Obj:
        """The extender's logged decision for a pod (namespace/name)."""

        def find() -> Obj | None:
            return next(
                (
                    d
                    for d in reversed(self.get("/decisions?limit=1000"))
                    if d.get("pod") == pod_key and d.get("explanation")
                ),
                None,
            )

        return wait_for(find, f"the extender's decision for {pod_key}", timeout=20)


def _sa_kubeconfig(kube: Kube, path: Path) -> Path:
    """A kubeconfig with a token of the ServiceAccount in extender/rbac.yaml."""
    docs = [d for d in yaml.safe_load_all(RBAC.read_text()) if d]
    for ns in sorted({d["metadata"]["namespace"] for d in docs if "namespace" in d["metadata"]}):
        r = kube.kubectl("create", "namespace", ns, check=False)
        assert r.returncode == 0 or "AlreadyExists" in r.stderr, r.stderr
    kube.kubectl("apply", "-f", str(RBAC))
    sa = next(
        d for d in yaml.safe_load_all(RBAC.read_text()) if d and d.get("kind") == "ServiceAccount"
    )
    name, ns = sa["metadata"]["name"], sa["metadata"].get("namespace", "default")
    kube.service_account_kubeconfig(name, ns, path)
    restricted = Kube(path, kube.kubectl_path, None)
    checks = (
        (("patch", "llmservices.perllm.io", "--subresource=status"), "yes"),
        (("delete", "nodes"), "no"),
        (("create", "pods", "--subresource=binding"), "no"),
    )
    for args, want in checks:
        r = restricted.kubectl("auth", "can-i", *args, "-A", check=False)
        assert r.stdout.strip() == want, f"{name} can-i {args}: {r.stdout}{r.stderr}"
    return path


@contextmanager
def scheduling_extender(
    kube: Kube, cluster: Cluster, tmp: Path, args: list[str]
) -> Iterator[Extender]:
    """An extender (`args` and its `--state-namespace`) as the ServiceAccount of
    extender/rbac.yaml (the admin's kubeconfig when none is shipped), made the local
    perllm-scheduler's extender with `ignorable: false` for the block; then the harness
    default extender is restored and the extender stopped (this module's `extender`,
    conftest's `deciding_extender`)."""
    if RBAC.exists():
        kubeconfig = _sa_kubeconfig(kube, tmp / "extender.kubeconfig")
        state_ns = next(
            d["metadata"].get("namespace", "perllm-system")
            for d in yaml.safe_load_all(RBAC.read_text())
            if d and d.get("kind") == "ServiceAccount"
        )
    else:  # no least-privilege identity shipped: the admin's
        kubeconfig = Path(kube.kubeconfig)
        state_ns = "perllm-system"
        r = kube.kubectl("create", "namespace", state_ns, check=False)
        assert r.returncode == 0 or "AlreadyExists" in r.stderr, r.stderr
    ext = Extender(kubeconfig, tmp / "extender.log", [*args, "--state-namespace", state_ns])
    ext.start()
    try:
        cluster.restart_perllm_scheduler(dcfg.Extender(url=ext.url, ignorable=False))
        yield ext
    finally:
        cluster.restart_perllm_scheduler(cluster.config.extender)  # the harness default
        ext.stop()


# ---- services, pods and predictions ---------------------------------------------------------
def llmservice(
    name: str,
    deadline_s: float,
    per_token_s: float = 0.0,
    *,
    prompt: int = 512,
    output: int = 128,
    payload: float = 0.0,
) -> Obj:
    return manifests.llmservice(
        name,
        [
            {
                "tier": "edge",
                "precision": "q4_k_m",
                "resources": {"requests": {"cpu": "8", "memory": "8Gi"}},
            },
            {
                "tier": "cloud",
                "precision": "fp16",
                "resources": {"limits": {"nvidia.com/gpu": "1"}},
            },
        ],
        requirements={"deadline": {"seconds": deadline_s, "perOutputTokenSeconds": per_token_s}},
        traffic={"promptTokens": prompt, "outputTokens": output, "payloadBytes": payload},
        backend="deployment",
    )


# A chat service with a tight deadline (1 s + 0.15 s/token), a loose batch service, and a
# loose bulk-upload one (500 MB per request: transmission energy, 0.1 µJ/bit at the edge
# vs 1.1 µJ/bit to the cloud in the reference testbed, dominates its energy).
TIGHT = llmservice("chat-tight", 1.0, 0.15)
LOOSE = llmservice("batch-loose", 600.0)
BULK = llmservice("bulk-upload", 300.0, payload=5e8)
SERVICES = (TIGHT, LOOSE, BULK)


def pod_manifest(svc: Obj, name: str) -> Obj:
    spec = service_spec(svc)
    term = {"key": LABEL_TIER, "operator": "In", "values": [t.value for t in spec.allowed_tiers]}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": podspec.labels(svc),
            "annotations": podspec.pod_annotations(spec),
        },
        "spec": {
            "schedulerName": SCHEDULER_NAME,
            "terminationGracePeriodSeconds": 0,
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [{"matchExpressions": [term]}]
                    }
                }
            },
            "containers": [{"name": "model-server", "image": "vllm/vllm-openai"}],
        },
    }


def node_of(kube: Kube, ns: str, pod: str) -> str | None:
    r = kube.kubectl("get", "pod", pod, "-n", ns, "-o", "jsonpath={.spec.nodeName}", check=False)
    return r.stdout.strip() or None if r.returncode == 0 else None


def place(kube: Kube, ns: str, svc: Obj, timeout: float = 60) -> tuple[str, str]:
    """Create one pod of `svc`; (pod name, node it was bound to)."""
    name = f"{svc['metadata']['name']}-{uuid.uuid4().hex[:6]}"
    kube.apply(pod_manifest(svc, name), ns)
    node = wait_for(lambda: node_of(kube, ns, name), f"pod {ns}/{name} bound", timeout)
    return name, node


def tiers(expl: Obj) -> dict[str, Obj]:
    """Per tier: feasible (any node), and the lowest predicted energy of a feasible node."""
    out: dict[str, Obj] = {}
    for c in expl["candidates"]:
        t = out.setdefault(c["tier"], {"feasible": False, "energy": float("inf")})
        if c["feasible"]:
            t["feasible"] = True
            t["energy"] = min(t["energy"], c["predicted_energy_j"])
    return out


def predict(svc: Obj, nodes: list[Obj], bw_mbps: dict[str, float]) -> dict[str, Obj]:
    """The cost model in process (CS-UCB priors, no load): per node, feasibility and
    predicted time/energy at the given link bandwidths."""
    cat = default_catalogue()
    spec: ServiceSpec = service_spec(svc)
    servers: list[Server] = []
    for n in nodes:
        s = to_server(n, cat)
        assert isinstance(s, Server), s
        servers.append(s)
    b = CSUCB(build_cost_table([spec], [(s.name, s) for s in servers], cat))
    tr, m = spec.traffic, len(servers)
    bw = np.array([bw_mbps.get(s.name, s.link.bandwidth_mbps) for s in servers], float)
    d = b.decide(
        np.zeros(1, np.intp),
        np.array([tr.prompt_tokens]),
        np.array([tr.output_tokens]),
        np.array([tr.payload_bytes]),
        np.array([spec.requirements.min_quality]),
        np.zeros(m),
        np.zeros(m),
        bw,
        explain=True,
    )
    assert d.explanations is not None
    return {
        c.node: {
            "tier": c.tier,
            "feasible": c.feasible,
            "reason": c.reason,
            "energy": c.predicted_energy_j,
        }
        for c in d.explanations[0].candidates
    }


# ---- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster(kube: Kube) -> Cluster:
    if kube.local is None or kube.local.prometheus_url is None:
        pytest.skip("needs the local control plane with Prometheus (restarts perllm-scheduler)")
    return kube.local


@pytest.fixture(scope="module")
def nodes(kube: Kube) -> list[Obj]:
    items: list[Obj] = kube.get("nodes", "-l", LABEL_TIER)["items"]
    found = {n["metadata"]["labels"][LABEL_TIER] for n in items}
    assert {"edge", "cloud"} <= found, f"need edge and cloud KWOK nodes, got {found}"
    return items


@pytest.fixture(scope="module")
def tier_of(nodes: list[Obj]) -> dict[str, str]:
    return {n["metadata"]["name"]: n["metadata"]["labels"][LABEL_TIER] for n in nodes}


@pytest.fixture(scope="module")
def nominal(nodes: list[Obj]) -> dict[str, float]:
    """Nominal link bandwidth per node (Mbit/s), from the node annotations."""
    return {
        n["metadata"]["name"]: float(n["metadata"]["annotations"][ANN_LINK_BANDWIDTH])
        for n in nodes
    }


@pytest.fixture(scope="module")
def exporter(cluster: Cluster, nominal: dict[str, float]) -> Iterator[Exporter]:
    ex = Exporter()
    ex.set({n: 1e6 * v for n, v in nominal.items()})
    url = cluster.prometheus_url
    assert url is not None
    cluster.set_scrape_configs([ex.scrape_config(JOB)])
    try:
        wait_for(
            lambda: len(prom_query(url, f'{PATH_BANDWIDTH_BPS}{{job="{JOB}"}}')) == len(nominal),
            "Prometheus scraping the test exporter",
            timeout=60,
        )
        yield ex
    finally:
        cluster.set_scrape_configs(cluster.config.scrape_configs)
        ex.close()


@pytest.fixture(scope="module")
def svc_ns(kube: Kube) -> Iterator[str]:
    """The namespace of this module's LLMServices and pods (created before the extender
    starts, so its informer lists them)."""
    kube.kubectl("apply", "-f", str(CRD_PATH))
    kube.kubectl("wait", "--for=condition=Established", f"crd/{PLURAL}.perllm.io", "--timeout=60s")
    wait_for(
        lambda: kube.kubectl("get", PLURAL, "-A", check=False).returncode == 0,
        f"discovery of {PLURAL}",
        timeout=30,
    )
    ns = f"e2e-ext-{uuid.uuid4().hex[:6]}"
    kube.kubectl("create", "namespace", ns)
    for svc in SERVICES:
        kube.apply(svc, ns)
    yield ns
    kube.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture(scope="module")
def extender(
    kube: Kube,
    cluster: Cluster,
    exporter: Exporter,
    svc_ns: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Extender]:
    prom = cluster.prometheus_url
    assert prom is not None
    args = [
        "--prometheus",
        prom,
        "--telemetry-interval",
        "0.5",
        "--learn-interval",
        "3600",
        "--log-level",
        "info",
        # plain HTTP and the debug routes this module reads (/decisions, /telemetry);
        # TLS and the attacks: tests/e2e/test_attacks.py
        "--insecure-http",
        "--debug-routes",
    ]
    with scheduling_extender(kube, cluster, tmp_path_factory.mktemp("extender"), args) as ext:
        yield ext


@pytest.fixture(autouse=True)
def _extender_log(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "extender" in request.fixturenames:  # captured: shown for a failing test only
        ext: Extender = request.getfixturevalue("extender")
        print(f"--- extender log ({ext.log}) ---\n{ext.tail()}")


def _bandwidth_seen(ext: Extender, values_mbps: dict[str, float]) -> bool:
    """The extender's telemetry shows these link bandwidths (after a refresh now)."""
    snap = ext.post("/telemetry/refresh")
    seen = snap.get("nodes") or {}
    return all(
        abs((seen.get(n) or {}).get("bandwidth_mbps", -1.0) - v) <= 1e-6 * v
        for n, v in values_mbps.items()
    )


# ---- tests ----------------------------------------------------------------------------------
def test_tight_deadline_lands_on_the_tier_that_meets_it(
    kube: Kube, extender: Extender, svc_ns: str, tier_of: dict[str, str]
) -> None:
    for _ in range(2):
        pod, node = place(kube, svc_ns, TIGHT)
        d = extender.decision(f"{svc_ns}/{pod}")
        by_tier = tiers(d["explanation"])
        meets = {t for t, v in by_tier.items() if v["feasible"]}
        assert meets, f"nothing meets the deadline: {d['explanation']}"
        assert meets != set(by_tier), f"the deadline does not separate the tiers: {by_tier}"
        assert tier_of[node] in meets, f"{pod} on {node} ({tier_of[node]}); meets: {meets}"
        assert d["chosen"] == node


def exploring(d: Obj) -> bool:
    """CS-UCB plays every unplayed arm (service × pool) once before it exploits: such a
    choice carries the 1e6 score lift of an unplayed arm (perllm/csucb.py)."""
    c = next(c for c in d["explanation"]["candidates"] if c["node"] == d["chosen"])
    return bool(c["score"] - c["mean"] - c["bonus"] > 1e5)


def place_exploiting(
    kube: Kube, ext: Extender, ns: str, svc: Obj, tier_of: dict[str, str]
) -> tuple[str, str, Obj]:
    """Place pods of `svc` until one is placed by exploitation, not exploration of an
    unplayed arm (at most one pod per tier explores); that pod, its node and decision."""
    explored: list[str] = []
    for _ in range(len(set(tier_of.values())) + 1):
        pod, node = place(kube, ns, svc)
        d = ext.decision(f"{ns}/{pod}")
        assert d["chosen"] == node, f"{pod}: bound to {node}, extender chose {d['chosen']}"
        if not exploring(d):
            return pod, node, d
        explored.append(tier_of[node])
    raise AssertionError(f"{svc['metadata']['name']}: still exploring after {explored}")


def test_loose_deadline_lands_on_the_lower_energy_tier(
    kube: Kube, extender: Extender, svc_ns: str, tier_of: dict[str, str]
) -> None:
    greenest: dict[str, str] = {}
    for svc in (LOOSE, BULK):
        name = svc["metadata"]["name"]
        pod, node, d = place_exploiting(kube, extender, svc_ns, svc, tier_of)
        for k in range(2):
            if k:  # a second one, also past exploration
                pod, node = place(kube, svc_ns, svc)
                d = extender.decision(f"{svc_ns}/{pod}")
                assert not exploring(d), d
            by_tier = tiers(d["explanation"])
            assert all(v["feasible"] for v in by_tier.values()), (
                f"{name}: not loose, a tier misses the deadline: {d['explanation']}"
            )
            best = min(by_tier, key=lambda t: by_tier[t]["energy"])
            assert tier_of[node] == best, (
                f"{pod} on {node} ({tier_of[node]}), lower predicted energy: {best} {by_tier}"
            )
            greenest[name] = best
    # the payload changes which tier is greener: the test tells the tiers apart
    assert set(greenest.values()) == {"edge", "cloud"}, greenest


def test_lower_edge_bandwidth_moves_the_next_placement(
    kube: Kube,
    extender: Extender,
    exporter: Exporter,
    svc_ns: str,
    nodes: list[Obj],
    tier_of: dict[str, str],
    nominal: dict[str, float],
) -> None:
    edges = [n for n, t in tier_of.items() if t == "edge"]
    before = predict(BULK, nodes, nominal)
    assert all(before[n]["feasible"] for n in edges), before
    # the highest edge bandwidth (halving from nominal) at which the cost model says the
    # edge misses the bulk service's deadline while the cloud still meets it
    low = None
    for k in range(1, 8):
        bw = {n: nominal[n] / 2**k for n in edges}
        after = predict(BULK, nodes, bw)
        if not any(after[n]["feasible"] for n in edges) and any(
            v["feasible"] for v in after.values() if v["tier"] == "cloud"
        ):
            low = bw
            break
    assert low is not None, "no edge bandwidth breaks the deadline while the cloud meets it"

    wait_for(
        lambda: _bandwidth_seen(extender, {n: nominal[n] for n in edges}),
        "the extender seeing the nominal edge bandwidth",
        timeout=30,
    )
    pod, node, _ = place_exploiting(kube, extender, svc_ns, BULK, tier_of)
    assert tier_of[node] == "edge", f"before the change {pod} went to {node}"
    try:
        exporter.set({n: 1e6 * v for n, v in low.items()})
        wait_for(
            lambda: _bandwidth_seen(extender, low),
            f"the extender seeing the lowered edge bandwidth {low}",
            timeout=30,
        )
        pod, node = place(kube, svc_ns, BULK)
        d = extender.decision(f"{svc_ns}/{pod}")
        assert tier_of[node] == "cloud", f"after the change {pod} went to {node}: {d}"
        assert not any(
            c["feasible"] for c in d["explanation"]["candidates"] if c["tier"] == "edge"
        ), d["explanation"]
    finally:
        exporter.set({n: 1e6 * nominal[n] for n in edges})
        wait_for(
            lambda: _bandwidth_seen(extender, {n: nominal[n] for n in edges}),
            "the extender seeing the restored edge bandwidth",
            timeout=30,
        )


def _events(kube: Kube, ns: str, name: str) -> list[Obj]:
    items: list[Obj] = kube.get("events", "-n", ns)["items"]
    return [
        e
        for e in items
        if e.get("involvedObject", {}).get("kind") == "LLMService"
        and e["involvedObject"].get("name") == name
    ]


def test_decision_is_published_in_the_llmservice_status(
    kube: Kube, extender: Extender, svc_ns: str, tier_of: dict[str, str]
) -> None:
    name = LOOSE["metadata"]["name"]
    pod, node = place(kube, svc_ns, LOOSE)

    def placement() -> Obj | None:
        obj = kube.get(PLURAL, name, "-n", svc_ns)
        p: Obj | None = (obj.get("status") or {}).get("placement")
        return p if p and str(p.get("pod", "")).endswith(pod) else None

    p = wait_for(placement, f"status.placement of {name} naming {pod}", timeout=30)
    assert p["chosen"] == node and p["tier"] == tier_of[node], p
    assert node in p["nodes"] and p["nodes"] == sorted(p["nodes"]), p
    assert isinstance(p["feasible"], bool) and p["feasible"], p
    assert p["predictedTimeSeconds"] > 0 and p["predictedEnergyJ"] > 0, p
    datetime.fromisoformat(p["decidedAt"].replace("Z", "+00:00"))  # RFC 3339
    cands = p["explanation"]["candidates"]
    assert 0 < len(cands) <= 8 and node in {c["node"] for c in cands}, p["explanation"]

    def event() -> Obj | None:
        return next(
            (
                e
                for e in _events(kube, svc_ns, name)
                if e.get("reason") in ("Placed", "PlacedLeastViolating")
                and node in e.get("message", "")
            ),
            None,
        )

    e = wait_for(event, f"a Placed event on LLMService {name} naming {node}", timeout=30)
    source = {(e.get("source") or {}).get("component"), e.get("reportingComponent")}
    assert "perllm-extender" in source, e
    assert e["reason"] == "Placed" and tier_of[node] in e["message"], e


def _scheduled_condition(kube: Kube, ns: str, pod: str) -> Obj | None:
    obj = kube.get("pod", pod, "-n", ns)
    return next(
        (
            c
            for c in (obj.get("status") or {}).get("conditions") or []
            if c.get("type") == "PodScheduled"
        ),
        None,
    )


def test_killed_extender_follows_ignorable(
    kube: Kube, cluster: Cluster, extender: Extender, svc_ns: str
) -> None:
    """Last in the module: it kills the extender (the fixture's teardown restores the
    harness's scheduler configuration)."""
    assert cluster.state is not None and cluster.state.extender["ignorable"] is False
    extender.kill()
    stuck = f"{LOOSE['metadata']['name']}-{uuid.uuid4().hex[:6]}"
    kube.apply(pod_manifest(LOOSE, stuck), svc_ns)
    # ignorable: false: a filter call that fails fails the scheduling attempt
    cond = wait_for(
        lambda: (
            (c := _scheduled_condition(kube, svc_ns, stuck)) and c.get("status") == "False" and c
        ),
        f"PodScheduled=False on {stuck}",
        timeout=30,
    )
    time.sleep(5)  # and it stays Pending
    assert node_of(kube, svc_ns, stuck) is None, cond
    assert extender.url.split("//", 1)[1].split("/", 1)[0] in cond.get("message", ""), cond

    # ignorable: true: the scheduler skips the unreachable extender
    cluster.restart_perllm_scheduler(dcfg.Extender(url=extender.url, ignorable=True))
    _, node = place(kube, svc_ns, LOOSE)
    assert node
    wait_for(lambda: node_of(kube, svc_ns, stuck), f"the Pending {stuck} scheduled", timeout=60)
