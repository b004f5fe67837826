"""Extender decision latency: p50/p99 per pod at 100, 1,000 and 5,000 candidate nodes.

Three paths, each in both `nodeCacheCapable` modes (`objects`: full Node objects in the
request, as kube-scheduler sends them with `nodeCacheCapable: false`; `names`: node names
only, after the extender's node cache was warmed):

- `decide`: `Scheduler.decide()` in process (the decision alone, no JSON);
- `asgi`: the FastAPI app in process through httpx's ASGITransport (JSON, validation);
- `http`: a real `perllm extender --no-kube` subprocess (uvicorn) on loopback, one
  keep-alive connection, as kube-scheduler's HTTP client uses.

Every request is a new pod (a fresh UID), so each one is a full CS-UCB decision: the
extender reuses a decision only for the prioritize call of the same pod and node set. The
first request of each size builds the cost table and is reported apart (`cold`). Nodes are
the scenario's KWOK Node objects (`perllm.devcluster.nodes.node_manifests`) of a fleet with
the large-fleet mix: 96 % edge Xeon, 4 % cloud A100. Target (issue #5): p99 <= 10 ms over
HTTP at 1,000 nodes.

    .venv/bin/python bench/extender_latency.py --out out/extender_latency.json
    .venv/bin/python bench/extender_latency.py --profile 1000   # cProfile of one size
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from perllm_extender import create_app
from perllm_extender.decide import Scheduler
from perllm_operator import podspec

from perllm.contract import Deadline, Requirements, ServiceSpec
from perllm.devcluster.nodes import node_manifests
from perllm.devcluster.process import free_port, terminate
from perllm.scenario import Scenario, load_scenario

Obj = dict[str, Any]
SIZES = (100, 1000, 5000)
TARGET_P99_S = 0.010
# The interactive class of the reference scenario: the deadline splits the fleet (the
# cloud meets it, the edge does not at every load), so the decision is not trivial.
SERVICE = ServiceSpec(
    name="chat",
    model="llama2-7b",
    requirements=Requirements(deadline=Deadline(seconds=1.0, per_output_token_s=0.15)),
)


def fleet_scenario(n: int, cloud_share: float = 0.04, base: str = "paper-llama2-7b") -> Scenario:
    """`base` with its servers replaced by n nodes: edge Xeon and cloud A100 groups with the
    base scenario's links (large-fleet mix by default)."""
    sc = load_scenario(base)
    edge = next(s for s in sc.servers if s.tier.value == "edge")
    cloud = next(s for s in sc.servers if s.tier.value == "cloud")
    n_cloud = max(1, round(n * cloud_share))
    servers = [
        edge.model_copy(update={"count": n - n_cloud}),
        cloud.model_copy(update={"count": n_cloud}),
    ]
    return Scenario.model_validate(
        {**sc.model_dump(), "name": f"fleet-{n}", "servers": [s.model_dump() for s in servers]}
    )


def load_line() -> str:
    """The machine's state at the start of a timing run (the numbers depend on it)."""
    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"


def write_report(path: Path, doc: Obj) -> None:
    """`doc` as indented JSON at `path`, with the CPU count and the load at the end."""
    path.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpu_count": os.cpu_count(), "load_avg_1m_at_end": os.getloadavg()[0]}
    path.write_text(json.dumps({**doc, **machine}, indent=2))


def fleet_nodes(n: int) -> list[Obj]:
    return node_manifests(fleet_scenario(n))


def pod(uid: str, spec: ServiceSpec = SERVICE) -> Obj:
    """A model-server pod as the operator renders it (label + requirement annotations)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{spec.name}-predictor-{uid[:8]}",
            "namespace": "bench",
            "uid": uid,
            "labels": podspec.labels({"metadata": {"name": spec.name}}),
            "annotations": podspec.pod_annotations(spec),
        },
        "spec": {
            "schedulerName": "perllm-scheduler",
            "containers": [{"name": "model-server", "image": "vllm/vllm-openai"}],
        },
        "status": {"phase": "Pending"},
    }


UID_MARK = "00000000-0000-4000-8000-000000000000"


def body_template(nodes: list[Obj], mode: str) -> bytes:
    """The filter request with a UID placeholder (substituted per request, outside the
    timed part)."""
    if mode == "objects":
        args: Obj = {
            "Pod": pod(UID_MARK),
            "Nodes": {"metadata": {}, "items": nodes},
            "NodeNames": None,
        }
    else:
        args = {
            "Pod": pod(UID_MARK),
            "Nodes": None,
            "NodeNames": [n["metadata"]["name"] for n in nodes],
        }
    return json.dumps(args, separators=(",", ":")).encode()


def with_uid(template: bytes) -> bytes:
    return template.replace(UID_MARK.encode(), str(uuid.uuid4()).encode())


def summary(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)

    def q(p: float) -> float:
        return s[min(len(s) - 1, round(p * (len(s) - 1)))]

    return {
        "p50_ms": 1e3 * q(0.5),
        "p99_ms": 1e3 * q(0.99),
        "mean_ms": 1e3 * statistics.mean(s),
        "max_ms": 1e3 * s[-1],
        "n": len(s),
    }


def iterations(n_nodes: int, scale: float) -> int:
    return max(20, int(scale * {100: 400, 1000: 200, 5000: 60}.get(n_nodes, 100)))


# ---- the three paths ------------------------------------------------------------------------
def bench_decide(nodes: list[Obj], mode: str, iters: int) -> tuple[float, list[float]]:
    sched = Scheduler(create_app().state.scheduler.catalogue)
    names = [n["metadata"]["name"] for n in nodes]
    if mode == "names":
        for n in nodes:
            sched.nodes.upsert(n)

    def one() -> float:
        p = pod(str(uuid.uuid4()))
        t0 = time.perf_counter()
        if mode == "objects":
            sched.decide(p, nodes, None, "filter")
        else:
            sched.decide(p, None, names, "filter")
        return time.perf_counter() - t0

    cold = one()
    return cold, [one() for _ in range(iters)]


async def _asgi(nodes: list[Obj], mode: str, iters: int) -> tuple[float, list[float]]:
    app = create_app()
    transport = httpx.ASGITransport(app=app)
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(transport=transport, base_url="http://extender") as c:
        if mode == "names":  # warm the node cache the way a Nodes request does
            r = await c.post(
                "/scheduler/filter",
                content=with_uid(body_template(nodes, "objects")),
                headers=headers,
            )
            r.raise_for_status()
        tpl = body_template(nodes, mode)

        async def one() -> float:
            body = with_uid(tpl)
            t0 = time.perf_counter()
            r = await c.post("/scheduler/filter", content=body, headers=headers)
            dt = time.perf_counter() - t0
            _check(r)
            return dt

        cold = await one() if mode == "objects" else 0.0
        return cold, [await one() for _ in range(iters)]


def bench_asgi(nodes: list[Obj], mode: str, iters: int) -> tuple[float, list[float]]:
    return asyncio.run(_asgi(nodes, mode, iters))


def _check(r: httpx.Response) -> None:
    if r.status_code != 200:
        raise RuntimeError(f"extender answered {r.status_code}: {r.text[:300]}")
    body = r.json()
    if body.get("Error"):
        raise RuntimeError(f"extender error: {body['Error']}")


@contextlib.contextmanager
def extender_process(log: Path, kubeconfig: Path | None = None) -> Iterator[str]:
    """`perllm extender` on a free loopback port; yields its base URL. With a `kubeconfig`
    it reads Nodes from that cluster, without one it runs `--no-kube`."""
    port = free_port()
    exe = Path(sys.executable).with_name("perllm")
    # plain HTTP on loopback: the latency of the decision path, not of TLS
    argv = [str(exe), "extender", "--port", str(port), "--log-level", "warning", "--insecure-http"]
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    if kubeconfig is None:
        argv.append("--no-kube")
    else:
        env.update(KUBECONFIG=str(kubeconfig), PYTHONWARNINGS="ignore")
        argv.append("--no-verify-pods")  # the bench's pods are synthetic, not in the API
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"extender exited ({proc.returncode}); see {log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"extender not ready after 60 s; see {log}")
            time.sleep(0.2)
        yield url
    finally:
        terminate(proc, timeout=10)


def bench_http(url: str, nodes: list[Obj], mode: str, iters: int) -> tuple[float, list[float]]:
    headers = {"Content-Type": "application/json"}
    with httpx.Client(base_url=url, timeout=30) as c:  # one keep-alive connection
        if mode == "names":
            _check(
                c.post(
                    "/scheduler/filter",
                    content=with_uid(body_template(nodes, "objects")),
                    headers=headers,
                )
            )
        tpl = body_template(nodes, mode)

        def one() -> float:
            body = with_uid(tpl)
            t0 = time.perf_counter()
            r = c.post("/scheduler/filter", content=body, headers=headers)
            dt = time.perf_counter() - t0
            _check(r)
            return dt

        cold = one() if mode == "objects" else 0.0
        return cold, [one() for _ in range(iters)]


# ---- driver ---------------------------------------------------------------------------------
def measure(
    path: str, url: str, nodes: list[Obj], mode: str, iters: int
) -> tuple[float, list[float]]:
    if path == "decide":
        return bench_decide(nodes, mode, iters)
    if path == "asgi":
        return bench_asgi(nodes, mode, iters)
    return bench_http(url, nodes, mode, iters)


def run(sizes: tuple[int, ...], paths: list[str], scale: float, log: Path) -> list[Obj]:
    rows: list[Obj] = []
    stack = contextlib.ExitStack()
    url = stack.enter_context(extender_process(log)) if "http" in paths else ""
    with stack:
        for n in sizes:
            nodes = fleet_nodes(n)
            iters = iterations(n, scale)
            for path in paths:
                for mode in ("objects", "names"):
                    try:
                        cold, samples = measure(path, url, nodes, mode, iters)
                    except RuntimeError as e:
                        rows.append({"nodes": n, "path": path, "mode": mode, "error": str(e)})
                        print(f"{n:>6} {path:7s} {mode:8s} ERROR {e}", flush=True)
                        continue
                    row: Obj = {
                        "nodes": n,
                        "path": path,
                        "mode": mode,
                        "body_bytes": len(body_template(nodes, mode)),
                        "cold_ms": 1e3 * cold,
                        **summary(samples),
                    }
                    rows.append(row)
                    print(
                        f"{n:>6} {path:7s} {mode:8s} {row['body_bytes'] / 1e3:>9,.0f} kB "
                        f"p50 {row['p50_ms']:8.2f} ms  p99 {row['p99_ms']:8.2f} ms  "
                        f"cold {row['cold_ms']:8.1f} ms  (n={row['n']})",
                        flush=True,
                    )
    return rows


def profile(n: int, mode: str, top: int) -> str:
    nodes = fleet_nodes(n)
    bench_decide(nodes, mode, 3)  # warm: the cost table is built once per node set
    prof = cProfile.Profile()
    prof.enable()
    bench_decide(nodes, mode, 50)  # the ASGI path runs this in a worker thread, unprofiled
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, help="write the rows as JSON here")
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument(
        "--paths", nargs="+", default=["decide", "asgi", "http"], choices=["decide", "asgi", "http"]
    )
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the iteration counts")
    ap.add_argument(
        "--log",
        type=Path,
        default=Path("out/extender_latency.log"),
        help="the extender subprocess's log",
    )
    ap.add_argument(
        "--profile",
        type=int,
        metavar="NODES",
        help="only cProfile Scheduler.decide at this size and print it",
    )
    ap.add_argument("--profile-mode", default="names", choices=["objects", "names"])
    args = ap.parse_args()
    if args.profile:
        print(profile(args.profile, args.profile_mode, 30))
        return
    args.log.parent.mkdir(parents=True, exist_ok=True)
    print(load_line(), flush=True)
    rows = run(tuple(args.sizes), args.paths, args.scale, args.log)
    http1k = [r for r in rows if r.get("path") == "http" and r["nodes"] == 1000 and "p99_ms" in r]
    for r in http1k:
        verdict = "meets" if r["p99_ms"] <= 1e3 * TARGET_P99_S else "MISSES"
        print(
            f"HTTP, 1,000 nodes, {r['mode']}: p99 {r['p99_ms']:.2f} ms {verdict} the "
            f"{1e3 * TARGET_P99_S:.0f} ms target"
        )
    if args.out:
        write_report(args.out, {"target_p99_ms": 1e3 * TARGET_P99_S, "rows": rows})


if __name__ == "__main__":
    main()
