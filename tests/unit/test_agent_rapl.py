"""Node agent, CPU source: RAPL package energy and power from a fake powercap tree."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from perllm.agent import Agent, AgentConfig
from perllm.agent.rapl import RaplSource, energy_delta_uj
from perllm.telemetry import names

MAX = 262_143_328_850  # a real max_energy_range_uj


def zone(root: Path, d: str, name: str, uj: int, max_uj: int = MAX) -> Path:
    p = root / d
    p.mkdir(parents=True)
    (p / "name").write_text(name + "\n")
    (p / "energy_uj").write_text(f"{uj}\n")
    (p / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return p


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "powercap"
    zone(root, "intel-rapl:0", "package-0", 1_000_000)
    zone(root, "intel-rapl:0:0", "core", 7)  # sub-zone: never counted
    zone(root, "intel-rapl:1", "package-1", 5_000_000)
    zone(root, "intel-rapl:2", "psys", 9)  # platform, not a package
    zone(root, "intel-rapl-mmio:0", "package-0", 3)  # the MMIO twin of package 0
    return root


def set_uj(root: Path, d: str, uj: int) -> None:
    (root / d / "energy_uj").write_text(f"{uj}\n")


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_packages_joules_and_watts(tree: Path) -> None:
    clock = Clock()
    src = RaplSource("edge-1", root=tree, clock=clock)
    src.start()
    assert src.health.up
    assert [z.package for z in src.zones] == ["0", "1"]
    clock.t += 2.0
    set_uj(tree, "intel-rapl:0", 1_000_000 + 90_000_000)  # 90 J in 2 s
    set_uj(tree, "intel-rapl:1", 5_000_000 + 20_000_000)  # 20 J in 2 s
    src.sample()
    z0, z1 = src.zones
    assert z0.joules == pytest.approx(90.0) and z0.watts == pytest.approx(45.0)
    assert z1.joules == pytest.approx(20.0) and z1.watts == pytest.approx(10.0)
    clock.t += 0.5  # under min_interval_s: no new sample, values kept
    set_uj(tree, "intel-rapl:0", 1)
    src.sample()
    assert z0.joules == pytest.approx(90.0)


def test_wraparound(tree: Path) -> None:
    clock = Clock()
    max_uj = 1_000_000_000
    root = tree.parent / "wrap"
    zone(root, "intel-rapl:0", "package-0", max_uj - 3_000_000, max_uj=max_uj)
    src = RaplSource("n", root=root, clock=clock)
    src.start()
    clock.t += 1.0
    set_uj(root, "intel-rapl:0", 2_000_000)  # wrapped: 3 J to the top, 2 J after
    src.sample()
    z = src.zones[0]
    assert z.joules == pytest.approx(5.0) and z.watts == pytest.approx(5.0)
    assert energy_delta_uj(10, 4, max_uj=0) == 0  # unknown range: a reset counts nothing
    assert energy_delta_uj(10, 25, max_uj=100) == 15


def test_exposition(tree: Path) -> None:
    agent = Agent(AgentConfig(node="edge-1", rapl_root=tree, nvml=False))
    agent.rapl.min_interval_s = 0.0
    agent.rapl.start()
    set_uj(tree, "intel-rapl:0", 1_000_000 + 4_000_000)
    text = agent.render().decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    joules = fams[names.CPU_ENERGY_J.removesuffix("_total")]
    assert joules.type == "counter"
    assert {s.labels["package"]: s.value for s in joules.samples}["0"] == pytest.approx(4.0)
    assert all(
        s.labels["node"] == "edge-1" and s.name == names.CPU_ENERGY_J for s in joules.samples
    )
    watts = fams[names.CPU_POWER_W]
    assert {s.labels["package"] for s in watts.samples} == {"0", "1"}
    assert all(s.value >= 0 for s in watts.samples)
    up = {s.labels["source"]: s.value for s in fams["perllm_agent_source_up"].samples}
    assert up == {"nvml": 0.0, "rapl": 1.0, "probe": 0.0}


def test_absent_tree_is_absent_metrics_and_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    agent = Agent(AgentConfig(node="n", rapl_root=tmp_path / "nope", nvml=False))
    with caplog.at_level(logging.WARNING, logger="perllm.agent"):
        agent.rapl.start()
        texts = [agent.render().decode() for _ in range(3)]
    assert "perllm_node_cpu" not in texts[-1]
    assert 'perllm_agent_source_up{node="n",source="rapl"} 0.0' in texts[-1]
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("rapl")]
    assert len(said) == 1 and "does not exist" in said[0]


def test_devices_layout_and_dangling_class_symlinks(tmp_path: Path) -> None:
    # what a pod mounts: /sys/devices/virtual/powercap, zones nested under intel-rapl/
    dev = tmp_path / "devices-powercap"
    pkg = zone(dev / "intel-rapl", "intel-rapl:0", "package-0", 10)
    zone(pkg, "intel-rapl:0:0", "core", 1)
    zone(dev, "intel-rapl-mmio/intel-rapl-mmio:0", "package-0", 1)
    src = RaplSource("n", root=dev)
    src.start()
    assert src.health.up and [z.package for z in src.zones] == ["0"]
    # /sys/class/powercap mounted alone: relative symlinks into an unmounted tree
    cls = tmp_path / "class-powercap"
    cls.mkdir()
    (cls / "intel-rapl:0").symlink_to("../../devices/virtual/powercap/intel-rapl/intel-rapl:0")
    src = RaplSource("n", root=cls)
    src.start()
    assert not src.health.up and "/sys/devices/virtual/powercap" in (src.health.reason or "")


def test_no_package_zone(tmp_path: Path) -> None:
    zone(tmp_path, "intel-rapl:0", "psys", 1)
    src = RaplSource("n", root=tmp_path)
    src.start()
    assert not src.health.up and "no RAPL package zones" in (src.health.reason or "")
    assert list(src.families()) == []


def test_unreadable_energy_says_why(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = Path.read_text

    def deny(self: Path, *a: object, **k: object) -> str:
        if self.name == "energy_uj":  # root-only since Linux 5.10
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_text", deny)
    src = RaplSource("n", root=tree)
    src.start()
    assert not src.health.up
    assert "not readable" in (src.health.reason or "") and "CVE-2020-8694" in (
        src.health.reason or ""
    )
    assert list(src.families()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_energy_by_mode(tree: Path) -> None:
    (tree / "intel-rapl:0" / "energy_uj").chmod(0o000)
    src = RaplSource("n", root=tree)
    src.start()
    assert not src.health.up


def test_unlistable_root_is_reported_not_raised(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def deny(self: Path) -> object:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "iterdir", deny)
    src = RaplSource("n", root=tree)
    src.start()
    assert not src.health.up and "listing" in (src.health.reason or "")


def test_energy_unreadable_mid_run_drops_the_watts_and_says_so(tree: Path) -> None:
    """A counter that stops reading (hostPath remounted, zone gone) must not leave its last
    watts exported for ever under source_up 1."""
    clock = Clock()
    src = RaplSource("n", root=tree, clock=clock)
    src.start()
    clock.t += 2.0
    set_uj(tree, "intel-rapl:0", 1_000_000 + 90_000_000)
    set_uj(tree, "intel-rapl:1", 5_000_000 + 20_000_000)
    src.sample()
    assert [z.watts for z in src.zones] == [pytest.approx(45.0), pytest.approx(10.0)]
    (tree / "intel-rapl:0" / "energy_uj").write_text("garbage\n")  # one zone unreadable
    clock.t += 2.0
    src.sample()
    z0, z1 = src.zones
    assert z0.watts is None and z1.watts == pytest.approx(0.0)
    assert src.health.up  # the other package still reads
    clock.t += 0.5  # package 1 not due yet, package 0 retried and failing again: still up
    src.sample()
    assert src.health.up and z1.watts == pytest.approx(0.0)
    (tree / "intel-rapl:1" / "energy_uj").write_text("\n")  # now every zone
    clock.t += 2.0
    src.sample()
    fams = {f.name: f for f in src.families()}
    assert names.CPU_POWER_W not in fams
    assert not src.health.up and "energy_uj" in (src.health.reason or "")
    set_uj(tree, "intel-rapl:0", 1_000_000 + 90_000_000 + 8_000_000)  # readable again
    set_uj(tree, "intel-rapl:1", 5_000_000 + 20_000_000)
    clock.t += 2.0
    src.sample()
    assert src.health.up
    assert z0.watts == pytest.approx(8.0 / 6.5)  # 8 J since its last good read, 6.5 s ago
    assert z0.joules == pytest.approx(98.0)


def test_a_root_that_cannot_be_searched_is_reported_not_raised(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Path.is_dir raises PermissionError (only ENOENT and kin read as False): a --rapl-root
    below a directory the agent may not search raised out of Agent.start, and the CLI said
    "cannot listen on 0.0.0.0:9401: Permission denied", naming the wrong thing."""
    real = Path.stat

    def deny(self: Path, *a: object, **k: object) -> os.stat_result:
        if self == tree:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "stat", deny)
    src = RaplSource("n", root=tree)
    src.start()
    assert not src.health.up and "--rapl-root" in (src.health.reason or "")
    assert "Permission denied" in (src.health.reason or "")
    assert list(src.families()) == []


def test_the_unreadable_zone_is_the_one_named(tree: Path) -> None:
    """The reason named the first package's energy_uj whichever package failed to read."""
    (tree / "intel-rapl:1" / "energy_uj").write_text("garbage\n")
    src = RaplSource("n", root=tree)
    src.start()
    assert "intel-rapl:1/energy_uj" in (src.health.reason or "")


def test_a_zone_the_agent_cannot_enter_is_skipped_said_not_raised(
    tree: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A zone whose `name` is unreadable was checked for a dangling symlink with
    Path.exists, which raises PermissionError where the path cannot be searched: out of
    RaplSource.start and Agent.start. (os.stat patched: root searches any mode.)"""
    zone1 = tree / "intel-rapl:1"
    real_stat, real_read = os.stat, Path.read_text

    def stat(p: object, *a: object, **k: object) -> os.stat_result:
        if Path(str(p)) == zone1 or zone1 in Path(str(p)).parents:
            raise PermissionError(13, "Permission denied", str(p))
        return real_stat(p, *a, **k)  # type: ignore[arg-type]

    def read_text(self: Path, *a: object, **k: object) -> str:
        if zone1 in self.parents:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read(self)

    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(Path, "read_text", read_text)
    src = RaplSource("n", root=tree)
    with caplog.at_level(logging.WARNING, logger="perllm.agent"):
        src.start()
    assert src.health.up and [z.package for z in src.zones] == ["0"]
    assert any("intel-rapl:1/name" in r.getMessage() for r in caplog.records)
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: stat(zone1))
    alone = RaplSource("n", root=tree)  # no zone readable: down, saying why, not "unmounted"
    alone.start()
    assert not alone.health.up and "Permission denied" in (alone.health.reason or "")
    assert "unmounted" not in (alone.health.reason or "")


def test_a_counter_reset_is_not_counted_as_a_wrap(
    tree: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """energy_uj going back mid-range (a reset) was read as a wrap: the rest of the range
    (~157 kJ here) added at once, 31 kW for one package over 5 s."""
    clock = Clock()
    root = tree.parent / "reset"
    zone(root, "intel-rapl:0", "package-0", int(MAX * 0.4))
    src = RaplSource("n", root=root, clock=clock)
    src.start()
    z = src.zones[0]
    clock.t += 5.0
    set_uj(root, "intel-rapl:0", 1_000_000)  # reset: back to ~0
    with caplog.at_level(logging.WARNING, logger="perllm.agent"):
        src.sample()
    assert z.joules == 0.0 and z.watts is None  # one interval lost, never a spike
    assert "counter reset" in caplog.text
    clock.t += 5.0
    set_uj(root, "intel-rapl:0", 1_000_000 + 500_000_000)  # 500 J in 5 s, from the new base
    src.sample()
    assert z.joules == pytest.approx(500.0) and z.watts == pytest.approx(100.0)
    assert src.health.up
    # a real wrap at a plausible power still counts (test_wraparound: 5 J in 1 s)


def test_an_unreadable_package_has_no_joules_either(tree: Path) -> None:
    """Its joules counter stayed exported, frozen, while energy_uj did not read (also under
    source_up 0): rate() over it read 0 W for a package that was drawing power. It is absent
    until the counter reads again, then resumes with the energy spent meanwhile."""
    clock = Clock()
    src = RaplSource("n", root=tree, clock=clock)
    src.start()
    clock.t += 2.0
    set_uj(tree, "intel-rapl:0", 1_000_000 + 4_000_000)
    src.sample()

    def joules() -> dict[str, float]:
        return {
            s.labels["package"]: s.value
            for f in src.families()
            if f.name == names.CPU_ENERGY_J.removesuffix("_total")
            for s in f.samples
            if s.name == names.CPU_ENERGY_J
        }

    assert joules() == {"0": pytest.approx(4.0), "1": 0.0}
    (tree / "intel-rapl:0" / "energy_uj").write_text("garbage\n")
    clock.t += 2.0
    assert joules() == {"1": 0.0}  # not 4.0 for ever
    (tree / "intel-rapl:1" / "energy_uj").write_text("\n")
    clock.t += 2.0
    assert joules() == {} and not src.health.up
    set_uj(tree, "intel-rapl:0", 1_000_000 + 10_000_000)
    clock.t += 2.0
    assert joules() == {"0": pytest.approx(10.0)}  # 6 J spent while it did not read
