"""Spawning the local control plane's components: each one's config file and command line
(`argv`), its log in the run directory, and its PID recorded in the `State` at once."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from perllm.devcluster import argv, certs
from perllm.devcluster import config as cfg
from perllm.devcluster.binaries import Binaries
from perllm.devcluster.nodes import KWOK_SELECTOR
from perllm.devcluster.process import Proc, free_port, http_ok, start, wait_until
from perllm.devcluster.state import State

DEFAULT_SCENARIO = "paper-llama2-7b"


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


class Launcher:
    """Starts and records the processes of one control plane (`Cluster` orchestrates them)."""

    def __init__(self, config: ClusterConfig | None = None, binaries: Binaries | None = None):
        self.config = config or ClusterConfig()
        # absolute: the state, kubeconfigs and configs record paths under it
        self.run_dir = self.config.run_dir.absolute()
        self._bin = binaries
        self.procs: list[Proc] = []
        self.state: State | None = None

    @property
    def bin(self) -> Binaries:
        if self._bin is None:
            self._bin = Binaries.locate()
        return self._bin

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
        write_file(
            conf,
            cfg.scheduler_config(
                kubeconfig, scheduler_name, extender, client_qps, percentage_of_nodes_to_score
            ),
        )
        cert_dir = self.run_dir / "pki" / name
        return self._spawn(name, argv.scheduler(self.bin.kube_scheduler, conf, port, cert_dir))

    def extender_tls(self) -> certs.TlsFiles:
        """The extender's CA, server and client certificates (made on first use, kept for the
        cluster's life under pki/extender-tls): run `perllm extender` with
        `*files.extender_args()` to serve what an `https://` Extender URL calls."""
        files = certs.TlsFiles.under(self.run_dir / "pki" / "extender-tls")
        return files if files.exist() else certs.generate(files.ca.parent)

    def _start_kwok(self, kubeconfig: Path, port: int, lease_seconds: int) -> Proc:
        stages = self.run_dir / "kwok-stages.yaml"
        write_file(stages, cfg.KWOK_STAGES)
        return self._spawn(
            "kwok",
            argv.kwok(self.bin.kwok, kubeconfig, stages, KWOK_SELECTOR, port, lease_seconds),
        )

    def _start_prometheus(self, scrape_configs: list[dict[str, Any]] | None = None) -> None:
        assert self.state is not None and self.bin.prometheus is not None
        port = free_port()
        self.state.ports["prometheus"] = port
        conf = self.run_dir / "prometheus.yml"
        write_file(conf, cfg.prometheus_config(scrape_configs or self.config.scrape_configs, port))
        p = self._spawn(
            "prometheus",
            argv.prometheus(self.bin.prometheus, conf, self.run_dir / "prometheus", port),
        )
        wait_until(
            p,
            lambda: http_ok(f"http://127.0.0.1:{port}/-/ready"),
            self.config.ready_timeout_s,
            "/-/ready",
        )


def write_file(path: Path, text: str) -> None:
    """Write a config file of the run directory."""
    path.write_text(text)
