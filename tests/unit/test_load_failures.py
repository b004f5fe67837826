"""`perllm load` against targets that fail: garbage answers, a target that dribbles,
one that is down, Ctrl-C, and arguments that send nothing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from perllm.load import plan, replay
from perllm.router.serving import serving
from perllm.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]


def _planned(n: int, stream: bool) -> Any:
    return plan(load_scenario("demo"), seed=0, speed=1000.0, max_requests=n, stream=stream)


class Answers:
    """An ASGI target that answers every request with one of `bodies` in turn (200)."""

    def __init__(self, bodies: list[bytes], ctype: bytes = b"application/json") -> None:
        self.bodies, self.ctype, self.n = bodies, ctype, 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        body = self.bodies[self.n % len(self.bodies)]
        self.n += 1
        hs = [(b"content-type", self.ctype)]
        await send({"type": "http.response.start", "status": 200, "headers": hs})
        await send({"type": "http.response.body", "body": body})


def test_a_200_that_is_no_openai_answer_is_a_failed_request_not_a_traceback() -> None:
    """`json.loads(text).get("usage")` on `[]`, usage a string, or completion_tokens a
    string raised AttributeError/ValueError out of replay: no report at all."""
    cases = [
        (False, [b"[]", b'{"usage": "x"}', b'{"usage": {"completion_tokens": "abc"}}']),
        (True, [b'data: ["usage"]\n\n', b'data: {"usage": 3}\n\n',
                b'data: {"usage": {"completion_tokens": []}}\n\ndata: [DONE]\n\n']),
    ]  # fmt: skip

    async def go(stream: bool, bodies: list[bytes]) -> Any:
        async with serving(Answers(bodies)) as url:
            return await replay(url, _planned(3, stream), max_duration_s=5, timeout_s=5)

    for stream, bodies in cases:
        rep = asyncio.run(asyncio.wait_for(go(stream, bodies), 30))
        assert rep.sent == 3 and rep.ok == 0 and rep.statuses == {"0": 3}, rep
        assert all(k.startswith("ValueError") for k in rep.errors), rep.errors
    good = [
        b'data: {"choices": []}\n\ndata: {"usage": {"completion_tokens": 7}}\n\ndata: [DONE]\n\n'
    ]
    rep = asyncio.run(asyncio.wait_for(go(True, good), 30))
    assert rep.ok == 3 and rep.errors == {}


class Dribble:
    """Starts a 200 answer, then sends a byte every `every` seconds, for ever."""

    def __init__(self, every: float) -> None:
        self.every = every

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while True:
            await send({"type": "http.response.body", "body": b":", "more_body": True})
            await asyncio.sleep(self.every)


def test_a_target_that_dribbles_is_timed_out_per_request_in_all() -> None:
    """httpx's timeout is per read: a target sending a byte now and then held every
    request (and the whole run) for ever, whatever --timeout said."""

    async def go() -> Any:
        async with serving(Dribble(0.2)) as url:
            t0 = time.perf_counter()
            rep = await replay(url, _planned(2, True), max_duration_s=5, timeout_s=1.0)
            return rep, time.perf_counter() - t0

    rep, wall = asyncio.run(asyncio.wait_for(go(), 30))
    assert wall < 5 and rep.sent == 2 and rep.ok == 0
    assert rep.errors == {"Timeout: no complete answer within 1s": 2}


def test_throughput_counts_answered_requests_not_failures() -> None:
    """A target that refuses every connection was reported at N req/s of 'throughput'."""
    rep = asyncio.run(replay("http://127.0.0.1:9", _planned(3, True), 5, timeout_s=2))
    assert rep.sent == 3 and rep.ok == 0 and rep.throughput_rps == 0.0
    assert rep.attainment == 0.0 and rep.latency_s == {} and rep.backends == {}


def test_stop_abandons_the_requests_in_flight_and_reports_those_that_ended() -> None:
    async def go() -> Any:
        async with serving(Dribble(0.2)) as url:
            stop = asyncio.Event()
            asyncio.get_running_loop().call_later(1.0, stop.set)
            t0 = time.perf_counter()
            rep = await replay(url, _planned(3, True), max_duration_s=60, timeout_s=60,
                               stop=stop)  # fmt: skip
            return rep, time.perf_counter() - t0

    rep, wall = asyncio.run(asyncio.wait_for(go(), 30))
    assert wall < 5 and rep.interrupted and rep.sent == 0


def test_ctrl_c_prints_the_report_of_what_ended_and_exits_130(tmp_path: Path) -> None:
    """Ctrl-C was 'Aborted!' (exit 1): the report of a long run was lost."""
    code = (
        "import sys; from perllm.cli import app; "
        "sys.argv = ['perllm', 'load', 'demo', '--target', sys.argv[1], '--speed', '1000', "
        f"'--max-requests', '3', '--timeout', '60', '--json', {str(tmp_path / 'r.json')!r}]; "
        "app()"
    )

    async def go() -> tuple[int, str]:
        seen = asyncio.Event()

        class Hold(Dribble):
            async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
                if scope["type"] == "http":
                    seen.set()
                await super().__call__(scope, receive, send)

        async with serving(Hold(0.2)) as url:
            env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'extender'}:{ROOT / 'operator'}"}
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", code, url, env=env, cwd=ROOT,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            await asyncio.wait_for(seen.wait(), 60)
            await asyncio.sleep(0.5)
            proc.send_signal(signal.SIGINT)
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
            return proc.returncode or 0, out.decode()

    rc, out = asyncio.run(go())
    assert rc == 130, out
    assert "interrupted: the report is of the 0 of 3 requests that ended" in out
    assert "perllm load" in out and "Traceback" not in out  # the report's table
    assert (tmp_path / "r.json").exists()


def test_cli_rejects_a_target_with_a_query_and_a_duration_that_sends_nothing() -> None:
    from perllm.cli import app

    for target in ("http://127.0.0.1:9/?key=1", "http://127.0.0.1:9/#x"):
        res = CliRunner().invoke(app, ["load", "demo", "--target", target])
        assert res.exit_code == 2, res.output
        assert "a base URL has no query or fragment" in res.output
    res = CliRunner().invoke(app, ["load", "demo", "--target", "http://bad..host:8080"])
    assert res.exit_code == 2 and "empty label" in res.output, res.output
    # (it sent nothing, printed an empty report and exited 0)
    res = CliRunner().invoke(
        app, ["load", "demo", "--target", "http://127.0.0.1:9", "--max-duration", "0.1"]
    )
    assert res.exit_code == 2, res.output
    assert "no request arrives within --max-duration 0.1s (the first at" in res.output


def test_cli_checks_json_before_sending_anything(tmp_path: Path) -> None:
    """A --json folder (or a path under a file) raised IsADirectoryError/NotADirectoryError
    after the whole run, its results lost; `--json ""` exited 0 having written nothing."""
    from perllm.cli import app

    (tmp_path / "f").write_text("a file")
    for path, message in (
        (str(tmp_path), f"--json: {tmp_path} is a folder"),
        (str(tmp_path / "f" / "r.json"), f"--json: {tmp_path / 'f'} is not a folder"),
        ("", "Invalid value for '--json': must not be empty"),
        # (os.access says yes to root there: a FileNotFoundError traceback after the run)
        *(
            [("/proc/perllm-r.json", "--json: cannot write in /proc")]
            if Path("/proc/self").is_dir()
            else []
        ),
    ):
        res = CliRunner().invoke(
            app, ["load", "demo", "--target", "http://127.0.0.1:9", "--json", path]
        )
        assert res.exit_code == 2, res.output
        assert isinstance(res.exception, SystemExit)
        out = " ".join(res.output.replace("│", " ").split())
        assert message in out and "requests" not in out, out


class Slow:
    """Answers every request after `delay_s` (a usage block of 5 tokens)."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await asyncio.sleep(self.delay_s)
        hs = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": hs})
        await send({"type": "http.response.body", "body": b'{"usage": {"completion_tokens": 5}}'})


def test_a_request_waiting_for_a_concurrency_slot_counts_that_wait_as_latency() -> None:
    """Latency was timed from when the request got a slot: with --concurrency 1, three
    requests arriving together at a 0.4 s target all reported 0.4 s (coordinated omission)."""

    async def go() -> Any:
        async with serving(Slow(0.4)) as url:
            return await replay(url, _planned(3, False), max_duration_s=5, concurrency=1)

    rep = asyncio.run(asyncio.wait_for(go(), 30))
    assert rep.ok == 3
    assert rep.latency_s["p99"] > 1.1  # the third waited for the two before it
    assert rep.latency_s["p50"] > 0.7


def _outcomes(stream: bool, bodies: list[bytes], n: int) -> tuple[Any, list[Any]]:
    seen: list[Any] = []

    async def go() -> Any:
        async with serving(
            Answers(bodies, b"text/event-stream" if stream else b"application/json")
        ) as url:
            return await replay(url, _planned(n, stream), max_duration_s=5, timeout_s=5,
                                on_done=seen.append)  # fmt: skip

    return asyncio.run(asyncio.wait_for(go(), 30)), seen


def _ev(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def test_a_stream_that_breaks_off_or_carries_an_error_event_is_a_failure() -> None:
    """A 200 stream ending without `data: [DONE]`, or with an error event (vLLM's and the
    router's way to fail mid-stream), counted as an answered request that met its deadline."""
    tok = _ev({"choices": [{"index": 0, "delta": {"content": "tok "}}]})
    boom = _ev({"error": {"message": "engine died", "type": "internal_error", "code": 500}})
    old = _ev({"object": "error", "message": "engine died", "type": "BadRequestError"})
    bodies = [tok * 3, tok + boom + b"data: [DONE]\n\n", tok + old + b"data: [DONE]\n\n"]
    rep, seen = _outcomes(True, bodies, 3)
    assert rep.sent == 3 and rep.ok == 0 and rep.statuses == {"200": 3}, rep
    assert rep.attainment == 0.0 and rep.throughput_rps == 0.0 and rep.latency_s == {}
    assert rep.stream_failures == {
        "truncated: no data: [DONE]": 1,
        "stream_error: engine died": 2,
    }, rep.stream_failures
    assert sorted(o.failure for o in seen) == ["stream_error", "stream_error", "truncated"]
    assert json.loads(rep.to_json())["stream_failures"] == rep.stream_failures
    rep, _ = _outcomes(True, [tok * 3 + b"data: [DONE]\n\n"], 2)
    assert rep.ok == 2 and rep.stream_failures == {}


def test_sse_events_are_counted_by_line_not_by_the_text_data_colon() -> None:
    """`data:` inside generated text was counted as an event (output tokens, and so the
    deadline, inflated); CRLF line ends and `data:` without its space are SSE too."""
    said = _ev({"choices": [{"index": 0, "delta": {"content": "data: data: [DONE] x"}}]})
    crlf = b'data:{"choices": [{"index": 0, "delta": {"content": "y"}}]}\r\n\r\n'
    rep, seen = _outcomes(True, [said * 3 + crlf + b": keep-alive\n\ndata: [DONE]\r\n\r\n"], 1)
    assert rep.ok == 1 and [o.tokens for o in seen] == [4.0]


def test_no_stream_reports_no_time_to_first_token() -> None:
    """Without streaming, the 'time to first token' was the first body byte's: the whole
    answer's latency under another name."""
    rep, seen = _outcomes(False, [b'{"usage": {"completion_tokens": 5}}'], 2)
    assert rep.ok == 2 and [o.ttft_s for o in seen] == [None, None]
    assert rep.ttft_s == {} and rep.streamed is False
    tok = _ev({"choices": [{"index": 0, "delta": {"content": "x"}}]})
    rep, seen = _outcomes(True, [tok + b"data: [DONE]\n\n"], 1)
    assert rep.streamed is True and seen[0].ttft_s is not None and "p50" in rep.ttft_s


def test_only_events_with_text_are_tokens_and_the_first_of_them_is_ttft() -> None:
    """Every data event counted as a token: OpenAI's and vLLM's role-only first event and
    a last one with only finish_reason added two tokens never generated (the deadline,
    which grows with the output, was loosened), and TTFT was the role event's."""
    role = _ev({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    tok = _ev({"choices": [{"index": 0, "delta": {"content": "tok "}}]})
    end = _ev({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    rep, seen = _outcomes(True, [role + tok * 3 + end + b"data: [DONE]\n\n"], 1)
    assert rep.ok == 1 and [o.tokens for o in seen] == [3.0]
    rep, seen = _outcomes(True, [role + end + b"data: [DONE]\n\n"], 1)
    assert seen[0].ttft_s is None and rep.ttft_s == {}  # no token came: no first one


def test_the_report_says_why_ttft_is_missing_and_counts_stream_failures(capsys: Any) -> None:
    from perllm.load_report import Report, print_report

    base = dict(target="http://x", sent=3, ok=1, attainment=0.3, latency_s={"p50": 1.0},
                ttft_s={}, wall_s=1.0, throughput_rps=1.0)  # fmt: skip
    print_report(Report(**base, streamed=False))  # type: ignore[arg-type]
    out = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "time to first token not measured (--no-stream: an answer comes whole)" in out
    print_report(Report(**base, stream_failures={"truncated: no data: [DONE]": 2}))  # type: ignore[arg-type]
    out = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "failed stream 2 × truncated: no data: [DONE]" in out


class ErrorThenClose:
    """A 200 stream: a token, an error event, then the connection closed without an end
    (as the twin past its wall limit, or a server dying after saying why)."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        tok = _ev({"choices": [{"index": 0, "delta": {"content": "tok "}}]})
        boom = _ev({"error": {"message": "held too long", "type": "timeout", "code": 504}})
        await send({"type": "http.response.body", "body": tok + boom, "more_body": True})


def test_an_error_event_then_a_broken_connection_is_that_stream_error() -> None:
    """It was a bare transport error (RemoteProtocolError): the reason the server gave
    in the stream was lost."""

    async def go() -> Any:
        async with serving(ErrorThenClose()) as url:
            return await replay(url, _planned(2, True), max_duration_s=5, timeout_s=5)

    rep = asyncio.run(asyncio.wait_for(go(), 30))
    assert rep.ok == 0 and rep.statuses == {"200": 2} and rep.errors == {}, rep
    assert rep.stream_failures == {"stream_error: held too long": 2}


def test_a_compressed_answer_is_read_decoded() -> None:
    """The body was read raw (`aiter_raw`): a target that gzips its answers (httpx asks
    for gzip), e.g. behind a proxy, was a 'ValueError: not an answer' every time."""
    import gzip

    class Gzipped(Answers):
        async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return
            while (await receive()).get("more_body"):
                pass
            hs = [(b"content-type", self.ctype), (b"content-encoding", b"gzip")]
            await send({"type": "http.response.start", "status": 200, "headers": hs})
            await send({"type": "http.response.body", "body": gzip.compress(self.bodies[0])})

    for stream, body in ((False, b'{"usage": {"completion_tokens": 5}}'),
                         (True, _ev({"choices": []}) * 2 + b"data: [DONE]\n\n")):  # fmt: skip

        async def go(stream: bool = stream, body: bytes = body) -> Any:
            async with serving(Gzipped([body])) as url:
                return await replay(url, _planned(1, stream), max_duration_s=5, timeout_s=5)

        rep = asyncio.run(asyncio.wait_for(go(), 30))
        assert rep.ok == 1 and rep.errors == {}, rep


def test_the_report_has_each_class_on_its_own(capsys: Any) -> None:
    """A class that misses every deadline was hidden in the overall attainment beside one
    that meets all: the report (and its JSON) says each class's own numbers."""
    from perllm.load_report import Outcome, print_report, summarise

    def o(cls: str, lat: float, met: bool, status: int = 200, tokens: float = 10.0) -> Outcome:
        return Outcome(cls=cls, status=status, latency_s=lat, ttft_s=lat / 4, tokens=tokens,
                       met=met)  # fmt: skip

    rs = [o("chat", 0.5, True), o("chat", 0.7, True, tokens=30.0), o("code", 4.0, False),
          o("code", 5.0, False), o("code", 0.0, False, status=503, tokens=0.0)]  # fmt: skip
    rep = summarise("http://x", rs, 2.0)
    assert rep.attainment == 0.4 and rep.tokens == 60.0
    chat, code = rep.per_class["chat"], rep.per_class["code"]
    assert (chat["sent"], chat["answered"], chat["attainment"]) == (2, 2, 1.0)
    assert chat["tokens_per_answer"] == 20.0 and chat["latency_s"]["p50"] == 0.6
    assert (code["sent"], code["answered"], code["attainment"]) == (3, 2, 0.0)
    assert code["ttft_s"]["p50"] == 1.125 and code["tokens"] == 20.0
    assert json.loads(rep.to_json())["per_class"]["code"]["answered"] == 2
    print_report(rep)
    out = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "per class" in out and "output tokens (answered) 60" in out
    assert "code 3 2 0.0%" in out and "chat 2 2 100.0%" in out
