"""The router's added latency and its throughput, against a direct connection.

A trivial OpenAI-compatible stub backend (`perllm.router.stub`, 16 streamed tokens, no
delay unless `--token-delay-ms`) runs in one process, `perllm router` (both tiers'
backends pointing at the stub) in another, and an HTTP/1.1 keep-alive load generator in a
third. Per concurrency (1, 16, 64 streams) it measures the full-response latency of the
same requests direct and through the router, interleaved in rounds; the added latency is
the router's percentile minus the direct one. Throughput: closed loop at 64 streams for a
few seconds each way, the ratio in the same run. Targets (issue): p99 added ≤ 2 ms,
throughput ratio ≥ 0.8 on 2 cores. `--baseline DIR` runs a second router from another
checkout (e.g. the previous commit's worktree) beside this one, interleaved in the same
rounds: before/after in one run.

The load generator (`--client`): `python` (default) is an asyncio client in this process:
it takes most of a core itself, which the router path (three processes on two cores) pays
for and the direct path (two) does not. `go` is `bench/loadgen`, built once with the Go
toolchain into ~/.cache/perllm/bin keyed by its source: less CPU of its own, as wrk or
hey, but its connections write independently, so the stub batches fewer requests per
wake-up and the direct side is slower with it too (bench/README.md has both).

    .venv/bin/python bench/router_overhead.py --out out/router_overhead.json
    .venv/bin/python bench/router_overhead.py --baseline /path/to/old/checkout
    .venv/bin/python bench/router_overhead.py --token-delay-ms 5   # paced streams
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from perllm.cli_args import MAX_PORT, at_least

ROOT = Path(__file__).resolve().parent.parent
BODY = json.dumps(
    {
        "model": "chat",
        "stream": True,
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "hello " * 64}],
    }
).encode()


def spawn(code: str, root: Path = ROOT) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": f"{root}:{os.environ.get('PYTHONPATH', '')}"}
    # cwd: `-c` puts it first on sys.path, so it decides which checkout's perllm runs
    return subprocess.Popen([sys.executable, "-c", code], env=env, cwd=root, stderr=subprocess.PIPE)


STUB = """
import uvicorn
from perllm.router.stub import StubBackend
uvicorn.run(StubBackend(tokens=16, token_delay_s={delay}), host="127.0.0.1", port={port},
            log_level="warning", access_log=False, lifespan="off")
"""
ROUTER = """
from perllm.router.app import Router
from perllm.router.config import load_config
router = Router(load_config({cfg!r}))
try:
    from perllm.router.serving import run  # what `perllm router` runs
    run(router, "127.0.0.1", {port})
except ImportError:  # a --baseline checkout from before it existed
    import uvicorn
    uvicorn.run(router, host="127.0.0.1", port={port}, log_level="warning", access_log=False)
"""


class Conn:
    """One keep-alive HTTP/1.1 connection: POST, read the whole (chunked) response."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.r: asyncio.StreamReader | None = None
        self.w: asyncio.StreamWriter | None = None

    async def post(self, path: str) -> float:
        if self.w is None:
            self.r, self.w = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.r is not None
        t0 = time.perf_counter()
        self.w.write(
            f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            f"content-length: {len(BODY)}\r\n\r\n".encode()
            + BODY
        )
        head = await self.r.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.decode(errors="replace"))
        lower = head.lower()
        if b"transfer-encoding: chunked" in lower:
            while True:
                size = int((await self.r.readuntil(b"\r\n")).strip(), 16)
                await self.r.readexactly(size + 2)
                if size == 0:
                    break
        else:
            n = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
            await self.r.readexactly(n)
        return time.perf_counter() - t0


async def wait_port(port: int, limit_s: float = 20.0) -> None:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit_s:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError(f"port {port} did not open")


LOADGEN = ROOT / "bench" / "loadgen"


def loadgen() -> Path:
    """The Go load generator, built on first use (cached by a hash of its source)."""
    src = [*sorted(LOADGEN.glob("*.go")), LOADGEN / "go.mod"]
    key = hashlib.sha256(b"".join(p.read_bytes() for p in src)).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "perllm" / "bin"
    exe = cache / f"loadgen-{key}"
    if not exe.exists():
        go = shutil.which("go")
        if go is None:
            raise SystemExit("router_overhead: `go` not found; install Go or use --client python")
        cache.mkdir(parents=True, exist_ok=True)
        print(f"building {exe} ...", file=sys.stderr)
        subprocess.run([go, "build", "-o", str(exe), "."], cwd=LOADGEN, check=True)
    return exe


class Client:
    """Latency and throughput runs against a port, by the Go load generator or in process."""

    def __init__(self, kind: str, body: Path) -> None:
        self.exe = loadgen() if kind == "go" else None
        self.body = body
        self.cpu_s = 0.0  # the Go client's CPU (children's rusage), for the report

    async def _go(self, *args: str) -> object:
        assert self.exe is not None
        before = os.times()
        proc = await asyncio.create_subprocess_exec(
            str(self.exe), "-body", str(self.body), *args,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        after = os.times()
        self.cpu_s += (after.children_user - before.children_user) + (
            after.children_system - before.children_system
        )
        if proc.returncode != 0:
            raise RuntimeError(err.decode(errors="replace"))
        return json.loads(out)

    async def latencies(self, port: int, conc: int, n: int) -> list[float]:
        if self.exe is None:
            return await latencies(port, conc, n)
        got = await self._go("-port", str(port), "-conns", str(conc), "-requests", str(n))
        assert isinstance(got, list)
        return [float(x) for x in got]

    async def throughput(self, port: int, conc: int, seconds: float) -> float:
        if self.exe is None:
            return await throughput(port, conc, seconds)
        got = await self._go("-port", str(port), "-conns", str(conc), "-seconds", str(seconds))
        assert isinstance(got, float | int)
        return float(got)


async def latencies(port: int, conc: int, n: int) -> list[float]:
    conns = [Conn(port) for _ in range(conc)]
    out: list[float] = []
    per = max(1, n // conc)

    async def worker(c: Conn) -> None:
        for _ in range(per):
            out.append(await c.post("/v1/chat/completions"))

    await asyncio.gather(*(worker(c) for c in conns))
    return out


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


async def throughput(port: int, conc: int, seconds: float) -> float:
    conns = [Conn(port) for _ in range(conc)]
    done = 0
    end = time.perf_counter() + seconds

    async def worker(c: Conn) -> None:
        nonlocal done
        while time.perf_counter() < end:
            await c.post("/v1/chat/completions")
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    return done / (time.perf_counter() - t0)


async def run(args: argparse.Namespace) -> dict[str, object]:
    stub_port = args.port
    routers: dict[str, tuple[int, Path]] = {"router": (args.port + 1, ROOT)}
    if args.baseline is not None:
        routers["baseline"] = (args.port + 2, args.baseline.resolve())
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "router.yaml"
        body = Path(tmp) / "body.json"
        body.write_bytes(BODY)
        client = Client(args.client, body)
        url = f"http://127.0.0.1:{stub_port}"
        cfg.write_text(json.dumps({
            "scenario": "demo", "service_class": "chat", "limits": {"max_concurrency": 512},
            "backends": [
                {"name": "edge-gpu", "url": url, "tier": "edge", "hardware": "nvidia-l4",
                 "link": {"bandwidth_mbps": 100, "rtt_ms": 5}},
                {"name": "cloud", "url": url, "tier": "cloud", "hardware": "a100-80gb-sxm",
                 "link": {"bandwidth_mbps": 300, "rtt_ms": 40}},
            ]}))  # fmt: skip
        procs = [spawn(STUB.format(port=stub_port, delay=args.token_delay_ms / 1e3))] + [
            spawn(ROUTER.format(cfg=str(cfg), port=port), root) for port, root in routers.values()
        ]
        ports = {"direct": stub_port} | {k: p for k, (p, _) in routers.items()}
        pids = {"direct": procs[0].pid} | {k: procs[i + 1].pid for i, k in enumerate(routers)}
        try:
            for p in ports.values():
                await wait_port(p)
            for p in ports.values():  # warm-up (and CS-UCB's exploration)
                await client.latencies(p, 16, 320)
            rows = []
            for conc in (1, 16, 64):
                lat: dict[str, list[float]] = {k: [] for k in ports}
                for _ in range(args.rounds):  # interleaved: all see the same machine
                    for k, p in ports.items():
                        lat[k] += await client.latencies(p, conc, args.requests)
                d = np.array(lat["direct"]) * 1e3
                row: dict[str, float] = {"streams": conc, "n": len(d)}
                row["direct_p50_ms"] = float(np.percentile(d, 50))
                row["direct_p99_ms"] = float(np.percentile(d, 99))
                for k in routers:
                    r = np.array(lat[k]) * 1e3
                    pre = "router" if k == "router" else k
                    row[f"{pre}_p50_ms"] = float(np.percentile(r, 50))
                    row[f"{pre}_p99_ms"] = float(np.percentile(r, 99))
                    add = "added" if k == "router" else f"{k}_added"
                    row[f"{add}_p50_ms"] = row[f"{pre}_p50_ms"] - row["direct_p50_ms"]
                    row[f"{add}_p99_ms"] = row[f"{pre}_p99_ms"] - row["direct_p99_ms"]
                rows.append(row)
            tput: dict[str, list[float]] = {k: [] for k in ports}
            cpu: dict[str, list[float]] = {k: [] for k in ports}  # ms per request
            for _ in range(args.rounds):
                for k, p in ports.items():
                    c0, s0 = cpu_s(pids[k]), cpu_s(procs[0].pid)
                    rps = await client.throughput(p, 64, args.seconds)
                    tput[k].append(rps)
                    n = rps * args.seconds
                    if k != "direct":  # the process's own CPU, not the stub's
                        cpu[k].append((cpu_s(pids[k]) - c0) / n * 1e3)
                    else:
                        cpu[k].append((cpu_s(procs[0].pid) - s0) / n * 1e3)
        except Exception:
            for proc in procs:
                proc.terminate()
                sys.stderr.write(proc.communicate(timeout=10)[1].decode(errors="replace")[-3000:])
            raise
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(10)
    direct = float(np.median(tput["direct"]))
    out: dict[str, object] = {
        "cpus": os.cpu_count(),
        "client": args.client,
        "token_delay_ms": args.token_delay_ms,
        "load_avg_1m": os.getloadavg()[0],
        "latency": rows,
        "throughput_direct_rps": direct,
        "throughput_router_rps": float(np.median(tput["router"])),
        "throughput_ratio": float(np.median(tput["router"])) / direct,
        "targets": {"added_p99_ms": 2.0, "throughput_ratio": 0.8},
        # CPU ms per request at 64 streams: the stub's (direct) and each router process's
        "cpu_ms_per_request": {k: float(np.median(v)) for k, v in cpu.items()},
    }
    if "baseline" in routers:
        out["throughput_baseline_rps"] = float(np.median(tput["baseline"]))
        out["throughput_baseline_ratio"] = float(np.median(tput["baseline"])) / direct
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=at_least(1, int, MAX_PORT), default=18431)
    ap.add_argument("--requests", type=int, default=640, help="per concurrency and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0, help="throughput run per side")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--baseline", type=Path, help="another checkout: its router side by side")
    ap.add_argument("--client", choices=("python", "go"), default="python", help="load generator")
    ap.add_argument("--token-delay-ms", type=float, default=0.0, help="the stub's pace")
    args = ap.parse_args()
    res = asyncio.run(run(args))
    from rich.console import Console
    from rich.table import Table

    t = Table(
        title=f"perllm router overhead (16 streamed tokens {args.token_delay_ms:g} ms apart, "
        f"stub backend, loopback, {args.client} client)"
    )
    for col in ("streams", "direct p50", "router p50", "added p50", "direct p99", "router p99",
                "added p99"):  # fmt: skip
        t.add_column(col, justify="right")
    for r in res["latency"]:  # type: ignore[attr-defined]
        t.add_row(str(r["streams"]), *(f"{r[k]:.2f} ms" for k in (
            "direct_p50_ms", "router_p50_ms", "added_p50_ms", "direct_p99_ms", "router_p99_ms",
            "added_p99_ms")))  # fmt: skip
    c = Console()
    c.print(t)
    if args.baseline is not None:
        for r in res["latency"]:  # type: ignore[attr-defined]
            p50, p99 = r["baseline_added_p50_ms"], r["baseline_added_p99_ms"]
            c.print(f"baseline at {r['streams']} streams: added p50 {p50:.2f} ms, p99 {p99:.2f} ms")
        c.print(f"baseline throughput {res['throughput_baseline_rps']:.0f} req/s, ratio "
                f"{res['throughput_baseline_ratio']:.2f}")  # fmt: skip
    c.print(f"throughput at 64 streams: direct {res['throughput_direct_rps']:.0f} req/s, router "
            f"{res['throughput_router_rps']:.0f} req/s, ratio {res['throughput_ratio']:.2f} "
            f"(target ≥ 0.8); {res['cpus']} CPUs, load {res['load_avg_1m']:.1f}")  # fmt: skip
    cpu: dict[str, float] = res["cpu_ms_per_request"]  # type: ignore[assignment]
    c.print(
        "CPU ms per request (stub as direct; each router process): "
        + ", ".join(f"{k} {v:.3f}" for k, v in cpu.items())
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
