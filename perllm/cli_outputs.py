"""Where a command writes its results, checked before it runs (`perllm simulate`,
`perllm sweep`, `perllm load`, `perllm demo`): an empty path, or a folder that cannot be
made or written, is a one-line error naming the option, not a traceback (or nothing
written) once the runs are done. An interrupted command is one line too (`OneLineInterrupt`)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup


def ensure_writable(option: str, folder: Path, err: Console, file: Path | None = None) -> None:
    """`folder` made and writable (and `file` in it no folder), else exit 2."""
    try:
        if file is not None and file.is_dir():
            raise IsADirectoryError(f"{file} is a folder")
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"{folder} is not a folder")
        folder.mkdir(parents=True, exist_ok=True)
        # A file made and removed: `os.access` says yes to root on any folder, and to a
        # folder whose filesystem refuses new files (/proc), so the write failed after the
        # runs, with a traceback.
        try:
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as e:
            raise OSError(f"cannot write in {folder}: {e.strerror or e}") from None
    except OSError as e:
        # (escaped: a path with `[/x]` in it was rich markup, a MarkupError traceback)
        err.print(f"[red]error:[/red] {option}: {escape(str(e))}")
        raise typer.Exit(2) from None


@contextmanager
def writing(option: str, err: Console) -> Iterator[None]:
    """Around the writes after the runs: what the check before them could not foresee (a
    full disk, a folder made read-only meanwhile) is a one-line error naming the option,
    exit 1, not a traceback; the results were printed before."""
    try:
        yield
    except OSError as e:
        err.print(f"[red]error:[/red] {option}: cannot write the results: {escape(str(e))}")
        raise typer.Exit(1) from None


def _nonempty_path(text: Any) -> Path:
    """An output option's parser: `--json ""` was Path("") (the current folder), so a
    report went nowhere (`load`) or files into the current folder (`sweep --out`)."""
    if not str(text).strip():
        raise typer.BadParameter("must not be empty")
    return Path(text)


def output_path(default: Any, *param_decls: str, **kw: Any) -> Any:
    """`typer.Option` of a path a command writes to: refused if empty (exit 2, naming the
    option); check it with `ensure_writable` before the run."""
    return typer.Option(default, *param_decls, parser=_nonempty_path, **kw)


class OneLineInterrupt(TyperGroup):
    """The command groups' class: a command interrupted (Ctrl-C; SIGTERM where it maps it)
    and not saying so itself exits 130 with one line; typer's own exit 130 said nothing.
    (Interrupted while the modules load: `perllm.__main__.run`.)"""

    def invoke(self, ctx: Any) -> Any:  # (typer's vendored click Context)
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
