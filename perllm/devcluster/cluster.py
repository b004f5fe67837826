"""Start, find and stop the local control plane; its state lives in a run directory.

`up` writes `state.json` (PIDs, ports, kubeconfig) into the run directory so that a later
`down` from another process finds and stops exactly these processes, by PID.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from perllm.devcluster import argv, certs
from perllm.devcluster import config as cfg
from perllm.devcluster.launch import DEFAULT_SCENARIO as DEFAULT_SCENARIO  # re-exported
from perllm.devcluster.launch import ClusterConfig as ClusterConfig  # re-exported
from perllm.devcluster.launch import Launcher, write_file
from perllm.devcluster.launch import default_run_dir as default_run_dir  # re-exported
from perllm.devcluster.nodes import node_manifests, wait_ready
from perllm.devcluster.process import StartError, free_ports, http_ok, wait_until
from perllm.devcluster.state import STATE_FILE, starting
from perllm.devcluster.state import State as State  # re-exported (cli, tests)


class Cluster(Launcher):
    """One local control plane. Use `up()`/`down()`, or as a context manager."""

    # ---- discovery -------------------------------------------------------------------------
    @classmethod
    def find(cls, run_dir: Path | None = None) -> Cluster | None:
        """The cluster recorded in `run_dir` if its `up` finished and all its processes
        still run, else None (one still starting is not found yet)."""
        rd = run_dir or default_run_dir()
        state = State.load(rd)
        if state is None or not state.ready or not state.processes:
            return None
        if not all(p.alive() for p in state.procs()):
            return None
        c = cls(ClusterConfig(run_dir=rd))
        c.state, c.procs = state, state.procs()
        return c

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
        with starting(self.run_dir):
            return self._up()

    def _up(self) -> State:
        c, rd = self.config, self.run_dir
        if Cluster.find(rd) is not None:
            raise StartError(f"a cluster already runs from {rd}: stop it first (cluster down)")
        if c.scenario is not None:
            from perllm.scenario import load_scenario

            load_scenario(c.scenario)  # a bad one (ScenarioError) before anything starts
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
            self.state.ready = True
            self.state.save(rd)
        except BaseException:
            self.down()
            raise
        return self.state

    def _fresh_run_dir(self) -> None:  # (under `starting`'s lock)
        rd = self.run_dir
        rd.mkdir(parents=True, exist_ok=True)
        for sub in ("etcd", "pki", "prometheus", "logs"):
            shutil.rmtree(rd / sub, ignore_errors=True)
        (rd / "logs").mkdir()
        (rd / STATE_FILE).unlink(missing_ok=True)

    def _start_control_plane(self) -> State:
        rd, b = self.run_dir, self.bin
        self.state = self._control_plane_state()
        ports, server, kubeconfig = self.state.ports, self.state.api_server, rd / "kubeconfig"
        t = self.config.ready_timeout_s

        etcd_url = f"http://127.0.0.1:{ports['etcd']}"
        etcd = self._spawn(
            "etcd", argv.etcd(b.etcd, rd / "etcd", ports["etcd"], ports["etcd_peer"])
        )
        wait_until(etcd, lambda: http_ok(f"{etcd_url}/health"), t, "etcd /health")
        api = self._spawn(
            "kube-apiserver",
            argv.apiserver(b.kube_apiserver, etcd_url, ports["apiserver"], rd, rd / "pki/sa.key"),
        )
        wait_until(api, lambda: http_ok(f"{server}/readyz"), t, "apiserver /readyz")

        kcm = self._spawn(
            "kube-controller-manager",
            argv.controller_manager(
                b.kube_controller_manager, kubeconfig, ports["controller_manager"]
            ),
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

    def _control_plane_state(self) -> State:
        """Ports, tokens, the service-account key and the kubeconfigs of a new control
        plane, recorded (and saved) as its `State`."""
        rd = self.run_dir
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
        certs.rsa_key(rd / "pki" / "sa.key")
        ca = certs.apiserver_tls(rd / "pki").ca.read_bytes()
        server = f"https://127.0.0.1:{ports['apiserver']}"
        kubeconfig = rd / "kubeconfig"
        write_file(kubeconfig, cfg.kubeconfig(server, tokens.admin, ca))
        write_file(
            rd / "scheduler.kubeconfig",
            cfg.kubeconfig(server, tokens.scheduler, ca, cfg.SCHEDULER_USER),
        )
        write_file(
            rd / "viewer.kubeconfig", cfg.kubeconfig(server, tokens.viewer, ca, cfg.VIEWER_USER)
        )
        state = State(
            run_dir=str(rd),
            kubeconfig=str(kubeconfig),
            kubectl=str(self.bin.kubectl),
            api_server=server,
            external=False,
            processes=[],
            ports=ports,
            viewer_kubeconfig=str(rd / "viewer.kubeconfig"),
            extender=asdict(self.config.extender),
            ready=False,
        )
        state.save(rd)
        return state

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
            ready=False,
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
        write_file(self.run_dir / "prometheus.yml", cfg.prometheus_config(scrape_configs, port))
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
        names = [n["metadata"]["name"] for n in nodes]
        t = self.config.ready_timeout_s
        try:
            # create (not apply): the status in the body is kept only on creation.
            r = self.kubectl("create", "-f", "-", input=docs, check=False, timeout=t)
            if r.returncode != 0 and "AlreadyExists" not in r.stderr:
                raise StartError(f"creating nodes failed: {r.stderr}")
            kwok = next((p for p in self.procs if p.name == "kwok"), None)
            wait_ready(self.kubectl, names, t, kwok)
        except subprocess.TimeoutExpired as e:
            raise StartError(
                f"creating the {len(names)} nodes: kubectl {e.cmd[2]} did not return "
                f"in {e.timeout:.0f}s"
            ) from None
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


def temporary_run_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="perllm-cluster-"))
