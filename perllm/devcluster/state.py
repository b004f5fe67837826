"""`State`: what `Cluster.up` records in the run directory (PIDs, ports, kubeconfig), so a
later `down` from another process finds and stops exactly these processes."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from perllm.devcluster.process import Proc

STATE_FILE = "state.json"


@dataclass
class State:
    run_dir: str
    kubeconfig: str
    kubectl: str
    api_server: str
    external: bool
    processes: list[dict[str, Any]]
    ports: dict[str, int]
    viewer_kubeconfig: str | None = None
    extender: dict[str, Any] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)

    def procs(self) -> list[Proc]:
        return [
            Proc(name=p["name"], pid=p["pid"], log=Path(p["log"]), argv0=p["argv0"])
            for p in self.processes
        ]

    def save(self, run_dir: Path) -> None:
        tmp = run_dir / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2, default=str))
        tmp.replace(run_dir / STATE_FILE)

    @classmethod
    def load(cls, run_dir: Path) -> State | None:
        try:
            return cls(**json.loads((run_dir / STATE_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return None
