"""The shared Prometheus client (perllm/telemetry/prom.py) against a real HTTP server that
answers like Prometheus' /api/v1/query, and the PromQL helpers of the metric contract."""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from perllm.telemetry import names, queries
from perllm.telemetry.prom import Answer, Prometheus, Sample
from perllm.urls import redact


class FakePrometheus:
    """Answers every query with `result`; `status` other than 200 fails it."""

    def __init__(self) -> None:
        self.result: list[dict[str, Any]] = []
        self.status = 200
        self.queries: list[str] = []
        self.auth: list[str | None] = []  # each query's Authorization header
        self.body: Any = None  # when set: the JSON answered instead
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                q = parse_qs(urlparse(self.path).query).get("query", [""])[0]
                fake.queries.append(q)
                fake.auth.append(self.headers.get("Authorization"))
                body = json.dumps(
                    {
                        "status": "success" if fake.status == 200 else "error",
                        "data": {"resultType": "vector", "result": fake.result},
                    }
                    if fake.body is None
                    else fake.body
                )
                self.send_response(fake.status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def fake() -> Iterator[FakePrometheus]:
    f = FakePrometheus()
    yield f
    f.server.shutdown()
    f.server.server_close()


@contextlib.contextmanager
def _serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """`handler` served on a loopback port for the block: its http://127.0.0.1:PORT."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def test_answers_parse_values_and_labels(fake: FakePrometheus) -> None:
    fake.result = [
        {"metric": {"node": "edge-1"}, "value": [1.0, "100000000"]},
        {"metric": {"node": "edge-2"}, "value": [1.0, "NaN"]},
        {"metric": {}, "value": [1.0, "oops"]},
    ]
    p = Prometheus(fake.url, timeout_s=2)
    ans = p.query(names.bandwidth_by_node())
    assert ans is not None and ans.fresh
    assert ans.by("node") == {"edge-1": 1e8}  # NaN dropped, label-less skipped
    assert math.isnan(ans.samples[2].value)
    assert fake.queries == [names.bandwidth_by_node()]
    assert p.health.ok and p.health.staleness_s() < 5


@pytest.mark.parametrize("value", ["15", [1.0, True], [1.0, "7", "8"], {"1": "9"}, [1.0, None]])
def test_a_value_of_the_wrong_shape_is_no_number(fake: FakePrometheus, value: Any) -> None:
    """A sample's value is [time, "number"]: a bare "15" read as its second character (5.0),
    a boolean as 1.0, and a dict raised KeyError (the whole query failed)."""
    fake.result = [
        {"metric": {"node": "a"}, "value": value},
        {"metric": {"node": "b"}, "value": [1.0, "2"]},
    ]
    ans = Prometheus(fake.url, timeout_s=2).query("q")
    assert ans is not None and ans.by("node") == {"b": 2.0}


def test_failure_serves_last_good_marked_stale(fake: FakePrometheus) -> None:
    fake.result = [{"metric": {"pod": "a"}, "value": [1.0, "2.5"]}]
    p = Prometheus(fake.url, timeout_s=2)
    first = p.query("q")
    assert first is not None and first.scalar() == 2.5
    fake.status = 503
    again = p.query("q")
    assert again is not None and not again.fresh and again.at == first.at
    assert again.scalar() == 2.5
    assert not p.health.ok and p.health.failures == 1 and "503" in (p.health.last_error or "")
    assert p.query("never-asked-before") is None
    fake.status = 200
    assert (back := p.query("q")) is not None and back.fresh and p.health.ok


@pytest.mark.parametrize(
    "result",
    [
        5,
        None,
        {"a": 1},
        [{"metric": ["node", "a"], "value": [1.0, "1"]}],
        [{"metric": "node=a", "value": [1.0, "1"]}],
    ],
)
def test_a_garbled_answer_is_a_failed_query_not_an_exception(
    fake: FakePrometheus, result: Any
) -> None:
    """`query` never raises (the operator's status timer calls it unguarded): an answer
    whose result is not a vector of {metric: {...}, value: [...]} counts as a failure and
    the last good answer is served, marked stale."""
    fake.result = [{"metric": {"pod": "a"}, "value": [1.0, "2.5"]}]
    p = Prometheus(fake.url, timeout_s=2)
    assert (first := p.query("q")) is not None
    fake.result = result
    again = p.query("q")
    assert again is not None and not again.fresh and again.at == first.at
    assert not p.health.ok and p.health.last_error
    assert p.query("never-asked-before") is None


def test_the_reason_of_a_failure_is_bounded(fake: FakePrometheus) -> None:
    """A non-200's whole body is in the client's exception: a proxy's 200 kB error page
    went into every log line, `/readyz` and the LLMService's TelemetryStale condition."""
    fake.status = 502
    fake.result = [{"metric": {"pod": "x" * 1000}, "value": [1.0, "1"]}] * 200
    p = Prometheus(fake.url, timeout_s=2)
    assert p.query("q") is None
    why = p.health.last_error or ""
    assert "502" in why and len(why) <= 600


def test_credentials_in_the_url_stay_out_of_logs_and_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`--prometheus http://user:password@host` (basic auth, which requests reads from the
    URL): the warning logged the URL as it was, password included."""
    assert redact("https://user:s3cret@prom:9090/x") == "https://***@prom:9090/x"
    assert redact("http://prom:9090") == "http://prom:9090"
    p = Prometheus("http://user:s3cret@127.0.0.1:9", timeout_s=0.5)  # refused
    with caplog.at_level("WARNING", logger="perllm.telemetry"):
        assert p.query("up") is None
    assert "Prometheus http://***@127.0.0.1:9 unreachable" in caplog.text
    assert "s3cret" not in caplog.text and "s3cret" not in (p.health.last_error or "")


def test_a_token_file_is_sent_as_a_bearer_token_and_reread_when_it_changes(
    fake: FakePrometheus, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A Prometheus behind authentication (PERLLM_PROMETHEUS_TOKEN_FILE, the chart's
    # prometheus.tokenSecret): the token goes in a header, never in a log or an error.
    token = tmp_path / "token"
    p = Prometheus(fake.url, token_file=str(token))
    with caplog.at_level("WARNING", logger="perllm.telemetry"):
        assert p.query("up") is None  # no file yet: a failed query naming it, no raise
    assert str(token) in (p.health.last_error or "") and not p.health.ok
    token.write_text("s3cret-1\n")
    assert p.query("up") is not None and p.health.ok
    assert fake.auth[-1] == "Bearer s3cret-1"
    token.write_text("s3cret-22\n")  # rotated
    os.utime(token, (1e9, 1e9))
    p._client.auth.secret._every = 0.0  # (re-read at most every 10 s)
    assert p.query("up") is not None
    assert fake.auth[-1] == "Bearer s3cret-22"
    assert "s3cret" not in caplog.text
    assert Prometheus(fake.url).query("up") is not None and fake.auth[-1] is None


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_an_https_prometheus_is_verified_before_a_token_goes_to_it(
    fake: FakePrometheus, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The client skipped TLS verification always: whoever answered for the Prometheus got
    # the bearer token. Now: the system's CAs, a CA file, or an explicit skip (logged).
    import ssl

    from perllm.devcluster.certs import generate
    from perllm.telemetry.prom import PromAccess, PromAccessError

    tls = generate(tmp_path / "pki")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls.server_cert, tls.server_key)
    fake.server.socket = ctx.wrap_socket(fake.server.socket, server_side=True)
    url = fake.url.replace("http:", "https:")
    token = tmp_path / "token"
    token.write_text("s3cret\n")

    untrusted = Prometheus(url, token_file=str(token))  # a CA the system does not know
    assert untrusted.query("up") is None
    assert "CERTIFICATE_VERIFY_FAILED" in (untrusted.health.last_error or "")
    assert fake.auth == []  # the handshake failed: no request, no token sent

    trusted = PromAccess(url, str(token), str(tls.ca)).client()
    assert trusted.query("up") is not None and trusted.health.ok
    assert fake.auth == ["Bearer s3cret"]

    with caplog.at_level("WARNING", logger="perllm.telemetry"):
        skip = Prometheus(url, insecure_skip_verify=True)
        assert skip.query("up") is not None
    assert "not verified" in caplog.text

    missing = Prometheus(url, ca_file=str(tmp_path / "nope.pem"))
    assert missing.query("up") is None and "nope.pem" in (missing.health.last_error or "")

    # PromAccess, what the components build, refuses what cannot hold, naming the fields
    # (each component names them as its users spell them)
    with pytest.raises(PromAccessError, match="choose one") as both:
        PromAccess(url, ca_file=str(tls.ca), insecure_skip_verify=True)
    assert both.value.fields == ("ca_file", "insecure_skip_verify")
    assert both.value.named({"ca_file": "--ca"}).startswith("--ca, insecure_skip_verify: a CA")
    with pytest.raises(PromAccessError, match=r"^ca_file: the CA file is an empty path$"):
        PromAccess(url, ca_file="")
    # a URL no query could reach failed each one as a connection error naming no setting
    for bad, said in (("prometheus:9090", r"not an http\(s\) URL"), ("http://p..x", "empty label")):
        with pytest.raises(PromAccessError, match=f"^url: .*{said}") as e:
            PromAccess(bad)
        assert e.value.fields == ("url",)
    with pytest.raises(PromAccessError) as e:
        PromAccess("http://u:s3cret@p..x:9090")
    assert "s3cret" not in str(e.value)


def test_a_dripping_or_huge_answer_is_cut_off_not_waited_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """requests' timeout bounds each read: a server sending a byte every 0.3 s (each read
    within the 1 s timeout) held a query for as long as it liked (8 s measured with 2 s).
    The whole exchange now has `timeout_s`; and at most MAX_ANSWER bytes."""
    import time

    from perllm.telemetry import prom

    class Drip(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "10000")
            self.end_headers()
            for _ in range(100):
                try:
                    self.wfile.write(b" ")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.3)

        def log_message(self, *args: Any) -> None:
            pass

    with _serving(Drip) as url:
        p = Prometheus(url, timeout_s=1.0)
        t0 = time.monotonic()
        assert p.query("up") is None
        assert time.monotonic() - t0 < 2.5  # the 1 s deadline, cut by the watchdog
        assert "timed out: no complete answer within 1s" in (p.health.last_error or "")
    f = FakePrometheus()
    try:
        f.result = [{"metric": {"pod": "x" * 100}, "value": [1.0, "1"]}] * 100
        monkeypatch.setattr(prom, "MAX_ANSWER", 4096)
        q = Prometheus(f.url, timeout_s=2)
        assert q.query("up") is None and "answer over 4096 bytes" in (q.health.last_error or "")
    finally:
        f.server.shutdown()
        f.server.server_close()


def test_a_redirected_answer_is_bounded_too() -> None:
    """The bounding adapter was mounted on the configured URL only: a redirect elsewhere
    (an ingress sending http:// on to https://, another host) was read by requests' default
    adapter, so a dripping target held a 1 s query for 8 s, and its size was unbounded."""
    import time

    class Drip(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "10000")
            self.end_headers()
            for _ in range(40):
                try:
                    self.wfile.write(b" ")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.2)

        def log_message(self, *args: Any) -> None:
            pass

    with _serving(Drip) as drip:
        target = drip.replace("127.0.0.1", "localhost") + "/api/v1/query"

        class Redirect(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(302)
                self.send_header("Location", target)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        with _serving(Redirect) as hop:
            p = Prometheus(hop, timeout_s=1.0)
            t0 = time.monotonic()
            assert p.query("up") is None
            assert time.monotonic() - t0 < 2.5  # one deadline for both hops
            assert "timed out: no complete answer within 1s" in (p.health.last_error or "")


def test_one_deadline_covers_a_query_and_all_its_redirects(fake: FakePrometheus) -> None:
    """Each redirect hop had a deadline of its own: three hops each answering their 302 in
    0.4 s held a 1 s query for 1.2 s, and it succeeded past its timeout (N hops: N × the
    timeout). The whole exchange, redirects included, now ends at the query's deadline."""
    import time

    class Hops(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # /<n>/api/v1/query: 0.4 s, then on to /<n - 1>/...
            n, rest = self.path[1:].split("/", 1)
            time.sleep(0.4)
            self.send_response(302)
            where = f"/{int(n) - 1}/{rest}" if int(n) > 1 else f"{fake.url}/{rest}"
            self.send_header("Location", where)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    with _serving(Hops) as url:
        p = Prometheus(f"{url}/3", timeout_s=1.0)
        t0 = time.monotonic()
        assert p.query("up") is None
        assert time.monotonic() - t0 < 1.3
        assert "timed out: no complete answer within 1s" in (p.health.last_error or "")
        assert fake.queries == []  # never reached
        assert Prometheus(f"{url}/1", timeout_s=1.0).query("up") is not None  # one hop: in time


def test_a_hanging_name_lookup_is_bounded_by_the_query_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Name resolution comes before there is a socket for the watchdog to shut down, and a
    hanging getaddrinfo (a DNS server that drops packets, a stuck NSS module) ignores every
    socket timeout: it held a 0.3 s query for as long as the resolver liked. Now the query
    fails at its deadline; the lookup's thread, which nothing can cancel, is left to end
    (at most MAX_BLOCKED of them per host: beyond, a query fails at once, saying why)."""
    import socket
    import time

    from perllm.telemetry import bounded

    for proxy in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    host, release, real = "prom.hangs.example", threading.Event(), socket.getaddrinfo

    def hanging(name: Any, *args: Any, **kwargs: Any) -> Any:
        if name == host:
            release.wait(10)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    try:
        p = Prometheus(f"http://{host}:9090", timeout_s=0.3)
        t0 = time.monotonic()
        assert p.query("up") is None
        assert time.monotonic() - t0 < 1.0  # the 0.3 s deadline, not the resolver's 10 s
        assert "timed out: no complete answer within 0.3s" in (p.health.last_error or "")
        assert not p.health.ok  # what /readyz and TelemetryStale report
        for _ in range(bounded.MAX_BLOCKED + 1):
            assert p.query("up") is None
        stuck = [t for t in threading.enumerate() if t.name == f"perllm-connect-{host}"]
        assert len(stuck) == bounded.MAX_BLOCKED
        assert "still hang (name resolution?)" in (p.health.last_error or "")
    finally:
        release.set()
    for t in stuck:
        t.join(5)
        assert not t.is_alive()
    assert host not in bounded._blocked  # the lookups ended: connections are tried again


def test_a_deadline_passing_as_the_connect_thread_ends_still_cuts_the_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The watchdog can fire while the connect thread runs: there is no socket yet to shut
    down, so its cut was lost when the connect then returned before the waiter gave up, and
    the TLS handshake (a server that accepts and never speaks) held the query for the
    socket timeout past its deadline. Now the socket changes hands under the watchdog's
    lock: the connection fails at once."""
    import socket
    import time

    import urllib3
    from urllib3.util import connection as util_connection

    from perllm.telemetry import bounded

    silent = socket.create_server(("127.0.0.1", 0))  # accepts (backlog), never answers
    conn = bounded._watched_pool(urllib3.HTTPSConnectionPool).ConnectionCls(
        "127.0.0.1", silent.getsockname()[1], timeout=3.0
    )
    watch, real = bounded._Watch(time.monotonic() + 2.0), util_connection.create_connection

    def connected_then_cut(*args: Any, **kwargs: Any) -> socket.socket:
        sock = real(*args, **kwargs)
        watch.cut()  # the watchdog fires as the connect ends, before urllib3 has its socket
        return sock

    monkeypatch.setattr(util_connection, "create_connection", connected_then_cut)
    bounded._local.watch = watch
    try:
        t0 = time.monotonic()
        with pytest.raises(urllib3.exceptions.ConnectTimeoutError, match="deadline passed"):
            conn.connect()
        assert time.monotonic() - t0 < 1.0  # not the handshake's 3 s socket timeout
    finally:
        bounded._local.watch = None
        conn.close()
        silent.close()


def test_unreachable_or_unconfigured_returns_none_without_raising() -> None:
    p = Prometheus("http://127.0.0.1:9", timeout_s=0.5)  # discard port: refused
    assert p.query("up") is None
    assert not p.health.ok and p.health.staleness_s() == math.inf
    q = Prometheus(None)
    assert q.query("up") is None and q.health.last_error == "no Prometheus URL configured"


def test_deadline_bucket_never_over_reports() -> None:
    assert names.deadline_bucket(0.2) is None
    assert names.deadline_bucket(1.0) == 1.0
    assert names.deadline_bucket(2.4) == 2.0
    assert names.fmt_le(2.0) == "2.0"


def test_pod_latency_falls_back_to_kserve_predict_latency() -> None:
    q = names.pod_latency("2m")
    assert f"{names.VLLM_E2E_LATENCY}_sum[2m]" in q
    assert f"{names.KSERVE_PREDICT_LATENCY}_count[2m]" in q and ") or (" in q


def test_answer_keys_by_pair_and_by_either_spelling_of_a_label() -> None:
    ans = Answer(
        [
            Sample({"namespace": "llm", "pod": "a", "Hostname": "gpu-1"}, 2.0),
            Sample({"namespace": "llm", "hostname": "gpu-2"}, 3.0),
            Sample({"namespace": "llm", "pod": "b"}, math.nan),
        ],
        True,
        0.0,
    )
    assert ans.by_pair("namespace", "pod") == {"llm/a": 2.0}  # NaN and half-labelled dropped
    assert ans.by_any(names.DCGM_HOST_LABELS) == {"gpu-1": 2.0, "gpu-2": 3.0}


def test_extender_queries_are_built_from_the_shared_names() -> None:
    snap = queries.snapshot("2m")
    assert set(snap) == {"bandwidth", "gpu_power", "cpu_power", "running", "waiting", "latency"}
    assert snap["bandwidth"] == names.bandwidth_by_node()
    assert snap["latency"] == names.pod_latency("2m")
    assert snap["running"] == queries.pod_running()
    assert f"sum by (namespace, pod) ({names.VLLM_RUNNING})" in snap["running"]
    assert snap["cpu_power"].startswith(f"(sum by (node) ({names.CPU_POWER_W})) or ")
    assert f'{names.KEPLER_NODE_CPU_W}{{zone="package"}}' in snap["cpu_power"]
    learn = queries.learning("1m")
    assert learn["latency"] == names.pod_latency("1m")
    assert learn["rate"] == f"sum by (namespace, pod) (rate({names.VLLM_E2E_LATENCY}_count[1m]))"
    assert learn["tokens"].endswith(f"/ {learn['rate']}")  # tokens per finished request
    assert f"increase({names.SERVICE_ENERGY_J}[1m])" in learn["energy"]
    assert "sum by (namespace, service)" in learn["energy"]
    assert learn["pod_energy"] == queries.pod_cpu_energy_per_request("1m")
    assert names.KEPLER_POD_CPU_J in learn["pod_energy"]


def test_load_queries_read_vllm_and_llamacpp_gauges() -> None:
    """Edge pods run llama.cpp: their slots' load counts like vLLM's running/waiting."""
    assert names.VLLM_RUNNING in queries.pod_running()
    assert names.LLAMACPP_RUNNING in queries.pod_running()
    assert names.VLLM_WAITING in queries.pod_waiting()
    assert names.LLAMACPP_WAITING in queries.pod_waiting()
    for q in (queries.pod_running(), queries.pod_waiting()):
        assert q.count("sum by (namespace, pod)") == 2 and " or " in q


@pytest.mark.parametrize("where", ["status line", "headers", "chunked body"])
def test_the_whole_exchange_is_bounded_not_only_the_body(where: str) -> None:
    """The query's limit started once the head was in: a server dripping its status line
    or headers (each byte within requests' per-read timeout) held a 1 s query for 6.1 s,
    longer the longer the head. Connect, head and body now share one deadline, the socket is
    shut down at it, the failure says it timed out, and the connection is not reused."""
    import time

    conns: list[int] = []

    class Drip(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            conns.append(self.client_address[1])
            if len(conns) > 1:  # the next query: answered at once
                body = json.dumps({"status": "success", "data": {"result": []}}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            if where == "status line":
                drip = b"HTTP/1.1 200 OK" + b" " * 40
            elif where == "headers":
                drip = b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 40
            else:  # no Content-Length: a shut socket would read as the end of the body
                self.wfile.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                drip = b"1\r\n \r\n" * 40
            for i in range(len(drip)):
                try:
                    self.wfile.write(drip[i : i + 1])
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.15)

        def log_message(self, *args: Any) -> None:
            pass

    with _serving(Drip) as url:
        p = Prometheus(url, timeout_s=1.0)
        t0 = time.monotonic()
        assert p.query("up") is None
        assert time.monotonic() - t0 < 2.5
        why = p.health.last_error or ""
        assert "timed out" in why and "1s" in why, why
        assert p.query("up") is not None  # the next query: a new connection, answered
        assert len(set(conns)) == 2, conns


def test_a_connection_cut_at_a_deadline_is_never_reused() -> None:
    """The watchdog can fire as an answer completes and its connection goes back to the
    pool: the next request to take it reconnects instead of writing into a shut socket, and
    a cut never reaches a connection another request has claimed since."""
    import socket

    from perllm.telemetry import bounded

    socks: list[socket.socket] = []

    class Conn(bounded._Watched):
        def __init__(self) -> None:
            self.closed = 0
            self.reconnect()

        def reconnect(self) -> None:
            self.sock, self.peer = socket.socketpair()
            socks.extend((self.sock, self.peer))

        def close(self) -> None:
            self.closed += 1

    c = Conn()
    mine = bounded._Watch()
    bounded._local.watch = mine
    try:
        c._claim()
        mine.cut()
        assert mine.fired and c.peer.recv(1) == b""  # shut down: the peer sees the end
        assert c.closed == 0
        theirs = bounded._Watch()
        bounded._local.watch = theirs
        c._claim()  # the next request on it
        assert c.closed == 1 and c._perllm_watch is theirs
        c.reconnect()
        mine.cut()  # a late cut of the earlier request's watch: not this request's socket
        c.peer.send(b"x")
        assert c.sock.recv(1) == b"x"
    finally:
        bounded._local.watch = None
        for s in socks:
            s.close()


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (
            {"status": "error", "errorType": "bad_data", "error": "parse error at char 3"},
            "status 'error': bad_data: parse error at char 3",
        ),
        ({"status": "error"}, "status 'error': no error given"),
        ({"status": "success"}, "no data.result"),
        ({"status": "success", "data": {"resultType": "vector"}}, "no data.result"),
        (["not", "an", "object"], "a JSON list"),
    ],
)
def test_a_200_that_is_no_query_result_says_why(fake: FakePrometheus, body: Any, said: str) -> None:
    """A 200 whose JSON says "status": "error" (a proxy, a Prometheus-compatible store) or
    lacks `data` failed as `KeyError: 'data'`: the reason now names Prometheus' own
    errorType and error, or what is missing."""
    fake.body = body
    p = Prometheus(fake.url, timeout_s=2)
    assert p.query("up") is None
    why = p.health.last_error or ""
    assert said in why and "KeyError" not in why, why
