"""Node agent, GPU source: DCGM names, units and labels from NVML (a fake one, and the real one
where a driver exists), and absent NVML giving absent metrics, source_up 0, one log line."""

from __future__ import annotations

import logging
import threading
import types
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from perllm.agent import Agent, AgentConfig
from perllm.agent.dcgm import LABELS
from perllm.agent.nvml import NvmlSource
from perllm.telemetry import names

MIB = 1 << 20
NO_RAPL = Path("/nonexistent/powercap")


class FakeNVMLError(Exception):
    pass


class FakeNotSupported(FakeNVMLError):
    pass


def fake_nvml(
    gpus: list[dict[str, Any]],
    init_error: Exception | None = None,
    hang: threading.Event | None = None,
) -> types.SimpleNamespace:
    """A pynvml-shaped module: handles are indices into `gpus`; a missing key is NotSupported."""
    calls = {"init": 0, "shutdown": 0}

    def get(key: str) -> Any:
        def fn(h: int) -> Any:
            if hang is not None:
                hang.wait(10)
            if key not in gpus[h]:
                raise FakeNotSupported("Not Supported")
            return gpus[h][key]

        return fn

    def init() -> None:
        calls["init"] += 1
        if init_error is not None:
            raise init_error

    def shutdown() -> None:
        calls["shutdown"] += 1

    def memory(h: int, version: Any = None) -> Any:
        return get("mem")(h)

    return types.SimpleNamespace(
        NVMLError=FakeNVMLError,
        calls=calls,
        nvmlInit=init,
        nvmlShutdown=shutdown,
        nvmlDeviceGetCount=lambda: len(gpus),
        nvmlSystemGetDriverVersion=lambda: "550.54.15",
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=get("name"),
        nvmlDeviceGetUUID=get("uuid"),
        nvmlDeviceGetMinorNumber=get("minor"),
        nvmlDeviceGetPciInfo=lambda h: types.SimpleNamespace(busId=gpus[h]["bus"]),
        nvmlDeviceGetPowerUsage=get("mw"),
        nvmlDeviceGetTotalEnergyConsumption=get("mj"),
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=get("util")(h), memory=0),
        nvmlDeviceGetMemoryInfo=memory,
        nvmlMemory_v2=object(),
    )


def mem(used_b: int, free_b: int) -> types.SimpleNamespace:
    return types.SimpleNamespace(used=used_b, free=free_b, total=used_b + free_b)


A100 = {
    "name": b"NVIDIA A100-SXM4-40GB",
    "uuid": "GPU-aaaa",
    "minor": 3,
    "bus": "00000000:07:00.0",
    "mw": 61_482,
    "mj": 123_456_789,
    "util": 37,
    "mem": mem(5 * MIB + 123, 40_000 * MIB),
}
# A pre-Volta part: no total energy counter
P4 = {
    "name": "Tesla P4",
    "uuid": "GPU-bbbb",
    "minor": 0,
    "bus": "00000000:81:00.0",
    "mw": 25_000,
    "util": 0,
    "mem": mem(0, 7_611 * MIB),
}


def families(text: bytes) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text.decode())}


def test_units_and_labels_match_dcgm() -> None:
    src = NvmlSource("node-a", nvml=fake_nvml([A100, P4]))
    src.start()
    assert src.health.up
    r0, r1 = src.readings()
    assert r0.power_w == pytest.approx(61.482)  # mW -> W
    assert r0.energy_mj == 123_456_789  # mJ stays mJ
    assert r0.util_pct == 37
    assert (r0.fb_used_mib, r0.fb_free_mib) == (5, 40_000)  # bytes -> MiB, floored like DCGM
    assert dict(zip(LABELS, r0.labels, strict=True)) == {
        "gpu": "0",
        "UUID": "GPU-aaaa",
        "pci_bus_id": "00000000:07:00.0",
        "device": "nvidia3",
        "modelName": "NVIDIA A100-SXM4-40GB",
        "Hostname": "node-a",
        "DCGM_FI_DRIVER_VERSION": "550.54.15",
    }
    assert r1.energy_mj is None and r1.power_w == 25.0  # NotSupported omits only that field


def test_exposition_names_types_and_absent_fields() -> None:
    agent = Agent(AgentConfig(node="node-a", rapl_root=NO_RAPL), nvml_module=fake_nvml([A100, P4]))
    agent.nvml.start()
    text = agent.render()
    fams = families(text)
    power = fams[names.DCGM_POWER_W]
    assert power.type == "gauge"
    assert {s.labels["gpu"]: s.value for s in power.samples} == {"0": 61.482, "1": 25.0}
    assert all(s.labels["Hostname"] == "node-a" for s in power.samples)
    # INTERFACES.md 3.1: dcgm-exporter's default `DCGM_FI_DRIVER_VERSION, label` row
    assert all(s.labels["DCGM_FI_DRIVER_VERSION"] == "550.54.15" for s in power.samples)
    # dcgm-exporter: `# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter`, bare name
    assert f"# TYPE {names.DCGM_ENERGY_MJ} counter\n".encode() in text
    assert f"\n{names.DCGM_ENERGY_MJ}{{".encode() in text
    assert f"{names.DCGM_ENERGY_MJ}_total".encode() not in text
    energy = fams[names.DCGM_ENERGY_MJ]
    assert energy.type == "counter"
    assert [(s.labels["gpu"], s.value) for s in energy.samples] == [("0", 123_456_789.0)]
    for n in (names.DCGM_GPU_UTIL, names.DCGM_FB_USED_MIB, names.DCGM_FB_FREE_MIB):
        assert len(fams[n].samples) == 2
    up = {s.labels["source"]: s.value for s in fams["perllm_agent_source_up"].samples}
    assert up == {"nvml": 1.0, "rapl": 0.0, "probe": 0.0}


def test_init_error_gives_absent_metrics_source_down_one_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    nv = fake_nvml([A100], init_error=FakeNVMLError("Driver Not Loaded"))
    agent = Agent(AgentConfig(node="n", rapl_root=NO_RAPL), nvml_module=nv)
    with caplog.at_level(logging.INFO, logger="perllm.agent"):
        agent.nvml.start()
        for _ in range(3):
            text = agent.render()
    fams = families(text)
    assert not any(n.startswith("DCGM_") for n in fams)
    up = {s.labels["source"]: s.value for s in fams["perllm_agent_source_up"].samples}
    assert up["nvml"] == 0.0
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("nvml")]
    assert len(said) == 1 and "Driver Not Loaded" in said[0]


def test_init_retried_after_backoff_and_recovers() -> None:
    now = [0.0]
    nv = fake_nvml([A100], init_error=FakeNVMLError("Driver Not Loaded"))
    src = NvmlSource("n", nvml=nv, clock=lambda: now[0])
    src.start()
    assert src.readings() == [] and nv.calls["init"] == 1
    now[0] = 4.0
    assert src.readings() == [] and nv.calls["init"] == 1  # not before the first 5 s
    nv.nvmlInit = lambda: None  # the driver came up
    now[0] = 5.0
    assert [r.power_w for r in src.readings()] == [61.482]
    assert src.health.up


def test_import_error_is_absent_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    real = importlib.import_module

    def no_pynvml(name: str, *a: Any) -> Any:
        if name == "pynvml":
            raise ImportError("No module named 'pynvml'")
        return real(name, *a)

    monkeypatch.setattr(importlib, "import_module", no_pynvml)
    src = NvmlSource("n")
    src.start()
    assert not src.health.up and "nvidia-ml-py" in (src.health.reason or "")
    assert list(src.families()) == []


def test_wedged_read_is_bounded_and_cached_reads_are_reused() -> None:
    import time

    hang = threading.Event()
    nv = fake_nvml([A100])
    src = NvmlSource("n", nvml=nv, read_timeout_s=0.2, cache_s=3600)
    src.start()
    first = src.readings()
    assert first and src.readings() is first  # served from the cache
    src.cache_s = 0
    # every call now blocks until `hang` is set: the scrape gives up, the source is down
    for k in ("nvmlDeviceGetPowerUsage", "nvmlDeviceGetTotalEnergyConsumption"):
        orig = getattr(nv, k)
        setattr(nv, k, lambda h, orig=orig: (hang.wait(10), orig(h))[1])
    assert src.readings() == []
    assert not src.health.up
    hang.set()
    deadline = time.monotonic() + 10  # the pending read returns; the next scrape has it
    while not src.readings() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert src.health.up
    src.stop()
    assert nv.calls["shutdown"] == 1


def test_real_nvml_when_a_driver_is_present() -> None:
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except Exception as e:  # no driver / no GPU on this machine
        pytest.skip(f"no NVML here: {e}")
    try:
        count = pynvml.nvmlDeviceGetCount()
        expected_mw = [
            pynvml.nvmlDeviceGetPowerUsage(pynvml.nvmlDeviceGetHandleByIndex(i))
            for i in range(count)
        ]
    finally:
        pynvml.nvmlShutdown()
    if count == 0:
        pytest.skip("NVML but no GPU")
    src = NvmlSource("real")
    src.start()
    try:
        rs = src.readings()
        assert len(rs) == count
        for r, mw in zip(rs, expected_mw, strict=True):
            assert r.power_w is not None and r.power_w == pytest.approx(mw / 1000, rel=0.5, abs=30)
            assert r.fb_free_mib is not None and r.fb_free_mib >= 0
    finally:
        src.stop()


def test_a_missing_field_is_said_once_not_at_every_scrape(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    src = NvmlSource("n", nvml=fake_nvml([P4]), cache_s=1.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="perllm.agent"):
        src.start()
        for _ in range(5):
            now[0] += 2.0  # past the cache: a fresh NVML read each time
            assert [r.energy_mj for r in src.readings()] == [None]
    said = [r.getMessage() for r in caplog.records if "total energy unavailable" in r.getMessage()]
    assert len(said) == 1, said
    assert src.health.up


def test_every_field_failing_takes_the_source_down() -> None:
    """A GPU lost mid-run (or no GPU at all): no GPU series is left, so source_up says 0."""
    now = [0.0]
    gpu = dict(A100)
    src = NvmlSource("n", nvml=fake_nvml([gpu]), clock=lambda: now[0])
    src.start()
    assert src.readings() and src.health.up
    for k in ("mw", "mj", "util", "mem"):
        del gpu[k]  # every query now raises (NVML_ERROR_GPU_IS_LOST on a real driver)
    now[0] += 2.0
    assert list(src.families()) == []
    assert not src.health.up and "no value" in (src.health.reason or "")
    gpu.update(A100)  # the GPU answers again
    now[0] += 2.0
    assert list(src.families()) and src.health.up
    empty = NvmlSource("n", nvml=fake_nvml([]))
    empty.start()
    assert list(empty.families()) == [] and not empty.health.up


def test_a_gpu_that_cannot_be_opened_leaves_the_others_and_is_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One GPU whose handle NVML refuses (NoPermission, GpuIsLost) failed the whole
    enumeration: every GPU's series were absent, and source_up 0, until it came back."""
    now = [0.0]
    nv = fake_nvml([A100, P4])
    broken = {1}

    def handle(i: int) -> int:
        if i in broken:
            raise FakeNVMLError("Insufficient Permissions")
        return i

    nv.nvmlDeviceGetHandleByIndex = handle
    src = NvmlSource("n", nvml=nv, retry_s=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="perllm.agent"):
        src.start()
        assert src.health.up
        assert [r.labels[0] for r in src.readings()] == ["0"]
    assert any(
        "GPU 1" in r.getMessage() and "Permissions" in r.getMessage() for r in caplog.records
    )
    broken.clear()  # it can be opened now: picked up at the next read after retry_s
    now[0] = 30.0
    assert [r.labels[0] for r in src.readings()] == ["0"]
    now[0] = 61.0
    assert [r.labels[0] for r in src.readings()] == ["0", "1"]
    broken.update({0, 1})
    every = NvmlSource("n", nvml=nv)
    every.start()
    assert not every.health.up and "GPU" in (every.health.reason or "")
    assert list(every.families()) == []


def test_scrapes_during_a_wedged_read_do_not_wait_again() -> None:
    """Every scrape waited the full read deadline again while a read stayed wedged, one
    after another under the lock: 4 concurrent scrapes took 4 deadlines (8 s at the default
    2 s), enough for Prometheus to time the scrape out, source_up with it."""
    import time

    hang = threading.Event()
    nv = fake_nvml([A100])
    src = NvmlSource("n", nvml=nv, read_timeout_s=1.0, cache_s=0)
    src.start()
    assert src.readings()
    orig = nv.nvmlDeviceGetPowerUsage
    nv.nvmlDeviceGetPowerUsage = lambda h: (hang.wait(30), orig(h))[1]
    try:
        assert src.readings() == [] and not src.health.up  # the one that waits the deadline
        t0 = time.monotonic()
        scrapes = [threading.Thread(target=src.readings) for _ in range(4)]
        for t in scrapes:
            t.start()
        for t in scrapes:
            t.join()
        assert time.monotonic() - t0 < 0.5
    finally:
        hang.set()
    deadline = time.monotonic() + 10  # the read returns: the next scrape has it
    while not src.readings() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert src.health.up
    src.stop()


def test_a_hanging_nvml_init_is_bounded_like_a_read() -> None:
    """nvmlInit ran on the scrape thread under the lock: a broken driver whose init never
    returns hung start() and every /metrics for good. It runs on the worker now: start and
    each scrape return within the deadline, source_up 0 naming nvmlInit, and the init that
    returns late is taken up by the next scrape."""
    import time

    hang = threading.Event()
    nv = fake_nvml([A100])
    nv.nvmlInit = lambda: hang.wait(30) and None
    agent = Agent(AgentConfig(node="n", rapl_root=NO_RAPL), nvml_module=nv)
    src = agent.nvml
    src.read_timeout_s = 0.3
    try:
        t0 = time.monotonic()
        src.start()
        assert time.monotonic() - t0 < 2
        assert not src.health.up and "nvmlInit" in (src.health.reason or "")
        t0 = time.monotonic()
        scrapes = [threading.Thread(target=agent.render) for _ in range(4)]
        for t in scrapes:
            t.start()
        for t in scrapes:
            t.join(5)
        assert time.monotonic() - t0 < 2 and not any(t.is_alive() for t in scrapes)
        up = {
            s.labels["source"]: s.value
            for s in families(agent.render())["perllm_agent_source_up"].samples
        }
        assert up["nvml"] == 0.0
    finally:
        hang.set()
    deadline = time.monotonic() + 10  # the init returns: the next scrape reads the GPUs
    while not src.readings() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert src.health.up
    src.stop()
    assert nv.calls["shutdown"] == 1


def test_a_wedged_nvml_call_does_not_hold_the_process_at_exit(tmp_path: Path) -> None:
    """The worker was a ThreadPoolExecutor's thread, which the interpreter joins at exit:
    an NVML call that never returns kept the agent from exiting after SIGTERM."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    script = tmp_path / "wedge.py"
    script.write_text(
        "import threading\n"
        "from tests.unit.test_agent_nvml import A100, fake_nvml\n"
        "from perllm.agent.nvml import NvmlSource\n"
        "nv = fake_nvml([A100])\n"
        "src = NvmlSource('n', nvml=nv, read_timeout_s=0.2, cache_s=0)\n"
        "src.start()\n"
        "nv.nvmlDeviceGetPowerUsage = lambda h: threading.Event().wait()\n"
        "assert src.readings() == []\n"
        "src.stop()\n"
        "print('stopped', flush=True)\n"
    )
    try:
        r = subprocess.run(
            [sys.executable, str(script)],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=root,
            env={**os.environ, "PYTHONPATH": str(root)},
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the process did not exit with an NVML call wedged")
    assert r.returncode == 0 and "stopped" in r.stdout, r.stderr


def test_one_gpu_lost_of_two_drops_its_series_the_other_continues() -> None:
    now = [0.0]
    lost = dict(P4, mj=1)
    src = NvmlSource("n", nvml=fake_nvml([A100, lost]), clock=lambda: now[0])
    src.start()
    assert len(families_of(src)[names.DCGM_POWER_W]) == 2
    for k in ("mw", "mj", "util", "mem"):
        del lost[k]  # GPU 1 off the bus: every query raises
    now[0] += 2.0
    fams = families_of(src)
    for name in (names.DCGM_POWER_W, names.DCGM_ENERGY_MJ, names.DCGM_FB_USED_MIB):
        assert set(fams[name]) == {"0"}, name  # dropped, not frozen at its last value
    assert fams[names.DCGM_POWER_W]["0"] == A100["mw"] / 1000
    assert src.health.up  # the other GPU still measured


@pytest.mark.parametrize(
    ("field", "value"),
    [("mw", 0xFFFFFFFF), ("mw", 0), ("mj", 0xFFFFFFFFFFFFFFFF), ("util", 0xFFFFFFFF)],
)
def test_nvml_not_available_numbers_are_absent_not_exported(
    field: str, value: int, caplog: pytest.LogCaptureFixture
) -> None:
    """NVML's NOT_AVAILABLE sentinel (and 0 mW from a powered GPU) were exported as
    measurements: 4294967.295 W, or a GPU drawing nothing."""
    gpu = dict(A100, **{field: value})
    src = NvmlSource("n", nvml=fake_nvml([gpu, A100]))
    with caplog.at_level(logging.WARNING, logger="perllm.agent"):
        src.start()
        fams = families_of(src)
    name = {"mw": names.DCGM_POWER_W, "mj": names.DCGM_ENERGY_MJ, "util": names.DCGM_GPU_UTIL}
    assert set(fams[name[field]]) == {"1"}  # absent for that GPU only
    assert set(fams[names.DCGM_FB_USED_MIB]) == {"0", "1"}
    assert "not a measurement" in caplog.text and src.health.up


def families_of(src: NvmlSource) -> dict[str, dict[str, float]]:
    """{family: {gpu: value}} of one scrape of `src`."""
    return {f.name: {s.labels["gpu"]: s.value for s in f.samples} for f in src.families()}
