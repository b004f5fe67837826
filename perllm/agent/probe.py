"""Measured path bandwidth and latency to peer agents (a bounded periodic download).

NIC speed is not path bandwidth: the edge<->cloud path crosses links
the host cannot see. So every `interval_s` the agent downloads `nbytes` from each peer
agent's /probe endpoint, one peer at a time (parallel transfers would share the uplink
and under-report each other), and exports
- perllm_path_rtt_seconds: request sent on an open connection -> response head received
  (about one round trip plus the peer's negligible work), and
- perllm_path_bandwidth_bits_per_second: body bits / (last byte - response head), i.e.
  the throughput a transfer of that size achieves (slow start included, as for requests).
A peer failing `max_failures` probes in a row loses its series (a stale bandwidth would
steer placements); perllm_agent_probe_failures_total counts every failure.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from perllm.agent import metrics
from perllm.agent.health import SourceHealth
from perllm.telemetry import names
from perllm.urls import http_url_error
from perllm.waits import MAX_WAIT_S

log = logging.getLogger("perllm.agent")

DEFAULT_BYTES = 2_000_000
# A probe that small is all round trip and TCP slow start, no bandwidth: 1 byte measured
# 1.95e5 bit/s over a loopback that 2 MB measures at 1.07e10.
MIN_BYTES = 64 * 1024
MAX_BYTES = 64 * 1024 * 1024  # what a /probe serves at most, and a prober asks at most
CHUNK = 64 * 1024


class ProbeError(Exception):
    pass


@dataclass(frozen=True)
class Peer:
    name: str  # the `peer` label
    url: str  # full URL of the peer's /probe endpoint


def parse_peer(spec: str) -> Peer:
    """`URL` or `NAME=URL`; URL is a peer agent's base URL (or its /probe URL)."""
    name, sep, url = spec.partition("=")
    if not sep or "://" in name:
        name, url = "", spec
    u = urlsplit(url.strip())
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ValueError(f"--peer {spec!r}: expected http(s)://HOST[:PORT] or NAME=URL")
    if u.username is not None or u.password is not None:  # (the spec is not echoed)
        raise ValueError(
            "--peer: user:password@ in the URL: not supported (the peer's name, by default "
            "its host and port, is a metric label)"
        )
    if why := http_url_error(url.strip()):  # a bad port, a host no resolver answers
        raise ValueError(f"--peer {spec!r}: {why}")
    path = u.path.rstrip("/")
    if not path.endswith("/probe"):
        path += "/probe"
    return Peer(name.strip() or u.netloc, f"{u.scheme}://{u.netloc}{path}")


@dataclass(frozen=True)
class ProbeResult:
    bandwidth_bps: float
    rtt_s: float
    nbytes: int


def probe_once(url: str, nbytes: int, timeout_s: float) -> ProbeResult:
    """Download `nbytes` from a /probe URL within `timeout_s` (connect included)."""
    u = urlsplit(url)
    deadline = time.monotonic() + timeout_s
    cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
    conn = cls(u.hostname or "", u.port, timeout=timeout_s)
    # The socket timeout bounds each recv only, and one read (a header line, a chunk) waits
    # for all of it: a peer dripping bytes would hold the probe indefinitely. At the
    # deadline the socket is shut down, which ends whatever read is blocked.
    fired = threading.Event()

    def cut() -> None:
        fired.set()
        sock = conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    watchdog = threading.Timer(timeout_s, cut)
    watchdog.daemon = True
    watchdog.start()
    want, got = nbytes, 0
    try:
        conn.connect()
        if fired.is_set():  # it fired while connecting (a slow resolver): no socket to cut
            raise TimeoutError("connected past the deadline")
        sent = time.monotonic()
        conn.request(
            "GET",
            f"{u.path}?{urlencode({'bytes': nbytes})}",
            headers={"Accept-Encoding": "identity", "Cache-Control": "no-store"},
        )
        resp = conn.getresponse()
        head = time.monotonic()
        if resp.status != 200:
            raise ProbeError(f"HTTP {resp.status} {resp.reason}")
        if resp.length is not None and resp.length < nbytes:  # an agent sends all it is asked
            raise ProbeError(
                f"short body: the peer declares {resp.length} of {nbytes} bytes "
                "(not a PerLLM agent's /probe?)"
            )
        while got < want:
            chunk = resp.read(min(CHUNK, want - got))
            if not chunk:
                break
            got += len(chunk)
            if time.monotonic() > deadline:
                break
        end = time.monotonic()
    except (OSError, http.client.HTTPException) as e:
        if not fired.is_set():
            raise ProbeError(f"{type(e).__name__}: {e}") from None
        end = time.monotonic()
    finally:
        watchdog.cancel()
        conn.close()
    if got < want and (fired.is_set() or end > deadline):
        raise ProbeError(f"timed out after {timeout_s:g} s ({got} of {want} bytes)")
    if got < want or got == 0:
        raise ProbeError(f"short body: {got} of {want} bytes")
    return ProbeResult(bandwidth_bps=got * 8 / max(end - head, 1e-9), rtt_s=head - sent, nbytes=got)


@dataclass
class _PeerState:
    last: ProbeResult | None = None
    consecutive: int = 0
    failures: int = 0


@dataclass
class Prober:
    node: str
    peers: list[Peer]
    interval_s: float = 300.0
    nbytes: int = DEFAULT_BYTES
    timeout_s: float = 30.0
    max_failures: int = 3
    health: SourceHealth = field(default_factory=lambda: SourceHealth("probe"))
    _state: dict[str, _PeerState] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if not MIN_BYTES <= self.nbytes <= MAX_BYTES:
            raise ValueError(
                f"--probe-bytes {self.nbytes}: must be in {MIN_BYTES}..{MAX_BYTES} "
                "(a smaller probe measures round trips, not bandwidth)"
            )
        for flag, v in (("--probe-interval", self.interval_s), ("--probe-timeout", self.timeout_s)):
            if not 0 < v <= MAX_WAIT_S:  # (NaN fails too) inf overflows Event.wait / settimeout
                raise ValueError(f"{flag} {v:g}: must be a positive number of seconds, finite")
        dup = {p.name for p in self.peers if [q.name for q in self.peers].count(p.name) > 1}
        if dup:
            raise ValueError(f"--peer: duplicate peer name(s) {sorted(dup)}; use NAME=URL")
        self._state = {p.name: _PeerState() for p in self.peers}
        if not self.peers:
            self.health.down("no --peer given; path bandwidth not measured from this node")

    def probe_all(self, stop: threading.Event | None = None) -> None:
        for p in self.peers:
            if stop is not None and stop.is_set():
                return
            try:
                r: ProbeResult | None = probe_once(p.url, self.nbytes, self.timeout_s)
                err = None
            except ProbeError as e:
                r, err = None, str(e)
            except Exception as e:
                # e.g. UnicodeError for a host the IDNA codec refuses (`bad..host`),
                # InvalidURL: raised out of the round, it skipped the later peers, counted
                # nothing and logged a traceback every round
                r, err = None, f"{type(e).__name__}: {e}"
            with self._lock:
                st = self._state[p.name]
                if r is not None:
                    if st.consecutive:
                        log.info("probe %s: ok again", p.name)
                    st.last, st.consecutive = r, 0
                    continue
                st.failures += 1
                st.consecutive += 1
                dropped = st.consecutive == self.max_failures and st.last is not None
                if st.consecutive >= self.max_failures:
                    st.last = None
                first = st.consecutive == 1
            if first or dropped:
                log.warning(
                    "probe %s (%s) failed: %s%s",
                    p.name,
                    p.url,
                    err,
                    "; its series dropped" if dropped else "",
                )
        self._update_health()

    def _update_health(self) -> None:
        if not self.peers:
            return
        with self._lock:
            live = sum(st.last is not None for st in self._state.values())
        if live:
            self.health.ok(f"{live} of {len(self.peers)} peer(s) measured")
        else:
            self.health.down(f"no peer measured ({', '.join(p.name for p in self.peers)})")

    def run(self, stop: threading.Event) -> None:
        """Probe now, then every `interval_s`, until `stop` is set."""
        while not stop.is_set():
            try:
                self.probe_all(stop)
            except Exception:  # a bug here must not end the measurements silently
                log.exception("probe round failed")
            stop.wait(self.interval_s)

    def families(self) -> Iterable[Metric]:
        labels = [names.NODE, "peer"]
        bw = GaugeMetricFamily(
            names.PATH_BANDWIDTH_BPS,
            "Measured download throughput from the peer, bit/s.",
            labels=labels,
        )
        rtt = GaugeMetricFamily(
            names.PATH_RTT_S, "Time to the first response byte from the peer, s.", labels=labels
        )
        fails = CounterMetricFamily(
            metrics.PROBE_FAILURES, "Failed path probes per peer.", labels=labels
        )
        with self._lock:
            for name, st in self._state.items():
                fails.add_metric([self.node, name], st.failures)
                if st.last is not None:
                    bw.add_metric([self.node, name], st.last.bandwidth_bps)
                    rtt.add_metric([self.node, name], st.last.rtt_s)
        return [f for f in (bw, rtt, fails) if f.samples]
