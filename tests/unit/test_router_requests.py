"""`perllm router`'s checks of a client's request (over stub backends, router_harness.py):
malformed bodies and fields, headers, methods, a body not sent in time."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from router_harness import CHAT, router, run


@pytest.mark.parametrize(
    ("body", "headers", "status", "kind"),
    [
        (b"{not json", {}, 400, "invalid_request_error"),
        (b"[1, 2]", {}, 400, "invalid_request_error"),
        (json.dumps({"model": "llama3-8b"}).encode(), {}, 400, "invalid_request_error"),
        (json.dumps({**CHAT, "model": "gpt-9"}).encode(), {}, 404, "model_not_found"),
        (json.dumps({**CHAT, "max_tokens": -1}).encode(), {}, 400, "invalid_request_error"),
        (b"[" * 2000 + b"]" * 2000, {}, 400, "invalid_request_error"),  # (a RecursionError)
        (
            json.dumps({**CHAT, "max_tokens": float("nan")}).encode(),
            {},
            400,
            "invalid_request_error",
        ),
        (
            json.dumps({**CHAT, "max_tokens": -5, "max_completion_tokens": None}).encode(),
            {},
            400,
            "invalid_request_error",
        ),
        (json.dumps(CHAT).encode(), {"x-perllm-deadline-s": "soon"}, 400, "invalid_request_error"),
        (json.dumps({**CHAT, "pad": "x" * 5000}).encode(), {}, 413, "invalid_request_error"),
    ],
)
def test_malformed_requests_get_a_clear_4xx(
    body: bytes, headers: dict[str, str], status: int, kind: str
) -> None:
    async def go() -> None:
        r, stubs, c = await router(limits={"max_body_bytes": 4096})
        resp = await c.post("/v1/chat/completions", content=body, headers=headers)
        assert resp.status_code == status
        assert resp.json()["error"]["type"] == kind
        assert sum(s.requests for s in stubs.values()) == 0
        assert (await c.get("/v1/chat/completions")).status_code == 405
        assert (await c.get("/nope")).status_code == 404
        await r.aclose()

    run(go())


def test_bad_max_tokens_and_non_json_numbers_are_named() -> None:
    from perllm.router.request import BadRequest, parse

    def why(body: str) -> str:
        with pytest.raises(BadRequest) as e:
            parse(body.encode(), True)
        return e.value.message

    b = '{"model": "m", "messages": []'
    # Not JSON, though Python reads them (the body goes on as it came); 1e400 reads as inf
    assert why(b + ', "max_tokens": NaN}') == "body is not valid JSON: NaN is not a JSON value"
    assert why(b + ', "top_p": -Infinity}').endswith("-Infinity is not a JSON value")
    assert why(b + ', "max_tokens": 1e400}') == "max_tokens: must be a positive integer"
    assert why("[" * 2000 + "]" * 2000) == "body: JSON nested too deeply"  # (was a 500)
    bad = b + ', "max_completion_tokens": "8", "max_tokens": 8}'
    assert why(bad) == "max_completion_tokens: must be a positive integer"
    assert why(b + ', "max_tokens": 2.5}') == "max_tokens: must be a positive integer"
    from perllm.router.request import deadline_header

    for v, msg in (("inf", "not a finite number"), ("nan", "not a finite number"),
                   ("-1", "must be > 0"), ("soon", "not a number"),
                   ("1_0", "not a plain decimal number"), ("\u0661\u0660", "not a plain decimal"),
                   ("1e999", "not a finite number")):  # fmt: skip
        # ("1_0", read by float() as 10 s, was a deadline of 10 s)
        with pytest.raises(BadRequest, match=f"x-perllm-deadline-s: {msg}"):
            deadline_header(v)
    assert deadline_header("2.5") == 2.5 and deadline_header("1e-1") == 0.1
    assert parse((b + ', "max_tokens": 8.0}').encode(), True).max_tokens == 8
    # null is not given: max_tokens is checked (it was skipped) and caps the answer
    assert why(b + ', "max_completion_tokens": null, "max_tokens": 0}').startswith("max_tokens:")
    assert (
        parse((b + ', "max_completion_tokens": null, "max_tokens": 9}').encode(), True).max_tokens
        == 9
    )
    assert (
        parse((b + ', "max_completion_tokens": 5, "max_tokens": 9}').encode(), True).max_tokens == 5
    )
    # an integer beyond a float's range (no inf in JSON, but 400 digits): float() overflowed
    assert why(b + ', "max_tokens": ' + "9" * 400 + "}") == "max_tokens: must be a positive integer"
    assert parse((b + ', "max_tokens": 1' + "0" * 300 + "}").encode(), True).max_tokens == 10**300


def test_a_lone_surrogate_escape_or_a_huge_max_tokens_is_no_500() -> None:
    """JSON.stringify of a string cut inside an emoji writes `\\ud83d` (valid JSON); the
    prompt's byte count encoded it strictly (UnicodeEncodeError: a 500). A max_tokens of
    400 digits passed the check and overflowed float() when the output length was capped."""

    async def go() -> None:
        r, _, c = await router()
        cut = {**CHAT, "messages": [{"role": "user", "content": "\ud83d cut"}]}
        resp = await c.post("/v1/chat/completions", content=json.dumps(cut).encode())
        assert resp.status_code == 200, resp.text
        huge = json.dumps(CHAT)[:-1] + ', "max_tokens": ' + "9" * 400 + "}"
        resp = await c.post("/v1/chat/completions", content=huge.encode())
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["message"] == "max_tokens: must be a positive integer"
        await r.aclose()

    run(go())


def test_several_deadline_headers_are_a_400() -> None:
    """Two x-perllm-deadline-s lines (which HTTP allows only for a list field): the last
    one was taken silently, whichever a proxy or client meant."""

    async def go() -> None:
        r, stubs, c = await router()
        twice = [("x-perllm-deadline-s", "10"), ("x-perllm-deadline-s", "0.5")]
        resp = await c.post("/v1/chat/completions", json=CHAT, headers=twice)
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["message"] == "x-perllm-deadline-s: given 2 times; give one"
        assert sum(s.requests for s in stubs.values()) == 0
        one = await c.post("/v1/chat/completions", json=CHAT, headers=twice[:1])
        assert one.status_code == 200
        await r.aclose()

    run(go())


def test_a_wrong_method_is_405_naming_the_right_one() -> None:
    async def go() -> None:
        r, _, c = await router()
        for path, right in [
            ("/v1/chat/completions", "POST"), ("/v1/completions", "POST"),
            ("/v1/models", "GET"), ("/metrics", "GET"),
        ]:  # fmt: skip
            for method in {"GET", "POST", "PUT", "DELETE"} - {right}:
                resp = await c.request(method, path)
                assert resp.status_code == 405, (method, path)  # (GET-only ones were 404)
                assert resp.json()["error"]["message"] == f"use {right}"
                assert resp.headers["allow"] == right  # (HTTP requires it on a 405)
        assert (await c.post("/v2/nope")).status_code == 404
        await r.aclose()

    run(go())


def test_a_body_not_sent_in_time_is_408_before_taking_a_slot() -> None:
    """A client that sends its head and then nothing (slowloris) is answered 408 after
    body_timeout_s and holds nothing: no slot, no backend request."""

    async def go() -> None:
        r, stubs, _ = await router(limits={"body_timeout_s": 0.2, "max_concurrency": 1})
        sent: list[dict[str, Any]] = []

        async def never() -> dict[str, Any]:
            await asyncio.Event().wait()
            return {}

        async def send(m: Any) -> None:
            sent.append(dict(m))

        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
                 "headers": [(b"content-length", b"100")]}  # fmt: skip
        await asyncio.wait_for(r(scope, never, send), 5)
        assert sent[0]["status"] == 408 and (b"connection", b"close") in sent[0]["headers"]
        assert b"not received within 0.2s" in sent[1]["body"]
        assert not r._slots.locked() and sum(s.requests for s in stubs.values()) == 0
        await r.aclose()

    run(go())


def test_a_body_that_keeps_coming_at_the_minimum_rate_outlasts_body_timeout_s() -> None:
    """body_timeout_s alone cut a large upload over a slow link (8 MiB at 2 Mbit/s: 34 s
    against 30 s); it grows by the listener's allowance, 1 s per min_body_bytes_per_s
    bytes received, and a body slower than that is still 408."""

    async def go() -> None:
        limits = {"body_timeout_s": 0.3, "min_body_bytes_per_s": 1000}
        r, stubs, _ = await router(limits=limits)
        doc = json.dumps(CHAT).encode()

        async def post(rate: float) -> list[dict[str, Any]]:
            body = doc + b" " * (1500 - len(doc))  # 0.75 s at 2,000 bytes/s
            pieces = [body[i : i + 100] for i in range(0, len(body), 100)]

            async def receive() -> dict[str, Any]:
                await asyncio.sleep(100 / rate)
                piece = pieces.pop(0)
                return {"type": "http.request", "body": piece, "more_body": bool(pieces)}

            sent: list[dict[str, Any]] = []

            async def send(m: Any) -> None:
                sent.append(dict(m))

            scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
                     "headers": [(b"content-length", b"1500")]}  # fmt: skip
            await asyncio.wait_for(r(scope, receive, send), 10)
            return sent

        sent = await post(2000)
        assert sent[0]["status"] == 200, sent
        assert sum(s.requests for s in stubs.values()) == 1
        sent = await post(500)  # half the rate: cut
        assert sent[0]["status"] == 408
        assert b"within 0.3s (+1 s per 1000 bytes)" in sent[1]["body"]
        await r.aclose()

    run(go())


def test_a_stream_flag_that_is_no_boolean_is_a_400() -> None:
    """`bool(body["stream"])` read "false" (a string) as streaming, while the backend the
    body is forwarded to reads it as a flag or refuses it."""
    from perllm.router.request import BadRequest, parse

    b = '{"model": "m", "messages": [], "stream": '
    for v in ('"false"', '"true"', "1", "0", "[]", "{}"):
        with pytest.raises(BadRequest) as e:
            parse((b + v + "}").encode(), True)
        assert e.value.status == 400 and e.value.message == "stream: must be true or false"
    assert [parse((b + v + "}").encode(), True).stream for v in ("true", "false", "null")] == [
        True,
        False,
        False,
    ]


def test_stream_options_without_streaming_is_a_400_naming_it() -> None:
    """`stream_options` on a request that does not stream was forwarded (OpenAI and vLLM
    answer it 400: the options are of a stream), and the twin, reading requests as the
    router does, answered it as if it were not there."""
    from perllm.router.request import BadRequest, parse

    b = '{"model": "m", "messages": [], "stream_options": {"include_usage": true}'
    for rest in ("}", ', "stream": false}', ', "stream": null}'):
        with pytest.raises(BadRequest) as e:
            parse((b + rest).encode(), True)
        assert e.value.status == 400
        assert e.value.message == "stream_options: only allowed when stream is true"
    assert parse((b + ', "stream": true}').encode(), True).include_usage
    off = '{"model": "m", "messages": [], "stream_options": null}'  # null: not given
    assert not parse(off.encode(), True).stream

    async def go() -> None:
        r, stubs, c = await router()
        body = {**CHAT, "stream_options": {"include_usage": True}}
        resp = await c.post("/v1/chat/completions", json=body)
        assert resp.status_code == 400 and "stream_options" in resp.json()["error"]["message"]
        assert sum(s.requests for s in stubs.values()) == 0
        await r.aclose()

    run(go())
