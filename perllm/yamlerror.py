"""A YAML syntax error in one line (PyYAML's own text spans several, with a caret drawing):
what the CLI's one-line errors print for a scenario or a router config."""

from __future__ import annotations

import yaml


def one_line(e: yaml.YAMLError) -> str:
    """`line L, column C: problem (context)` where PyYAML marks where it failed."""
    if isinstance(e, yaml.MarkedYAMLError) and e.problem_mark is not None:
        m = e.problem_mark
        where = f"line {m.line + 1}, column {m.column + 1}: {e.problem}"
        return f"{where} ({e.context})" if e.context else where
    return " ".join(str(e).split())
