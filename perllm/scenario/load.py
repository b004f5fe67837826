"""Loading a scenario: YAML files and built-ins, validation errors that name the field,
trace paths resolved against the scenario file."""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import yaml
from pydantic import ValidationError

from perllm.costmodel import build_cost_table
from perllm.scenario import feasible
from perllm.scenario.base import ScenarioError
from perllm.scenario.model import Scenario, trace_reads
from perllm.yamlerror import load_strict, one_line

_SUBFIELD = re.compile(r"^([a-z_]+(?:\[\d+\])?(?:\.[a-z_]+(?:\[\d+\])?)*): ")


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ""
        for part in e["loc"]:
            loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
        msg = e["msg"].removeprefix("Value error, ")
        # A model-level check names the field below its model: join it to the location
        # (`workload` + `classes[2].arrivals.file: …` -> `workload.classes[2].arrivals.file: …`).
        sub = _SUBFIELD.match(msg)
        if sub:
            loc = f"{loc}.{sub.group(1)}" if loc else sub.group(1)
            msg = msg[sub.end() :]
        lines.append(f"{loc or '(top level)'}: {msg}")
    return "\n  ".join(lines)


def parse_scenario(
    data: object, source: str = "<scenario>", base_dir: Path | None = None
) -> Scenario:
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: a scenario is a YAML mapping, got {type(data).__name__}")
    try:
        sc = Scenario.model_validate(data)
    except ValidationError as e:
        raise ScenarioError(f"{source}: invalid scenario:\n  {_format_errors(e)}") from None
    if base_dir is not None:
        sc = _relative_to(sc, base_dir)
    _check_files(sc, source)
    check_services(sc, source)
    return sc


# Where a field of a class's `ServiceSpec` (its `Requirements`, `Traffic`) comes from in
# the scenario file.
_SERVICE_FIELDS = {
    "min_quality": "min_quality.values",
    "rate_rps": "arrivals.rate_rps (the class's mean rate)",
    "prompt_tokens": "input_tokens (its mean)",
    "output_tokens": "output_tokens (its mean)",
    "payload_bytes": "attachment_bytes (its mean)",
}


def check_services(sc: Scenario, source: str) -> None:
    """Every class is a valid `ServiceSpec` (the contract's bounds: at most 1,000 req/s a
    class, a variant for each allowed tier, …) that some server can run, so that a
    scenario that loads also runs. Each trace file is read once for all its checks."""
    with trace_reads():
        _check_services(sc, source)


def _check_services(sc: Scenario, source: str) -> None:
    specs = []
    for k in range(len(sc.workload.classes)):
        try:
            specs.append(sc.service(k))
        except ValidationError as e:
            lines = []
            for line in _format_errors(e).split("\n  "):
                loc, _, msg = line.partition(": ")
                leaf = loc.removeprefix("requirements.").removeprefix("traffic.")
                loc = "" if loc == "(top level)" else "." + _SERVICE_FIELDS.get(leaf, loc)
                lines.append(f"workload.classes[{k}]{loc}: {msg}")
            raise ScenarioError(f"{source}: invalid scenario:\n  " + "\n  ".join(lines)) from None
    feasible.check_peak_rates(sc, source)
    feasible.check_size(sc, source)
    feasible.check_links(sc, source)
    feasible.check_context(sc, source)
    feasible.check_profiles(sc, specs, source)
    # Per server definition, not per expanded node: `count` copies run the same classes.
    table = build_cost_table(specs, [(s.name, s) for s in sc.servers], sc.catalogue)
    present = {s.tier for s in sc.servers}
    for k, c in enumerate(sc.workload.classes):
        if table.allowed[k].any():
            # Some floor of the class must be within reach: with every one above every
            # runnable variant's quality, each of its requests fails under every policy.
            mq = c.min_quality
            w = mq.weights or [1.0] * len(mq.values)
            floor = min(v for v, p in zip(mq.values, w, strict=True) if p > 0)
            best = float(table.quality[k][table.allowed[k]].max())
            if floor > best + 1e-12:
                raise ScenarioError(
                    f"{source}: invalid scenario:\n  workload.classes[{k}].min_quality."
                    f"values: class {c.name!r}'s lowest floor {floor:g} is above the best "
                    f"quality any server can run it at ({best:g}): none of its requests "
                    "could be served"
                )
            continue
        tiers = [t.value for t in c.allowed_tiers]
        why = (
            f"allowed_tiers {tiers}: no server in them (servers' tiers: "
            f"{sorted(t.value for t in present)})"
            if not present & set(c.allowed_tiers)
            else f"model: {c.model} fits in no server's memory in tiers {tiers}"
        )
        raise ScenarioError(
            f"{source}: invalid scenario:\n  workload.classes[{k}]: no server can run "
            f"class {c.name!r}: {why}"
        )


def check_unique_names(named: Sequence[tuple[str, Scenario]]) -> None:
    """Scenarios run together are told apart by name (report entries, bounds, output
    files): refuse a name that two of them share (the same file twice, or two files
    with the same `name`), which would merge their results as if they were seeds."""
    seen: dict[str, str] = {}
    for source, sc in named:
        if sc.name in seen:
            raise ScenarioError(
                f"{source}: scenario name {sc.name!r} is also that of {seen[sc.name]}; "
                "scenarios run together need distinct names"
            )
        seen[sc.name] = source


def _relative_to(sc: Scenario, base_dir: Path) -> Scenario:
    """Trace paths are relative to the scenario file: resolve them against `base_dir`."""
    arr = sc.workload.arrivals
    if arr.file and not Path(arr.file).is_absolute():
        sc = sc.model_copy(
            update={
                "workload": sc.workload.model_copy(
                    update={"arrivals": arr.model_copy(update={"file": str(base_dir / arr.file)})}
                )
            }
        )
    classes = list(sc.workload.classes)
    for i, c in enumerate(classes):
        f = c.arrivals.file if c.arrivals else None
        if c.arrivals and f and not Path(f).is_absolute():
            classes[i] = c.model_copy(
                update={"arrivals": c.arrivals.model_copy(update={"file": str(base_dir / f)})}
            )
    if classes != list(sc.workload.classes):
        sc = sc.model_copy(update={"workload": sc.workload.model_copy(update={"classes": classes})})
    if sc.bandwidth.trace and not Path(sc.bandwidth.trace).is_absolute():
        sc = sc.model_copy(
            update={
                "bandwidth": sc.bandwidth.model_copy(
                    update={"trace": str(base_dir / sc.bandwidth.trace)}
                )
            }
        )
    return sc


def _check_files(sc: Scenario, source: str) -> None:
    """Every trace file the scenario names exists."""
    files = [
        ("workload.arrivals.file", sc.workload.arrivals.file),
        ("bandwidth.trace", sc.bandwidth.trace),
    ]
    files += [
        (f"workload.classes[{i}].arrivals.file", c.arrivals.file)
        for i, c in enumerate(sc.workload.classes)
        if c.arrivals is not None
    ]
    for label, path in files:
        if path and not Path(path).is_file():
            raise ScenarioError(f"{source}: invalid scenario:\n  {label}: no such file {path}")


def load_scenario(path: str | Path) -> Scenario:
    """Load a scenario file, or a built-in scenario by name (see `builtin_scenarios`)."""
    if not str(path).strip():  # Path("") is "." (the current folder): say what is wrong
        raise ScenarioError(
            "the scenario must not be empty: give a file or a built-in name "
            f"({', '.join(builtin_scenarios())})"
        )
    p = Path(path)
    if not p.exists():
        builtin = builtin_dir() / f"{path}.yaml"
        if builtin.is_file():
            p = builtin
        else:
            raise ScenarioError(
                f"{path}: no such file or built-in scenario; built-ins: "
                f"{', '.join(builtin_scenarios())}"
            )
    try:
        data = load_strict(p.read_text())
    except yaml.YAMLError as e:
        raise ScenarioError(f"{p}: not valid YAML: {one_line(e)}") from None
    except OSError as e:  # a directory, unreadable
        raise ScenarioError(f"{p}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ScenarioError(f"{p}: not a text file: {e}") from None
    return parse_scenario(data, str(p), p.parent)


def builtin_dir() -> Path:
    return Path(str(resources.files("perllm").joinpath("scenarios")))


def builtin_scenarios() -> list[str]:
    return sorted(p.stem for p in builtin_dir().glob("*.yaml"))


REFERENCE_SCENARIOS = ("paper-yi-6b", "paper-llama2-7b", "paper-llama3-8b", "paper-yi-9b")
