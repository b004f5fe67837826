"""`perllm load`'s report of what a target said: printed as said, never read as rich
markup."""

from __future__ import annotations

import json
from pathlib import Path

from test_load_servers import JSON, Parts, _in_thread, _load


def test_a_reason_that_looks_like_markup_is_printed_as_it_came(tmp_path: Path) -> None:
    """A refusal's message with `[/x]` in it was rich markup: a MarkupError traceback
    after the run, the report not shown and --json not written; `[bold]` vanished."""
    body = json.dumps({"error": {"message": "no [bold]model[/] [/chat] here"}}).encode()
    with _in_thread(Parts(404, JSON, [body])) as url:
        rc, out, rep = _load(url, tmp_path)
    assert rc == 1 and rep["http_errors"] == {"404: no [bold]model[/] [/chat] here": 2}, out
    assert "HTTP error 2 × 404: no [bold]model[/] [/chat] here" in out, out
