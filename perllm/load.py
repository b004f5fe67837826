"""Replaying a scenario's workload against any OpenAI-compatible endpoint (the router, a
model server, the twin's pods): what `perllm load` (`perllm.load_cli`), the burst harness
and the demo send.

Requests come from `perllm.world.workload.generate` (arrival times, class, prompt and
output tokens, attachment bytes): a chat body whose text is the prompt's ~4 bytes a token,
an image data URL of the attachment's size, `max_tokens` = the drawn output length. The
report: deadline attainment (D ≤ seconds + per_output_token_s × output tokens, with the
class's deadline), latency and time-to-first-token percentiles (streams only: a whole
answer has no first token of its own), and the share of requests per backend and tier
from the router's `x-perllm-decision` header. A streamed 200 counts as answered only if
it ends with `data: [DONE]` and carries no error event (a server failing mid-stream
still sent its 200): else it is a stream failure, by kind. Real servers' ways are read as
such: a stream request answered whole (JSON) is an answer without TTFT, the stream ends
at `[DONE]` (the connection may stay open), another status is counted with the reason its
body gives; nothing is retried or followed, and what is held in memory is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from perllm.costmodel import BYTES_PER_TOKEN
from perllm.load_report import Outcome, Report, summarise
from perllm.load_target import ERROR_BODY_BYTES, sent_headers
from perllm.scenario import Scenario
from perllm.sse import carries_text, stream_error
from perllm.urls import redact
from perllm.world.workload import generate

WORDS = "the quick brown fox jumps over a lazy dog "
# A whole answer, or one stream event, is held in memory to be read: past this it is no
# answer (a target sending without end would take the memory of every request in flight).
MAX_ANSWER_BYTES = 16 << 20
_EOL = re.compile(rb"[\r\n]")
_TAG = re.compile(r"<[^>]*>")
_SCRIPT = re.compile(r"<(script|style)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class Planned:
    at: float  # wall seconds after start
    cls: str
    model: str
    # prompt tokens, attachment bytes, output tokens: the body is built when it is sent
    # (`body`); built in `plan`, the bodies of 100,000 requests (an image each up to MBs)
    # took GBs before the first was sent
    sizes: tuple[float, float, float]
    deadline_s: float  # fixed part of the class's deadline
    per_token_s: float
    stream: bool = True

    @property
    def body(self) -> dict[str, Any]:
        return body_for(self.model, *self.sizes, self.stream)


def body_for(model: str, l_in: float, attach: float, l_out: float, stream: bool) -> dict[str, Any]:
    n = int(l_in * BYTES_PER_TOKEN)
    text = (WORDS * (n // len(WORDS) + 1))[:n]
    content: Any = text
    if attach > 0:
        raw = int(attach * 3 / 4)  # the data URL's base64 is `attach` bytes
        url = "data:image/jpeg;base64," + base64.b64encode(b"\0" * raw).decode()
        content = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": int(l_out),
        "stream": stream,
    }


def plan(
    sc: Scenario,
    seed: int = 0,
    speed: float = 1.0,
    max_requests: int = 200,
    classes: list[str] | None = None,
    model: str | Mapping[str, str] | None = None,
    stream: bool = True,
) -> list[Planned]:
    """The first `max_requests` requests of the scenario's workload (of `classes`), arrival
    times divided by `speed`. The model sent is `model` (a mapping: the class's entry in
    it, `load_target.parse_models`'s), else the class's name."""
    req = generate(sc, seed)
    specs = sc.workload.classes
    out: list[Planned] = []
    for i in range(len(req)):
        c = specs[int(req.cls[i])]
        if classes and c.name not in classes:
            continue
        m = model.get(c.name, c.name) if isinstance(model, Mapping) else model or c.name
        sizes = (float(req.l_in[i]), float(req.attach[i]), float(req.l_out[i]))
        out.append(Planned(float(req.arrival[i]) / speed, c.name, m, sizes,
                           c.deadline.seconds, c.deadline.per_output_token_s, stream))  # fmt: skip
        if len(out) >= max_requests:
            break
    return out


def _decision(h: str | None) -> dict[str, str]:
    if not h:
        return {}
    return dict(p.strip().split("=", 1) for p in h.split(";") if "=" in p)


# Called with a planned request and the router's decision ({} without a router) once its
# 200 response has started: where a request went is known long before its end.
OnStart = Callable[[Planned, dict[str, str]], None]


def _completion_tokens(answer: Any) -> float | None:
    """`usage.completion_tokens` of an answer or stream event (None: not given); a
    ValueError if it is no OpenAI answer (not an object, usage not one, not a count)."""
    if not isinstance(answer, dict):
        raise ValueError(f"answer is not a JSON object: {json.dumps(answer)[:60]}")
    usage = answer.get("usage")
    if usage is None:
        return None
    n = usage.get("completion_tokens") if isinstance(usage, dict) else "?"
    if n is None:
        return None
    if not isinstance(n, int | float) or isinstance(n, bool) or not 0 <= n < float("inf"):
        raise ValueError(f"usage.completion_tokens is no count: {json.dumps(usage)[:60]}")
    return float(n)


class _Events:
    """An SSE stream read as it arrives, as the SSE format has it: lines (LF, CRLF or
    CR ends), `data:` fields at a line's start, an event at each blank line (so `data:` in
    generated text is no event). Counts the data events that carry generated text (a
    role-only first event or a finish_reason-only last one is no token: `perllm.sse`, as
    the router counts), reads `usage.completion_tokens` and error events."""

    def __init__(self) -> None:
        self.rest = bytearray()  # the line not ended yet
        self.data: list[bytes] = []
        self.held = 0  # bytes of self.data
        self.events = 0
        self.done = False
        self.usage: float | None = None
        self.error: str | None = None

    def feed(self, chunk: bytes, final: bool = False) -> None:
        if not final and not self.rest.endswith(b"\r") and not _EOL.search(chunk):
            self.rest += chunk  # (a long line's parts: not split again at every one)
            if len(self.rest) + self.held > MAX_ANSWER_BYTES:
                raise ValueError(f"a stream event over {MAX_ANSWER_BYTES >> 20} MiB")
            return
        buf, hold = bytes(self.rest) + chunk, b""
        if buf.endswith(b"\r") and not final:  # (half of a CRLF, maybe: read with the rest)
            buf, hold = buf[:-1], b"\r"
        lines = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        self.rest = bytearray() if final else bytearray(lines.pop() + hold)
        for line in lines:
            if not line:
                self._dispatch()
            elif line.startswith(b"data:"):
                v = line[5:]
                self.data.append(v[1:] if v.startswith(b" ") else v)
                self.held += len(v)
        if len(self.rest) + self.held > MAX_ANSWER_BYTES:  # (a line or event without end)
            raise ValueError(f"a stream event over {MAX_ANSWER_BYTES >> 20} MiB")
        if final:
            self._dispatch()  # (lenient: a last event without its blank line counts)

    def _dispatch(self) -> None:
        if not self.data or self.done:  # (after the end: nothing counts)
            self.data, self.held = [], 0
            return
        data, self.data, self.held = b"\n".join(self.data), [], 0
        if data.strip() == b"[DONE]":
            self.done = True
            return
        if carries_text(data):
            self.events += 1
        if b'"usage"' in data or b'"error"' in data:  # (only those are parsed)
            ev = json.loads(data)
            n = _completion_tokens(ev)
            self.usage = self.usage if n is None else n
            why = stream_error(ev)
            if why is not None and self.error is None:
                self.error = why


async def _one(
    client: httpx.AsyncClient,
    url: str,
    p: Planned,
    on_start: OnStart | None = None,
    timeout_s: float | None = None,
    since: float | None = None,
) -> Outcome:
    """One request; `timeout_s` bounds it whole (httpx's timeout is per read: a target
    that sends a byte now and then would hold it for ever). Its latency counts from
    `since` (when it arrived, if it waited to be sent), else from now."""
    t0 = time.perf_counter() if since is None else since
    first: float | None = None
    usage: float | None = None
    sse = _Events() if p.stream else None
    sniffed = sse is None
    try:
        async with asyncio.timeout(timeout_s), client.stream("POST", url, json=p.body) as resp:
            dec = _decision(resp.headers.get("x-perllm-decision"))
            if resp.status_code != 200:
                why = await _refusal(resp)
                d = time.perf_counter() - t0
                return Outcome(p.cls, resp.status_code, d, None, 0, False,
                               dec.get("backend", ""), dec.get("tier", ""), why, p.at)  # fmt: skip
            if on_start is not None:
                on_start(p, dec)
            buf = bytearray()
            async for chunk in resp.aiter_bytes():  # (decoded: a gzipped answer too)
                if not sniffed and chunk.strip():
                    # A stream asked for may come whole: a server or gateway that does not
                    # stream answers with one JSON object (else it was "truncated").
                    sniffed = True
                    if chunk.lstrip()[:1] == b"{":
                        sse = None
                if sse is None:
                    buf += chunk
                    if len(buf) > MAX_ANSWER_BYTES:
                        raise ValueError(f"answer over {MAX_ANSWER_BYTES >> 20} MiB")
                    continue
                sse.feed(chunk)
                if first is None and sse.events:
                    first = time.perf_counter() - t0
                if sse.done:  # the end: a server holding the connection open is not waited for
                    break
            d = time.perf_counter() - t0
            said: str | None = None  # an error the 200 carries
            if sse is not None:
                sse.feed(b"", final=True)
                usage, said = sse.usage, sse.error
            else:
                answer = json.loads(bytes(buf))
                usage, said = _completion_tokens(answer), stream_error(answer)
    except TimeoutError:
        err = f"Timeout: no complete answer within {timeout_s:g}s"
        return Outcome(p.cls, 0, time.perf_counter() - t0, None, 0, False, error=err, at=p.at)
    except (httpx.HTTPError, ValueError, RecursionError) as e:  # (ValueError: not an answer)
        d = time.perf_counter() - t0
        if sse is not None and sse.error is not None:  # it said why before it broke off
            return Outcome(p.cls, 200, d, first, 0, False, dec.get("backend", ""),
                           dec.get("tier", ""), sse.error, p.at, "stream_error")  # fmt: skip
        err = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        return Outcome(p.cls, 0, d, None, 0, False, error=err, at=p.at)
    failure = err = ""
    if said is not None:  # (vLLM sends [DONE] after it: the error decides)
        failure, err = ("stream_error" if sse is not None else "error_answer"), said
    elif sse is not None and not sse.done:
        failure, err = "truncated", "no data: [DONE]"
    events = sse.events if sse is not None else 0
    tokens = float(usage if usage is not None else max(events, 1))
    met = not failure and d <= p.deadline_s + p.per_token_s * tokens
    whole = sse is None and p.stream
    return Outcome(p.cls, 200, d, first, tokens, met, dec.get("backend", ""),
                   dec.get("tier", ""), err, p.at, failure, whole)  # fmt: skip


async def _refusal(resp: httpx.Response) -> str:
    """Why a target answered other than 200, from the first `ERROR_BODY_BYTES` of its body
    (a 5xx page may be huge or endless): the message of an OpenAI-style error (vLLM's
    404 for an unknown model, a gateway's 429), else its text (an HTML page's, tags off);
    a redirect's Location (not followed: a POST is not resent, a token not sent on); the
    Retry-After it asks for (no request is retried: the replay's load stays as planned)."""
    if resp.is_redirect:
        why = f"redirected to {resp.headers.get('location', '?')[:120]} (not followed)"
    else:
        body = bytearray()
        with contextlib.suppress(httpx.HTTPError):  # (a body broken off: what came says it)
            async for chunk in resp.aiter_bytes():
                body += chunk
                if len(body) >= ERROR_BODY_BYTES:
                    break
        text = bytes(body[:ERROR_BODY_BYTES]).decode("utf-8", "replace")
        try:
            why = stream_error(json.loads(text)) or ""
        except (ValueError, RecursionError):
            why = ""
        if not why:
            text = _SCRIPT.sub(" ", text) if "<" in text else text
            why = " ".join(_TAG.sub(" ", text).split())[:120]
    retry = resp.headers.get("retry-after")
    return why + (f" (Retry-After: {retry[:40]})" if retry else "")


async def replay(
    target: str,
    planned: list[Planned],
    max_duration_s: float = 60.0,
    concurrency: int = 256,
    timeout_s: float = 120.0,
    path: str = "/v1/chat/completions",
    on_done: Any = None,
    on_start: OnStart | None = None,
    stop: asyncio.Event | None = None,
    token: bytes | None = None,
    verify: ssl.SSLContext | bool = True,
    headers: dict[str, str] | None = None,
) -> Report:
    """Send `planned` at their times (bounded: `concurrency` in flight, `max_duration_s`
    of sending; each request gets `timeout_s` in all). When `stop` is set (Ctrl-C), the
    requests in flight are abandoned and the report is of those that ended. `token`: sent
    as a bearer token (an API key); `verify`: an https target's certificate is checked
    against this context's CAs (False: not checked; True: the system's); `headers`: sent
    with every request (`parse_header`'s)."""
    url = target.rstrip("/") + path
    sem = asyncio.Semaphore(concurrency)
    results: list[Outcome] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    sent = sent_headers(headers, token)
    t0 = time.perf_counter()
    async with httpx.AsyncClient(
        timeout=timeout_s, limits=limits, headers=sent, verify=verify
    ) as client:

        async def fire(p: Planned) -> None:
            # (from its arrival: a wait for a free slot of `concurrency` is latency too,
            # else a slow target would hold the sending back and look fast)
            arrived = time.perf_counter()
            async with sem:
                o = await _one(client, url, p, on_start, timeout_s, arrived)
            results.append(o)
            if on_done is not None:
                on_done(o)

        tasks: list[asyncio.Task[None]] = []

        async def send_all() -> None:
            for p in planned:
                wait = p.at - (time.perf_counter() - t0)
                if p.at > max_duration_s:
                    break
                if wait > 0:
                    await asyncio.sleep(wait)
                tasks.append(asyncio.create_task(fire(p)))
            await asyncio.gather(*tasks)

        sender = asyncio.create_task(send_all())
        stopped = asyncio.create_task((stop or asyncio.Event()).wait())
        try:
            await asyncio.wait({sender, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # (cancelled itself, or stopped: nothing is left running)
            stopped.cancel()
            interrupted = not sender.done()
            for t in (sender, *tasks):
                t.cancel()
            await asyncio.gather(sender, *tasks, return_exceptions=True)
        if not interrupted:
            sender.result()
    wall = time.perf_counter() - t0
    report = summarise(redact(target), results, wall)
    report.interrupted = interrupted
    report.streamed = any(p.stream for p in planned)
    return report
