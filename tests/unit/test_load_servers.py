"""`perllm load` against real servers' ways (vLLM, llama.cpp, a gateway, a proxy): one
that does not stream when asked to, holds the connection after `data: [DONE]`, refuses
with a 429, an HTML 5xx page or a redirect, sends without end, breaks the connection."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from test_load_failures import _ev, _planned
from typer.testing import CliRunner

from perllm.load import MAX_ANSWER_BYTES, replay
from perllm.router.serving import serving

TOK = _ev({"choices": [{"index": 0, "delta": {"content": "tok "}}]})


class Parts:
    """Answers every request with `status`, `headers` and the body `parts` (a part None:
    hold the connection open until the client leaves), or endless `repeat` parts."""

    def __init__(
        self,
        status: int = 200,
        headers: list[tuple[bytes, bytes]] | None = None,
        parts: list[bytes | None] | None = None,
        repeat: bytes = b"",
    ) -> None:
        self.status, self.headers, self.parts, self.repeat = status, headers or [], parts, repeat

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        for part in self.parts or []:
            if part is None:
                await receive()  # (http.disconnect: the client left)
                return
            await send({"type": "http.response.body", "body": part, "more_body": True})
            await asyncio.sleep(0.02)  # (each part its own chunk)
        gone = asyncio.ensure_future(receive())  # (http.disconnect: the client left)
        while self.repeat and not gone.done():
            await send({"type": "http.response.body", "body": self.repeat, "more_body": True})
            await asyncio.sleep(0)
        gone.cancel()
        await send({"type": "http.response.body", "body": b""})


def _replay(app: Any, n: int = 2, stream: bool = True, timeout_s: float = 5) -> Any:
    seen: list[Any] = []

    async def go() -> Any:
        async with serving(app) as url:
            t0 = time.perf_counter()
            rep = await replay(url, _planned(n, stream), max_duration_s=5, timeout_s=timeout_s,
                               on_done=seen.append)  # fmt: skip
            return rep, time.perf_counter() - t0

    rep, wall = asyncio.run(asyncio.wait_for(go(), 60))
    return rep, seen, wall


JSON = [(b"content-type", b"application/json")]
SSE = [(b"content-type", b"text/event-stream")]


def test_a_stream_asked_for_and_answered_whole_is_an_answer_without_ttft() -> None:
    """A server or gateway that does not stream answers a stream request with one JSON
    object: it was a 'truncated: no data: [DONE]' failure every time."""
    whole = b'  {"choices": [{"message": {"content": "hi"}}], "usage": {"completion_tokens": 7}}'
    rep, seen, _ = _replay(Parts(headers=JSON, parts=[whole]))
    assert rep.ok == 2 and rep.stream_failures == {} and rep.attainment == 1.0, rep
    assert [(o.tokens, o.ttft_s, o.whole) for o in seen] == [(7.0, None, True)] * 2
    assert rep.whole == 2 and rep.ttft_s == {}


def test_a_whole_200_answer_that_is_an_error_object_is_a_failure() -> None:
    """A 200 whose JSON is `{"error": {...}}` (a gateway's quota) counted as answered."""
    body = b'{"error": {"message": "quota exceeded", "type": "insufficient_quota"}}'
    for stream in (False, True):
        rep, _, _ = _replay(Parts(headers=JSON, parts=[body]), stream=stream)
        assert rep.ok == 0 and rep.attainment == 0.0, rep
        assert rep.stream_failures == {"error_answer: quota exceeded": 2}


def test_a_stream_ends_at_done_though_the_server_holds_the_connection() -> None:
    """A server (or proxy) keeping the connection open after `data: [DONE]` held every
    request to its --timeout: a 'Timeout' transport error, each answered one lost. What
    follows [DONE] is no part of the answer."""
    rep, seen, wall = _replay(Parts(headers=SSE, parts=[TOK * 3 + b"data: [DONE]\n\n" + TOK, None]))
    assert wall < 4 and rep.ok == 2 and rep.errors == {}, rep
    assert [o.tokens for o in seen] == [3.0, 3.0]


def test_refusals_are_counted_by_status_and_the_reason_their_body_gives() -> None:
    """A 429, a 5xx HTML page, vLLM's 404 for a model it does not serve, a redirect: each
    was a bare status count (why not said); a huge or endless error body was read whole
    (to --timeout, in memory)."""
    vllm = b'{"object": "error", "message": "The model `chat` does not exist.", "code": 404}'
    page = (b"<html><head><title>502 Bad Gateway</title><style>h1 {x: y}</style></head>"
            b"<body><h1>502 Bad Gateway</h1><hr><center>nginx</center></body></html>")  # fmt: skip
    cases = [
        (Parts(429, [(b"retry-after", b"5"), *JSON],
               [b'{"error": {"message": "Rate limit reached", "type": "rate_limit"}}']),
         "429: Rate limit reached (Retry-After: 5)"),
        (Parts(502, [(b"content-type", b"text/html")], [page]),
         "502: 502 Bad Gateway 502 Bad Gateway nginx"),
        (Parts(404, JSON, [vllm]), "404: The model `chat` does not exist."),
        (Parts(307, [(b"location", b"https://llm.example/v1/chat/completions")]),
         "307: redirected to https://llm.example/v1/chat/completions (not followed)"),
        (Parts(503), "503"),
        (Parts(500, repeat=b"x" * 65536), "500: " + "x" * 120),
    ]  # fmt: skip
    for app, want in cases:
        rep, seen, wall = _replay(app)
        assert wall < 4 and rep.ok == 0 and rep.attainment == 0.0, rep
        assert rep.http_errors == {want: 2} and rep.errors == {}, rep.http_errors
        assert all(o.tokens == 0 and o.ttft_s is None for o in seen)


def test_an_answer_or_a_stream_event_past_the_limit_fails_fast() -> None:
    """An answer without end was held in memory to --timeout (an endless line of a
    stream, or a JSON answer): every request in flight took as much."""
    big = b'{"usage": {"completion_tokens": 1}, "pad": "' + b"a" * MAX_ANSWER_BYTES + b'"}'
    rep, _, wall = _replay(Parts(headers=JSON, parts=[big]), n=1, stream=False)
    assert rep.ok == 0 and rep.errors == {"ValueError: answer over 16 MiB": 1}, rep
    rep, _, wall = _replay(Parts(headers=SSE, repeat=b"data: " + b"a" * 65536), n=1, timeout_s=30)
    assert wall < 20 and rep.errors == {"ValueError: a stream event over 16 MiB": 1}, rep


def test_what_held_crlf_comments_a_split_character_no_usage_and_a_hang() -> None:
    """Already right, kept so: CRLF line ends and `: ping` comments; a UTF-8 character
    split across chunks; no usage chunk (a token per event with text); a server that
    hangs after its head is a Timeout, bounded by --timeout."""
    crlf = (b": ping\r\n\r\n" + TOK.replace(b"\n", b"\r\n") * 2 + b": ping\r\n\r\n"
            b"data: [DONE]\r\n\r\n")  # fmt: skip
    rep, seen, _ = _replay(Parts(headers=SSE, parts=[crlf]))
    assert rep.ok == 2 and [o.tokens for o in seen] == [2.0, 2.0]
    e = 'data: {"choices": [{"delta": {"content": "é"}}]}\n\n'.encode()
    cut = e.index(b"\xa9")
    rep, seen, _ = _replay(Parts(headers=SSE, parts=[e[:cut], e[cut:] + b"data: [DONE]\n\n"]))
    assert rep.ok == 2 and [o.tokens for o in seen] == [1.0, 1.0]
    assert all(o.ttft_s is not None for o in seen)
    rep, _, wall = _replay(Parts(headers=SSE, parts=[None]), timeout_s=1)
    assert 1 <= wall < 4 and rep.errors == {"Timeout: no complete answer within 1s": 2}


async def _resetting_server(tok: bytes) -> tuple[asyncio.Server, str]:
    """A raw server: a 200 stream head and one token, then the connection reset (RST)."""

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        head = await r.readuntil(b"\r\n\r\n")
        n = next(int(ln.split(b":")[1]) for ln in head.lower().split(b"\r\n")
                 if ln.startswith(b"content-length:"))  # fmt: skip
        await r.readexactly(n)
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        w.write(head + b"transfer-encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (len(tok), tok))
        await w.drain()
        await asyncio.sleep(0.05)
        sock = w.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        w.transport.abort()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    return srv, f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"


def test_a_connection_reset_mid_stream_is_a_named_transport_error() -> None:
    async def go() -> Any:
        srv, url = await _resetting_server(TOK)
        async with srv:
            return await replay(url, _planned(2, True), max_duration_s=5, timeout_s=5)

    rep = asyncio.run(asyncio.wait_for(go(), 30))
    assert rep.ok == 0 and rep.statuses == {"0": 2} and rep.attainment == 0.0, rep
    [(err, n)] = rep.errors.items()
    assert n == 2 and err.split(":")[0] in ("ReadError", "RemoteProtocolError"), err


def test_the_report_names_refusals_and_whole_answers(capsys: Any) -> None:
    from perllm.load_report import Report, print_report

    print_report(Report(target="http://x", sent=3, ok=1, attainment=0.3, latency_s={},
                        ttft_s={}, wall_s=1.0, throughput_rps=1.0, whole=1,
                        http_errors={"429: Rate limit reached (Retry-After: 5)": 2}))  # fmt: skip
    out = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "HTTP error 2 × 429: Rate limit reached (Retry-After: 5)" in out
    assert "answered whole, not streamed 1 (no time to first token)" in out
    empty = Report(target="", sent=0, ok=0, attainment=0, latency_s={}, ttft_s={}, wall_s=0,
                   throughput_rps=0)  # fmt: skip
    assert json.loads(empty.to_json())["http_errors"] == {}


@contextlib.contextmanager
def _in_thread(app: Any, tls: tuple[str, str] | None = None) -> Iterator[str]:
    """`serving(app)` on a loop of its own (the CLI runs its own: `asyncio.run`)."""
    loop, started, urls = asyncio.new_event_loop(), threading.Event(), []
    stop = asyncio.Event()

    async def main() -> None:
        async with serving(app, tls=tls) as url:
            urls.append(url)
            started.set()
            await stop.wait()

    t = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    t.start()
    assert started.wait(10)
    try:
        yield urls[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        t.join(10)
        loop.close()


class NeedsToken(Parts):
    """A gateway wanting `Bearer s3cret-key` (else a 401), answering a stream."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if dict(scope["headers"]).get(b"authorization") == b"Bearer s3cret-key":
            await super().__call__(scope, receive, send)
            return
        body = b'{"error": {"message": "missing or wrong bearer token", "type": "auth"}}'
        await Parts(401, JSON, [body])(scope, receive, send)


def _load(url: str, tmp_path: Path, *args: str) -> tuple[int, str, dict[str, Any]]:
    from perllm.cli import app

    out = tmp_path / "r.json"
    out.unlink(missing_ok=True)
    res = CliRunner().invoke(app, ["load", "demo", "--target", url, "--speed", "1000",
                                   "--max-requests", "2", "--json", str(out), *args])  # fmt: skip
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    report = json.loads(out.read_text()) if out.exists() else {}
    return res.exit_code, " ".join(res.output.replace("│", " ").split()), report


def test_a_target_wanting_an_api_key_gets_it_from_a_file_never_shown(tmp_path: Path) -> None:
    """There was no way to send a bearer token (a router with `auth`, vLLM's --api-key,
    a gateway): every request was a 401."""
    key = tmp_path / "key"
    key.write_text("s3cret-key\n")
    with _in_thread(NeedsToken(headers=SSE, parts=[TOK + b"data: [DONE]\n\n"])) as url:
        rc, out, rep = _load(url, tmp_path)
        assert rc == 1 and rep["http_errors"] == {"401: missing or wrong bearer token": 2}, out
        rc, out, rep = _load(url, tmp_path, "--token-file", str(key))
        assert rc == 0 and rep["ok"] == 2, out
        assert "s3cret" not in out and "s3cret" not in json.dumps(rep)
        # credentials in the URL (sent as basic auth) are not shown either
        creds = url.replace("http://", "http://me:pw-s3cret@")
        rc, out, rep = _load(creds, tmp_path)
        assert rc == 1 and rep["target"] == url.replace("http://", "http://***@"), out
        assert "s3cret" not in out and "s3cret" not in json.dumps(rep)
        rc, out, _ = _load(creds, tmp_path, "--token-file", str(key))  # (basic auth would win)
        assert rc == 2 and "--token-file and credentials in --target" in out, out
    rc, out, _ = _load(url, tmp_path, "--token-file", str(tmp_path / "none"))
    assert rc == 2 and f"error: --token-file: {tmp_path / 'none'}: No such file" in out, out
    rc, out, _ = _load("http://me:pw-s3cret@127.0.0.1:99999", tmp_path)
    assert rc == 2 and "--target http://***@127.0.0.1:99999: Port" in out and "s3cret" not in out


def test_an_https_target_of_a_private_ca_with_ca_file_or_insecure(tmp_path: Path) -> None:
    """A self-signed or private-CA target (a KServe ingress, a lab gateway) failed every
    request verification with no way to trust it."""
    from perllm.devcluster.certs import generate

    tls = generate(tmp_path / "tls")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    app = Parts(headers=SSE, parts=[TOK + b"data: [DONE]\n\n"])
    with _in_thread(app, (str(tls.server_cert), str(tls.server_key))) as url:
        assert url.startswith("https://")
        rc, out, rep = _load(url, tmp_path)
        assert rc == 1 and rep["statuses"] == {"0": 2}, out
        assert all("CERTIFICATE_VERIFY_FAILED" in k for k in rep["errors"]), rep["errors"]
        rc, out, rep = _load(url, tmp_path, "--ca-file", str(tls.ca))
        assert rc == 0 and rep["ok"] == 2, out
        rc, out, rep = _load(url, tmp_path, "--insecure")
        assert rc == 0 and rep["ok"] == 2, out
    rc, out, _ = _load(url, tmp_path, "--ca-file", str(tls.ca), "--insecure")
    assert rc == 2 and "error: --ca-file and --insecure" in out
    rc, out, _ = _load(url, tmp_path, "--ca-file", str(junk))
    assert rc == 2 and f"error: --ca-file: {junk}:" in out, out


class NeedsHost(Parts):
    """An ingress routing by Host (KServe's): another Host is a 404, as ingresses answer."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        h = dict(scope["headers"])
        if h.get(b"host") == b"chat.models.example.com" and h.get(b"x-tenant") == b"t-s3cret":
            await super().__call__(scope, receive, send)
            return
        await Parts(404, JSON, [b'{"error": {"message": "no route"}}'])(scope, receive, send)


def test_headers_an_ingress_routes_by_are_sent_and_never_shown(tmp_path: Path) -> None:
    """There was no way to send a Host (a KServe ingress routes by it) or a gateway's own
    header: every request was that ingress' 404. `--header` sends them; a value is never
    printed; what httpx or --token-file own, a bad name or a line break is refused."""
    key = tmp_path / "key"
    key.write_text("k\n")
    with _in_thread(NeedsHost(headers=SSE, parts=[TOK + b"data: [DONE]\n\n"])) as url:
        rc, out, rep = _load(url, tmp_path)
        assert rc == 1 and list(rep["http_errors"]) == ["404: no route"], out
        args = ("--header", "Host: chat.models.example.com", "--header", "X-Tenant:t-s3cret")
        rc, out, rep = _load(url, tmp_path, *args)
        assert rc == 0 and rep["ok"] == 2, out
        assert "s3cret" not in out and "s3cret" not in json.dumps(rep)
    for bad, said in (
        ("Content-Length: 3", "Content-Length: not settable (httpx sets it)"),
        ("Authorization: Bearer x", "Authorization: not settable (--token-file sends it)"),
        ("no colon", "expected `Name: value`"),
        ("Bad Name: v", "expected `Name: value`"),
        ("X-A: s3cret\u00e9", "X-A: a value of visible ASCII only"),
    ):
        rc, out, _ = _load(url, tmp_path, "--header", bad, "--token-file", str(key))
        assert rc == 2 and f"error: --header: {said}" in out and "s3cret" not in out, out
    rc, out, _ = _load(url, tmp_path, "--header", "X-A: 1", "--header", "x-a: 2")
    assert rc == 2 and "X-A given twice" in out.replace("x-a", "X-A"), out


class ListsModels(Parts):
    """A server listing `llama-3-8b` at /v1/models and streaming every completion."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("path") == "/v1/models":
            body = b'{"object": "list", "data": [{"id": "llama-3-8b", "object": "model"}]}'
            await Parts(200, JSON, [body])(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def test_a_model_the_target_does_not_list_is_warned_of_before_the_run(tmp_path: Path) -> None:
    """A target serving another model name than the class's answered every request 404,
    said only in the report after the run; its /v1/models says so before (a warning: the
    run goes on, a router or gateway may serve names it does not list)."""
    app = ListsModels(headers=SSE, parts=[TOK + b"data: [DONE]\n\n"])
    with _in_thread(app) as url:
        rc, out, rep = _load(url, tmp_path)
        assert rc == 0 and rep["ok"] == 2, out
        assert "warning:" in out and "lists the models llama-3-8b; these requests name" in out
        rc, out, rep = _load(url, tmp_path, "--model", "llama-3-8b")
        assert rc == 0 and "warning:" not in out, out
    with _in_thread(Parts(headers=SSE, parts=[TOK + b"data: [DONE]\n\n"])) as url:
        rc, out, _ = _load(url, tmp_path)  # (no list in OpenAI's shape: nothing said)
        assert rc == 0 and "warning:" not in out, out


class EndlessModels(Parts):
    """/v1/models an endless body (a broken gateway), completions streamed."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("path") == "/v1/models":
            await Parts(200, JSON, [b'{"data": ['], repeat=b'{"id": "x"},')(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def test_an_endless_model_list_is_read_no_further_than_its_bound() -> None:
    """The list was read whole before its size was checked: an endless one held the run
    back for --timeout and the memory it grew."""
    from perllm.load_target import models_listed

    async def go() -> None:
        with _in_thread(EndlessModels(headers=SSE, parts=[TOK + b"data: [DONE]\n\n"])) as url:
            t0 = time.perf_counter()
            assert await models_listed(url, 30.0) is None
            assert time.perf_counter() - t0 < 10

    asyncio.run(go())
