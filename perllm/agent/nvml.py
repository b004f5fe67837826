"""GPU power, energy, utilisation and memory from NVML under dcgm-exporter's names and units.

Opened and read at scrape time (nvidia-ml-py, `import pynvml`), cached for `cache_s`, every
NVML call (nvmlInit included) on a worker thread with a deadline so that a wedged driver
cannot hang a scrape. When nvmlInit fails, or no GPU answers (driver reload, GPU reset),
NVML is shut down and opened again with a backoff (`backoff_s`). Units follow DCGM:
NVML's mW become W, bytes become MiB (floored, as DCGM reports them), energy stays mJ
(perllm/agent/dcgm.py names and exports them).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import importlib
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.metrics_core import Metric

from perllm.agent import dcgm
from perllm.agent.dcgm import MIB, NOT_AVAILABLE, GpuReading, text
from perllm.agent.health import SourceHealth

NVML_ERROR_LIBRARY_NOT_FOUND = 12  # pynvml's NVMLError.value without libnvidia-ml.so.1


@dataclass
class _Gpu:
    handle: Any
    labels: tuple[str, ...]


@dataclass
class NvmlSource:
    """`nvml`: a pynvml-compatible module (tests inject a fake); None imports pynvml."""

    node: str
    nvml: Any = None
    cache_s: float = 1.0
    read_timeout_s: float = 2.0
    retry_s: float = 60.0  # re-opening a GPU NVML refused while others answer
    # (Re)opening NVML after nvmlInit failed or no GPU answered: a driver can come up after
    # the agent (the GPU operator installs it) or come back from a reload or a GPU reset.
    backoff_s: tuple[float, float] = (5.0, 300.0)  # first delay, doubled up to the second
    clock: Callable[[], float] = time.monotonic
    health: SourceHealth = field(default_factory=lambda: SourceHealth("nvml"))
    _nv: Any = field(default=None, repr=False)
    _gpus: list[_Gpu] = field(default_factory=list, repr=False)
    _missing: list[int] = field(default_factory=list, repr=False)  # indices NVML refused
    _driver: str = ""  # nvmlSystemGetDriverVersion, "" (label absent) when it fails
    _last_open_try: float = 0.0
    _inited: bool = False  # _gpus are handles of the live NVML open (_nv)
    _disabled: bool = False
    _reopen_at: float | None = None  # next (re)open; None: never tried, or reading fine
    _delay: float | None = None  # the backoff's next delay (None: its first)
    _summary: str = ""  # the GPUs of the last open, for the line saying they read
    _read_once: bool = False  # a read has given values (a later one is a recovery)
    _cache: list[GpuReading] = field(default_factory=list, repr=False)
    _cache_at: float | None = None
    _pending: cf.Future[Any] | None = field(default=None, repr=False)  # one NVML call at a time
    _pending_what: str = ""  # what the pending call is (named when it overruns)
    _wedged: bool = False  # the pending call has overrun read_timeout_s
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def start(self) -> None:
        """Open NVML and read it once (the line saying which GPUs read), within
        `read_timeout_s`; a call still running then is left to the scrapes, which look
        whether it has returned (as for a wedged read)."""
        with self._lock:
            self._step(time.monotonic() + self.read_timeout_s)

    def disable(self, reason: str) -> None:
        """Never touch NVML (metrics absent, source down for `reason`)."""
        self._disabled = True
        self.health.down(reason)

    def _submit(self, what: str, fn: Callable[[], Any]) -> None:
        """Run `fn` on a worker thread; the lock holder then waits for it, bounded (_settle).
        A daemon thread, not an executor's: the interpreter joins those at exit, so an NVML
        call that never returns kept the agent from exiting after SIGTERM."""
        fut: cf.Future[Any] = cf.Future()

        def run() -> None:
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as e:
                    fut.set_exception(e)

        threading.Thread(target=run, name=f"nvml-{what}", daemon=True).start()
        self._pending, self._pending_what, self._wedged = fut, what, False

    def _settle(self, deadline: float) -> tuple[bool, Any]:
        """(True, result) once the pending call has returned; (False, None) while it runs
        past `deadline` or when it failed (the source is then down saying why)."""
        assert self._pending is not None
        what = self._pending_what
        # Once a call has overrun, later scrapes only look whether it has returned: each
        # waiting the full deadline again, one after another under the lock, made
        # concurrent scrapes time out, and with them source_up, which says why.
        wait = 0.0 if self._wedged else max(0.0, deadline - time.monotonic())
        try:
            result = self._pending.result(timeout=wait)
        except cf.TimeoutError:
            self._wedged = True
            self.health.down(
                f"{what} did not return within {self.read_timeout_s:g} s (a hung driver?); "
                "GPU metrics absent until it returns"
            )
            return False, None
        except Exception as e:
            self._pending = None
            self.health.down(f"{what} failed: {type(e).__name__}: {e}")
            return False, None
        self._pending = None
        return True, result

    def _try_init(self) -> None:
        """Open NVML and the GPUs (on the worker thread: nvmlInit can hang on a broken
        driver)."""
        try:
            nv = self.nvml if self.nvml is not None else importlib.import_module("pynvml")
        except ImportError as e:
            self._disabled = True
            self.health.down(f"nvidia-ml-py is not installed ({e}); GPU metrics absent")
            return
        try:
            nv.nvmlInit()
        except Exception as e:  # NVMLError subclasses, and OSError from the loader
            code = getattr(nv, "NVML_ERROR_LIBRARY_NOT_FOUND", NVML_ERROR_LIBRARY_NOT_FOUND)
            if isinstance(e, OSError) or getattr(e, "value", None) == code:
                # No libnvidia-ml.so.1: a CPU-only node, or a container the NVIDIA runtime
                # did not set up (it mounts the library at creation only). Tried again at
                # the slowest pace only: a failed dlopen is cheap, but it rarely changes.
                self._reopen_at = self.clock() + self.backoff_s[1]
                self.health.down(
                    f"nvmlInit failed: {type(e).__name__}: {e} (no NVIDIA driver library here, "
                    "or the container runs without the NVIDIA runtime); GPU metrics absent, "
                    f"tried again every {self.backoff_s[1]:g} s"
                )
                return
            self.health.down(
                f"nvmlInit failed: {type(e).__name__}: {e} (no NVIDIA driver loaded, or the "
                "container runs without the NVIDIA runtime / device plugin); GPU metrics "
                f"absent, {self._retried}"
            )
            return
        try:
            count = int(nv.nvmlDeviceGetCount())
        except Exception as e:
            self.health.down(f"enumerating GPUs failed: {type(e).__name__}: {e}; {self._retried}")
            self._shutdown_quietly(nv)
            return
        try:
            self._driver = text(nv.nvmlSystemGetDriverVersion())
        except Exception:
            self._driver = ""
        # One GPU NVML refuses (NoPermission, GpuIsLost) must not take the others down.
        gpus, why = self._open(nv, range(count))
        if count and not gpus:
            self.health.down(
                f"no GPU could be opened: {'; '.join(why)}; GPU metrics absent, {self._retried}"
            )
            self._shutdown_quietly(nv)
            return
        for w in why:
            self.health.warn_once(f"{w}; its series absent, retried every {self.retry_s:g} s")
        self._missing = sorted(set(range(count)) - {int(g.labels[0]) for g in gpus})
        self._last_open_try = self.clock()
        self._nv, self._gpus, self._inited = nv, gpus, True
        models = sorted({g.labels[4] for g in gpus})
        self._summary = f"{len(gpus)} GPU(s) via NVML: {', '.join(models) or 'none'}"

    def _reopen(self) -> None:
        """Open NVML afresh (on the worker). NVML counts inits: an nvmlInit on top of a live
        one attaches nothing new, so the handles of a reloaded driver stay dead; the old
        open is shut down first, and every GPU enumerated and labelled again."""
        if self._nv is not None:
            self._shutdown_quietly(self._nv)  # fails on a driver already gone: still undone
            self._nv = None
        self._gpus, self._missing = [], []
        self._try_init()

    @property
    def _retried(self) -> str:
        lo, hi = self.backoff_s
        return f"NVML opened again after {lo:g} s, backing off to every {hi:g} s"

    def _reopen_due(self, now: float) -> bool:
        if self._reopen_at is None:
            return not self._inited  # never opened yet
        return now >= self._reopen_at

    def _schedule_reopen(self, now: float) -> None:
        lo, hi = self.backoff_s
        delay = lo if self._delay is None else self._delay
        self._reopen_at, self._delay = now + delay, min(delay * 2, hi)

    def _open(self, nv: Any, indices: Iterable[int]) -> tuple[list[_Gpu], list[str]]:
        """The GPUs of `indices` that NVML opens, and why each other one failed."""
        gpus, why = [], []
        for i in indices:
            try:
                gpus.append(self._describe(nv, i))
            except Exception as e:
                why.append(f"GPU {i}: {type(e).__name__}: {e}")
        return gpus, why

    def _describe(self, nv: Any, i: int) -> _Gpu:
        h = nv.nvmlDeviceGetHandleByIndex(i)
        try:
            minor = int(nv.nvmlDeviceGetMinorNumber(h))  # /dev/nvidiaN, dcgm's `device`
        except Exception:
            minor = i
        try:
            bus = text(nv.nvmlDeviceGetPciInfo(h).busId)
        except Exception:
            bus = ""
        labels = (
            str(i),
            text(nv.nvmlDeviceGetUUID(h)),
            bus,
            f"nvidia{minor}",
            text(nv.nvmlDeviceGetName(h)),
            self.node,
            self._driver,
        )
        return _Gpu(h, labels)

    @staticmethod
    def _shutdown_quietly(nv: Any) -> None:
        with contextlib.suppress(Exception):
            nv.nvmlShutdown()

    @staticmethod
    def _field(gpu: _Gpu, what: str, fn: Callable[[Any], Any], notes: list[str]) -> Any:
        """One NVML query; a GPU lacking it (NotSupported on older parts) omits the sample,
        and `notes` says why."""
        try:
            return fn(gpu.handle)
        except Exception as e:
            notes.append(
                f"GPU {gpu.labels[0]} ({gpu.labels[4]}): {what} unavailable: "
                f"{type(e).__name__}: {e}"
            )
            return None

    @staticmethod
    def _number(
        gpu: _Gpu, what: str, v: Any, notes: list[str], zero_ok: bool = True
    ) -> float | None:
        """A field's value, or None where NVML's number is no measurement: its
        'not available' sentinel, or 0 W from a powered GPU (unmetered boards answer 0)."""
        if v is None:
            return None
        if v in NOT_AVAILABLE or v < 0 or (v == 0 and not zero_ok):
            notes.append(
                f"GPU {gpu.labels[0]} ({gpu.labels[4]}): {what} reads {v}, not a measurement"
            )
            return None
        return float(v)

    def _memory(self, h: Any) -> Any:
        nv = self._nv
        v2 = getattr(nv, "nvmlMemory_v2", None)
        if v2 is not None:
            try:  # v2 reports reserved memory apart from `used`, like DCGM's FB_USED
                return nv.nvmlDeviceGetMemoryInfo(h, version=v2)
            except Exception:
                pass  # older driver: v1
        return nv.nvmlDeviceGetMemoryInfo(h)

    def read(self) -> tuple[list[GpuReading], list[str]]:
        """One NVML pass over all GPUs (on the worker thread), and what it could not read."""
        nv, notes = self._nv, list[str]()
        if self._missing and self.clock() - self._last_open_try >= self.retry_s:
            self._last_open_try = self.clock()
            found, _ = self._open(nv, self._missing)
            if found:
                self._gpus = sorted([*self._gpus, *found], key=lambda g: int(g.labels[0]))
                self._missing = sorted(set(self._missing) - {int(g.labels[0]) for g in found})
        out = []
        for g in self._gpus:
            mw = self._field(g, "power", nv.nvmlDeviceGetPowerUsage, notes)
            mw = self._number(g, "power", mw, notes, zero_ok=False)
            mj = self._field(g, "total energy", nv.nvmlDeviceGetTotalEnergyConsumption, notes)
            mj = self._number(g, "total energy", mj, notes)
            util = self._field(g, "utilisation", nv.nvmlDeviceGetUtilizationRates, notes)
            pct = None if util is None else self._number(g, "utilisation", util.gpu, notes)
            mem = self._field(g, "memory info", self._memory, notes)
            out.append(
                GpuReading(
                    labels=g.labels,
                    power_w=None if mw is None else mw / 1000.0,
                    energy_mj=mj,
                    util_pct=pct,
                    fb_used_mib=None if mem is None else float(int(mem.used) // MIB),
                    fb_free_mib=None if mem is None else float(int(mem.free) // MIB),
                )
            )
        return out, notes

    def readings(self) -> list[GpuReading]:
        """Cached readings no older than `cache_s`; bounded by `read_timeout_s`."""
        with self._lock:
            return self._step(time.monotonic() + self.read_timeout_s)

    def _step(self, deadline: float) -> list[GpuReading]:
        """(Re)open NVML when due, then read; every NVML call on the worker, waited for
        until `deadline` (under the lock)."""
        if self._disabled:
            return []
        now = self.clock()
        if self._pending is None and self._reopen_due(now):
            # the lost open's handles are not read meanwhile, nor its cache served
            self._inited, self._cache, self._cache_at = False, [], None
            self._schedule_reopen(now)  # the next try, should this one fail
            self._submit("nvmlInit", self._reopen)
        pending_init = self._pending is not None and self._pending_what == "nvmlInit"
        if pending_init and not self._settle(deadline)[0]:
            return []
        if not self._inited:
            return []
        if self._cache_at is not None and now - self._cache_at < self.cache_s:
            return self._cache
        if self._pending is None:  # a wedged read stays pending: never stack another
            self._submit("an NVML read", self.read)
        done, result = self._settle(deadline)
        if not done:
            return []
        (self._cache, notes), self._cache_at = result, now
        if not any(r.has_value for r in self._cache):  # every GPU lost, or no GPU at all
            if self._reopen_at is None:
                self._schedule_reopen(now)
            # one line for the loss (not one per GPU and field), the first failure named
            what = f"no value for any GPU ({notes[0]})" if notes else "no value for any GPU"
            self.health.down(
                f"NVML returned {what}; GPU metrics absent, {self._retried}"
                if self._cache
                else f"NVML found no GPU; GPU metrics absent, {self._retried}"
            )
            return self._cache
        self._reopen_at = self._delay = None
        again, self._read_once = self._read_once, True
        # (up first: a recovery clears what was said, and these are news after it)
        self.health.ok(f"NVML reads again: {self._summary}" if again else self._summary)
        for note in notes:  # a part of a GPU only: said once each
            self.health.warn_once(f"{note}; that series is absent")
        return self._cache

    def families(self) -> Iterable[Metric]:
        return dcgm.families(self.readings())

    def stop(self) -> None:
        """Shut NVML down (bounded; skipped while a call still runs: never beside it)."""
        with self._lock:
            if self._nv is not None and self._pending is None:
                self._submit("nvmlShutdown", lambda: self._shutdown_quietly(self._nv))
                self._settle(time.monotonic() + self.read_timeout_s)
            self._inited, self._disabled = False, True
