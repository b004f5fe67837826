"""Instant queries against a Prometheus the e2e tests run (the harness', or their own)."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from typing import Any


def prom_query(url: str, promql: str) -> list[dict[str, Any]]:
    """The result vector of `promql` at `url`; fails unless Prometheus says success."""
    q = urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=5) as r:
        doc = json.loads(r.read())
    assert doc["status"] == "success", doc
    out: list[dict[str, Any]] = doc["data"]["result"]
    return out
