"""Scheduling throughput of the real perllm-scheduler, with and without the PerLLM extender.

One local control plane (`perllm.devcluster`: etcd, kube-apiserver, controller-manager,
kube-scheduler, KWOK; no Prometheus) with 200 KWOK nodes of the reference testbed's kinds
(edge Xeon + cloud A100 in the large-fleet mix, 96 % / 4 %, the scenario's links). For each
case the perllm-scheduler is stopped, 1,000 pods are created (schedulerName
perllm-scheduler, label perllm.io/service and the requirement annotations the operator
renders, spread over the reference scenario's five services by share), then the scheduler
is started without an extender or pointing at a `perllm extender` subprocess on loopback
(`nodeCacheCapable: true`, as the devcluster configures it), and a watch records when each
pod gets its node. Each pair runs at kube-scheduler's default API client rate limit (qps
50, burst 100: every binding is one API call) and at a raised one (`--qps`), which takes
the limiter out of the way. Throughput = bound pods per second between the first and last
binding (the scheduler's start-up is excluded; it is reported apart). Target (issue #5):
with / without >= 0.5, measured in the same run.

Both cases run the perllm-scheduler profile as PerLLM ships it, `percentageOfNodesToScore:
100` (every feasible node reaches the extender). A third case, the scheduler alone with
kube-scheduler's adaptive default (it stops after ~50 % / at least 100 feasible nodes),
shows what that setting costs on its own; the ratio against it is reported too.

    .venv/bin/python bench/sched_throughput.py --out out/sched_throughput.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes
import yaml
from perllm_operator import podspec

from perllm.contract import ServiceSpec
from perllm.devcluster import config as dcfg
from perllm.devcluster.cluster import Cluster, ClusterConfig, temporary_run_dir
from perllm.labels import LABEL_TIER, SCHEDULER_NAME

sys.path.insert(0, str(Path(__file__).parent))
from extender_latency import (  # the sibling bench script
    extender_process,
    fleet_scenario,
    load_line,
    write_report,
)

Obj = dict[str, Any]
TARGET_RATIO = 0.5


# ---- the extender ---------------------------------------------------------------------------
def extender_decisions(base: str) -> float:
    """perllm_extender_decisions_total{verb="filter"} from the extender's /metrics."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("perllm_extender_decisions_total") and 'verb="filter"' in line
    )


# ---- pods -----------------------------------------------------------------------------------
def tier_affinity(spec: ServiceSpec) -> Obj:
    """Required node affinity to the service's allowed tiers, as the operator renders it."""
    term = {"key": LABEL_TIER, "operator": "In", "values": [t.value for t in spec.allowed_tiers]}
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [term]}]
            }
        }
    }


def pod_manifest(spec: ServiceSpec, i: int) -> Obj:
    """A model-server pod as the operator's Deployment renders it (no resources: KWOK nodes
    have room for 110 pods each, so capacity never limits the run)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{spec.name}-{i:05d}",
            "labels": podspec.labels({"metadata": {"name": spec.name}}),
            "annotations": podspec.pod_annotations(spec),
        },
        "spec": {
            "schedulerName": SCHEDULER_NAME,
            "affinity": tier_affinity(spec),
            "containers": [{"name": podspec.CONTAINER, "image": "vllm/vllm-openai"}],
        },
    }


def service_mix(services: list[ServiceSpec], shares: list[float], n: int) -> list[ServiceSpec]:
    """n services in proportion to shares, interleaved (largest remainder, deterministic)."""
    total = sum(shares)
    out: list[ServiceSpec] = []
    acc = [0.0] * len(services)
    for _ in range(n):
        acc = [a + s / total for a, s in zip(acc, shares, strict=True)]
        k = max(range(len(acc)), key=lambda j: acc[j])
        acc[k] -= 1.0
        out.append(services[k])
    return out


@dataclass
class Watcher:
    """Records, per pod, when a watch first saw it bound (spec.nodeName set)."""

    api: Any
    namespace: str
    bound: dict[str, tuple[float, str]] = field(default_factory=dict)
    started: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                listing = self.api.list_namespaced_pod(self.namespace, _preload_content=False)
                doc = json.loads(listing.data)
                for o in doc["items"]:
                    self._see(o)
                self.started.set()
                w = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
                for ev in w.stream(  # type: ignore[no-untyped-call]
                    self.api.list_namespaced_pod,
                    self.namespace,
                    resource_version=doc["metadata"]["resourceVersion"],
                    timeout_seconds=30,
                    deserialize=False,
                ):
                    self._see(ev["object"])
                    if self.stop.is_set():
                        w.stop()  # type: ignore[no-untyped-call]
        except BaseException as e:  # reported by the driver
            self.error = e
            self.started.set()

    def _see(self, o: Obj) -> None:
        node = (o.get("spec") or {}).get("nodeName")
        name = o["metadata"]["name"]
        if node and name not in self.bound:
            self.bound[name] = (time.monotonic(), node)


def create_pods(api: Any, namespace: str, pods: list[Obj], workers: int = 8) -> float:
    t0 = time.monotonic()

    def one(p: Obj) -> None:
        api.create_namespaced_pod(namespace, p, _preload_content=False)

    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(one, pods))
    return time.monotonic() - t0


def pods_left(api: Any, namespace: str) -> int:
    r = api.list_namespaced_pod(namespace, _preload_content=False)
    return len(json.loads(r.data)["items"])


# (case, with the extender, percentageOfNodesToScore: None = PerLLM's 100, 0 = adaptive)
CASES: tuple[tuple[str, bool, int | None], ...] = (
    ("without", False, None),
    ("with", True, None),
    ("without-adaptive", False, 0),
)


def run_case(
    cluster: Cluster,
    api: Any,
    case: str,
    extender: dcfg.Extender | None,
    pods: list[Obj],
    node_tier: dict[str, str],
    timeout: float,
    qps: float,
    percentage: int | None = None,
) -> Obj:
    ns = f"bench-{case}-{uuid.uuid4().hex[:6]}"
    cluster.stop_perllm_scheduler()
    cluster.kubectl("create", "namespace", ns)
    create_s = create_pods(api, ns, pods)
    w = Watcher(api, ns)
    th = threading.Thread(target=w.run, daemon=True)
    th.start()
    w.started.wait(30)
    t_start = time.monotonic()
    cluster.start_perllm_scheduler(
        extender, client_qps=qps or None, percentage_of_nodes_to_score=percentage
    )
    t_ready = time.monotonic()
    deadline = t_start + timeout
    while len(w.bound) < len(pods) and time.monotonic() < deadline and w.error is None:
        time.sleep(0.1)
    w.stop.set()
    if w.error is not None:
        raise RuntimeError(f"{case}: watch failed: {w.error!r}")
    times = sorted(t for t, _ in w.bound.values())
    n = len(times)
    row: Obj = {
        "case": case,
        "percentage_of_nodes_to_score": 100 if percentage is None else percentage or "adaptive",
        "pods": len(pods),
        "bound": n,
        "create_s": create_s,
        "scheduler_start_s": t_ready - t_start,
        "tiers": dict(Counter(node_tier.get(nd, "?") for _, nd in w.bound.values())),
    }
    if n >= 2:
        span = times[-1] - times[0]
        row.update(
            span_s=span,
            pods_per_s=(n - 1) / span if span > 0 else float("inf"),
            first_bound_after_start_s=times[0] - t_start,
            pods_per_s_incl_startup=n / (times[-1] - t_start),
        )
    if n < len(pods):
        row["error"] = f"only {n} of {len(pods)} pods bound within {timeout:.0f} s"
    # Leave nothing behind for the next case (KWOK's pod-delete stage removes them).
    cluster.kubectl("delete", "namespace", ns, "--wait=false")
    end = time.monotonic() + 180
    while time.monotonic() < end and pods_left(api, ns) > 0:
        time.sleep(1)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--timeout", type=float, default=600, help="per case, seconds")
    ap.add_argument("--out", type=Path, help="write the result as JSON here")
    ap.add_argument(
        "--qps",
        type=float,
        nargs="+",
        default=[0, 1000],
        help="scheduler API client qps per pair of cases (0: default 50)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the run directory (logs)")
    args = ap.parse_args()

    print(load_line(), flush=True)
    run_dir = temporary_run_dir()
    scenario = fleet_scenario(args.nodes)
    scen_file = run_dir / "fleet.yaml"
    scen_file.write_text(
        yaml.safe_dump(scenario.model_dump(mode="json", exclude_none=True), sort_keys=False)
    )
    node_tier = {n: s.tier.value for n, s in scenario.expanded_servers()}
    services = scenario.services()
    shares = [c.share for c in scenario.workload.classes]
    pods = [pod_manifest(s, i) for i, s in enumerate(service_mix(services, shares, args.pods))]

    cluster = Cluster(
        ClusterConfig(run_dir=run_dir, scenario=scen_file, prometheus=False, die_with_parent=True)
    )
    rows: list[Obj] = []
    t0 = time.monotonic()
    try:
        cluster.up()
        print(
            f"cluster up with {args.nodes} KWOK nodes in {time.monotonic() - t0:.0f} s ({run_dir})",
            flush=True,
        )
        api = kubernetes.client.CoreV1Api(
            kubernetes.config.new_client_from_config(str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
        )
        with extender_process(run_dir / "logs" / "extender.log", cluster.kubeconfig) as base:
            ext = dcfg.Extender(url=f"{base}/scheduler", ignorable=False)
            for qps in args.qps:
                for case, use_extender, percentage in CASES:
                    extender = ext if use_extender else None
                    before = extender_decisions(base)
                    row = run_case(
                        cluster, api, case, extender, pods, node_tier, args.timeout, qps, percentage
                    )
                    row["client_qps"] = qps or "default (50)"
                    row["extender_filter_decisions"] = extender_decisions(base) - before
                    rows.append(row)
                    print(
                        f"qps {row['client_qps']!s:12s} {case:16s} extender: "
                        f"{row.get('pods_per_s', 0):8.1f} pods/s ({row['bound']}/{row['pods']} "
                        f"bound in {row.get('span_s', 0):.1f} s; "
                        f"{row['extender_filter_decisions']:.0f} extender decisions; "
                        f"tiers {row['tiers']})",
                        flush=True,
                    )
    finally:
        cluster.down()
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    ratios: dict[str, float | None] = {}
    ratios_adaptive: dict[str, float | None] = {}
    for qps in args.qps:
        label = qps or "default (50)"
        by = {r["case"]: r.get("pods_per_s") for r in rows if r["client_qps"] == label}
        with_ = by.get("with")
        for base_case, out in (("without", ratios), ("without-adaptive", ratios_adaptive)):
            without = by.get(base_case)
            ratio = with_ / without if with_ and without else None
            out[str(label)] = ratio
            if ratio is not None:
                verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
                print(
                    f"client qps {label}: ratio with/{base_case} {ratio:.2f} "
                    f"({verdict} the target {TARGET_RATIO})"
                )
    if args.out:
        write_report(
            args.out,
            {
                "nodes": args.nodes,
                "pods": args.pods,
                "rows": rows,
                "ratios": ratios,
                "ratios_vs_adaptive_search": ratios_adaptive,
                "target_ratio": TARGET_RATIO,
            },
        )


if __name__ == "__main__":
    main()
