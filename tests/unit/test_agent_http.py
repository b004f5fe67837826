"""Node agent over HTTP: /metrics parses, /probe between two in-process agents on loopback,
probe failures drop the series, the CLI starts and stops cleanly on SIGTERM."""

from __future__ import annotations

import logging
import math
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from perllm.agent import Agent, AgentConfig
from perllm.agent.metrics import PROBE_FAILURES, SOURCE_UP
from perllm.agent.probe import (
    MAX_BYTES,
    MIN_BYTES,
    Peer,
    ProbeError,
    Prober,
    parse_peer,
    probe_once,
)
from perllm.telemetry import names

NO_RAPL = Path("/nonexistent/powercap")


def make_agent(node: str, peers: list[str] | None = None, **kw: Any) -> Agent:
    cfg = AgentConfig(
        node=node, host="127.0.0.1", port=0, peers=peers or [], rapl_root=NO_RAPL, nvml=False, **kw
    )
    return Agent(cfg)


@pytest.fixture
def cloud() -> Iterator[Agent]:
    a = make_agent("cloud-1")
    a.start()
    yield a
    a.stop()


def get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def scrape(url: str) -> dict[str, Any]:
    status, headers, body = get(url + "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def series(fams: dict[str, Any], name: str) -> dict[str, float]:
    fam = fams.get(name.removesuffix("_total"))
    return {} if fam is None else {s.labels["peer"]: s.value for s in fam.samples}


def dead_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def test_endpoints(cloud: Agent) -> None:
    assert get(cloud.url + "/healthz")[0] == 200
    status, headers, body = get(cloud.url + "/probe?bytes=100000")
    assert status == 200 and len(body) == 100_000 == int(headers["Content-Length"])
    assert len(set(body)) > 200  # incompressible, not zeros
    status, headers, _ = get(cloud.url + f"/probe?bytes={10 * MAX_BYTES}", method="HEAD")
    assert status == 200 and int(headers["Content-Length"]) == MAX_BYTES  # capped
    for bad in ("x", "0", "-5", ""):
        status, _, body = get(cloud.url + f"/probe?bytes={bad}")
        assert status == 400 and b"bytes must be an integer" in body
    assert get(cloud.url + "/nope")[0] == 404
    fams = scrape(cloud.url)  # parses; source_up for all three sources
    up = {s.labels["source"]: s.value for s in fams[SOURCE_UP].samples}
    assert up == {"nvml": 0.0, "rapl": 0.0, "probe": 0.0}


def test_bandwidth_between_two_agents(cloud: Agent) -> None:
    edge = make_agent("edge-1", peers=[f"cloud-1={cloud.url}"], probe_bytes=1_000_000)
    edge.start()
    try:
        edge.prober.probe_all()
        fams = scrape(edge.url)
    finally:
        edge.stop()
    bw, rtt = fams[names.PATH_BANDWIDTH_BPS], fams[names.PATH_RTT_S]
    assert [s.labels for s in bw.samples] == [{"node": "edge-1", "peer": "cloud-1"}]
    assert [s.labels for s in rtt.samples] == [{"node": "edge-1", "peer": "cloud-1"}]
    assert bw.samples[0].value > 0 and math.isfinite(bw.samples[0].value)
    assert 0 <= rtt.samples[0].value < 10
    assert series(fams, PROBE_FAILURES) == {"cloud-1": 0.0}
    up = {s.labels["source"]: s.value for s in fams[SOURCE_UP].samples}
    assert up["probe"] == 1.0


def test_background_loop_probes_without_being_asked(cloud: Agent) -> None:
    edge = make_agent("edge-1", peers=[cloud.url], probe_interval_s=0.2, probe_bytes=MIN_BYTES)
    edge.start()
    try:
        deadline = time.monotonic() + 10
        got: dict[str, float] = {}
        while not got and time.monotonic() < deadline:
            got = series(scrape(edge.url), names.PATH_BANDWIDTH_BPS)
            time.sleep(0.05)
        host = cloud.url.removeprefix("http://")
        assert set(got) == {host} and got[host] > 0  # default peer label: host:port
    finally:
        t0 = time.monotonic()
        edge.stop()
        assert time.monotonic() - t0 < 10


def test_three_failures_drop_the_series_and_count() -> None:
    cloud = make_agent("cloud-1")
    cloud.start()
    edge = make_agent(
        "edge-1", peers=[f"c={cloud.url}"], probe_bytes=MIN_BYTES, probe_timeout_s=2.0
    )
    edge.prober.probe_all()
    assert "c" in series({f.name: f for f in edge.prober.families()}, names.PATH_BANDWIDTH_BPS)
    cloud.stop()  # the peer goes away
    for k in (1, 2, 3):
        edge.prober.probe_all()
        fams = {f.name: f for f in edge.prober.families()}
        assert series(fams, PROBE_FAILURES) == {"c": float(k)}
        kept = "c" in series(fams, names.PATH_BANDWIDTH_BPS)
        assert kept == (k < 3), k  # last value kept for two failures, dropped at the third
        assert ("c" in series(fams, names.PATH_RTT_S)) == (k < 3)
    assert not edge.prober.health.up


def test_unresponsive_peer_is_bounded_by_the_timeout() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)  # accepts (kernel backlog) and never answers
    try:
        t0 = time.monotonic()
        with pytest.raises(ProbeError, match=r"timed out|TimeoutError"):
            probe_once(f"http://127.0.0.1:{srv.getsockname()[1]}/probe", 1000, timeout_s=0.5)
        assert time.monotonic() - t0 < 5
    finally:
        srv.close()
    with pytest.raises(ProbeError):
        probe_once(f"http://127.0.0.1:{dead_port()}/probe", 1000, timeout_s=2)


@pytest.mark.parametrize("where", ["head", "body"])
def test_a_dripping_peer_is_bounded_by_the_timeout(where: str) -> None:
    """The socket timeout bounds each read, and one read of a 64 KiB chunk (or of a header
    line) waits for all of it: a peer sending a byte every 0.2 s held a 1 s probe for as
    long as it liked (8 s measured), keeping the last bandwidth exported meanwhile."""
    import socketserver

    class Drip(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.recv(4096)
            head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n"
            if where == "body":
                self.request.sendall(head + b"\r\n")
            else:
                self.request.sendall(head + b"X-Slow: ")
            for _ in range(40):
                try:
                    self.request.sendall(b"a")
                except OSError:
                    return
                time.sleep(0.2)

    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Drip)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        t0 = time.monotonic()
        with pytest.raises(ProbeError, match="timed out after 1 s"):
            probe_once(f"http://127.0.0.1:{srv.server_address[1]}/probe", 100_000, timeout_s=1)
        assert time.monotonic() - t0 < 3
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_peer_declaring_a_short_body_is_a_failure_not_a_measurement() -> None:
    """Not an agent (an ingress's catch-all page, a proxy's error page with 200): its few
    bytes arrive with the head, and their "bandwidth" would steer placements."""
    import http.server

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html>hello</html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with pytest.raises(ProbeError, match="18 of 10000 bytes"):
            probe_once(f"http://127.0.0.1:{srv.server_address[1]}/probe", 10_000, timeout_s=5)
    finally:
        srv.shutdown()
        srv.server_close()


def test_peer_parsing_and_validation() -> None:
    assert parse_peer("http://cloud-1:9401") == parse_peer("http://cloud-1:9401/probe")
    p = parse_peer("cloud=https://10.0.0.5:9401/agent/")
    assert p.name == "cloud" and p.url == "https://10.0.0.5:9401/agent/probe"
    assert parse_peer("http://c:1").name == "c:1"
    # a host no resolver answers: refused at the start (it failed every probe round)
    for bad in ("cloud-1:9401", "ftp://x", "n=", "http://h:99999", "http://bad..host:9401"):
        with pytest.raises(ValueError, match="--peer"):
            parse_peer(bad)
    # credentials would become the peer's metric label (its default name): refused, unsaid
    with pytest.raises(ValueError, match="user:password@") as e:
        parse_peer("http://u:s3cret@cloud:9401")
    assert "s3cret" not in str(e.value)
    with pytest.raises(ValueError, match="--probe-bytes"):
        Prober("n", [], nbytes=MAX_BYTES + 1)
    # a byte or a few measured nothing: 1.95e5 bit/s over a loopback that gives 1.07e10
    with pytest.raises(ValueError, match=f"--probe-bytes 1: must be in {MIN_BYTES}"):
        Prober("n", [], nbytes=1)
    Prober("n", [], nbytes=MIN_BYTES)
    with pytest.raises(ValueError, match="duplicate"):
        Prober("n", [parse_peer("a=http://x:1"), parse_peer("a=http://y:1")])
    with pytest.raises(ValueError, match="--node"):
        make_agent("")


def test_concurrent_scrapes_while_probing(cloud: Agent) -> None:
    edge = make_agent("edge-1", peers=[cloud.url], probe_bytes=2_000_000)
    edge.start()
    errors: list[BaseException] = []

    def hammer() -> None:
        try:
            for _ in range(20):
                scrape(edge.url)
        except BaseException as e:
            errors.append(e)

    try:
        ts = [threading.Thread(target=hammer) for _ in range(4)]
        for t in ts:
            t.start()
        edge.prober.probe_all()
        for t in ts:
            t.join(30)
    finally:
        edge.stop()
    assert not errors


def test_cli_runs_and_stops_on_sigterm(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-c",
        "from perllm.cli import app; app()",
        "agent",
        "--node",
        "cli-node",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--no-nvml",
        "--rapl-root",
        str(tmp_path / "none"),
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        url = None
        deadline = time.monotonic() + 30
        lines = []
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
            url = m.group(1) if m else None
        assert url, "".join(lines)
        fams = scrape(url)
        assert {s.labels["node"] for s in fams[SOURCE_UP].samples} == {"cli-node"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        rest = proc.stderr.read()
        assert "SIGTERM: shutting down" in rest and "stopped" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_cli_rejects_a_bad_peer() -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "from perllm.cli import app; app()",
            "agent",
            "--node",
            "n",
            "--port",
            "0",
            "--no-nvml",
            "--peer",
            "not-a-url",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "--peer" in r.stderr


@pytest.mark.parametrize("flag", ["--probe-interval", "--probe-timeout"])
def test_cli_rejects_an_infinite_interval(flag: str) -> None:
    """`inf` passes typer's min=; it killed the probe thread (wait(inf) overflows) or failed
    every probe with a traceback. Refused up front instead, naming the flag."""
    for v in (math.inf, math.nan, -1.0, 0.0):
        with pytest.raises(ValueError, match=flag):
            Prober("n", [], **{flag.removeprefix("--probe-") + "_s": v})
    r = subprocess.run(
        [sys.executable, "-c", "from perllm.cli import app; app()", "agent", "--node", "n",
         "--port", "0", "--no-nvml", "--peer", "http://127.0.0.1:1", flag, "inf"],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and flag in r.stderr, r.stderr


def test_stop_is_idempotent() -> None:
    a = make_agent("n")
    a.start()
    a.stop()
    a.stop()  # returns at once, never waits on a server that is gone


def test_a_stalled_peer_is_dropped_quietly(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capsys: Any
) -> None:
    """A peer that stops reading mid-download (a partitioned link) times the write out: the
    connection is dropped, with no traceback and no `500` written into the body."""
    from perllm.agent import server

    monkeypatch.setattr(server._Handler, "timeout", 0.3)
    a = make_agent("cloud-1")
    a.start()
    c = socket.socket()
    try:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        host, port = a.url.removeprefix("http://").split(":")
        c.connect((host, int(port)))
        with caplog.at_level(logging.DEBUG, logger="perllm.agent"):
            c.sendall(f"GET /probe?bytes={MAX_BYTES} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not any(
                "stalled" in r.getMessage() or r.levelno >= logging.ERROR for r in caplog.records
            ):
                time.sleep(0.1)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert any("stalled" in r.getMessage() for r in caplog.records)
        assert "Traceback" not in capsys.readouterr().err
        assert get(a.url + "/healthz")[0] == 200
    finally:
        c.close()
        a.stop()


def test_probe_downloads_at_once_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    """/probe serves at most MAX_PROBES downloads at once (each up to 64 MiB, to anyone who
    reaches the port); another is answered 503 with Retry-After at once. Without the cap a
    few clients asking in parallel held a thread each and saturated the node's uplink."""
    from perllm.agent import server

    monkeypatch.setattr(server, "MAX_PROBES", 2, raising=False)
    a = make_agent("cloud-1")
    a.start()
    host, port = a.url.removeprefix("http://").split(":")
    stalled: list[socket.socket] = []
    try:
        for _ in range(2):  # two downloads that never finish: their readers read nothing
            c = socket.socket()
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            c.connect((host, int(port)))
            c.sendall(f"GET /probe?bytes={MAX_BYTES} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            # its head came, so it holds a slot (else a download below could take the
            # slot first, the stalled one get the 503, and every later download a 200)
            c.settimeout(10)
            head = c.recv(12)
            assert head[:7] == b"HTTP/1." and head[9:12] == b"200", head
            stalled.append(c)
        deadline = time.monotonic() + 10
        while (r := get(a.url + f"/probe?bytes={MIN_BYTES}"))[0] == 200:
            assert time.monotonic() < deadline, "a third download was served"
            time.sleep(0.05)
        status, headers, body = r
        assert status == 503 and headers["Retry-After"] == "1", (status, headers)
        assert b"2 probe downloads in flight" in body
        assert get(a.url + "/metrics")[0] == 200  # the rest is served as before
        assert get(a.url + f"/probe?bytes={MAX_BYTES}", method="HEAD")[0] == 200  # no body
        stalled.pop().close()  # one ends: the next download is served
        deadline = time.monotonic() + 10
        while get(a.url + f"/probe?bytes={MIN_BYTES}")[0] != 200:
            assert time.monotonic() < deadline, "the freed slot was not taken"
            time.sleep(0.05)
    finally:
        for c in stalled:
            c.close()
        a.stop()


def test_connections_at_once_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection took a thread for as long as it stayed (up to 60 s idle): a flood of
    idle connections took a thread each, without bound. Over MAX_CONNECTIONS a new one
    is closed at once; a freed place serves again."""
    from perllm.agent import server

    monkeypatch.setattr(server, "MAX_CONNECTIONS", 3)
    a = make_agent("cloud-1")
    a.start()
    host, port = a.url.removeprefix("http://").split(":")
    idle: list[socket.socket] = []
    try:
        for _ in range(3):  # connected, never a request: each holds its thread
            idle.append(socket.create_connection((host, int(port))))
        deadline = time.monotonic() + 10
        while True:  # (the server thread takes each in turn: the 4th is closed at once)
            c = socket.create_connection((host, int(port)))
            c.settimeout(5)
            c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                got = c.recv(100)
            except ConnectionResetError:
                got = b""
            c.close()
            if got == b"":
                break
            assert time.monotonic() < deadline, "a 4th connection was served"
            time.sleep(0.05)
        assert a._server is not None and a._server.refused >= 1
        idle.pop().close()  # one leaves: the next is served
        deadline = time.monotonic() + 10
        while True:
            try:
                if get(a.url + "/healthz")[0] == 200:
                    break
            except (OSError, urllib.error.URLError):
                pass
            assert time.monotonic() < deadline, "the freed place was not taken"
            time.sleep(0.05)
    finally:
        for c in idle:
            c.close()
        a.stop()


def test_an_unexpected_error_on_one_peer_is_its_failure_not_the_rounds(cloud: Agent) -> None:
    """A peer whose host the IDNA codec refuses (a typo, `bad..host`) raised UnicodeError out
    of the round: the peers after it were never probed and nothing was counted."""
    edge = Prober(
        "edge-1",
        [Peer("typo", "http://bad..host:9401/probe"), parse_peer(f"c={cloud.url}")],
        nbytes=MIN_BYTES,
        timeout_s=5.0,
    )
    edge.probe_all()
    fams = {f.name: f for f in edge.families()}
    assert series(fams, PROBE_FAILURES) == {"typo": 1.0, "c": 0.0}
    assert set(series(fams, names.PATH_BANDWIDTH_BPS)) == {"c"}
    assert edge.health.up
