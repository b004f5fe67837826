"""`Cluster.apply_nodes` on a large fleet: it waited with `kubectl wait` on every node, which
waits for one after another (~0.2 s each), so `cluster up --scenario large-fleet` (1,000
nodes) ran out of time with every node long Ready and ended in a TimeoutExpired traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from perllm.devcluster.cluster import Cluster, ClusterConfig
from perllm.devcluster.process import StartError
from perllm.devcluster.state import State
from perllm.scenario import load_scenario

SECONDS_PER_WAITED_NODE = 0.2  # what `kubectl wait` took per node on the dev cluster


class FakeKubectl:
    """kubectl against a cluster whose nodes are Ready once created (KWOK's node-initialize
    stage took well under 5 s for 1,000); `kubectl wait` costs what it costs per node."""

    def __init__(self, ready: bool = True) -> None:
        self.ready = ready
        self.nodes: list[str] = []
        self.calls: list[tuple[str, ...]] = []

    def __call__(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 60,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        self.calls.append(args)
        cmd = ["kubectl", "--kubeconfig=kc", *args]
        out = ""
        if args[0] == "create":
            import yaml

            self.nodes = [d["metadata"]["name"] for d in yaml.safe_load_all(input or "")]
        elif args[0] == "wait":
            waited = [a for a in args if a.startswith("node/")]
            if len(waited) * SECONDS_PER_WAITED_NODE > timeout:
                raise subprocess.TimeoutExpired(cmd, timeout)
        elif args[:2] == ("get", "nodes"):
            status = "True" if self.ready else "False"
            out = "".join(f"{n}\t{status}\n" for n in self.nodes)
        return subprocess.CompletedProcess(cmd, 0, out, "")


def _cluster(tmp_path: Path, kubectl: FakeKubectl, timeout: float) -> Cluster:
    c = Cluster(ClusterConfig(run_dir=tmp_path, scenario=None, ready_timeout_s=timeout))
    c.state = State(
        run_dir=str(tmp_path),
        kubeconfig="kc",
        kubectl="kubectl",
        api_server="https://127.0.0.1:1",
        external=False,
        processes=[],
        ports={},
    )
    c.kubectl = kubectl  # type: ignore[method-assign]
    return c


def test_the_nodes_of_a_large_fleet_are_ready_in_time(tmp_path: Path) -> None:
    kubectl = FakeKubectl()
    names = _cluster(tmp_path, kubectl, timeout=120).apply_nodes("large-fleet")
    assert len(names) == sum(1 for _ in load_scenario("large-fleet").expanded_servers()) == 1000
    # one list per poll, not one argument (or one wait) per node
    assert all(len(c) < 10 for c in kubectl.calls), [c[:10] for c in kubectl.calls]


def test_nodes_never_ready_is_a_start_error_naming_them(tmp_path: Path) -> None:
    c = _cluster(tmp_path, FakeKubectl(ready=False), timeout=0.6)
    first = r"cloud, edge-1, edge-2, edge-3, edge-4, \.\.\.$"
    with pytest.raises(StartError, match=rf"^6 of 6 nodes not Ready after 1s: {first}"):
        c.apply_nodes("paper-llama2-7b")


def test_a_kubectl_that_does_not_return_is_a_start_error(tmp_path: Path) -> None:
    def hung(*args: str, timeout: float = 60, **_k: object) -> None:
        raise subprocess.TimeoutExpired(["kubectl", "--kubeconfig=kc", *args], timeout)

    c = _cluster(tmp_path, FakeKubectl(), timeout=30)
    c.kubectl = hung  # type: ignore[assignment]
    with pytest.raises(StartError, match="kubectl create did not return in 30s"):
        c.apply_nodes("paper-llama2-7b")
