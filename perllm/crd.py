"""The `LLMService` custom resource (crds/llmservices.perllm.io.yaml) and the contract.

The CRD is the Kubernetes rendering of `perllm.contract.ServiceSpec`; the operator and the
extender read a service's requirements through `service_spec()`, so a field means the
same thing in a cluster as in the simulator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from perllm.contract import (
    Deadline,
    ModelVariant,
    Precision,
    Requirements,
    ServiceSpec,
    Tier,
    Traffic,
)

GROUP = "perllm.io"
VERSION = "v1alpha1"
PLURAL = "llmservices"
KIND = "LLMService"
CRD_PATH = Path(__file__).resolve().parents[1] / "crds" / f"{PLURAL}.{GROUP}.yaml"


class InvalidService(ValueError):
    """An LLMService that does not map onto the contract; the message names the field."""


def service_spec(obj: dict[str, Any]) -> ServiceSpec:
    """The contract of an `LLMService` object (as the API server returns it, defaults
    applied; missing optional fields take the CRD's defaults)."""
    meta, spec = obj.get("metadata", {}), obj.get("spec", {})
    model = spec.get("model", {})
    req = spec.get("requirements", {})
    dl = req.get("deadline", {})
    tr = spec.get("traffic", {})
    try:
        return ServiceSpec(
            name=meta.get("name", ""),
            model=model.get("name", ""),
            variants=[
                ModelVariant(
                    tier=Tier(v["tier"]),
                    precision=Precision(v["precision"]),
                    quality=v.get("quality"),
                )
                for v in model.get("variants", [])
            ],
            requirements=Requirements(
                deadline=Deadline(
                    seconds=dl.get("seconds", 0.0),
                    per_output_token_s=dl.get("perOutputTokenSeconds", 0.0),
                    percentile=dl.get("percentile", 95.0),
                ),
                min_quality=req.get("minQuality", 0.0),
            ),
            traffic=Traffic(
                rate_rps=tr.get("rateRps", 0.0),
                prompt_tokens=tr.get("promptTokens", 512),
                output_tokens=tr.get("outputTokens", 128),
                payload_bytes=tr.get("payloadBytes", 0.0),
            ),
            allowed_tiers=[Tier(t) for t in spec.get("allowedTiers", ["edge", "cloud"])],
        )
    except (ValidationError, ValueError, KeyError) as e:
        raise InvalidService(f"LLMService {meta.get('name', '?')}: {e}") from None
