"""URLs as users give them (a router's backends, `perllm load --target`, the agent's
peers, the extender URL of the dev cluster, Prometheus): one check that a URL is http(s)
with a host a resolver could look up and a port in range (`http_url_error`), and one way
to show a URL without the credentials it may carry (`redact`).

`urlsplit` and httpx accept host names no resolver answers (`bad..host`, a label of 70
characters, `a b`): such a typo then failed at every connection, as a DNS error or a
UnicodeError from the IDNA codec, instead of once, at the start, naming the setting."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit, urlunsplit

# RFC 1123 labels, plus `_` (internal names such as `_svc` exist and resolvers serve them)
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
MAX_NAME = 253
_USERINFO = re.compile(r"//[^/?#]*@")


def host_error(host: str) -> str | None:
    """Why `host` (a URL's host, brackets off) is no IP address nor DNS name, or None."""
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    try:  # an internationalised name is looked up as its ASCII (punycode) form
        name = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        return f"host {host!r} is no valid internationalised name"
    name = name.lower().removesuffix(".")  # a trailing dot: the name is fully qualified
    if not name:
        return "no host"
    if len(name) > MAX_NAME:
        return f"host name longer than {MAX_NAME} characters"
    for label in name.split("."):
        if not label:
            return f"host {host!r} has an empty label (two dots in a row, or a leading dot)"
        if len(label) > 63:
            return f"host {host!r}: label {label[:20]!r}... is longer than 63 characters"
        if not _LABEL.fullmatch(label):
            return (
                f"host {host!r}: label {label!r} is not a DNS label (letters, digits, '-' "
                "and '_', no '-' at either end)"
            )
    return None


def http_url_error(url: str) -> str | None:
    """Why `url` is no http(s) URL with a valid host and port, or None."""
    try:
        u = urlsplit(url)
        u.port  # noqa: B018  (raises on a port out of range or not a number)
    except ValueError as e:
        return str(e)
    if u.scheme not in ("http", "https"):
        return "not an http(s) URL"
    if not u.hostname:
        return "no host"
    return host_error(u.hostname)


def redact(url: str) -> str:
    """`url` fit to show (logs, reports, conditions): a user and password in it (basic
    auth, which HTTP clients read from the URL) replaced by `***`."""
    try:
        parts = urlsplit(url)
    except ValueError:  # (an unclosed `[`): what precedes the last `@` of the authority
        return _USERINFO.sub("//***@", url, count=1)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))
