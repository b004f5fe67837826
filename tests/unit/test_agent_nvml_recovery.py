"""Node agent, GPU source: NVML lost for every GPU (driver reload, GPU reset, driver upgrade)
is re-opened with a bounded backoff, relabelled from the new enumeration, said once per
transition; a host without the NVML library is retried only at the slowest pace."""

from __future__ import annotations

import logging
import types
from collections import Counter
from typing import Any

import pytest
from test_agent_nvml import A100, P4, FakeNVMLError  # tests/unit is on sys.path

from perllm.agent.nvml import NvmlSource
from perllm.telemetry import names

P4E = dict(P4, mj=1)  # every field read: the lines logged are only the transitions


class FakeDriver:
    """NVML as a driver reload shows it. nvmlInit is reference counted: only the first init
    (count 0 -> 1) attaches to the driver and enumerates; another on top attaches nothing.
    Once the driver goes, every call on the attached state fails (Uninitialized), also after
    the driver is back, until every init is undone by nvmlShutdown and NVML opened afresh."""

    def __init__(self, gpus: list[dict[str, Any]], driver: str = "550.54.15") -> None:
        self.gpus, self.driver = list(gpus), driver
        self.loaded, self.refs, self.gen, self.stale = True, 0, 0, False
        self.seen: list[dict[str, Any]] = []  # the GPUs of the current attach
        self.calls: Counter[str] = Counter()

    def unload(self) -> None:
        self.loaded, self.stale = False, True

    def load(self, gpus: list[dict[str, Any]] | None = None, driver: str | None = None) -> None:
        self.loaded = True
        if gpus is not None:
            self.gpus = list(gpus)
        if driver is not None:
            self.driver = driver

    def _live(self) -> None:
        if not self.loaded or self.stale or self.refs == 0:
            raise FakeNVMLError("Uninitialized")

    def init(self) -> None:
        self.calls["init"] += 1
        if self.refs == 0:
            if not self.loaded:
                raise FakeNVMLError("Driver Not Loaded")
            self.gen, self.stale, self.seen = self.gen + 1, False, list(self.gpus)
        self.refs += 1

    def shutdown(self) -> None:
        self.calls["shutdown"] += 1
        if self.refs == 0:
            raise FakeNVMLError("Uninitialized")
        self.refs -= 1

    def handle(self, i: int) -> tuple[int, int]:
        self._live()
        return (self.gen, i)

    def get(self, key: str) -> Any:
        def fn(h: tuple[int, int]) -> Any:
            self._live()
            if h[0] != self.gen:
                raise FakeNVMLError("Uninitialized")
            return self.seen[h[1]][key]

        return fn

    def module(self) -> types.SimpleNamespace:
        def count() -> int:
            self._live()
            return len(self.seen)

        def version() -> str:
            self._live()
            return self.driver

        return types.SimpleNamespace(
            nvmlInit=self.init,
            nvmlShutdown=self.shutdown,
            nvmlDeviceGetCount=count,
            nvmlSystemGetDriverVersion=version,
            nvmlDeviceGetHandleByIndex=self.handle,
            nvmlDeviceGetName=self.get("name"),
            nvmlDeviceGetUUID=self.get("uuid"),
            nvmlDeviceGetMinorNumber=self.get("minor"),
            nvmlDeviceGetPciInfo=lambda h: types.SimpleNamespace(busId=self.get("bus")(h)),
            nvmlDeviceGetPowerUsage=self.get("mw"),
            nvmlDeviceGetTotalEnergyConsumption=self.get("mj"),
            nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=self.get("util")(h)),
            nvmlDeviceGetMemoryInfo=lambda h, version=None: self.get("mem")(h),
        )


def power(src: NvmlSource) -> dict[tuple[str, str], float]:
    """{(gpu, UUID): W} of one scrape."""
    return {
        (s.labels["gpu"], s.labels["UUID"]): s.value
        for f in src.families()
        if f.name == names.DCGM_POWER_W
        for s in f.samples
    }


def nvml_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("nvml")]


def test_every_gpu_lost_reopens_nvml_with_backoff_and_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A driver reload took the source down for good: NVML was never re-opened, and the
    handles of the old attach answer Uninitialized also once the driver is back."""
    now = [0.0]
    drv = FakeDriver([A100, P4E])
    src = NvmlSource("n", nvml=drv.module(), clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="perllm.agent"):
        src.start()
        assert power(src) == {("0", "GPU-aaaa"): 61.482, ("1", "GPU-bbbb"): 25.0}
        caplog.clear()
        drv.unload()
        inits = drv.calls["init"]
        for t in (2.0, 3.0, 4.0, 6.9):  # lost at 2: re-opened 5 s later, not before
            now[0] = t
            assert power(src) == {} and not src.health.up
        assert drv.calls["init"] == inits
        now[0] = 7.0  # shut down (undoing the old init), opened again: the driver is away
        assert power(src) == {} and drv.calls["init"] == inits + 1
        assert drv.calls["shutdown"] == 1 and drv.refs == 0
        for t in (8.0, 12.0, 16.9):  # then 10 s later
            now[0] = t
            assert power(src) == {}
        assert drv.calls["init"] == inits + 1
        now[0] = 17.0
        assert power(src) == {} and drv.calls["init"] == inits + 2
        drv.load()
        now[0] = 36.9  # then 20 s later
        assert power(src) == {}
        now[0] = 37.0
        assert power(src) == {("0", "GPU-aaaa"): 61.482, ("1", "GPU-bbbb"): 25.0}
        assert src.health.up and drv.refs == 1
    lines = nvml_lines(caplog)
    # once per transition: the loss, the failing re-open, the recovery; no line per GPU field
    assert len(lines) == 3, lines
    assert "no value for any GPU" in lines[0] and "Uninitialized" in lines[0]
    assert "Driver Not Loaded" in lines[1]
    assert "reads again" in lines[2] and "2 GPU(s)" in lines[2]
    # recovered: the backoff starts again at 5 s
    drv.unload()
    now[0] = 40.0
    assert power(src) == {}
    drv.load()
    now[0] = 45.0
    assert power(src) and src.health.up


def test_a_reopen_labels_gpus_from_the_new_enumeration() -> None:
    """After a driver upgrade the GPUs may come back in another order, fewer, and under
    another driver version: every label is the new enumeration's, none left over."""
    now = [0.0]
    drv = FakeDriver([A100, P4])
    src = NvmlSource("n", nvml=drv.module(), clock=lambda: now[0])
    src.start()
    assert set(power(src)) == {("0", "GPU-aaaa"), ("1", "GPU-bbbb")}
    drv.unload()
    now[0] = 2.0
    assert power(src) == {}
    drv.load([P4], driver="560.35.03")
    now[0] = 7.0
    fams = {f.name: f for f in src.families()}
    samples = fams[names.DCGM_POWER_W].samples
    assert [(s.labels["gpu"], s.labels["UUID"], s.value) for s in samples] == [
        ("0", "GPU-bbbb", 25.0)
    ]
    assert samples[0].labels["DCGM_FI_DRIVER_VERSION"] == "560.35.03"
    assert samples[0].labels["modelName"] == "Tesla P4"
    for f in fams.values():  # no series of the old enumeration in any family
        assert {s.labels["UUID"] for s in f.samples} == {"GPU-bbbb"}, f.name


def test_reopen_backoff_doubles_to_its_cap() -> None:
    now = [0.0]
    drv = FakeDriver([A100])
    drv.unload()
    src = NvmlSource("n", nvml=drv.module(), clock=lambda: now[0])
    src.start()  # init fails at start: retried on the same backoff
    tries = []
    for t in range(0, 1500):
        now[0] = float(t)
        before = drv.calls["init"]
        src.readings()
        if drv.calls["init"] > before:
            tries.append(t)
    assert tries == [5, 15, 35, 75, 155, 315, 615, 915, 1215]  # 5 s doubling, at most 300 s


def test_an_absent_nvml_library_is_retried_only_at_the_slowest_pace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No libnvidia-ml.so.1 (a CPU-only node, a container without the NVIDIA runtime):
    one line, then an attempt every 300 s (a failed dlopen, cheap), never at 5 s."""

    class LibraryNotFound(FakeNVMLError):
        value = 12  # NVML_ERROR_LIBRARY_NOT_FOUND, as pynvml raises it

    now = [0.0]
    calls = Counter[str]()

    def init() -> None:
        calls["init"] += 1
        raise LibraryNotFound("NVML Shared Library Not Found")

    nv = types.SimpleNamespace(nvmlInit=init, NVML_ERROR_LIBRARY_NOT_FOUND=12)
    src = NvmlSource("n", nvml=nv, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="perllm.agent"):
        src.start()
        for t in range(0, 1000, 5):
            now[0] = float(t)
            assert list(src.families()) == []
    assert calls["init"] == 4  # at 0, 300, 600, 900
    lines = nvml_lines(caplog)
    assert len(lines) == 1 and "Library Not Found" in lines[0], lines
    assert "300 s" in (src.health.reason or "")
