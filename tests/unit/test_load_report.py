"""`perllm load`'s report of what a target said: printed as said, never read as rich
markup."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from test_load_servers import JSON, Parts, _in_thread, _load


def test_a_reason_that_looks_like_markup_is_printed_as_it_came(tmp_path: Path) -> None:
    """A refusal's message with `[/x]` in it was rich markup: a MarkupError traceback
    after the run, the report not shown and --json not written; `[bold]` vanished."""
    body = json.dumps({"error": {"message": "no [bold]model[/] [/chat] here"}}).encode()
    with _in_thread(Parts(404, JSON, [body])) as url:
        rc, out, rep = _load(url, tmp_path)
    assert rc == 1 and rep["http_errors"] == {"404: no [bold]model[/] [/chat] here": 2}, out
    assert "HTTP error 2 × 404: no [bold]model[/] [/chat] here" in out, out


class SaysEscapes(Parts):
    """Lists a model whose name holds a terminal escape, refuses with another in its
    message."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("path") == "/v1/models":
            body = json.dumps({"data": [{"id": "m\x1b]0;t\x07"}]}).encode()
            await Parts(200, JSON, [body])(scope, receive, send)
            return
        body = json.dumps({"error": {"message": "\x1b[2Jgone\x9b"}}).encode()
        await Parts(404, JSON, [body])(scope, receive, send)


def test_what_a_target_says_reaches_the_terminal_without_its_control_characters(
    tmp_path: Path,
) -> None:
    """A refusal's message or a listed model name holding ESC sequences was printed as
    they came (rich passes ESC on): the target could clear the screen, set the title."""
    with _in_thread(SaysEscapes()) as url:
        rc, out, rep = _load(url, tmp_path)
    assert rc == 1 and rep["http_errors"] == {"404: \x1b[2Jgone\x9b": 2}, out  # (JSON: as said)
    assert "\x1b" not in out and "\x9b" not in out and "\x07" not in out, repr(out)
    assert "HTTP error 2 × 404: \\x1b[2Jgone\\x9b" in out, out
    assert "lists the models m\\x1b]0;t\\x07; these requests name" in out, out
