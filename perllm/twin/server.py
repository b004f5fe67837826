"""Run the twin: cluster reader, scaled real-time clock, and the /metrics endpoint."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from perllm.scenario import Scenario
from perllm.telemetry import names
from perllm.twin.engine import ACTUAL, Twin
from perllm.twin.kube import ClusterReader
from perllm.twin.metrics import registry_for

log = logging.getLogger("perllm.twin")
TICK_S = 0.2  # wall seconds between clock advances


def exposition(registry: CollectorRegistry) -> bytes:
    """Text format 0.0.4. DCGM declares its energy `counter` without `_total`;
    prometheus_client cannot, so it is built as a gauge and the TYPE line corrected."""
    text = generate_latest(registry)
    name = names.DCGM_ENERGY_MJ
    return text.replace(f"# TYPE {name} gauge\n".encode(), f"# TYPE {name} counter\n".encode())


def make_http_server(
    host: str, port: int, registry: CollectorRegistry, healthy: Callable[[], bool]
) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] == "/metrics":
                body, ctype, code = exposition(registry), CONTENT_TYPE_LATEST, 200
            elif self.path == "/healthz":
                ok = healthy()
                body = b"ok\n" if ok else b"cluster unreadable\n"
                ctype, code = "text/plain", 200 if ok else 503
            else:
                body, ctype, code = b"not found\n", "text/plain", 404
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    srv = ThreadingHTTPServer((host, port), Handler)
    srv.daemon_threads = True
    return srv


def summary(tw: Twin) -> str:
    """One progress line: simulated time, and per fleet requests, attainment, J/request."""
    parts = [f"t={tw.now:7.0f}s pods={len(tw.pods)} services={len(tw.services)}"]
    for f, st in tw.stats.items():
        n = sum(c.requests for c in st.values())
        met = sum(c.met for c in st.values())
        e = sum(c.energy_j for c in st.values())
        label = "placed" if f == ACTUAL else f
        if n:
            parts.append(f"{label}: n={n} met={100 * met / n:.1f}% {e / n:.0f} J/req")
        else:
            parts.append(f"{label}: n=0")
    return " | ".join(parts)


def serve(
    scenario: Scenario,
    reader: ClusterReader | None,
    host: str,
    port: int,
    speed: float,
    seed: int = 0,
    poll_s: float = 1.0,
    log_every_s: float = 10.0,
    stop: threading.Event | None = None,
) -> Twin:
    """Run until `stop` is set or SIGINT/SIGTERM; returns the twin (for tests)."""
    tw = Twin(scenario, seed=seed)
    lock = threading.Lock()
    stop = stop or threading.Event()
    registry = registry_for(tw, lock)
    http = make_http_server(host, port, registry, lambda: reader is None or reader.healthy)
    threading.Thread(target=http.serve_forever, name="twin-http", daemon=True).start()
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    log.info(
        "twin of %s (%d nodes) on http://%s:%d/metrics, speed ×%g",
        scenario.name,
        len(tw.node_names),
        host,
        http.server_address[1],
        speed,
    )

    def poll() -> None:
        while not stop.is_set():
            assert reader is not None
            view = reader.read()
            if view is not None:
                with lock:
                    tw.set_services(view.services)
                    tw.set_pods(view.pods)
            stop.wait(poll_s)

    if reader is not None:
        threading.Thread(target=poll, name="twin-kube", daemon=True).start()
    t0 = time.monotonic()
    last_log = t0
    try:
        while not stop.wait(TICK_S):
            now = time.monotonic()
            with lock:
                tw.advance((now - t0) * speed)
                line = summary(tw) if now - last_log >= log_every_s else None
            if line:
                log.info("%s", line)
                last_log = now
    finally:
        stop.set()  # ends the cluster reader too
        http.shutdown()
        http.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.info("twin stopped at simulated t=%.0fs", tw.now)
    return tw
