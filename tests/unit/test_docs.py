"""The docs against the code: every `perllm ...` command line the docs write (code blocks
and inline code, `python -m perllm.devcluster`, `python -m perllm_operator`,
`bench/sweep.py`) names a real subcommand and real flags of the current CLI, every
`bench/*.py --flag` is one the script declares, every repository path they mention exists,
and every relative Markdown link resolves, its #anchor included. A renamed flag or a moved
file otherwise leaves the docs telling newcomers to run what fails."""

from __future__ import annotations

import ast
import re
import shlex
from functools import cache
from pathlib import Path
from typing import Any

import typer

from perllm.cli import app

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted(
    {
        ROOT / "README.md",
        *(ROOT / "docs").glob("*.md"),
        *ROOT.glob("*/README.md"),
        *ROOT.glob("charts/*/README.md"),
    }
)
SHELL_SEPARATORS = {"&&", "||", "|", ";", "&", ">", ">>", "2>", "2>&1"}
# Paths the docs name that are not this repository's files on purpose.
NOT_OURS = {
    "tools/server/README.md",  # llama.cpp's, cited for its /metrics
    "perllm/csucb/__pycache__/",  # numba's cache, made at run time, ignored by git
}


def snippets(text: str) -> list[tuple[int, str]]:
    """(line, code) of every fenced block's lines (backslash continuations joined) and of
    every inline code span (which may wrap across lines within a paragraph)."""
    out: list[tuple[int, str]] = []
    prose: list[tuple[int, str]] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        fence = re.match(r"\s*(```+|~~~+)", lines[i])
        if not fence:
            prose.append((i + 1, lines[i]))
            i += 1
            continue
        i += 1
        buf: list[str] = []
        start = i + 1
        while i < len(lines) and not lines[i].strip().startswith(fence.group(1)):
            if not buf:
                start = i + 1
            buf.append(lines[i].rstrip().removesuffix("\\"))
            if not lines[i].rstrip().endswith("\\"):
                out.append((start, " ".join(buf)))
                buf = []
            i += 1
        if buf:
            out.append((start, " ".join(buf)))
        i += 1
    paragraph: list[tuple[int, str]] = []
    for n, line in [*prose, (0, "")]:
        if line.strip():
            paragraph.append((n, line))
            continue
        if paragraph:
            text = "\n".join(p for _, p in paragraph)
            for m in re.finditer(r"(`+)(.+?)\1", text, re.S):
                n0 = paragraph[0][0] + text[: m.start()].count("\n")
                out.append((n0, m.group(2).replace("\n", " ")))
            paragraph = []
    return out


def _options(cmd: Any) -> set[str]:
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}


@cache
def _bench_options(script: str) -> set[str]:
    tree = ast.parse((ROOT / script).read_text())
    out = {"--help", "-h"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            out |= {a.value for a in node.args if isinstance(a, ast.Constant)}
    return out


def _invocations() -> list[tuple[str, str, Any, str, list[str]]]:
    """(where, program, its click command or bench script, the line as written, arguments)."""
    from perllm.devcluster.cli import app as devcluster_app

    root = typer.main.get_command(app)
    modules = {
        "perllm": root,
        "perllm.devcluster": typer.main.get_command(devcluster_app),
        "perllm_operator": root.commands["operator"],  # `python -m perllm_operator`: same flags
    }
    out = []
    for doc in DOCS:
        for line, code in snippets(doc.read_text()):
            code = re.sub(r"(^|\s)#\s.*$", "", code)  # a shell comment
            try:
                toks = shlex.split(code)
            except ValueError:
                toks = code.split()
            where = f"{doc.relative_to(ROOT)}:{line}"
            for k, t in enumerate(toks):
                prev = toks[k - 1] if k else ""
                cmd: Any = None
                program = t
                if t == "perllm" or t.endswith("/bin/perllm"):
                    # `helm install perllm ...`, `-n perllm`: an argument, not the command
                    if k and prev not in SHELL_SEPARATORS and prev not in ("$", "exec", "time"):
                        continue
                    cmd, program = root, "perllm"
                elif prev == "-m" and t in modules:
                    cmd = modules[t]
                elif re.fullmatch(r"(\./)?bench/\w+\.py", t):
                    script = t.removeprefix("./")
                    assert (ROOT / script).is_file(), f"{where}: no {script}"
                    cmd = root.commands["sweep"] if script == "bench/sweep.py" else script
                    program = script
                if cmd is not None:
                    args = []
                    for a in toks[k + 1 :]:
                        if a in SHELL_SEPARATORS or a.startswith("$("):
                            break
                        args.append(a)
                    out.append((where, program, cmd, code, args))
    return out


def test_the_walk_sees_the_docs_commands() -> None:
    invocations = _invocations()
    found = {
        (where.split(":")[0], prog, (args or [""])[0]) for where, prog, _, _, args in invocations
    }
    assert ("README.md", "perllm", "simulate") in found  # .venv/bin/perllm simulate
    assert ("docs/development.md", "perllm.devcluster", "cluster") in found
    assert ("docs/sweep.md", "bench/sweep.py", "--out") in found  # passed on to perllm sweep
    assert ("README.md", "bench/sim_speed.py", "--repeat") in found
    assert len(invocations) > 100


def test_every_command_in_the_docs_is_a_real_subcommand_with_real_flags() -> None:
    bad = []
    for where, program, cmd, code, args in _invocations():
        if isinstance(cmd, str):  # a bench script's argparse options
            bad += [
                f"{where}: {cmd} {a}"
                for a in args
                if a[:1] == "-" and a.split("=")[0] not in _bench_options(cmd)
            ]
            continue
        path = [program]
        for a in args:
            if a.startswith("-") and a not in ("-", "--"):
                if a.split("=")[0] not in _options(cmd):
                    bad.append(f"{where}: `{' '.join(path)}` has no {a}: {code}")
            elif hasattr(cmd, "commands"):
                if a in ("...", "…"):
                    break
                # `perllm dev cluster up|down|status`: each alternative
                if not all(alt in cmd.commands for alt in a.split("|")):
                    bad.append(f"{where}: `{' '.join(path)}` has no subcommand {a!r}: {code}")
                    break
                if "|" in a:
                    break
                cmd = cmd.commands[a]
                path.append(a)
    assert bad == []


def test_every_repository_path_in_the_docs_exists() -> None:
    tops = "docs|manifests|tools|bench|charts|crds|perllm|operator|extender|images|tests|\\.github"
    # tests/unit/test_chart*.py, tests/e2e/test_operator_{lifecycle,variants}.py: globs
    pattern = re.compile(rf"(?<![\w./-])(?:\./)?((?:{tops})/[\w./*-]*(?:{{[\w,]+}}[\w./*-]*)*)")
    seen = 0
    missing = []
    for doc in DOCS:
        for n, line in enumerate(doc.read_text().split("\n"), 1):
            for m in pattern.finditer(line):
                path = m.group(1).rstrip(".,;:")
                seen += 1
                if path not in NOT_OURS and not all(
                    any(ROOT.glob(p)) if "*" in p else (ROOT / p).exists() for p in _braces(path)
                ):
                    missing.append(f"{doc.relative_to(ROOT)}:{n}: {path}")
    assert seen > 100 and missing == []


def _braces(path: str) -> list[str]:
    """`a_{x,y}.py` -> a_x.py, a_y.py."""
    m = re.search(r"{([^}]*)}", path)
    if not m:
        return [path]
    return [
        q
        for alt in m.group(1).split(",")
        for q in _braces(path[: m.start()] + alt + path[m.end() :])
    ]


def _without_code(text: str) -> str:
    text = re.sub(r"^(```|~~~).*?^\1", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    h = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower()).replace("`", "")
    return re.sub(r"[^\w\- ]", "", h).replace(" ", "-")


@cache
def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^(```|~~~).*?^\1", "", path.read_text(), flags=re.S | re.M)
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, re.M):
        s = _slug(m.group(1))
        out.add(f"{s}-{seen[s]}" if s in seen else s)
        seen[s] = seen.get(s, 0) + 1
    return out


def test_every_relative_link_in_the_docs_resolves() -> None:
    links = 0
    problems = []
    for doc in DOCS:
        for m in re.finditer(r"\]\(([^)\s]+)[^)]*\)", _without_code(doc.read_text())):
            target = m.group(1)
            if re.match(r"[a-z][a-z+.-]*:", target):  # https:, mailto:
                continue
            links += 1
            file, _, anchor = target.partition("#")
            path = (doc.parent / file).resolve() if file else doc
            if not path.exists():
                problems.append(f"{doc.relative_to(ROOT)}: {target}: no such file")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                problems.append(f"{doc.relative_to(ROOT)}: {target}: no such heading")
    assert links > 20 and problems == []


def test_the_router_configuration_in_docs_router_md_parses_with_the_defaults() -> None:
    """docs/router.md's "Configuration" block is a config the router accepts, and its
    `limits` and `discovery` settings are the defaults (what a reader takes them for)."""
    import yaml

    from perllm.router.config import Discovery, Limits, parse_config

    text = (ROOT / "docs/router.md").read_text()
    block = re.search(r"## Configuration\n.*?```yaml\n(.*?)```", text, re.S)
    assert block is not None
    config = parse_config(yaml.safe_load(block.group(1)), "docs/router.md")
    assert config.limits == Limits()
    assert config.discovery is not None
    assert config.discovery == Discovery(service=config.discovery.service)
