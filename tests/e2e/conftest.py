"""Session fixture for the e2e tier: a Kubernetes API server to test against.

Order: `KUBECONFIG` if set (kind, k3s, or `perllm dev cluster up`); else a running local
cluster recorded in the default run directory; else a fresh local cluster for this session
(stopped at the end). Disable the whole tier only explicitly, with PERLLM_E2E=0.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path

import pluggy
import pytest

from perllm.devcluster.binaries import Binaries, BinariesMissing
from perllm.devcluster.cluster import Cluster, ClusterConfig, temporary_run_dir
from perllm.devcluster.kube import Kube

from .operator_harness import Operator, start_operator
from .test_extender import Extender, scheduling_extender

_CLUSTER: Cluster | None = None  # local cluster whose logs a failing test prints
_FAILED = False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("PERLLM_E2E") == "0":
        skip = pytest.mark.skip(reason="e2e tier disabled by PERLLM_E2E=0")
        for item in items:
            if "e2e" in item.keywords:
                item.add_marker(skip)


def _kubectl_path() -> str:
    pinned = Binaries.locate().kubectl
    if os.access(pinned, os.X_OK):
        return str(pinned)
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail("no kubectl: build the pinned one with tools/build-binaries.sh k8s")
    return found


@pytest.fixture(scope="session")
def kube() -> Iterator[Kube]:
    global _CLUSTER
    if env := os.environ.get("KUBECONFIG"):
        path = Path(env.split(os.pathsep)[0])
        # A kubeconfig written by `perllm dev cluster up` sits in its run directory: then the
        # harness-only checks (versions, Prometheus, logs on failure) apply too.
        own = Cluster.find(path.parent)
        if own is not None and own.state is not None and Path(own.state.kubeconfig) == path:
            _CLUSTER = own
            yield Kube(path, own.state.kubectl, own)
        else:
            yield Kube(path, _kubectl_path(), None)
        return
    running = Cluster.find()
    if running is not None:
        _CLUSTER = running
        yield Kube(running.kubeconfig, str(running.state.kubectl if running.state else ""), running)
        return
    try:
        Binaries.locate().require()
    except BinariesMissing as e:
        pytest.fail(str(e), pytrace=False)
    cluster = Cluster(ClusterConfig(run_dir=temporary_run_dir(), die_with_parent=True))
    _CLUSTER = cluster
    try:
        cluster.up()
        yield Kube(cluster.kubeconfig, str(cluster.bin.kubectl), cluster)
    finally:
        cluster.down()
        _CLUSTER = None
        if not _FAILED:  # keep the logs of a failed session
            shutil.rmtree(cluster.run_dir, ignore_errors=True)


@pytest.fixture
def namespace(kube: Kube) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (without waiting)."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    kube.kubectl("create", "namespace", name)
    # Real clusters run ServiceAccount admission, so pods need the `default` SA, which their
    # SA controller creates a moment later; the local harness has neither. Create it now.
    r = kube.kubectl("create", "serviceaccount", "default", "-n", name, check=False)
    assert r.returncode == 0 or "AlreadyExists" in r.stderr, r.stderr
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def operator(kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    """The operator for one test module (test_operator_*.py), restricted to its RBAC."""
    yield from start_operator(kube, tmp_path_factory)


@pytest.fixture
def operator_log(operator: Operator) -> Iterator[None]:
    yield
    # Captured output: pytest shows it only for a failing test.
    print(f"--- operator log ({operator.log}) ---\n{operator.tail()}")


@pytest.fixture(scope="module")
def deciding_extender(kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Extender]:
    """The extender (priors only: no Prometheus needed), made perllm-scheduler's extender
    with `ignorable: false`, so that every pod of the module is placed by its decision
    (the operator's children: test_operator_tiers.py, test_router_burst.py)."""
    if kube.local is None:
        pytest.skip("needs the local control plane (restarts perllm-scheduler)")
    args = ["--learn-interval", "3600", "--insecure-http", "--debug-routes"]
    tmp = tmp_path_factory.mktemp("extender")
    with scheduling_extender(kube, kube.local, tmp, args) as ext:
        yield ext


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pluggy.Result[pytest.TestReport], None]:
    global _FAILED
    outcome = yield
    report = outcome.get_result()
    _FAILED = _FAILED or report.failed
    if report.failed and _CLUSTER is not None and "e2e" in item.keywords:
        for name, log in _CLUSTER.logs().items():
            try:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-60:])
            except OSError:
                continue
            report.sections.append((f"cluster log {name} ({log})", tail))
