"""The LLMServices a demo applies: demo-specific ones for the scenario if the package has
them (perllm/demo/services/<scenario>/*.yaml), else the examples in manifests/; always with
the `deployment` backend, so pods exist and perllm-scheduler binds them to KWOK nodes
without KServe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from perllm.crd import KIND
from perllm.demo.config import REPO_ROOT
from perllm.yamlerror import load_all_strict, one_line

SERVICES_DIR = Path(__file__).with_name("services")
EXAMPLES_DIR = REPO_ROOT / "manifests"


def default_sources(scenario: str) -> list[Path]:
    own = SERVICES_DIR / Path(scenario).stem
    return [own] if own.is_dir() else [EXAMPLES_DIR]


def _files(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix in {".yaml", ".yml"})
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"--services: no file or folder {p}")
    return out


def load_services(paths: list[Path]) -> list[dict[str, Any]]:
    """Every LLMService in `paths`, switched to the deployment backend, namespace dropped
    (the demo applies them into its own namespace)."""
    out: list[dict[str, Any]] = []
    for f in _files(paths):
        for doc in _documents(f):
            if not isinstance(doc, dict) or doc.get("kind") != KIND:
                continue
            doc.setdefault("spec", {})["backend"] = "deployment"
            doc.get("metadata", {}).pop("namespace", None)
            out.append(doc)
    if not out:
        raise ValueError(f"--services: no {KIND} in {', '.join(map(str, paths))}")
    return out


def _documents(f: Path) -> list[Any]:
    """The YAML documents of one file; ValueError naming it and why (unreadable, not
    UTF-8, not YAML: one line, not PyYAML's caret drawing)."""
    try:
        return load_all_strict(f.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"--services: {f}: {one_line(e)}") from None
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ValueError(f"--services: {f}: cannot read it ({why})") from None
