"""Timestamps as Kubernetes writes them (status fields, Events)."""

from __future__ import annotations

import datetime as dt


def rfc3339(ts: float) -> str:
    """`ts` (seconds since the epoch) as an RFC 3339 UTC timestamp, whole seconds."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
