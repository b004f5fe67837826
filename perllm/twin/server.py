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

from perllm.httpguard import ListenError as ListenError  # (re-exported: the twin CLI)
from perllm.scenario import Scenario
from perllm.telemetry import names
from perllm.twin.engine import ACTUAL, Twin
from perllm.twin.kube import ClusterReader
from perllm.twin.metrics import registry_for
from perllm.twin.records import MAX_REQUESTS_PER_SLOT

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


# Wall seconds of simulation per clock tick at most: the lock is released between ticks,
# so /metrics and signals are served even when the work is heavy and the twin falls behind.
TICK_BUDGET_S = 0.1


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
    max_requests_per_slot: int = MAX_REQUESTS_PER_SLOT,
    openai_port: int | None = None,
) -> Twin:
    """Run until `stop` is set or SIGINT/SIGTERM; returns the twin (for tests)."""
    tw = Twin(scenario, seed=seed, max_requests_per_slot=max_requests_per_slot)
    lock = threading.Lock()
    stop = stop or threading.Event()
    http = make_http_server(
        host, port, registry_for(tw, lock), lambda: reader is None or reader.healthy
    )
    openai_sock = None
    if openai_port is not None:  # (bound before anything runs: a busy port is an error)
        from perllm.twin.openai import listen

        try:
            openai_sock = listen(host, openai_port)
        except OSError as e:
            http.server_close()
            raise ListenError("--openai-port", host, openai_port, e) from None
    threading.Thread(target=http.serve_forever, name="twin-http", daemon=True).start()
    previous = _on_signals(stop)
    log.info(
        "twin of %s (%d nodes) on http://%s:%d/metrics, speed ×%g",
        scenario.name,
        len(tw.node_names),
        host,
        http.server_address[1],
        speed,
    )
    if openai_sock is not None:  # the pods as OpenAI endpoints (perllm/twin/openai.py)
        from perllm.twin.openai import TwinOpenAI, serve_in_thread, twin_resolver

        serve_in_thread(TwinOpenAI(scenario, twin_resolver(tw), speed, seed), openai_sock)
        log.info("pods' OpenAI endpoints on http://%s:%d/pods/<ns>/<pod>/v1", host, openai_port)
    if reader is not None:
        threading.Thread(
            target=_poll, args=(tw, reader, lock, stop, poll_s), name="twin-kube", daemon=True
        ).start()
    try:
        _run_clock(tw, lock, stop, speed, log_every_s)
    finally:
        stop.set()  # ends the cluster reader too
        http.shutdown()
        http.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.info("twin stopped at simulated t=%.0fs", tw.now)
    return tw


def _on_signals(stop: threading.Event) -> dict[signal.Signals, Any]:
    """SIGINT/SIGTERM set `stop` (main thread only); returns the handlers to restore."""
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    return previous


def _poll(
    tw: Twin, reader: ClusterReader, lock: threading.Lock, stop: threading.Event, poll_s: float
) -> None:
    while not stop.is_set():
        view = reader.read()
        if view is not None:
            with lock:
                tw.set_services(view.services)
                tw.set_pods(view.pods)
        stop.wait(poll_s)


def _run_clock(
    tw: Twin, lock: threading.Lock, stop: threading.Event, speed: float, log_every_s: float
) -> None:
    """Advance the simulated clock with the wall clock × `speed`, in bounded ticks."""
    t0 = time.monotonic()
    last_log = t0
    dropped_seen = 0
    while not stop.wait(TICK_S):
        now = time.monotonic()
        target = (now - t0) * speed
        with lock:
            tw.advance(target, budget_s=TICK_BUDGET_S)
            tw.behind_s = max(0.0, target - tw.now)
            line = summary(tw) if now - last_log >= log_every_s else None
            dropped = sum(tw.dropped.values())
        if line:
            log.info("%s", line)
            if dropped > dropped_seen:
                log.warning(
                    "%d requests over the cap of %d per service and slot were not simulated "
                    "(perllm_twin_dropped_requests_total); is a declared rateRps absurd?",
                    dropped - dropped_seen,
                    tw.max_requests_per_slot,
                )
                dropped_seen = dropped
            if tw.behind_s > 10 * TICK_S * speed:
                log.warning("the twin is %.0f simulated seconds behind its clock", tw.behind_s)
            last_log = now
