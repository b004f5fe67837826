"""Start and stop everything a demo run needs, in the documented order (docs/demo.md):

control plane with the scenario's KWOK nodes and Prometheus (scraping the twin and the
extender) → CRD and RBAC → the twin → the extender (perllm-scheduler already names it,
not ignorable: every PerLLM pod waits for a PerLLM decision) → the operator → the
LLMServices. `Stack.stop()` stops exactly what it started, newest first, by PID.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from perllm.crd import CRD_PATH, PLURAL
from perllm.demo.config import DemoConfig
from perllm.demo.rbac import Rbac, load_rbac
from perllm.demo.services import default_sources, load_services
from perllm.devcluster.binaries import Binaries
from perllm.devcluster.cluster import Cluster, ClusterConfig
from perllm.devcluster.config import Extender
from perllm.devcluster.kube import token_kubeconfig
from perllm.devcluster.process import Proc, StartError, free_ports, http_ok, start, wait_until
from perllm.scenario import load_scenario

# `python -c` with this interpreter rather than the console script, which may not be on
# PATH (a venv not activated).
PERLLM = [
    sys.executable,
    "-c",
    "import sys; sys.argv[0] = 'perllm'; from perllm.cli import app; app()",
]
# Operator settings for a time-compressed run (docs/operator.md, "Re-placement").
OPERATOR_DEMO_ENV = {
    "PERLLM_TELEMETRY_WINDOW": "60s",
    "PERLLM_REPLACEMENT_WINDOW": "10",
    "PERLLM_REPLACEMENT_COOLDOWN": "20",
}


def scenario_file(name: str) -> Path:
    """The scenario's file (the twin takes a file; the cluster takes either)."""
    p = Path(name)
    if p.is_file():
        return p.resolve()
    sc = load_scenario(name)  # raises ScenarioError naming the scenario
    builtin = Path(__file__).parents[1] / "scenarios" / f"{name}.yaml"
    if builtin.is_file():
        return builtin
    raise FileNotFoundError(f"scenario {sc.name}: no file found for {name!r}")


def demo_inputs(config: DemoConfig) -> tuple[Path, list[dict[str, Any]]]:
    """The scenario's file and the LLMServices to apply; a bad --scenario (ScenarioError)
    or --services (FileNotFoundError, ValueError) raises here, before anything starts."""
    return scenario_file(config.scenario), load_services(
        config.services or default_sources(config.scenario)
    )


@dataclass
class Endpoints:
    prometheus: str
    twin_port: int
    extender_port: int
    operator_health_port: int
    extender_metrics_port: int = 0  # plain HTTP: /healthz, /readyz, /metrics

    @property
    def extender(self) -> str:
        """The extender's probe and metrics side (its main port is HTTPS with client
        certificates, for perllm-scheduler only)."""
        return f"http://127.0.0.1:{self.extender_metrics_port}"

    @property
    def twin(self) -> str:
        return f"http://127.0.0.1:{self.twin_port}"


@dataclass
class Stack:
    config: DemoConfig
    console: Console
    binaries: Binaries
    scenario: Path  # its file (`demo_inputs`)
    services: list[dict[str, Any]]  # the LLMServices to apply (`demo_inputs`)
    cluster: Cluster | None = None
    procs: list[Proc] = field(default_factory=list)
    endpoints: Endpoints | None = None
    notes: list[str] = field(default_factory=list)  # degradations, shown in the view
    twin_running: bool = False

    # ---- helpers -----------------------------------------------------------------------
    @property
    def logs_dir(self) -> Path:
        return self.config.run_dir / "logs"

    def _say(self, msg: str) -> None:
        self.console.print(f"[cyan]demo[/cyan] {msg}", highlight=False)

    def _note(self, msg: str) -> None:
        self.notes.append(msg)
        self.console.print(f"[yellow]demo[/yellow] {msg}", highlight=False)

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        assert self.cluster is not None
        r = self.cluster.kubectl(*args, check=False, input=input, timeout=timeout)
        if check and r.returncode != 0:
            raise StartError(f"kubectl {' '.join(args)}: {r.stderr.strip()}")
        return r

    def _spawn(
        self,
        name: str,
        argv: list[str],
        kubeconfig: Path,
        ready: Callable[[], bool] | None,
        what: str,
        extra_env: dict[str, str] | None = None,
    ) -> Proc:
        env = dict(
            os.environ, KUBECONFIG=str(kubeconfig), PYTHONWARNINGS="ignore", PYTHONUNBUFFERED="1"
        )
        env.update(extra_env or {})
        p = start(name, argv, self.logs_dir / f"{name}.log", env=env, die_with_parent=True)
        self.procs.append(p)
        if ready is not None:
            wait_until(p, ready, self.config.ready_timeout_s, what)
        return p

    # ---- start -------------------------------------------------------------------------
    def start(self) -> None:
        c, scenario = self.config, self.scenario
        ports = free_ports(("twin", "extender", "extender_metrics", "operator_health"))
        run_dir = c.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(exist_ok=True)
        scrape: list[dict[str, Any]] = [
            {
                "job_name": "twin",
                "honor_labels": True,
                "static_configs": [{"targets": [f"127.0.0.1:{ports['twin']}"]}],
            },
            {
                "job_name": "perllm-extender",
                "static_configs": [{"targets": [f"127.0.0.1:{ports['extender_metrics']}"]}],
            },
        ]
        # https: the cluster makes the CA, the extender's and perllm-scheduler's certificates
        ext = Extender(url=f"https://127.0.0.1:{ports['extender']}/scheduler", ignorable=False)
        self._say(f"starting the local control plane with the nodes of {scenario.name} ...")
        t0 = time.monotonic()
        cluster = Cluster(
            ClusterConfig(
                run_dir=run_dir / "cluster",
                scenario=scenario,
                extender=ext,
                prometheus=True,
                scrape_configs=scrape,
                die_with_parent=True,
                ready_timeout_s=c.ready_timeout_s,
            ),
            binaries=self.binaries,
        )
        # Ours to stop only once it started: `up` stops what it started when it fails, and
        # when it refuses a run directory another cluster runs from (a demo on the same
        # --out), `down` here would stop that other cluster.
        cluster.up()
        self.cluster = cluster
        assert self.cluster.prometheus_url is not None
        self.endpoints = Endpoints(
            self.cluster.prometheus_url,
            ports["twin"],
            ports["extender"],
            ports["operator_health"],
            ports["extender_metrics"],
        )
        nodes = self.kubectl("get", "nodes", "-o", "name").stdout.split()
        self._say(
            f"cluster ready in {time.monotonic() - t0:.1f} s: {len(nodes)} KWOK nodes, "
            f"Prometheus {self.endpoints.prometheus}"
        )
        self._install_crd_and_rbac()
        kc_operator = self._kubeconfig_for("operator")
        kc_extender = self._kubeconfig_for("extender")
        self._start_twin(scenario)
        self._start_extender(kc_extender)
        self._start_operator(kc_operator)
        self._apply_services()

    def _install_crd_and_rbac(self) -> None:
        c = self.config
        self.kubectl("apply", "-f", str(CRD_PATH))
        self.kubectl(
            "wait",
            "--for=condition=Established",
            f"crd/{PLURAL}.perllm.io",
            "--timeout=60s",
            timeout=90,
        )
        for ns in (c.system_namespace, c.namespace):
            r = self.kubectl("create", "namespace", ns, check=False)
            if r.returncode != 0 and "AlreadyExists" not in r.stderr:
                raise StartError(f"namespace {ns}: {r.stderr.strip()}")
            # No ServiceAccount controller runs locally: create the `default` SA pods name.
            self.kubectl("create", "serviceaccount", "default", "-n", ns, check=False)
        self.rbac: Rbac = load_rbac(  # the operator runs with --namespace c.namespace
            self.binaries.helm if self.binaries.helm.exists() else None,
            c.system_namespace,
            [c.namespace],
        )
        if self.rbac.warning:
            self._note(f"{self.rbac.warning}; using {self.rbac.source} instead")
        if self.rbac.docs:
            docs = [d for d in self.rbac.docs if d["kind"] != "Namespace"]
            self.kubectl(
                "apply",
                "-f",
                "-",
                input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}),
            )
        self._say(f"CRD and RBAC installed (RBAC from {self.rbac.source})")

    def _kubeconfig_for(self, component: str) -> Path:
        """Its ServiceAccount's token only; the admin kubeconfig (with a note) if the RBAC
        has no account for it."""
        assert self.cluster is not None
        account = self.rbac.account(component)
        if account is None:
            self._note(
                f"no ServiceAccount for the {component} in {self.rbac.source}: "
                "it runs with the admin kubeconfig"
            )
            return self.cluster.kubeconfig
        ns, name = account
        token = self.kubectl(
            "create", "token", name, "-n", ns or self.config.system_namespace, "--duration=24h"
        ).stdout.strip()
        return token_kubeconfig(
            self.cluster.kubeconfig, token, name, self.config.run_dir / f"{component}.kubeconfig"
        )

    def _start_twin(self, scenario: Path) -> None:
        assert self.endpoints is not None and self.cluster is not None
        e = self.endpoints
        args = ["--scenario", str(scenario), "--port", str(e.twin_port)]
        args += ["--speed", f"{self.config.speed:g}"]
        self._say(f"starting the twin on :{e.twin_port} (speed x{self.config.speed:g}) ...")
        self._spawn(
            "twin",
            [*PERLLM, "twin", "--host", "127.0.0.1", *args],
            self.cluster.kubeconfig,
            lambda: http_ok(f"{e.twin}/metrics"),
            "/metrics",
        )
        self.twin_running = True

    def _start_extender(self, kubeconfig: Path) -> None:
        assert self.endpoints is not None
        e, c = self.endpoints, self.config
        args = ["--prometheus", e.prometheus, "--state-namespace", c.system_namespace]
        args += ["--learn-interval", f"{c.learn_interval_s:g}"]
        assert self.cluster is not None
        args += [*self.cluster.extender_tls().extender_args(), "--metrics-port"]
        args += [str(e.extender_metrics_port)]
        self._say(f"starting the extender on :{e.extender_port} ...")
        self._spawn(
            "extender",
            [*PERLLM, "extender", "--host", "127.0.0.1", "--port", str(e.extender_port), *args],
            kubeconfig,
            lambda: http_ok(f"{e.extender}/healthz"),
            "/healthz",
        )

    def _start_operator(self, kubeconfig: Path) -> None:
        assert self.endpoints is not None
        e, c = self.endpoints, self.config
        args = ["--prometheus", e.prometheus, "--status-interval", f"{c.status_interval_s:g}"]
        health = f"http://127.0.0.1:{e.operator_health_port}/healthz"
        self._say("starting the operator ...")
        self._spawn(
            "operator",
            [*PERLLM, "operator", "--namespace", c.namespace, "--liveness", health, *args],
            kubeconfig,
            lambda: http_ok(health),
            "liveness /healthz",
            # The demo compresses time: rates over a minute and re-placement after ~10 s
            # below target, so a bad placement is corrected within the run (docs/operator.md).
            extra_env=OPERATOR_DEMO_ENV,
        )

    def _apply_services(self) -> None:
        c = self.config
        self.kubectl(
            "apply",
            "-n",
            c.namespace,
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": self.services}),
        )
        names = ", ".join(s["metadata"]["name"] for s in self.services)
        self._say(f"applied {len(self.services)} LLMServices in {c.namespace}: {names}")

    # ---- while running -----------------------------------------------------------------
    def dead(self) -> list[Proc]:
        procs = list(self.procs) + (list(self.cluster.procs) if self.cluster else [])
        return [p for p in procs if not p.alive()]

    # ---- stop --------------------------------------------------------------------------
    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.procs = []
        if self.cluster is not None:
            self.cluster.down()
            self.cluster = None
