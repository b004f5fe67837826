"""Timestamps as Kubernetes writes them (status fields, Events)."""

from __future__ import annotations

import datetime as dt


def rfc3339(ts: float) -> str:
    """`ts` (seconds since the epoch) as an RFC 3339 UTC timestamp, whole seconds."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(ts: object) -> float | None:
    """An RFC 3339 timestamp (as `rfc3339` writes it, or with an offset) as seconds since
    the epoch; None for anything else (a status field another writer or a hand edit left)."""
    if not isinstance(ts, str) or not ts:
        return None
    try:
        t = dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None
    # Without an offset: UTC, as every writer here means it (not this machine's zone).
    return (t if t.tzinfo else t.replace(tzinfo=dt.UTC)).timestamp()
