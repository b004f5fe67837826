"""Where a command writes its results, checked before it runs (`perllm simulate`,
`perllm sweep`): a folder that cannot be made or written is a one-line error naming the
option, not a traceback once the runs are done."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console


def ensure_writable(option: str, folder: Path, err: Console, file: Path | None = None) -> None:
    """`folder` made and writable (and `file` in it no folder), else exit 2."""
    try:
        if file is not None and file.is_dir():
            raise IsADirectoryError(f"{file} is a folder")
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError(f"cannot write in {folder}")
    except OSError as e:
        err.print(f"[red]error:[/red] {option}: {e}")
        raise typer.Exit(2) from None
