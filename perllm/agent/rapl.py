"""CPU package energy and power from the Linux powercap RAPL interface.

Each top-level zone `intel-rapl:N` whose `name` is `package-…` (AMD exposes the same tree)
counts energy in µJ in `energy_uj`, wrapping at `max_energy_range_uj`. The agent samples it
often enough to see every wrap (the range lasts minutes even at kW), accumulates joules
since the agent started (a Prometheus counter), and derives watts from the last two samples;
an interval no package could spend (MAX_PACKAGE_W) is a counter reset and counts nothing.
Sub-zones (core, uncore, dram) and `psys` are not packages and are skipped: never sum zones.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from perllm.agent.health import SourceHealth
from perllm.telemetry import names

DEFAULT_ROOT = Path("/sys/class/powercap")
_TOP_ZONE = re.compile(r"intel-rapl:(\d+)$")  # not intel-rapl:N:M (sub-zones), not -mmio
# No CPU package averages this over a sampling interval (the largest draw ~500 W): a delta
# implying more is a counter that was reset or jumped (driver reload, VM migration), which
# the wrap arithmetic would otherwise read as up to the whole range (~262 kJ) at once.
MAX_PACKAGE_W = 2000.0


@dataclass
class Zone:
    path: Path
    package: str  # `0` for `package-0`, `0-die-1` for `package-0-die-1`
    max_uj: int
    last_uj: int | None = None
    last_t: float | None = None
    joules: float = 0.0  # since the agent started
    watts: float | None = None  # over the last sampling interval
    error: str | None = None  # why its last read failed (None: it read)


def energy_delta_uj(prev: int, cur: int, max_uj: int) -> int:
    """µJ spent between two readings of a counter that wraps to 0 after `max_uj`."""
    d = cur - prev
    if d < 0 and max_uj > 0:
        d += max_uj
    return max(d, 0)  # a reading past the range (a reset) counts nothing, never negative


def _target_missing(d: Path) -> bool:
    """Whether `d` leads nowhere (a dangling symlink). Never raises: Path.exists raises
    PermissionError on a path the agent may not search, which is not a missing target."""
    try:
        os.stat(d)
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        return False
    return False


@dataclass
class RaplSource:
    node: str
    root: Path = DEFAULT_ROOT
    min_interval_s: float = 1.0  # shorter intervals make the watts noisy
    clock: Callable[[], float] = time.monotonic
    health: SourceHealth = field(default_factory=lambda: SourceHealth("rapl"))
    zones: list[Zone] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @staticmethod
    def _read_int(p: Path) -> int:
        return int(p.read_text().strip())

    def _zone_dirs(self) -> list[Path]:
        """Top-level zones: flat in /sys/class/powercap (symlinks), nested one level in
        /sys/devices/virtual/powercap/intel-rapl (what a pod mounts: the symlinks are relative
        and container runtimes mask /sys/devices/virtual/powercap inside the pod's /sys)."""
        for base in (self.root, self.root / "intel-rapl"):
            if base.is_dir():
                dirs = [d for d in base.iterdir() if _TOP_ZONE.match(d.name)]
                if dirs:
                    return dirs
        return []

    def start(self) -> None:
        with self._lock:
            self.zones = []
            try:
                is_dir = self.root.is_dir()
            except OSError as e:  # is_dir answers False for ENOENT and kin, raises EACCES
                self.health.down(f"--rapl-root {self.root}: {e}; CPU power absent")
                return
            if not is_dir:
                self.health.down(
                    f"{self.root} does not exist (no powercap/RAPL on this host, "
                    "or the hostPath is not mounted); CPU power absent"
                )
                return
            found: list[Zone] = []
            dangling = 0
            unreadable: list[str] = []
            try:
                dirs = self._zone_dirs()
            except OSError as e:
                self.health.down(f"listing {self.root} failed: {e}; CPU power absent")
                return
            for d in sorted(dirs, key=lambda p: p.name):
                try:
                    name = (d / "name").read_text().strip()
                except OSError as e:
                    if _target_missing(d):  # a symlink whose target is not mounted
                        dangling += 1
                    else:
                        unreadable.append(f"{d / 'name'}: {e.strerror or e}")
                        self.health.warn_once(f"{unreadable[-1]}; that zone skipped")
                    continue
                if not name.startswith("package-"):
                    continue  # psys and friends: not a CPU package
                try:
                    max_uj = self._read_int(d / "max_energy_range_uj")
                except (OSError, ValueError):
                    max_uj = 0  # a wrap then reads as a reset: one interval lost, no spike
                found.append(Zone(d, name.removeprefix("package-"), max_uj))
            if not found and dangling:
                self.health.down(
                    f"the zones under {self.root} are symlinks to an unmounted target: mount "
                    "the host's /sys/devices/virtual/powercap and point --rapl-root at it; "
                    "CPU power absent"
                )
                return
            if not found:
                why = f" ({'; '.join(unreadable)})" if unreadable else ""
                self.health.down(
                    f"no RAPL package zones (intel-rapl:N/name = package-N) "
                    f"under {self.root}{why}; CPU power absent"
                )
                return
            energy = found[0].path / "energy_uj"
            try:
                for z in found:
                    energy = z.path / "energy_uj"  # the one named if it fails
                    self._read_int(energy)
            except PermissionError:
                self.health.down(
                    f"{energy} is not readable: root-only since Linux 5.10 "
                    "(CVE-2020-8694); run the agent as root with the powercap hostPath mounted "
                    "read-only, or make energy_uj readable on the host; CPU power absent"
                )
                return
            except (OSError, ValueError) as e:
                self.health.down(f"reading {energy} failed: {e}")
                return
            self.zones = found
            self.health.ok(f"{len(found)} RAPL package zone(s) under {self.root}")
        self.sample(force=True)

    def sample(self, force: bool = False) -> None:
        """Read every package counter, at most once per `min_interval_s` unless forced."""
        with self._lock:
            now = self.clock()
            for z in self.zones:
                if not force and z.last_t is not None and now - z.last_t < self.min_interval_s:
                    continue
                try:
                    cur = self._read_int(z.path / "energy_uj")
                except (OSError, ValueError) as e:
                    # its watts and joules absent (families): exported, they stay frozen;
                    # the joules keep their count and resume from the last good reading
                    z.watts, z.error = None, f"reading {z.path / 'energy_uj'} failed: {e}"
                    self.health.warn_once(z.error)
                    continue
                if z.last_uj is not None and z.last_t is not None:
                    d_j = energy_delta_uj(z.last_uj, cur, z.max_uj) / 1e6
                    dt = now - z.last_t
                    # (over a second at least: the counter moves in ~1 ms steps, and a
                    # forced sample may follow another closely)
                    if d_j > MAX_PACKAGE_W * max(dt, 1.0):
                        # counted nothing: one interval lost, re-based on `cur`
                        z.watts = None
                        self.health.warn_once(  # (no numbers: said once, not per reset)
                            f"package {z.package}: energy_uj moved more than {MAX_PACKAGE_W:g} W "
                            "could spend (a counter reset or jump, not energy); such an "
                            "interval is not counted"
                        )
                    else:
                        z.joules += d_j
                        if dt > 0:
                            z.watts = d_j / dt
                z.last_uj, z.last_t, z.error = cur, now, None
            errors = [z.error for z in self.zones if z.error]
            if self.zones and len(errors) == len(self.zones):  # nothing left to export
                self.health.down(f"{errors[0]}; CPU power absent")
            elif self.zones:
                self.health.ok("RAPL reads again")

    def families(self) -> Iterable[Metric]:
        if not self.zones:
            return []
        self.sample()
        labels = [names.NODE, "package"]
        joules = CounterMetricFamily(
            names.CPU_ENERGY_J,
            "CPU package energy (RAPL) since the agent started, J.",
            labels=labels,
        )
        watts = GaugeMetricFamily(
            names.CPU_POWER_W,
            "CPU package power (RAPL) over the last sampling interval, W.",
            labels=labels,
        )
        with self._lock:
            for z in self.zones:
                if z.error is not None:
                    # frozen, its rate() would read 0 W; absent, the gap is unknown, and the
                    # energy spent meanwhile is counted at the next good read
                    continue
                joules.add_metric([self.node, z.package], z.joules)
                if z.watts is not None:
                    watts.add_metric([self.node, z.package], z.watts)
        return [f for f in (joules, watts) if f.samples]
