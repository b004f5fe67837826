"""Scenario files: one YAML describes a world (servers, links, workload, dynamics).

The simulator runs it and the local control plane turns its servers into KWOK nodes,
so a simulation and a test cluster come from the same file. Every field is documented
in docs/scenarios.md; validation errors name the field (`servers[0].link.bandwidth_mbps`).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from perllm.contract import (
    Deadline,
    EnergyWeights,
    ModelVariant,
    Precision,
    Requirements,
    Server,
    ServiceSpec,
    Tier,
    Traffic,
)
from perllm.profiles import Catalogue, HardwareInfo, ModelInfo, default_catalogue


class ScenarioError(ValueError):
    """A scenario that cannot be loaded; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Token-length distributions. Presets are quantile tables computed from the public Azure
# LLM inference trace 2023 (calibration study §6.1); resampling their inverse CDF keeps the
# multi-modal shape better than a lognormal fit.
AZURE_PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    # probabilities, token counts (p0 and p100 from min/max of the trace)
    "azure-conv-input": (
        (0, 0.10, 0.25, 0.50, 0.75, 0.90, 0.99, 1),
        (2, 207, 396, 1020, 1189, 2734, 4142, 14050),
    ),
    "azure-conv-output": (
        (0, 0.10, 0.25, 0.50, 0.75, 0.90, 0.99, 1),
        (1, 54, 85, 129, 395, 424, 601, 1000),
    ),
    "azure-code-input": (
        (0, 0.10, 0.25, 0.50, 0.75, 0.90, 0.99, 1),
        (3, 147, 578, 1469, 2744, 5188, 7436, 7437),
    ),
    "azure-code-output": (
        (0, 0.10, 0.25, 0.50, 0.75, 0.90, 0.99, 1),
        (1, 7, 9, 13, 24, 55, 251, 1899),
    ),
}


class Dist(_Strict):
    """A positive distribution: `preset`, `lognormal`, `uniform`, `constant` or `quantiles`."""

    kind: Literal["preset", "lognormal", "uniform", "constant", "quantiles"]
    name: str | None = Field(default=None, description="Preset name (kind: preset).")
    mu: float | None = None
    sigma: Annotated[float, Field(ge=0)] | None = None
    low: Annotated[float, Field(ge=0)] | None = None
    high: Annotated[float, Field(ge=0)] | None = None
    value: Annotated[float, Field(ge=0)] | None = None
    probs: list[float] | None = None
    values: list[float] | None = None
    max: Annotated[float, Field(gt=0)] | None = Field(default=None, description="Clip draws here.")

    @model_validator(mode="after")
    def _params(self) -> Dist:
        need = {
            "preset": ("name",),
            "lognormal": ("mu", "sigma"),
            "uniform": ("low", "high"),
            "constant": ("value",),
            "quantiles": ("probs", "values"),
        }[self.kind]
        missing = [k for k in need if getattr(self, k) is None]
        if missing:
            raise ValueError(f"kind {self.kind} needs {', '.join(missing)}")
        if self.kind == "preset" and self.name not in AZURE_PRESETS:
            raise ValueError(f"name: unknown preset {self.name!r}; known: {sorted(AZURE_PRESETS)}")
        if (
            self.kind == "uniform"
            and self.low is not None
            and self.high is not None
            and self.high < self.low
        ):
            raise ValueError("high: must be >= low")
        if self.kind == "quantiles":
            p, v = self.probs or [], self.values or []
            if (
                len(p) != len(v)
                or len(p) < 2
                or p[0] != 0
                or p[-1] != 1
                or any(b < a for a, b in itertools.pairwise(p))
                or any(b < a for a, b in itertools.pairwise(v))
            ):
                raise ValueError(
                    "probs/values: equal length, probs rising from 0 to 1, values non-decreasing"
                )
        return self

    def quantile_table(self) -> tuple[Sequence[float], Sequence[float]] | None:
        if self.kind == "preset":
            assert self.name is not None
            return AZURE_PRESETS[self.name]
        if self.kind == "quantiles":
            assert self.probs is not None and self.values is not None
            return self.probs, self.values
        return None


class Choice(_Strict):
    """A discrete distribution over values (e.g. quality floors)."""

    values: list[float] = Field(min_length=1)
    weights: list[Annotated[float, Field(ge=0)]] | None = None

    @model_validator(mode="after")
    def _weights(self) -> Choice:
        if self.weights is not None and (
            len(self.weights) != len(self.values) or sum(self.weights) <= 0
        ):
            raise ValueError("weights: one non-negative weight per value, not all zero")
        return self


class Window(_Strict):
    """A time window [at_s, until_s) that scales something by `factor`."""

    at_s: Annotated[float, Field(ge=0)]
    until_s: Annotated[float, Field(gt=0)]
    factor: Annotated[float, Field(gt=0)]
    servers: list[str] | None = Field(
        default=None, description="Server names or tier names (edge/cloud); None = all."
    )

    @model_validator(mode="after")
    def _order(self) -> Window:
        if self.until_s <= self.at_s:
            raise ValueError("until_s: must be after at_s")
        return self


ArrivalKind = Literal["poisson", "gamma", "trace"]


class ClassArrivals(_Strict):
    """A class's own arrival process; every field left out comes from `workload.arrivals`
    (kind, cv), the class's share of `workload.arrivals.rate_rps`, or `workload.rate_windows`."""

    kind: ArrivalKind | None = None
    rate_rps: Annotated[float, Field(gt=0)] | None = None
    cv: Annotated[float, Field(gt=0)] | None = None
    file: str | None = Field(default=None, description="CSV of arrival seconds (kind: trace).")
    rate_windows: list[Window] | None = Field(
        default=None, description="Rate multipliers over time; None = workload.rate_windows."
    )

    @model_validator(mode="after")
    def _fields(self) -> ClassArrivals:
        if self.file is not None and self.kind != "trace":
            raise ValueError("kind: a trace file needs kind: trace")
        if self.kind == "trace":
            if not self.file:
                raise ValueError("file: required for kind trace")
            for k in ("rate_rps", "cv", "rate_windows"):
                if getattr(self, k) is not None:
                    raise ValueError(f"{k}: not used by kind trace (the file gives the times)")
        if self.kind == "poisson" and self.cv is not None:
            raise ValueError("cv: only for kind gamma")
        return self


@dataclass(frozen=True)
class Process:
    """One class's resolved arrival process (`Workload.process`)."""

    kind: ArrivalKind
    rate_rps: float  # 0 for a trace
    cv: float
    file: str | None
    windows: tuple[Window, ...]


class ServiceClass(_Strict):
    """A kind of service in the workload mix; becomes one `ServiceSpec` (one LLMService)."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]
    share: Annotated[float, Field(gt=0)] = 1.0
    model: str
    variants: list[ModelVariant] | None = None
    allowed_tiers: list[Tier] = Field(default_factory=lambda: [Tier.EDGE, Tier.CLOUD])
    input_tokens: Dist
    output_tokens: Dist
    attachment_bytes: Dist | None = None
    deadline: Deadline
    min_quality: Choice = Choice(values=[0.0])
    arrivals: ClassArrivals | None = Field(
        default=None,
        description="Own arrival process; None = a share of the scenario-wide process.",
    )


class Arrivals(_Strict):
    """Arrival process: `poisson`, `gamma` (bursty, coefficient of variation `cv`) or `trace`."""

    kind: ArrivalKind = "poisson"
    rate_rps: Annotated[float, Field(gt=0)] | None = None
    cv: Annotated[float, Field(gt=0)] = 2.0
    file: str | None = Field(default=None, description="CSV trace (kind: trace).")

    @model_validator(mode="after")
    def _need(self) -> Arrivals:
        if self.kind in ("poisson", "gamma") and self.rate_rps is None:
            raise ValueError(f"rate_rps: required for kind {self.kind}")
        if self.kind == "trace" and not self.file:
            raise ValueError("file: required for kind trace")
        return self


class Workload(_Strict):
    arrivals: Arrivals
    rate_windows: list[Window] = Field(default_factory=list, description="Flash crowds.")
    classes: list[ServiceClass] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> Workload:
        names = [c.name for c in self.classes]
        if len(names) != len(set(names)):
            raise ValueError("classes: class names must be unique")
        a = self.arrivals
        for i, c in enumerate(self.classes):
            own = c.arrivals
            if own is None:
                continue
            kind = own.kind or a.kind
            if kind == "trace" and not own.file:
                raise ValueError(
                    f"classes[{i}].arrivals.file: required: the class inherits kind trace, "
                    "and a class replays its own file (or set kind: poisson / gamma)"
                )
            if kind != "trace" and own.rate_rps is None and a.rate_rps is None:
                raise ValueError(
                    f"classes[{i}].arrivals.rate_rps: required: workload.arrivals has no "
                    "rate_rps to take the class's share of"
                )
        return self

    def process(self, k: int) -> Process | None:
        """The own arrival process of class k, resolved against the scenario-wide settings;
        None when the class is a share of the scenario-wide process."""
        own = self.classes[k].arrivals
        if own is None:
            return None
        a = self.arrivals
        kind = own.kind or a.kind
        if kind == "trace":
            return Process("trace", 0.0, a.cv, own.file, ())
        return Process(
            kind,
            own.rate_rps if own.rate_rps is not None else self.share_rate(k),
            own.cv if own.cv is not None else a.cv,
            None,
            tuple(self.rate_windows if own.rate_windows is None else own.rate_windows),
        )

    def share_rate(self, k: int) -> float:
        """Class k's share of the scenario-wide rate: rate_rps × share / Σ shares."""
        total = sum(c.share for c in self.classes)
        return (self.arrivals.rate_rps or 0.0) * self.classes[k].share / total

    def windows(self, k: int) -> tuple[Window, ...]:
        """The rate windows that apply to class k."""
        p = self.process(k)
        return tuple(self.rate_windows) if p is None else p.windows


class Bandwidth(_Strict):
    """Link dynamics on top of each link's nominal × U(1±noise) per slot."""

    windows: list[Window] = Field(default_factory=list, description="Collapses or boosts.")
    trace: str | None = Field(
        default=None, description="CSV with columns time_s,server,mbps: replaces nominal."
    )


class Admission(_Strict):
    """What a server's gateway does with a request that can no longer start in time
    (docs/scenarios.md, `admission`): `none` queues it however late; `reject-late`
    drops it once its deadline has passed in the queue (it could not start before it);
    `timeout` drops it after `timeout_s` in the queue, whatever its deadline."""

    mode: Literal["none", "reject-late", "timeout"] = "reject-late"
    timeout_s: Annotated[float, Field(gt=0)] = 30.0


class Scenario(_Strict):
    name: str
    description: str = ""
    duration_s: Annotated[float, Field(gt=0)] = 1800.0
    slot_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    weights: EnergyWeights = EnergyWeights()
    speed_noise: Annotated[float, Field(ge=0, le=1)] = Field(
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

    @model_validator(mode="after")
    def _references(self) -> Scenario:
        cat = default_catalogue().merged(self.models, self.hardware)
        for i, s in enumerate(self.servers):
            if s.hardware not in cat.hardware:
                raise ValueError(
                    f"servers[{i}].hardware: unknown hardware {s.hardware!r}; "
                    f"known: {sorted(cat.hardware)}"
                )
        names = [n for n, _ in self.expanded_servers()]
        if len(names) != len(set(names)):
            raise ValueError("servers: server names (after count expansion) must be unique")
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
        if p is None:
            return self.workload.share_rate(k)
        if p.kind == "trace":
            assert p.file is not None
            try:
                return _trace_rate(p.file, self.workload.classes[k].name, self.duration_s)
            except (OSError, ValueError):
                return 0.0
        return p.rate_rps

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
        out = []
        for k, c in enumerate(self.workload.classes):
            out.append(
                ServiceSpec(
                    name=c.name,
                    model=c.model,
                    variants=c.variants or _default_variants(),
                    requirements=Requirements(
                        deadline=c.deadline, min_quality=min(c.min_quality.values)
                    ),
                    traffic=Traffic(
                        rate_rps=self.declared_rate(k),
                        prompt_tokens=max(1.0, _mean(c.input_tokens)),
                        output_tokens=max(1.0, _mean(c.output_tokens)),
                        payload_bytes=_mean(c.attachment_bytes) if c.attachment_bytes else 0.0,
                    ),
                    allowed_tiers=c.allowed_tiers,
                )
            )
        return out


def _trace_rate(path: str, cls: str, duration_s: float) -> float:
    """Mean rate of a class's trace over [0, duration_s) (declared traffic only)."""
    from perllm.world.workload import read_times

    t = read_times(path, cls)
    return float(((t >= 0) & (t < duration_s)).sum()) / duration_s


def _default_variants() -> list[ModelVariant]:
    return [
        ModelVariant(tier=Tier.EDGE, precision=Precision.Q4_K_M),
        ModelVariant(tier=Tier.CLOUD, precision=Precision.FP16),
    ]


def _mean(d: Dist) -> float:
    """Mean of a distribution (what a service would declare as its expected traffic)."""
    import numpy as np

    if d.kind == "constant":
        assert d.value is not None
        return d.value
    if d.kind == "uniform":
        assert d.low is not None and d.high is not None
        return (d.low + d.high) / 2
    if d.kind == "lognormal":
        assert d.mu is not None and d.sigma is not None
        m = float(np.exp(d.mu + d.sigma**2 / 2))
        return min(m, d.max) if d.max else m
    table = d.quantile_table()
    assert table is not None
    p, v = np.asarray(table[0], float), np.asarray(table[1], float)
    m = float(np.sum(np.diff(p) * (v[1:] + v[:-1]) / 2))  # piecewise-linear inverse CDF
    return min(m, d.max) if d.max else m


_SUBFIELD = re.compile(r"^([a-z_]+(?:\[\d+\])?(?:\.[a-z_]+(?:\[\d+\])?)*): ")


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ""
        for part in e["loc"]:
            loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
        msg = e["msg"].removeprefix("Value error, ")
        # A model-level check names the field below its model: join it to the location
        # (`workload` + `classes[2].arrivals.file: …` -> `workload.classes[2].arrivals.file: …`).
        sub = _SUBFIELD.match(msg)
        if sub:
            loc = f"{loc}.{sub.group(1)}" if loc else sub.group(1)
            msg = msg[sub.end() :]
        lines.append(f"{loc or '(top level)'}: {msg}")
    return "\n  ".join(lines)


def parse_scenario(
    data: object, source: str = "<scenario>", base_dir: Path | None = None
) -> Scenario:
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: a scenario is a YAML mapping, got {type(data).__name__}")
    try:
        sc = Scenario.model_validate(data)
    except ValidationError as e:
        raise ScenarioError(f"{source}: invalid scenario:\n  {_format_errors(e)}") from None
    # Trace paths are relative to the scenario file.
    if base_dir is not None:
        arr = sc.workload.arrivals
        if arr.file and not Path(arr.file).is_absolute():
            sc = sc.model_copy(
                update={
                    "workload": sc.workload.model_copy(
                        update={
                            "arrivals": arr.model_copy(update={"file": str(base_dir / arr.file)})
                        }
                    )
                }
            )
        classes = list(sc.workload.classes)
        for i, c in enumerate(classes):
            f = c.arrivals.file if c.arrivals else None
            if c.arrivals and f and not Path(f).is_absolute():
                classes[i] = c.model_copy(
                    update={"arrivals": c.arrivals.model_copy(update={"file": str(base_dir / f)})}
                )
        if classes != list(sc.workload.classes):
            sc = sc.model_copy(
                update={"workload": sc.workload.model_copy(update={"classes": classes})}
            )
        if sc.bandwidth.trace and not Path(sc.bandwidth.trace).is_absolute():
            sc = sc.model_copy(
                update={
                    "bandwidth": sc.bandwidth.model_copy(
                        update={"trace": str(base_dir / sc.bandwidth.trace)}
                    )
                }
            )
    files = [
        ("workload.arrivals.file", sc.workload.arrivals.file),
        ("bandwidth.trace", sc.bandwidth.trace),
    ]
    files += [
        (f"workload.classes[{i}].arrivals.file", c.arrivals.file)
        for i, c in enumerate(sc.workload.classes)
        if c.arrivals is not None
    ]
    for label, path in files:
        if path and not Path(path).is_file():
            raise ScenarioError(f"{source}: invalid scenario:\n  {label}: no such file {path}")
    return sc


def load_scenario(path: str | Path) -> Scenario:
    """Load a scenario file, or a built-in scenario by name (see `builtin_scenarios`)."""
    p = Path(path)
    if not p.exists():
        builtin = _builtin_dir() / f"{path}.yaml"
        if builtin.is_file():
            p = builtin
        else:
            raise ScenarioError(
                f"{path}: no such file or built-in scenario; built-ins: "
                f"{', '.join(builtin_scenarios())}"
            )
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ScenarioError(f"{p}: not valid YAML: {e}") from None
    return parse_scenario(data, str(p), p.parent)


def _builtin_dir() -> Path:
    return Path(str(resources.files("perllm").joinpath("scenarios")))


def builtin_scenarios() -> list[str]:
    return sorted(p.stem for p in _builtin_dir().glob("*.yaml"))


REFERENCE_SCENARIOS = ("paper-yi-6b", "paper-llama2-7b", "paper-llama3-8b", "paper-yi-9b")
