"""Where a command writes its results, checked before it runs (`perllm simulate`,
`perllm sweep`, `perllm load`, `perllm demo`): an empty path, or a folder that cannot be
made or written, is a one-line error naming the option, not a traceback (or nothing
written) once the runs are done."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer
from rich.console import Console


def ensure_writable(option: str, folder: Path, err: Console, file: Path | None = None) -> None:
    """`folder` made and writable (and `file` in it no folder), else exit 2."""
    try:
        if file is not None and file.is_dir():
            raise IsADirectoryError(f"{file} is a folder")
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"{folder} is not a folder")
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError(f"cannot write in {folder}")
    except OSError as e:
        err.print(f"[red]error:[/red] {option}: {e}")
        raise typer.Exit(2) from None


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
