"""How `perllm load` reaches a real target beyond the request itself: the headers it
sends (`--header`, checked by `parse_header`; the bearer token of `--token-file`), the
model name each class's requests carry (`--model`, read by `parse_models`) and the model
names the target lists (`models_listed`, read before a run)."""

from __future__ import annotations

import asyncio
import json
import re
import ssl

import httpx

# A refusal's or a list's body is read to this size at most: its content is at the start
ERROR_BODY_BYTES = 64 << 10


# Headers a request's framing or body owns (httpx sets them), or that --token-file sends
_OWN_HEADERS = {"content-length", "transfer-encoding", "connection", "content-type", "te"}
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 field-name


def parse_header(spec: str, token: bool = False) -> tuple[str, str]:
    """`Name: value` of `perllm load --header` (a KServe ingress' `Host`, a gateway's
    tenant header); ValueError naming the header, never its value (it may be a key).
    `token`: a bearer token is sent already, so `Authorization` is refused."""
    name, sep, value = spec.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not _TOKEN.fullmatch(name):
        raise ValueError("expected `Name: value` with a header name of letters, digits, '-'")
    if name.lower() in _OWN_HEADERS or (token and name.lower() == "authorization"):
        why = "--token-file sends it" if name.lower() == "authorization" else "httpx sets it"
        raise ValueError(f"{name}: not settable ({why})")
    if not all(c == "\t" or " " <= c <= "~" for c in value):
        raise ValueError(f"{name}: a value of visible ASCII only (no line break, NUL, ...)")
    return name, value


def parse_models(specs: list[str], classes: list[str], scenario: str) -> dict[str, str]:
    """The model name each of `classes` sends, from `perllm load --model` entries: `NAME`
    (every class, or every class no `CLASS=NAME` names), `CLASS=NAME` (that class; a server
    serving another model per class); a class without either sends its own name.
    ValueError saying which entry is wrong: a CLASS not of `scenario`'s `classes` (a class
    `--class` leaves out is one: the entry sends nothing), a class given twice, two plain
    names, an empty class or name. Class names have no `=` (DNS labels): the first splits."""
    rest: str | None = None
    per: dict[str, str] = {}
    for spec in specs:
        cls, sep, name = (s.strip() for s in spec.partition("="))
        if not sep:  # (`cls` is the NAME)
            if not cls:
                raise ValueError("an empty model name")
            if rest is not None:
                raise ValueError(f"two names for every class, {rest} and {cls} (CLASS=NAME: one's)")
            rest = cls
        elif not cls or not name:
            raise ValueError(f"{spec!r}: expected CLASS=NAME, neither empty")
        elif cls not in classes:
            raise ValueError(
                f"{cls}: not a class of {scenario} (its classes: {', '.join(classes)})"
            )
        elif cls in per:
            raise ValueError(f"class {cls} given twice")
        else:
            per[cls] = name
    return {c: per.get(c, rest or c) for c in classes}


def sent_headers(headers: dict[str, str] | None, token: bytes | None) -> list[tuple[bytes, bytes]]:
    sent = [(k.encode("ascii"), v.encode("ascii")) for k, v in (headers or {}).items()]
    if token is not None:
        sent.append((b"authorization", b"Bearer " + token))
    return sent


async def models_listed(
    target: str,
    timeout_s: float,
    token: bytes | None = None,
    verify: ssl.SSLContext | bool = True,
    headers: dict[str, str] | None = None,
) -> list[str] | None:
    """The model ids the target's `GET /v1/models` lists, or None when it lists none in
    OpenAI's shape (not answered, not a 200, another body): a hint before a run, where a
    model name the target does not serve would make every request its 404."""
    try:  # (`timeout_s` in all: httpx's bounds each read, and a server may drip)
        body = await asyncio.wait_for(
            _get_list(target, timeout_s, token, verify, headers), timeout_s
        )
        data = json.loads(body).get("data") if body is not None else None
        ids = [m.get("id") for m in data] if isinstance(data, list) else []
    except (httpx.HTTPError, ValueError, AttributeError, TimeoutError):
        return None
    return [i for i in ids if isinstance(i, str)] or None


async def _get_list(
    target: str,
    timeout_s: float,
    token: bytes | None,
    verify: ssl.SSLContext | bool,
    headers: dict[str, str] | None,
) -> bytes | None:
    """The body of a 200 to `GET /v1/models`, None past `ERROR_BODY_BYTES` (not read on:
    a list is kilobytes) or for another status."""
    async with (
        httpx.AsyncClient(
            timeout=timeout_s, headers=sent_headers(headers, token), verify=verify
        ) as client,
        client.stream("GET", target.rstrip("/") + "/v1/models") as resp,
    ):
        if resp.status_code != 200:
            return None
        body = bytearray()
        async for chunk in resp.aiter_bytes():
            body += chunk
            if len(body) > ERROR_BODY_BYTES:
                return None
        return bytes(body)
