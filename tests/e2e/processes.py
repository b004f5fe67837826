"""A component the e2e tests run as a subprocess (operator, extender), its output in a log."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from perllm.devcluster.process import sigterm_with_parent, terminate

ROOT = Path(__file__).parents[2]


class LoggedProcess:
    tail_lines = 80  # what `tail()` shows by default

    def __init__(self, log: Path) -> None:
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self, argv: list[str], env: dict[str, str]) -> None:
        with self.log.open("ab") as out:
            # SIGTERMed if pytest dies (a CI timeout's kill): no operator or extender is
            # left running after it, as for the control plane's components.
            self.proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=sigterm_with_parent,
            )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            terminate(self.proc, timeout=20)
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, n: int | None = None) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        n = self.tail_lines if n is None else n
        return "\n".join(line for line in lines[-n:] if "InsecureRequestWarning" not in line)
