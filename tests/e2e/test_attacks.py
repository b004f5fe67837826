"""The attacks once found on the extender, replayed on the local control plane
(docs/extender.md, "Security").

A `perllm extender` serves HTTPS with client authentication (the cluster's certificates,
`Cluster.extender_tls()`), with its debug routes on, and perllm-scheduler calls it over
mutual TLS. Each attack is tried, and has no effect beyond a refused handshake or a 4xx
and a counter: requests without a certificate of the CA (to every route), a forged filter
that would move a service, forged Events in kube-system, forged filters naming an existing
pod (learner poisoning), and 10,000 fuzzed bodies (no 5xx, no broken connection). The
forged requests are sent *with* a valid client certificate: the strongest caller.
"""

from __future__ import annotations

import copy
import http.client
import json
import os
import random
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from perllm.crd import CRD_PATH, PLURAL
from perllm.devcluster import config as dcfg
from perllm.devcluster.certs import TlsFiles, self_signed_client
from perllm.devcluster.cluster import Cluster
from perllm.devcluster.kube import Kube, wait_for
from perllm.devcluster.process import free_port, terminate
from perllm.labels import LABEL_SERVICE, SCHEDULER_NAME

from .test_extender import LOOSE, node_of, pod_manifest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
Obj = dict[str, Any]
DEBUG = ("/decisions", "/telemetry", "/learn", "/state/save", "/telemetry/refresh")


class Secure:
    """The extender process: main port HTTPS (client certificates), metrics port plain."""

    def __init__(self, cluster: Cluster, log: Path) -> None:
        self.tls: TlsFiles = cluster.extender_tls()
        self.port, self.metrics_port, self.log = free_port(), free_port(), log
        exe = Path(sys.executable).with_name("perllm")
        argv = [
            str(exe),
            "extender",
            "--port",
            str(self.port),
            "--metrics-port",
            str(self.metrics_port),
            *self.tls.extender_args(),
            "--debug-routes",
            "--learn-interval",
            "3600",
            "--state-namespace",
            "perllm-system",
        ]
        env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig), PYTHONWARNINGS="ignore")
        with log.open("ab") as out:
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        wait_for(self._ready, "the extender's /readyz", timeout=60, retry_on=(OSError,))

    def _ready(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        st, doc = self.plain("GET", "/readyz", port=self.metrics_port)
        return st == 200 and all(doc["informers"].values())

    def conn(self, cert: tuple[Path, Path] | None = None) -> http.client.HTTPSConnection:
        ctx = ssl.create_default_context(cafile=str(self.tls.ca))
        pair = cert if cert is not None else (self.tls.client_cert, self.tls.client_key)
        ctx.load_cert_chain(str(pair[0]), str(pair[1]))
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx, timeout=10)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        c = self.conn()
        try:
            return _exchange(c, method, path, body)
        finally:
            c.close()

    def plain(self, method: str, path: str, port: int | None = None) -> tuple[int, Any]:
        c = http.client.HTTPConnection("127.0.0.1", port or self.port, timeout=10)
        try:
            return _exchange(c, method, path, None)
        finally:
            c.close()

    def metric(self, series: str) -> float:
        """One series' value, e.g. 'perllm_extender_rejected_pods_total{reason="uid"}'."""
        _, text = self.plain("GET", "/metrics", port=self.metrics_port)
        for line in str(text).splitlines():
            if line.rsplit(" ", 1)[0] == series:
                return float(line.rsplit(" ", 1)[1])
        return 0.0


def _exchange(c: http.client.HTTPConnection, method: str, path: str, body: Any) -> tuple[int, Any]:
    data = (
        body if isinstance(body, bytes) else (None if body is None else json.dumps(body).encode())
    )
    c.request(method, path, data, {"Content-Type": "application/json"})
    r = c.getresponse()
    raw = r.read()
    try:
        return r.status, json.loads(raw)
    except ValueError:
        return r.status, raw.decode(errors="replace")


@pytest.fixture(scope="module")
def world(kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Obj]:
    cluster = kube.local
    if cluster is None:
        pytest.skip("needs the local control plane (restarts perllm-scheduler)")
    kube.kubectl("apply", "-f", str(CRD_PATH))
    kube.kubectl("wait", "--for=condition=Established", f"crd/{PLURAL}.perllm.io", "--timeout=60s")
    kube.kubectl("create", "namespace", "perllm-system", check=False)
    ns = f"e2e-attack-{uuid.uuid4().hex[:6]}"
    kube.kubectl("create", "namespace", ns)
    kube.kubectl("create", "serviceaccount", "default", "-n", ns, check=False)
    kube.apply(LOOSE, ns)
    tmp = tmp_path_factory.mktemp("attacks")
    ext = Secure(cluster, tmp / "extender.log")
    try:
        cluster.restart_perllm_scheduler(
            dcfg.Extender(url=f"https://127.0.0.1:{ext.port}/scheduler", ignorable=False)
        )
        name = f"victim-{uuid.uuid4().hex[:6]}"
        kube.apply(pod_manifest(LOOSE, name), ns)
        node = wait_for(lambda: node_of(kube, ns, name), "the real pod bound over mTLS", 60)
        pod = kube.get("pod", name, "-n", ns)
        yield {"ext": ext, "ns": ns, "pod": pod, "node": node, "tmp": tmp, "kube": kube}
    finally:
        cluster.restart_perllm_scheduler(cluster.config.extender)
        terminate(ext.proc, timeout=20)
        print(f"--- extender log ---\n{ext.log.read_text(errors='replace')[-3000:]}")
        kube.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def _decisions(ext: Secure) -> list[Obj]:
    st, doc = ext.call("GET", "/decisions?limit=1000")
    assert st == 200
    return list(doc)


def _placement(kube: Kube, ns: str) -> Obj:
    svc = kube.get(PLURAL, LOOSE["metadata"]["name"], "-n", ns)
    return dict((svc.get("status") or {}).get("placement") or {})


def _forged(base: Obj, **meta: Any) -> Obj:
    pod = json.loads(json.dumps(base))
    pod["metadata"].update(meta)
    pod["spec"].pop("nodeName", None)
    return pod


def test_scheduler_places_over_mutual_tls(world: Obj) -> None:
    ext, pod = world["ext"], world["pod"]
    key = f"{world['ns']}/{pod['metadata']['name']}"
    assert [d["chosen"] for d in _decisions(ext) if d["pod"] == key] == [world["node"]]
    wait_for(lambda: _placement(world["kube"], world["ns"]).get("pod"), "status.placement")


def test_no_route_without_a_certificate_of_the_ca(world: Obj) -> None:
    ext: Secure = world["ext"]
    intruder = self_signed_client(world["tmp"], "intruder")
    for path in ("/scheduler/filter", *DEBUG):
        for conn in (ext.conn(intruder), None):
            with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
                if conn is None:  # plain HTTP to the TLS port
                    ext.plain("POST", path)
                else:
                    _exchange(conn, "POST", path, {})
        bare = ssl.create_default_context(cafile=str(ext.tls.ca))  # no client certificate
        c = http.client.HTTPSConnection("127.0.0.1", ext.port, context=bare, timeout=10)
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
            _exchange(c, "POST", path, {})
    # the plain side port serves probes and metrics only
    for path in ("/scheduler/filter", *DEBUG):
        assert ext.plain("POST", path, port=ext.metrics_port)[0] in (404, 405), path
    assert ext.plain("GET", "/metrics", port=ext.metrics_port)[0] == 200


def test_forged_filters_move_nothing_and_publish_nothing(world: Obj) -> None:
    ext: Secure = world["ext"]
    kube: Kube = world["kube"]
    ns, real = world["ns"], world["pod"]
    before, placement = len(_decisions(ext)), _placement(kube, ns)
    edge = [
        n["metadata"]["name"]
        for n in kube.get("nodes")["items"]
        if n["metadata"]["name"] != world["node"]
    ]
    uid = str(uuid.uuid4())
    ghost = _forged(real, name=f"ghost-{uid[:6]}", uid=uid)
    in_kube_system = _forged(real, namespace="kube-system", name="ghost", uid=uid)
    in_kube_system["metadata"]["labels"] = {LABEL_SERVICE: "no-such-service"}
    other_uid = _forged(real, uid=uid)  # the real pod's name: latency moved elsewhere
    same_uid = _forged(real)  # all as the API says, but it is bound already
    other_sched = _forged(real, name=f"x-{uid[:6]}", uid=uid)
    other_sched["spec"]["schedulerName"] = "default-scheduler"
    cases = {"unknown": [ghost, in_kube_system], "uid": [other_uid], "bound": [same_uid]}
    cases["unknown"].append(other_sched)
    counts = {r: ext.metric(f'perllm_extender_rejected_pods_total{{reason="{r}"}}') for r in cases}
    for reason, pods in cases.items():
        for pod in pods:
            for verb in ("filter", "prioritize"):
                st, doc = ext.call("POST", f"/scheduler/{verb}", {"Pod": pod, "NodeNames": edge})
                assert st == 403 and "refused" in doc["Error"], (reason, st, doc)
    for reason, pods in cases.items():
        got = ext.metric(f'perllm_extender_rejected_pods_total{{reason="{reason}"}}')
        assert got - counts[reason] == 2 * len(pods), reason
    time.sleep(3)  # more than the publisher's 1 s per service
    assert len(_decisions(ext)) == before
    assert _placement(kube, ns) == placement
    mine = [
        e
        for e in kube.get("events", "-n", "kube-system")["items"]
        if e.get("source", {}).get("component") == "perllm-extender"
    ]
    assert mine == []
    # the learner still tracks the one real placement, on its real node
    st, doc = ext.call("POST", "/learn")
    assert st == 200 and doc["tracked"] == 1
    assert real["spec"]["schedulerName"] == SCHEDULER_NAME


def _mutate(rng: random.Random, body: Obj) -> bytes:
    doc = json.loads(json.dumps(body))
    junk: list[Any] = [None, 0, -1, 1e308, "", "x" * 300, [], {}, {"a": {"b": []}}, True, [1, "2"]]
    for _ in range(rng.randint(1, 3)):
        node, path = doc, []
        while isinstance(node, dict | list) and node and rng.random() < 0.7:
            k = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
            path.append(k)
            node = node[k]
        if not path:
            doc = copy.deepcopy(rng.choice(junk))
            break
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        if isinstance(parent, dict) and rng.random() < 0.2:
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = copy.deepcopy(rng.choice(junk))  # never shared
    raw = json.dumps(doc).encode()
    return raw[: rng.randrange(len(raw))] if rng.random() < 0.05 else raw


def test_ten_thousand_fuzzed_requests_no_5xx_no_broken_connection(world: Obj) -> None:
    ext: Secure = world["ext"]
    real = world["pod"]
    nodes = [n["metadata"]["name"] for n in world["kube"].get("nodes")["items"]]
    valid = {"Pod": _forged(real, name="fuzz", uid=str(uuid.uuid4())), "NodeNames": nodes}
    rng = random.Random(20260)
    statuses: dict[int, int] = {}
    broken = 0
    conn = ext.conn()
    for i in range(10_000):
        verb = "filter" if i % 2 == 0 else "prioritize"
        try:
            st, _ = _exchange(conn, "POST", f"/scheduler/{verb}", _mutate(rng, valid))
        except (OSError, http.client.HTTPException):
            broken += 1
            conn = ext.conn()
            continue
        statuses[st] = statuses.get(st, 0) + 1
    conn.close()
    assert broken == 0, statuses
    assert not {s for s in statuses if s >= 500}, statuses
    assert set(statuses) <= {200, 400, 403, 413, 422}, statuses
