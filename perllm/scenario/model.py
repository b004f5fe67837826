"""The scenario itself: servers, links, workload and admission, and the services a user
would declare for it."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Annotated, Literal, TypeVar

import numpy as np
from numpy.typing import NDArray
from pydantic import Field, field_validator, model_validator

from perllm.contract import (
    EnergyWeights,
    ModelVariant,
    Precision,
    Requirements,
    Server,
    ServiceSpec,
    Tier,
    Traffic,
)
from perllm.labels import LABEL_HARDWARE, MAX_LABEL_VALUE, is_label_value
from perllm.profiles import Catalogue, HardwareInfo, ModelInfo, default_catalogue
from perllm.scenario.base import Strict
from perllm.scenario.dists import dist_mean
from perllm.scenario.workload import Window, Workload


class Bandwidth(Strict):
    """Link dynamics on top of each link's nominal × U(1±noise) per slot."""

    windows: list[Window] = Field(default_factory=list, description="Collapses or boosts.")
    trace: str | None = Field(
        default=None, description="CSV with columns time_s,server,mbps: replaces nominal."
    )


_T = TypeVar("_T", float, NDArray[np.float64])


class Admission(Strict):
    """What a server's gateway does with a request that can no longer start in time
    (docs/scenarios.md, `admission`): `none` queues it however late; `reject-late`
    drops it once its deadline has passed in the queue (it could not start before it);
    `timeout` drops it after `timeout_s` in the queue, whatever its deadline."""

    mode: Literal["none", "reject-late", "timeout"] = "reject-late"
    timeout_s: Annotated[float, Field(strict=True, gt=0)] = 30.0

    def latest_start(self, arrival: _T, deadline: _T) -> _T:
        """When a request arriving at `arrival` with budget `deadline` (s) must start at
        the latest, or be dropped (inf: never dropped); the simulator's and the twin's."""
        if self.mode == "reject-late":
            return arrival + deadline
        if self.mode == "timeout":
            return arrival + self.timeout_s
        return arrival + math.inf


# A scenario's name keys the reports and names output files (`perllm sweep` writes
# <name>-<axis>.json/.csv/.png into --out): a file-safe name, never a path ("../x", "/tmp/x")
# nor empty. Lower-case only, so that two names never share a file on a case-insensitive
# file system.
SCENARIO_NAME = re.compile(r"[a-z0-9]([-a-z0-9._]*[a-z0-9])?")
MAX_SCENARIO_NAME = 63
# Servers of a scenario after `count` expansion (large-fleet has 1,000): each is a column of
# every per-round cost array and a node of the test cluster.
MAX_SERVERS = 10_000


class Scenario(Strict):
    name: str
    description: str = ""
    duration_s: Annotated[float, Field(strict=True, gt=0)] = 1800.0
    slot_s: Annotated[float, Field(strict=True, gt=0, le=60)] = 1.0
    weights: EnergyWeights = EnergyWeights()
    speed_noise: Annotated[float, Field(strict=True, ge=0, le=1)] = Field(
        default=0.08, description="σ of the lognormal per-request speed noise of the world."
    )
    models: dict[str, ModelInfo] = Field(default_factory=dict)
    hardware: dict[str, HardwareInfo] = Field(default_factory=dict)
    servers: list[Server] = Field(min_length=1)
    bandwidth: Bandwidth = Bandwidth()
    workload: Workload
    admission: Admission = Admission()

    # Resolved views (set by `load_scenario`): the catalogue with the scenario's additions.
    @property
    def catalogue(self) -> Catalogue:
        return default_catalogue().merged(self.models, self.hardware)

    @field_validator("name")
    @classmethod
    def _file_safe_name(cls, v: str) -> str:
        if len(v) > MAX_SCENARIO_NAME or not SCENARIO_NAME.fullmatch(v):
            raise ValueError(
                f"must be 1 to {MAX_SCENARIO_NAME} lower-case letters, digits, '-', '.' or '_', "
                f"starting and ending with a letter or digit (it names output files), got {v!r}"
            )
        return v

    @field_validator("hardware")
    @classmethod
    def _label_safe_keys(cls, v: dict[str, HardwareInfo]) -> dict[str, HardwareInfo]:
        for key in v:
            if not key or not is_label_value(key):
                raise ValueError(
                    f"{key[:40]!r}: a hardware key is the value of the dev cluster's node label "
                    f"{LABEL_HARDWARE}: 1 to {MAX_LABEL_VALUE} letters, digits, '-', '_' or "
                    "'.', starting and ending with a letter or digit"
                )
        return v

    @model_validator(mode="after")
    def _references(self) -> Scenario:
        cat = default_catalogue().merged(self.models, self.hardware)
        for i, s in enumerate(self.servers):
            if s.hardware not in cat.hardware:
                raise ValueError(
                    f"servers[{i}].hardware: unknown hardware {s.hardware!r}; "
                    f"known: {sorted(cat.hardware)}"
                )
        nodes = sum(s.count for s in self.servers)
        if nodes > MAX_SERVERS:  # (before expanding them: `count: 10000000` took minutes)
            raise ValueError(
                f"servers: {nodes:,} servers after count expansion, more than {MAX_SERVERS:,}"
            )
        servers = self.expanded_servers()
        names = [n for n, _ in servers]
        for i, s in enumerate(self.servers):
            # (`count` appends -1 … -N: the longest is the last.)
            node = s.name if s.count == 1 else f"{s.name}-{s.count}"
            if len(node) > MAX_LABEL_VALUE:
                raise ValueError(
                    f"servers[{i}].name: node name {node[:20]!r}… is {len(node)} characters"
                    f"{' after count expansion' if s.count > 1 else ''}, more than "
                    f"{MAX_LABEL_VALUE}: the dev cluster's node for it carries its name as the "
                    "kubernetes.io/hostname label, a value of at most 63 characters"
                )
        if len(names) != len(set(names)):
            raise ValueError("servers: server names (after count expansion) must be unique")
        tiers = {t.value for t in Tier}
        for i, w in enumerate(self.bandwidth.windows):
            for p in w.servers or []:  # (a typo would silently match nothing)
                if p not in tiers and not any(w.selects(p, n, s.tier) for n, s in servers):
                    raise ValueError(
                        f"bandwidth.windows[{i}].servers: {p!r} is no tier and matches no "
                        f"server name; servers: {names}"
                    )
        for i, c in enumerate(self.workload.classes):
            if c.model not in cat.models:
                raise ValueError(
                    f"workload.classes[{i}].model: unknown model {c.model!r}; "
                    f"known: {sorted(cat.models)}"
                )
            for v in c.variants or []:
                if v.precision not in cat.models[c.model].weights_gb:
                    raise ValueError(
                        f"workload.classes[{i}].variants: {c.model} has no "
                        f"{v.precision.value} weights"
                    )
        return self

    def declared_rate(self, k: int) -> float:
        """The mean arrival rate a user would declare for class k (rate windows aside)."""
        p = self.workload.process(k)
        if p is None and self.workload.arrivals.kind == "trace":
            # (`share_rate` is 0 here: a scenario-wide trace has no rate_rps.)
            try:
                return self._shared_trace_rate(k)
            except (OSError, ValueError):  # a bad file: its error when the run starts
                return 0.0
        if p is None:
            return self.workload.share_rate(k)
        if p.kind == "trace":
            assert p.file is not None
            try:
                return _trace_rate(p.file, self.workload.classes[k].name, self.duration_s)
            except (OSError, ValueError):
                return 0.0
        return p.rate_rps

    def _shared_trace_rate(self, k: int) -> float:
        """Class k's mean rate in the scenario-wide trace over [0, duration_s): its rows,
        or (without a `class` column) its share of all rows among the classes that set no
        arrivals of their own, as `generate` draws them."""
        wl = self.workload
        assert wl.arrivals.file is not None
        t, names = _read_classes(wl.arrivals.file)
        inside = (t >= 0) & (t < self.duration_s)
        if names is not None:
            mine = np.array([n == wl.classes[k].name for n in names], bool)
            return float((inside & mine).sum()) / self.duration_s
        shared = sum(c.share for c in wl.classes if c.arrivals is None)
        return float(inside.sum()) * wl.classes[k].share / shared / self.duration_s

    def expanded_servers(self) -> list[tuple[str, Server]]:
        """(node name, server) with `count` expanded: name-1 … name-N."""
        out: list[tuple[str, Server]] = []
        for s in self.servers:
            if s.count == 1:
                out.append((s.name, s))
            else:
                out.extend((f"{s.name}-{k + 1}", s) for k in range(s.count))
        return out

    def services(self) -> list[ServiceSpec]:
        """Each workload class as the `ServiceSpec` a user would declare for it."""
        with trace_reads():
            return [self.service(k) for k in range(len(self.workload.classes))]

    def service(self, k: int) -> ServiceSpec:
        """Class k as the `ServiceSpec` a user would declare for it."""
        c = self.workload.classes[k]
        return ServiceSpec(
            name=c.name,
            model=c.model,
            variants=c.variants or _default_variants(),
            requirements=Requirements(deadline=c.deadline, min_quality=min(c.min_quality.values)),
            traffic=Traffic(
                rate_rps=self.declared_rate(k),
                prompt_tokens=max(1.0, dist_mean(c.input_tokens)),
                output_tokens=max(1.0, dist_mean(c.output_tokens)),
                payload_bytes=dist_mean(c.attachment_bytes) if c.attachment_bytes else 0.0,
            ),
            allowed_tiers=c.allowed_tiers,
        )


def _trace_rate(path: str, cls: str, duration_s: float) -> float:
    """Mean rate of a class's trace over [0, duration_s) (declared traffic only)."""
    t, names = _read_classes(path)
    if names is not None:
        t = t[np.array([n == cls for n in names], bool)]
    return float(((t >= 0) & (t < duration_s)).sum()) / duration_s


# The trace files read in a `trace_reads` block, by path: (times, class column) or the
# error reading it. Each class's declared rate reads its trace, so a scenario-wide trace
# (up to 10M rows) was parsed once per class, and again by each check of a load.
_TRACES: ContextVar[dict[str, tuple[NDArray[np.float64], list[str] | None] | Exception] | None] = (
    ContextVar("_TRACES", default=None)
)


@contextmanager
def trace_reads() -> Iterator[None]:
    """Read each trace file once within the block (a load's checks, `services()`)."""
    if _TRACES.get() is not None:  # (nested: the outer block's reads)
        yield
        return
    token = _TRACES.set({})
    try:
        yield
    finally:
        _TRACES.reset(token)


def _read_classes(path: str) -> tuple[NDArray[np.float64], list[str] | None]:
    from perllm.world.trace import read_classes

    cache = _TRACES.get()
    if cache is None:
        return read_classes(path)
    if path not in cache:
        try:
            cache[path] = read_classes(path)
        except (OSError, ValueError) as e:  # (a bad file: not parsed again for each class)
            cache[path] = e
    got = cache[path]
    if isinstance(got, Exception):
        raise got
    return got


def _default_variants() -> list[ModelVariant]:
    return [
        ModelVariant(tier=Tier.EDGE, precision=Precision.Q4_K_M),
        ModelVariant(tier=Tier.CLOUD, precision=Precision.FP16),
    ]
