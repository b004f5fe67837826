"""The agent: three sources behind one Prometheus registry and one HTTP server."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from perllm.agent import metrics
from perllm.agent.nvml import NvmlSource
from perllm.agent.probe import DEFAULT_BYTES, Prober, parse_peer
from perllm.agent.rapl import DEFAULT_ROOT, RaplSource
from perllm.agent.server import AgentHTTPServer
from perllm.telemetry import names

log = logging.getLogger("perllm.agent")

RAPL_SAMPLE_S = 5.0  # background sampling: sees every energy_uj wrap without scrapes


@dataclass
class AgentConfig:
    node: str
    host: str = "0.0.0.0"
    port: int = 9401
    peers: list[str] = field(default_factory=list)  # URL or NAME=URL
    probe_interval_s: float = 300.0
    probe_bytes: int = DEFAULT_BYTES
    probe_timeout_s: float = 30.0
    rapl_root: Path = DEFAULT_ROOT
    nvml: bool = True  # False: do not touch NVML at all (source reported down)


class _Collector:
    """Reads every source at scrape time (each bounded and cached on its own)."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        a = self.agent
        for src in (a.nvml, a.rapl, a.prober):
            fams: Iterable[Metric] = []
            try:
                fams = src.families()
            except Exception:  # one broken source must not take /metrics down
                log.exception("collecting %s failed", src.health.source)
            yield from fams
        up = GaugeMetricFamily(
            metrics.SOURCE_UP,
            "1 when the source produces metrics (nvml, rapl, probe).",
            labels=[names.NODE, "source"],
        )
        for src in (a.nvml, a.rapl, a.prober):
            up.add_metric([a.cfg.node, src.health.source], 1.0 if src.health.up else 0.0)
        yield up


class Agent:
    def __init__(self, cfg: AgentConfig, *, nvml_module: Any = None) -> None:
        if not cfg.node:
            raise ValueError("--node: the Kubernetes node name is required (or NODE_NAME)")
        self.cfg = cfg
        self.nvml = NvmlSource(cfg.node, nvml=nvml_module)
        if not cfg.nvml:
            self.nvml.disable("disabled by configuration (--no-nvml)")
        self.rapl = RaplSource(cfg.node, root=cfg.rapl_root)
        self.prober = Prober(
            cfg.node,
            [parse_peer(p) for p in cfg.peers],
            interval_s=cfg.probe_interval_s,
            nbytes=cfg.probe_bytes,
            timeout_s=cfg.probe_timeout_s,
        )
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server: AgentHTTPServer | None = None

    def render(self) -> bytes:
        return metrics.exposition(self.registry)

    @property
    def url(self) -> str:
        assert self._server is not None, "agent not started"
        host, port = self._server.server_address[:2]
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else str(host)
        return f"http://{shown}:{port}"

    def start(self) -> None:
        """Bind, open the sources, start the server and the background loops."""
        self._server = AgentHTTPServer((self.cfg.host, self.cfg.port), self.render)
        self._spawn("http", self._server.serve_forever)
        if self.cfg.nvml:
            self.nvml.start()
        self.rapl.start()
        self._spawn("rapl", self._rapl_loop)
        if self.prober.peers:
            self._spawn("probe", lambda: self.prober.run(self._stop))
        log.info(
            "perllm agent for node %s on %s (peers: %s)",
            self.cfg.node,
            self.url,
            ", ".join(p.name for p in self.prober.peers) or "none",
        )

    def _spawn(self, name: str, target: Any) -> None:
        t = threading.Thread(target=target, name=f"agent-{name}", daemon=True)
        t.start()
        self._threads.append(t)

    def _rapl_loop(self) -> None:
        while not self._stop.wait(RAPL_SAMPLE_S):
            self.rapl.sample()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop serving and sampling; an in-flight probe is abandoned (daemon thread)."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()  # returns once serve_forever has returned
            self._server.server_close()
            self._server = None
        for t in self._threads:
            t.join(timeout_s)
        self.nvml.stop()
        log.info("perllm agent stopped")
