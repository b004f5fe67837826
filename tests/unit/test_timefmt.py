"""RFC 3339 timestamps as Kubernetes writes them, and read back (`perllm.timefmt`)."""

from __future__ import annotations

from perllm.timefmt import parse_rfc3339, rfc3339


def test_parse_rfc3339_reads_what_rfc3339_writes_and_nothing_else() -> None:
    assert parse_rfc3339(rfc3339(1_700_000_000.7)) == 1_700_000_000.0
    assert parse_rfc3339("2023-11-14T22:13:20+00:00") == 1_700_000_000.0
    assert parse_rfc3339("2023-11-14T22:13:20") == 1_700_000_000.0  # no offset: UTC
    for bad in (None, "", "yesterday", 1_700_000_000, ["2023-11-14T22:13:20Z"]):
        assert parse_rfc3339(bad) is None
