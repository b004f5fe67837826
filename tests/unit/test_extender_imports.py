"""The extender's modules form no import cycle, and each imports on its own."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import perllm_extender

PACKAGE = Path(perllm_extender.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted(PACKAGE.rglob("*.py")):
        parts = f.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of the package `name` imports anywhere (function bodies and TYPE_CHECKING
    blocks count: a cycle there is one refactor away from a runtime one)."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            targets = [base, *(f"{base}.{a.name}" for a in node.names)]
        else:
            continue
        out |= {t for t in targets if t in known and t != name}
    # a submodule import runs its package's __init__ first: not an edge of this module's
    return {t for t in out if not name.startswith(t + ".")}


def test_import_graph_is_acyclic() -> None:
    mods = _modules()
    assert "perllm_extender.bandits" in mods and "perllm_extender.routers.scheduler" in mods
    graph = {m: _imports(m, p, set(mods)) for m, p in mods.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for dep in sorted(graph[m]):
            if state.get(dep) == 1:
                cycle = [*path[path.index(dep) :], dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, [*path, dep])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_each_module_imports_on_its_own() -> None:
    """Each module imported first, with none of the package loaded (third-party libraries
    stay loaded between modules: only the package's own import order is under test)."""
    names = sorted(_modules())
    script = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    for m in [m for m in sys.modules if m.split('.')[0] == 'perllm_extender']:\n"
        "        del sys.modules[m]\n"
        "    importlib.import_module(name)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert r.returncode == 0, r.stderr[-3000:]
