"""YAML as PerLLM reads a user's files (a scenario, a router config): keys unique
(`load_strict`), and a syntax error in one line (PyYAML's own text spans several, with a
caret drawing) for the CLI's one-line errors."""

from __future__ import annotations

from typing import Any

import yaml


def one_line(e: yaml.YAMLError) -> str:
    """`line L, column C: problem (context)` where PyYAML marks where it failed."""
    if isinstance(e, yaml.MarkedYAMLError) and e.problem_mark is not None:
        m = e.problem_mark
        where = f"line {m.line + 1}, column {m.column + 1}: {e.problem}"
        return f"{where} ({e.context})" if e.context else where
    return " ".join(str(e).split())


def load_strict(text: str) -> Any:
    """`yaml.safe_load`, but a key repeated in one mapping is an error (a YAMLError)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def load_all_strict(text: str) -> list[Any]:
    """`yaml.safe_load_all` with `load_strict`'s unique keys, every document read."""
    return list(yaml.load_all(text, Loader=_UniqueKeyLoader))


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys: `duration_s: 60` then `duration_s: 5` ran
    5 s without a word. The YAML spec makes keys unique; a repeated one is an error."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
                seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: PyYAML's own error below
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first on line {first})",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep)
