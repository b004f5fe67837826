"""Start, find and stop the local control plane; its state lives in a run directory.

`up` writes `state.json` (PIDs, ports, kubeconfig) into the run directory so that a later
`down` from another process finds and stops exactly these processes, by PID.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from perllm.devcluster import certs
from perllm.devcluster import config as cfg
from perllm.devcluster.binaries import Binaries
from perllm.devcluster.nodes import KWOK_SELECTOR, node_manifests
from perllm.devcluster.process import (
    Proc,
    StartError,
    free_port,
    free_ports,
    http_ok,
    start,
    wait_until,
)
from perllm.devcluster.state import STATE_FILE
from perllm.devcluster.state import State as State  # re-exported (cli, tests)

DEFAULT_SCENARIO = "paper-llama2-7b"
KWOK_CIDR = "10.0.0.0/16"  # disjoint from the service range below; default /24 holds ~254 pods
SERVICE_CIDR = "10.96.0.0/16"
# What Deployments, ReplicaSets, DaemonSets (the chart's node agent), PodDisruptionBudgets,
# deletion and namespaces need, plus the aggregation that fills the built-in
# admin/edit/view ClusterRoles (without it `view` grants nothing).
CONTROLLERS = (
    "deployment-controller,replicaset-controller,daemonset-controller,"
    "disruption-controller,garbage-collector-controller,"
    "namespace-controller,clusterrole-aggregation-controller"
)


def default_run_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR") or str(Path.home() / ".cache")
    return Path(base) / "perllm" / "cluster"


@dataclass
class ClusterConfig:
    run_dir: Path = field(default_factory=default_run_dir)
    scenario: str | Path | None = DEFAULT_SCENARIO  # None: no fake nodes
    extender: cfg.Extender = field(default_factory=cfg.Extender)
    prometheus: bool = True
    scrape_configs: list[dict[str, Any]] = field(default_factory=list)
    # Attach mode: an existing cluster (kind, k3s) gets only the perllm-scheduler, KWOK and
    # the fake nodes; etcd, the apiserver, controllers and the default scheduler are its own.
    external_kubeconfig: Path | None = None
    # SIGTERM every component when the starting process dies (pytest-owned clusters).
    die_with_parent: bool = False
    ready_timeout_s: float = 120.0


class Cluster:
    """One local control plane. Use `up()`/`down()`, or as a context manager."""

    def __init__(self, config: ClusterConfig | None = None, binaries: Binaries | None = None):
        self.config = config or ClusterConfig()
        self.run_dir = self.config.run_dir
        self._bin = binaries
        self.procs: list[Proc] = []
        self.state: State | None = None

    # ---- discovery -------------------------------------------------------------------------
    @classmethod
    def find(cls, run_dir: Path | None = None) -> Cluster | None:
        """The cluster recorded in `run_dir` if all its processes still run, else None."""
        rd = run_dir or default_run_dir()
        state = State.load(rd)
        if state is None or not state.processes or not all(p.alive() for p in state.procs()):
            return None
        c = cls(ClusterConfig(run_dir=rd))
        c.state, c.procs = state, state.procs()
        return c

    @property
    def bin(self) -> Binaries:
        if self._bin is None:
            self._bin = Binaries.locate()
        return self._bin

    @property
    def kubeconfig(self) -> Path:
        assert self.state is not None, "cluster not started"
        return Path(self.state.kubeconfig)

    def logs(self) -> dict[str, Path]:
        return {p.name: p.log for p in self.procs}

    def __enter__(self) -> Cluster:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # ---- start -----------------------------------------------------------------------------
    def up(self) -> State:
        c, rd = self.config, self.run_dir
        if Cluster.find(rd) is not None:
            raise StartError(f"a cluster already runs from {rd}: stop it first (cluster down)")
        self.bin.require(prometheus=c.prometheus, etcd=c.external_kubeconfig is None)
        if State.load(rd) is not None:  # a half-dead cluster: stop its survivors first
            Cluster(ClusterConfig(run_dir=rd)).down()
        self._fresh_run_dir()
        self.procs = []
        try:
            if c.external_kubeconfig is not None:
                self.state = self._attach(c.external_kubeconfig)
            else:
                self.state = self._start_control_plane()
            self.state.save(rd)  # early: `down` can clean up even if the rest fails
            if c.scenario is not None:
                self.apply_nodes(c.scenario)
            if c.prometheus:
                self._start_prometheus()
            self.state.save(rd)
        except BaseException:
            self.down()
            raise
        return self.state

    def _fresh_run_dir(self) -> None:
        rd = self.run_dir
        rd.mkdir(parents=True, exist_ok=True)
        for sub in ("etcd", "pki", "prometheus", "logs"):
            shutil.rmtree(rd / sub, ignore_errors=True)
        (rd / "logs").mkdir()
        (rd / STATE_FILE).unlink(missing_ok=True)

    def _spawn(self, name: str, argv: Sequence[str | Path]) -> Proc:
        p = start(
            name,
            [str(a) for a in argv],
            self.run_dir / "logs" / f"{name}.log",
            die_with_parent=self.config.die_with_parent,
        )
        self.procs.append(p)
        if self.state is not None:
            self.state.processes = [asdict(x) for x in self.procs]
            self.state.save(self.run_dir)
        return p

    def _start_control_plane(self) -> State:
        rd, b = self.run_dir, self.bin
        ports = free_ports(
            (
                "etcd",
                "etcd_peer",
                "apiserver",
                "controller_manager",
                "scheduler",
                "perllm_scheduler",
                "kwok",
            )
        )
        tokens = cfg.Tokens()
        (rd / "tokens.csv").write_text(tokens.csv())
        (rd / "tokens.csv").chmod(0o600)
        (rd / "pki").mkdir()
        sa_key = rd / "pki" / "sa.key"
        certs.rsa_key(sa_key)
        server = f"https://127.0.0.1:{ports['apiserver']}"
        kubeconfig = rd / "kubeconfig"
        _write(kubeconfig, cfg.kubeconfig(server, tokens.admin))
        _write(
            rd / "scheduler.kubeconfig",
            cfg.kubeconfig(server, tokens.scheduler, cfg.SCHEDULER_USER),
        )
        _write(rd / "viewer.kubeconfig", cfg.kubeconfig(server, tokens.viewer, cfg.VIEWER_USER))
        self.state = State(
            run_dir=str(rd),
            kubeconfig=str(kubeconfig),
            kubectl=str(b.kubectl),
            api_server=server,
            external=False,
            processes=[],
            ports=ports,
            viewer_kubeconfig=str(rd / "viewer.kubeconfig"),
            extender=asdict(self.config.extender),
        )
        self.state.save(rd)
        t = self.config.ready_timeout_s

        etcd_url = f"http://127.0.0.1:{ports['etcd']}"
        etcd = self._spawn(
            "etcd",
            [
                b.etcd,
                "--name=perllm-dev",
                f"--data-dir={rd / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{ports['etcd_peer']}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{ports['etcd_peer']}",
                f"--initial-cluster=perllm-dev=http://127.0.0.1:{ports['etcd_peer']}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
                "--listen-metrics-urls=",
            ],
        )
        wait_until(etcd, lambda: http_ok(f"{etcd_url}/health"), t, "etcd /health")

        api = self._spawn(
            "kube-apiserver",
            [
                b.kube_apiserver,
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports['apiserver']}",
                # Required: with no default route the apiserver finds no address and exits.
                "--advertise-address=127.0.0.1",
                f"--cert-dir={rd / 'pki'}",
                f"--token-auth-file={rd / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={sa_key}",
                f"--service-account-signing-key-file={sa_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # No service-account controller runs, so nothing creates `default` SAs; and no
                # node-lifecycle controller lifts the not-ready taint TaintNodesByCondition puts
                # on every new node (KWOK sends no heartbeats here).
                "--disable-admission-plugins=ServiceAccount,TaintNodesByCondition",
                "--allow-privileged=true",
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                "-v=1",
            ],
        )
        wait_until(api, lambda: http_ok(f"{server}/readyz"), t, "apiserver /readyz")

        kcm = self._spawn(
            "kube-controller-manager",
            [
                b.kube_controller_manager,
                f"--kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports['controller_manager']}",
                f"--controllers={CONTROLLERS}",
                "--profiling=false",
                "-v=1",
            ],
        )
        sched = self._start_scheduler(
            "kube-scheduler",
            "default-scheduler",
            None,
            rd / "scheduler.kubeconfig",
            ports["scheduler"],
        )
        psched = self._start_scheduler(
            "perllm-scheduler",
            cfg.PERLLM_SCHEDULER,
            self.config.extender,
            rd / "scheduler.kubeconfig",
            ports["perllm_scheduler"],
        )
        kwok = self._start_kwok(kubeconfig, ports["kwok"], lease_seconds=0)
        for proc, port in (
            (kcm, ports["controller_manager"]),
            (sched, ports["scheduler"]),
            (psched, ports["perllm_scheduler"]),
        ):
            wait_until(proc, partial(http_ok, f"https://127.0.0.1:{port}/healthz"), t, "/healthz")
        wait_until(
            kwok, lambda: http_ok(f"http://127.0.0.1:{ports['kwok']}/healthz"), t, "/healthz"
        )
        return self.state

    def _attach(self, external: Path) -> State:
        rd = self.run_dir
        ports = free_ports(("perllm_scheduler", "kwok"))
        kubeconfig = rd / "kubeconfig"
        shutil.copyfile(external, kubeconfig)
        server = cfg.kubeconfig_server(kubeconfig)
        self.state = State(
            run_dir=str(rd),
            kubeconfig=str(kubeconfig),
            kubectl=str(self.bin.kubectl),
            api_server=server,
            external=True,
            processes=[],
            ports=ports,
            extender=asdict(self.config.extender),
        )
        self.state.save(rd)
        t = self.config.ready_timeout_s
        psched = self._start_scheduler(
            "perllm-scheduler",
            cfg.PERLLM_SCHEDULER,
            self.config.extender,
            kubeconfig,
            ports["perllm_scheduler"],
        )
        # A real cluster's node-lifecycle controller marks lease-less nodes NotReady.
        kwok = self._start_kwok(kubeconfig, ports["kwok"], lease_seconds=40)
        wait_until(
            psched,
            lambda: http_ok(f"https://127.0.0.1:{ports['perllm_scheduler']}/healthz"),
            t,
            "/healthz",
        )
        wait_until(
            kwok, lambda: http_ok(f"http://127.0.0.1:{ports['kwok']}/healthz"), t, "/healthz"
        )
        return self.state

    def _start_scheduler(
        self,
        name: str,
        scheduler_name: str,
        extender: cfg.Extender | None,
        kubeconfig: Path,
        port: int,
        client_qps: float | None = None,
        percentage_of_nodes_to_score: int | None = None,
    ) -> Proc:
        conf = self.run_dir / f"{name}.yaml"
        if extender is not None and extender.https and not extender.tls_dir:
            extender = replace(extender, tls_dir=str(self.extender_tls().ca.parent))
        _write(
            conf,
            cfg.scheduler_config(
                kubeconfig, scheduler_name, extender, client_qps, percentage_of_nodes_to_score
            ),
        )
        return self._spawn(
            name,
            [
                self.bin.kube_scheduler,
                f"--config={conf}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self.run_dir / 'pki' / name}",
                "-v=2",
            ],
        )

    def extender_tls(self) -> certs.TlsFiles:
        """The extender's CA, server and client certificates (made on first use, kept for the
        cluster's life under pki/extender-tls): run `perllm extender` with
        `*files.extender_args()` to serve what an `https://` Extender URL calls."""
        files = certs.TlsFiles.under(self.run_dir / "pki" / "extender-tls")
        return files if files.exist() else certs.generate(files.ca.parent)

    def _start_kwok(self, kubeconfig: Path, port: int, lease_seconds: int) -> Proc:
        stages = self.run_dir / "kwok-stages.yaml"
        _write(stages, cfg.KWOK_STAGES)
        return self._spawn(
            "kwok",
            [
                self.bin.kwok,
                f"--kubeconfig={kubeconfig}",
                f"--config={stages}",
                f"--manage-nodes-with-annotation-selector={KWOK_SELECTOR}",
                f"--cidr={KWOK_CIDR}",
                "--node-ip=127.0.0.1",
                f"--node-lease-duration-seconds={lease_seconds}",
                f"--server-address=127.0.0.1:{port}",
            ],
        )

    def _start_prometheus(self, scrape_configs: list[dict[str, Any]] | None = None) -> None:
        assert self.state is not None and self.bin.prometheus is not None
        port = free_port()
        self.state.ports["prometheus"] = port
        conf = self.run_dir / "prometheus.yml"
        _write(conf, cfg.prometheus_config(scrape_configs or self.config.scrape_configs, port))
        p = self._spawn(
            "prometheus",
            [
                self.bin.prometheus,
                f"--config.file={conf}",
                f"--storage.tsdb.path={self.run_dir / 'prometheus'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=2h",
                "--log.level=warn",
            ],
        )
        wait_until(
            p,
            lambda: http_ok(f"http://127.0.0.1:{port}/-/ready"),
            self.config.ready_timeout_s,
            "/-/ready",
        )

    # ---- operations on a running cluster ---------------------------------------------------
    @property
    def prometheus_url(self) -> str | None:
        port = self.state.ports.get("prometheus") if self.state else None
        return f"http://127.0.0.1:{port}" if port else None

    def set_scrape_configs(self, scrape_configs: list[dict[str, Any]]) -> None:
        """Replace the extra scrape jobs (self-scrape stays) and reload Prometheus."""
        url = self.prometheus_url
        assert url is not None, "prometheus is not running"
        port = int(url.rsplit(":", 1)[1])
        _write(self.run_dir / "prometheus.yml", cfg.prometheus_config(scrape_configs, port))
        import urllib.request

        with urllib.request.urlopen(
            urllib.request.Request(f"{url}/-/reload", method="POST"), timeout=10
        ) as r:
            if r.status != 200:
                raise RuntimeError(f"prometheus reload: HTTP {r.status}")

    def stop_perllm_scheduler(self) -> None:
        """Stop the second scheduler (pods for it stay Pending until it starts again)."""
        for p in [p for p in self.procs if p.name == "perllm-scheduler"]:
            p.stop()
            self.procs.remove(p)

    def start_perllm_scheduler(
        self,
        extender: cfg.Extender | None,
        client_qps: float | None = None,
        percentage_of_nodes_to_score: int | None = None,
    ) -> None:
        """(Re)start the second scheduler with another extender (URL, ignorable), or with
        none (`extender=None`: the scheduler alone), and optionally another API rate limit
        or node search percentage (`config.scheduler_config`)."""
        assert self.state is not None
        self.stop_perllm_scheduler()
        port = self.state.ports["perllm_scheduler"]
        kubeconfig = (
            Path(self.state.kubeconfig)
            if self.state.external
            else self.run_dir / "scheduler.kubeconfig"
        )
        p = self._start_scheduler(
            "perllm-scheduler",
            cfg.PERLLM_SCHEDULER,
            extender,
            kubeconfig,
            port,
            client_qps,
            percentage_of_nodes_to_score,
        )
        self.state.extender = asdict(extender) if extender is not None else {}
        self.state.save(self.run_dir)
        wait_until(
            p,
            lambda: http_ok(f"https://127.0.0.1:{port}/healthz"),
            self.config.ready_timeout_s,
            "/healthz",
        )

    def restart_perllm_scheduler(self, extender: cfg.Extender) -> None:
        """Point the second scheduler at another extender (URL, ignorable) and restart it."""
        self.start_perllm_scheduler(extender)

    def kubectl(
        self, *args: str, check: bool = True, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        assert self.state is not None
        return subprocess.run(
            [self.state.kubectl, f"--kubeconfig={self.state.kubeconfig}", *args],
            check=check,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )

    def apply_nodes(self, scenario: str | Path) -> list[str]:
        """Create the scenario's servers as KWOK nodes and wait until they are Ready."""
        from perllm.scenario import load_scenario

        nodes = node_manifests(load_scenario(scenario))
        docs = yaml.safe_dump_all(nodes, sort_keys=False)
        # create (not apply): the status in the body is kept only on creation.
        r = self.kubectl("create", "-f", "-", input=docs, check=False)
        if r.returncode != 0 and "AlreadyExists" not in r.stderr:
            raise StartError(f"creating nodes failed: {r.stderr}")
        names = [n["metadata"]["name"] for n in nodes]
        t = self.config.ready_timeout_s
        r = self.kubectl(
            "wait",
            "--for=condition=Ready",
            f"--timeout={t:.0f}s",
            *(f"node/{n}" for n in names),
            check=False,
            timeout=t + 10,
        )
        if r.returncode != 0:
            kwok = next((p for p in self.procs if p.name == "kwok"), None)
            raise StartError(
                f"nodes not Ready: {r.stderr}\n" + (f"kwok log:\n{kwok.tail()}" if kwok else "")
            )
        return names

    # ---- stop ------------------------------------------------------------------------------
    def down(self) -> None:
        """Stop every recorded process by PID, newest first; drop the data, keep the logs."""
        state = self.state or State.load(self.run_dir)
        procs = self.procs or (state.procs() if state else [])
        if state is not None and state.external:
            self._delete_fake_nodes(state)
        for p in reversed(procs):
            p.stop()
        self.procs = []
        for sub in ("etcd", "prometheus"):
            shutil.rmtree(self.run_dir / sub, ignore_errors=True)
        (self.run_dir / STATE_FILE).unlink(missing_ok=True)
        self.state = None

    def _delete_fake_nodes(self, state: State) -> None:
        # On a borrowed cluster, leave no fake nodes behind (KWOK must still run to finish
        # the pods on them).
        subprocess.run(
            [
                state.kubectl,
                f"--kubeconfig={state.kubeconfig}",
                "delete",
                "nodes",
                "-l",
                "type=kwok",
                "--wait=false",
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )


def _write(path: Path, text: str) -> None:
    path.write_text(text)


def temporary_run_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="perllm-cluster-"))
