"""`perllm load`'s numbers: each within its range, finite, else exit 2 naming the flag
before anything is sent."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_load_servers import _load
from typer.testing import CliRunner


def test_the_timeout_is_at_most_a_day(tmp_path: Path) -> None:
    """`--timeout 1e300` was taken (each request's `asyncio.timeout`, httpx's timeout and
    the report's `within 1e+300s`): no class's deadline is past a day (MAX_DEADLINE_S)."""
    for big in ("1e300", "86401"):
        rc, out, rep = _load("http://127.0.0.1:9", tmp_path, "--timeout", big)
        assert rc == 2 and rep == {}, out
        assert "Invalid value for '--timeout': must be ≤ 86400, got" in out, out
    rc, out, rep = _load("http://127.0.0.1:9", tmp_path, "--timeout", "86400")
    assert rc == 1 and rep["statuses"] == {"0": 2}, out  # (sent: nothing listens there)


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        (flag, value)
        for flag in ("--speed", "--max-duration", "--timeout", "--max-requests", "--concurrency")
        for value in ("nan", "inf", "-1", "0")
    ]
    + [("--seed", "-1"), ("--seed", "nan")],
)
def test_a_number_out_of_range_or_not_finite_is_refused(
    tmp_path: Path, flag: str, value: str
) -> None:
    rc, out, rep = _load("http://127.0.0.1:9", tmp_path, flag, value)
    assert rc == 2 and rep == {} and f"Invalid value for '{flag}'" in out, out


def test_a_json_path_that_looks_like_markup_is_named_as_it_is(tmp_path: Path) -> None:
    """`--json DIR` of a folder named `x[/y]` was a rich MarkupError traceback, not the
    error naming --json."""
    folder = tmp_path / "x[/y]"
    folder.mkdir(parents=True)
    from perllm.cli import app

    res = CliRunner().invoke(
        app, ["load", "demo", "--target", "http://127.0.0.1:9", "--json", str(folder)]
    )
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit), res.output
    assert f"--json: {folder} is a folder" in " ".join(res.output.split()), res.output
