"""What a demanding user hits before the demo's cluster runs: another demo's cluster in the
same --out, and bad option values. None of these start a control plane."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from perllm.demo.config import DemoConfig
from perllm.demo.stack import Stack
from perllm.devcluster.binaries import Binaries
from perllm.devcluster.process import StartError, start
from perllm.devcluster.state import State


def test_a_second_demo_on_the_same_out_leaves_the_first_ones_cluster_running(
    tmp_path: Path,
) -> None:
    """`Cluster.up` refuses a run directory another cluster runs from; the refused demo's
    stop must not then stop that cluster (it stopped every process of the first demo)."""
    config = DemoConfig(out=tmp_path / "demo")
    rd = config.run_dir / "cluster"
    rd.mkdir(parents=True)
    other = start("etcd", ["sleep", "60"], rd / "logs" / "etcd.log", die_with_parent=True)
    try:
        State(
            run_dir=str(rd),
            kubeconfig=str(rd / "kubeconfig"),
            kubectl="kubectl",
            api_server="https://127.0.0.1:1",
            external=False,
            processes=[
                {"name": other.name, "pid": other.pid, "log": str(other.log), "argv0": other.argv0}
            ],
            ports={},
        ).save(rd)
        stack = Stack(config, Console(quiet=True), Binaries.locate())
        with pytest.raises(StartError, match="already runs"):
            stack.start()
        stack.stop()
        assert other.alive(), "the refused demo stopped the other demo's cluster"
        assert State.load(rd) is not None, "the other cluster's state.json was removed"
    finally:
        other.stop()
