"""Contract types shared by the simulator, the operator and the extender.

These are the nouns of PerLLM: what a service asks for (deadline, quality floor,
expected traffic, allowed tiers, per-tier model variants) and what a server offers
(tier, hardware, link). The `LLMService` CRD, the extender's decision input and the
simulator's scenario files are all renderings of these models, so a field means the
same thing everywhere.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Tier(StrEnum):
    EDGE = "edge"
    CLOUD = "cloud"


class Precision(StrEnum):
    """Weight formats with calibrated performance (see docs/calibration.md)."""

    FP16 = "fp16"
    Q8_0 = "q8_0"  # GGUF 8.5 bits per weight (llama.cpp, CPU)
    Q4_K_M = "q4_k_m"  # GGUF ~4.85 bits per weight (llama.cpp, CPU)
    INT4_AWQ = "int4_awq"  # GPU weight-only int4


class _Strict(BaseModel):
    # Unknown keys are errors: a typo in a scenario or a CR must not be silently ignored.
    # Numbers are finite: `gt=0`/`ge=0` let .inf through (an infinite energy weight made
    # every option's normalised energy NaN).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# Upper bounds of a service's numbers, the same as the LLMService CRD's `maximum`s
# (tests/unit/test_crd.py checks that they agree). They keep a spec from outside admission
# (a scenario, a test) as sane as an admitted one: e.g. a million requests per second
# would make the twin draw and simulate every one of them.
MAX_DEADLINE_S = 86_400.0  # a day: batch jobs included
MAX_PER_OUTPUT_TOKEN_S = 60.0
MAX_RATE_RPS = 1_000.0  # per service; a fleet of model servers, not one
MAX_PROMPT_TOKENS = 2**20  # the longest context windows served today
MAX_OUTPUT_TOKENS = 2**17
MAX_PAYLOAD_BYTES = 2**30  # 1 GiB of attachments per request
MAX_MODEL_NAME = 253
# A model name is a catalogue key or a Hugging Face id (org/repo[:tag]): it becomes a server's
# CLI argument (--hf-repo, --model) and the OpenAI `model` the router accepts, so printable
# ASCII without spaces or control characters, starting with a letter or digit (not '-').
MODEL_NAME = r"[A-Za-z0-9][!-~]*"
MAX_REPLICAS = 1_000  # model-server replicas of a service (in all, or in one tier)

# Lower bounds of a link's bandwidth and of a server's true speed. Below 1 kbit/s (slower
# than dial-up) no path carries LLM requests; a server a thousand times slower than its
# profile is other hardware (describe it under `hardware:`). Any positive number passed
# before: 1e-300 Mbps made every upload over that link take inf seconds, and perf_scale
# 1e-300 reported over 1e16 J per service.
MIN_LINK_MBPS = 1e-3
MAX_LINK_MBPS = 1e7  # (Link's upper bound, below)
MIN_PERF_SCALE = 1e-3

# Every number of a service, a server, a scenario or a catalogue entry is strict: a YAML
# `true` or "5" is refused naming the field instead of becoming 1.0 or 5.0 (`count: true`
# ran one server, `duration_s: "20"` 20 s; the CRD's schema refuses both at admission;
# service_spec checks objects that did not pass it). Integers are numbers; a whole-number
# field takes integers only. (Strict mode on a whole model would also refuse an enum
# written as its string, `tier: edge`: numbers are made strict one field at a time.)
Number = Annotated[float, Field(strict=True)]
Fraction = Annotated[float, Field(strict=True, ge=0.0, le=1.0)]


class ModelVariant(_Strict):
    """The weights a tier runs for a service's model."""

    tier: Tier
    precision: Precision
    quality: Fraction | None = Field(
        default=None,
        description="Quality score in 0..1 (MMLU/100 by default, from the catalogue).",
    )


class Deadline(_Strict):
    """Processing-time deadline ΔD of one request: `seconds + per_output_token_s × L_out`.

    The second term is the TPOT allowance of DistServe-style SLOs; 0 gives a fixed budget.
    """

    seconds: Annotated[float, Field(strict=True, gt=0.0, le=MAX_DEADLINE_S)]
    per_output_token_s: Annotated[float, Field(strict=True, ge=0.0, le=MAX_PER_OUTPUT_TOKEN_S)] = (
        0.0
    )
    percentile: Annotated[float, Field(strict=True, gt=0.0, le=100.0)] = 95.0

    def budget(self, output_tokens: float) -> float:
        return self.seconds + self.per_output_token_s * output_tokens


class Requirements(_Strict):
    deadline: Deadline
    min_quality: Fraction = 0.0


class Traffic(_Strict):
    """Expected traffic of a service: used for prediction before telemetry exists."""

    rate_rps: Annotated[float, Field(strict=True, ge=0.0, le=MAX_RATE_RPS)] = 0.0
    prompt_tokens: Annotated[float, Field(strict=True, gt=0.0, le=MAX_PROMPT_TOKENS)] = 512
    output_tokens: Annotated[float, Field(strict=True, gt=0.0, le=MAX_OUTPUT_TOKENS)] = 128
    payload_bytes: Annotated[float, Field(strict=True, ge=0.0, le=MAX_PAYLOAD_BYTES)] = Field(
        default=0.0, description="Attachment bytes on top of the prompt text."
    )


class ServiceSpec(_Strict):
    """A service with personal requirements: one `LLMService`, or one class in a scenario."""

    name: Annotated[str, Field(min_length=1, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]
    model: str = Field(
        min_length=1,
        max_length=MAX_MODEL_NAME,
        pattern=f"^{MODEL_NAME}$",
        description="Model key in the catalogue, e.g. llama2-7b.",
    )
    variants: list[ModelVariant] = Field(
        default_factory=lambda: [
            ModelVariant(tier=Tier.EDGE, precision=Precision.Q4_K_M),
            ModelVariant(tier=Tier.CLOUD, precision=Precision.FP16),
        ]
    )
    requirements: Requirements
    traffic: Traffic = Traffic()
    allowed_tiers: list[Tier] = Field(default_factory=lambda: [Tier.EDGE, Tier.CLOUD])
    tier_replicas: dict[Tier, Annotated[int, Field(strict=True, ge=0, le=MAX_REPLICAS)]] | None = (
        Field(
            default=None,
            description="Replicas per tier (each an allowed tier): one set of model servers "
            "per tier, each on its own variant. None: one set whose tier PerLLM decides.",
        )
    )

    @model_validator(mode="after")
    def _one_variant_per_allowed_tier(self) -> ServiceSpec:
        tiers = [v.tier for v in self.variants]
        if len(tiers) != len(set(tiers)):
            raise ValueError("variants: at most one variant per tier")
        missing = [t.value for t in self.allowed_tiers if t not in tiers]
        if missing:
            raise ValueError(f"variants: no variant for allowed tier(s) {missing}")
        if not self.allowed_tiers:
            raise ValueError("allowed_tiers: must name at least one tier")
        if len(self.allowed_tiers) != len(set(self.allowed_tiers)):
            # (the CRD's allowedTiers is a set: [edge, edge] is refused at admission)
            got = [t.value for t in self.allowed_tiers]
            raise ValueError(f"allowed_tiers: each tier at most once, got {got}")
        if self.tier_replicas is not None:
            outside = [t.value for t in self.tier_replicas if t not in self.allowed_tiers]
            if outside:
                raise ValueError(f"tier_replicas: tier(s) {outside} not in allowed_tiers")
            if not any(self.tier_replicas.values()):
                raise ValueError("tier_replicas: at least one tier needs a replica")
        # The floor is hard: above every allowed variant's quality no server qualifies (the
        # extender passes no node, the pods stay Pending). A variant without a quality takes
        # the catalogue's, which is not known here.
        floor = self.requirements.min_quality
        allowed = [v.quality for v in self.variants if v.tier in self.allowed_tiers]
        if allowed and all(q is not None and q < floor for q in allowed):
            raise ValueError(
                f"min_quality: above the quality of every variant of an allowed tier "
                f"({', '.join(f'{q:g}' for q in allowed if q is not None)} < {floor:g}): no "
                "server could serve the service"
            )
        return self

    def variant_for(self, tier: Tier) -> ModelVariant | None:
        return next((v for v in self.variants if v.tier == tier), None)


class Link(_Strict):
    """The path between a server and its users: nominal bandwidth with multiplicative noise."""

    # Upper bounds far beyond any real path (10 Tbit/s, 1,000 s, 370× the 2015 Internet
    # average of 27 µJ/bit): they only keep a typo such as 1e308 from overflowing the cost
    # model into inf/NaN energies that would skew every other server's normalisation. The
    # lower bound of the bandwidth is MIN_LINK_MBPS.
    bandwidth_mbps: Annotated[float, Field(strict=True, ge=MIN_LINK_MBPS, le=MAX_LINK_MBPS)]
    noise: Annotated[float, Field(strict=True, ge=0.0, lt=1.0)] = Field(
        default=0.2, description="Bandwidth is nominal × U(1-noise, 1+noise), redrawn each slot."
    )
    rtt_ms: Annotated[float, Field(strict=True, ge=0.0, le=1e6)] = 10.0
    energy_uj_per_bit: Annotated[float, Field(strict=True, ge=0.0, le=1e4)] = Field(
        default=0.1, description="Transmission energy per bit on this path (µJ)."
    )


class Server(_Strict):
    """One node (or a group of identical nodes with `count`)."""

    name: Annotated[str, Field(min_length=1, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")]
    tier: Tier
    hardware: str = Field(description="Hardware key in the catalogue, e.g. xeon-silver-4214r.")
    link: Link
    count: Annotated[int, Field(strict=True, ge=1)] = 1
    perf_scale: Annotated[float, Field(strict=True, ge=MIN_PERF_SCALE)] = Field(
        default=1.0,
        description="True speed relative to the catalogue profile (world model only; the "
        "scheduler does not see it and must learn it).",
    )


# Largest energy weight: the weights are relative, so a million to one is beyond any use;
# near 1e308 a weight times an energy overflowed to inf, and inf − inf made the cost model's
# energies NaN (CS-UCB and greedy-deadline then placed requests differently, in silence).
MAX_ENERGY_WEIGHT = 1e6
Weight = Annotated[float, Field(strict=True, ge=0.0, le=MAX_ENERGY_WEIGHT)]


class EnergyWeights(_Strict):
    """ω_tran, ω_infer, ω_idle of the objective."""

    tran: Weight = 1.0
    infer: Weight = 1.0
    idle: Weight = 1.0
