"""A demanding user's own scenario files: each input that once loaded or ran wrongly
(a silent wrong number, a traceback, unbounded memory) is refused naming its field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from perllm.cli import app
from perllm.scenario import ScenarioError, load_scenario

PAPER = Path(__file__).parents[2] / "perllm/scenarios/paper-llama2-7b.yaml"


def base() -> dict[str, Any]:
    return yaml.safe_load(PAPER.read_text())


def write(tmp_path: Path, d: dict[str, Any]) -> Path:
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(d))
    return f


def test_a_repeated_key_is_refused_naming_its_line(tmp_path: Path) -> None:
    """PyYAML keeps the last of two equal keys: a second `duration_s` ran silently."""
    f = tmp_path / "s.yaml"
    text = PAPER.read_text()
    f.write_text(text.replace("duration_s: 1800", "duration_s: 1800\nduration_s: 5", 1))
    with pytest.raises(ScenarioError, match=r"not valid YAML: line \d+, column 1: duplicate "
                       r"key 'duration_s' \(first on line \d+\)"):  # fmt: skip
        load_scenario(f)
    f.write_text(text.replace("link: {", "link: {noise: 0.1, noise: 0.3, ", 1))
    with pytest.raises(ScenarioError, match="duplicate key 'noise'"):
        load_scenario(f)
    res = CliRunner().invoke(app, ["scenarios", "validate", str(f)])
    assert res.exit_code == 1 and "duplicate key 'noise'" in res.output


def test_a_merge_key_may_still_be_overridden(tmp_path: Path) -> None:
    """`<<: *anchor` then the key again is YAML's override, not a repeat."""
    f = tmp_path / "s.yaml"
    text = PAPER.read_text()
    text = text.replace("link: {bandwidth_mbps: 100,", "link: &l {bandwidth_mbps: 100,", 1)
    text = text.replace(
        "link: {bandwidth_mbps: 300, noise: 0.2, rtt_ms: 40, energy_uj_per_bit: 1.1}",
        "link: {<<: *l, bandwidth_mbps: 300}",
    )
    f.write_text(text)
    cloud = load_scenario(f).servers[-1].link
    assert (cloud.bandwidth_mbps, cloud.rtt_ms) == (300, 5)
