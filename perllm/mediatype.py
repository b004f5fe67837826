"""The Content-Type of a JSON request body, as the router and the extender check it.

Missing is accepted (httpx's `content=`, hand-written clients), and `application/json`
with any parameters (`; charset=utf-8`), which OpenAI's clients and kube-scheduler send.
Anything else is a 415: the body is no JSON its sender meant, and the three types a web
page may send cross-site without a CORS preflight (text/plain, form data) never reach a
decision, so a browser on the network cannot be made to spend a router's GPUs.
"""

from __future__ import annotations


def refused(value: bytes | None) -> str | None:
    """The reason a body of this Content-Type is not read as JSON, or None (it is)."""
    if value is None or value.split(b";", 1)[0].strip().lower() == b"application/json":
        return None
    shown = value.decode("latin-1")[:100]
    return f"content-type {shown!r}: the body must be JSON, sent as application/json"
