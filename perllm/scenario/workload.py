"""The workload of a scenario: service classes, arrival processes and rate windows."""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from perllm.contract import Deadline, ModelVariant, Tier
from perllm.crd_fields import CHILD_SUFFIX, DNS1035, MAX_NAME
from perllm.scenario.base import Strict
from perllm.scenario.dists import Choice, Dist


class Window(Strict):
    """A time window [at_s, until_s) that scales something by `factor`."""

    at_s: Annotated[float, Field(strict=True, ge=0)]
    until_s: Annotated[float, Field(strict=True, gt=0)]
    factor: Annotated[float, Field(strict=True, gt=0)]
    servers: list[str] | None = Field(
        default=None, description="Server names or tier names (edge/cloud); None = all."
    )

    @model_validator(mode="after")
    def _order(self) -> Window:
        if self.until_s <= self.at_s:
            raise ValueError("until_s: must be after at_s")
        return self

    @staticmethod
    def selects(entry: str, name: str, tier: str) -> bool:
        """Whether one `servers` entry (a name pattern or a tier) takes server `name`."""
        return tier == entry or fnmatch(name, entry)


ArrivalKind = Literal["poisson", "gamma", "trace"]

# Largest coefficient of variation of gamma gaps (shape 1/cv² ≥ 0.01). Beyond it most
# gaps underflow to exactly 0 s (at cv 100, 93 %), so the realised rate is no longer the
# asked one, and at cv ~1e4 and above drawing the arrivals practically never ends.
MAX_CV = 10.0


class ClassArrivals(Strict):
    """A class's own arrival process; every field left out comes from `workload.arrivals`
    (kind, cv), the class's share of `workload.arrivals.rate_rps`, or `workload.rate_windows`."""

    kind: ArrivalKind | None = None
    rate_rps: Annotated[float, Field(strict=True, gt=0)] | None = None
    cv: Annotated[float, Field(strict=True, gt=0, le=MAX_CV)] | None = None
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


# Largest share: shares are relative, and two of 1e308 summed to inf, so that every class's
# rate was NaN, refused as a non-finite `arrivals.rate_rps` the file did not set.
MAX_SHARE = 1e9


class ServiceClass(Strict):
    """A kind of service in the workload mix; becomes one `ServiceSpec` (one LLMService)."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]
    share: Annotated[float, Field(strict=True, gt=0, le=MAX_SHARE)] = 1.0
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

    @field_validator("name")
    @classmethod
    def _service_name(cls, v: str) -> str:
        # A class is an LLMService of that name in a dev cluster (the twin matches them
        # by name), whose name the operator holds to MAX_NAME.
        if len(v) > MAX_NAME:
            raise ValueError(
                f"{v[:20]!r}… is {len(v)} characters, more than {MAX_NAME}: a class is the "
                f"LLMService of its name, whose child Service <name>{CHILD_SUFFIX} is a "
                "DNS-1035 label of at most 63 characters"
            )
        if not DNS1035.fullmatch(v):  # (the pattern lets a digit lead; the operator does not)
            raise ValueError(
                f"{v!r} must start with a letter: a class is the LLMService of its name, a "
                "DNS-1035 label"
            )
        return v

    @model_validator(mode="after")
    def _floors(self) -> ServiceClass:
        if not all(0 <= q <= 1 for q in self.min_quality.values):
            raise ValueError("min_quality.values: each a quality in [0, 1]")
        return self


class Arrivals(Strict):
    """Arrival process: `poisson`, `gamma` (bursty, coefficient of variation `cv`) or `trace`."""

    kind: ArrivalKind = "poisson"
    rate_rps: Annotated[float, Field(strict=True, gt=0)] | None = None
    cv: Annotated[float, Field(strict=True, gt=0, le=MAX_CV)] = 2.0
    file: str | None = Field(default=None, description="CSV trace (kind: trace).")

    @model_validator(mode="after")
    def _need(self) -> Arrivals:
        if self.kind in ("poisson", "gamma") and self.rate_rps is None:
            raise ValueError(f"rate_rps: required for kind {self.kind}")
        if self.kind == "trace" and not self.file:
            raise ValueError("file: required for kind trace")
        return self


class Workload(Strict):
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
