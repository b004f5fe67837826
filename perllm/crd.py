"""The `LLMService` custom resource (crds/llmservices.perllm.io.yaml) and the contract.

The CRD is the Kubernetes rendering of `perllm.contract.ServiceSpec`; the operator and the
extender read a service's requirements through `service_spec()`, so a field means the
same thing in a cluster as in the simulator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from perllm.contract import ServiceSpec

# Re-exported: the operator, the extender, the router and the twin catch it as
# perllm.crd.InvalidService.
from perllm.crd_fields import InvalidService as InvalidService
from perllm.crd_fields import check_kubernetes_fields, field_list, field_object

GROUP = "perllm.io"
VERSION = "v1alpha1"
PLURAL = "llmservices"
KIND = "LLMService"
CRD_PATH = Path(__file__).resolve().parents[1] / "crds" / f"{PLURAL}.{GROUP}.yaml"


def service_spec(obj: dict[str, Any]) -> ServiceSpec:
    """The contract of an `LLMService` object (as the API server returns it, defaults
    applied; missing optional fields take the CRD's defaults)."""
    meta = obj.get("metadata")
    name = meta.get("name", "?") if isinstance(meta, dict) else "?"
    try:
        check_kubernetes_fields(obj)
        return _contract(obj)
    except InvalidService as e:
        raise InvalidService(f"LLMService {name}: {e}") from None


# The contract's fields as the CRD spells them: a message names the field the user wrote.
_CRD_FIELD = {
    "name": "metadata.name",
    "model": "spec.model.name",
    "variants": "spec.model.variants",
    "requirements": "spec.requirements",
    "traffic": "spec.traffic",
    "allowed_tiers": "spec.allowedTiers",
    "tier_replicas": "spec.tierReplicas",
    "min_quality": "spec.requirements.minQuality",  # (a check across fields names it)
}
_CRD_KEY = {
    "per_output_token_s": "perOutputTokenSeconds",
    "min_quality": "minQuality",
    "rate_rps": "rateRps",
    "prompt_tokens": "promptTokens",
    "output_tokens": "outputTokens",
    "payload_bytes": "payloadBytes",
}


def _present(src: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """The contract's fields `names` that `src` sets, read under their CRD names
    (`_CRD_KEY`); absent ones take the contract's defaults, which are the CRD's."""
    keys = {ours: _CRD_KEY.get(ours, ours) for ours in names}
    return {ours: src[theirs] for ours, theirs in keys.items() if theirs in src}


def _crd_path(loc: tuple[int | str, ...]) -> str:
    path = _CRD_FIELD.get(str(loc[0]), f"spec.{loc[0]}")
    for p in loc[1:]:
        path += f"[{p}]" if isinstance(p, int) else f".{_CRD_KEY.get(p, p)}"
    return path


def _crd_error(e: ValidationError) -> InvalidService:
    """One line per error, each naming the CRD field."""
    out = []
    for err in e.errors(include_url=False):
        if not err["loc"]:  # a check across fields: its message starts with the field
            head, sep, rest = str(err["msg"]).removeprefix("Value error, ").partition(": ")
            out.append(f"{_CRD_FIELD.get(head, head)}{sep}{rest}")
        elif err["type"] == "missing":
            out.append(f"{_crd_path(err['loc'])}: Field required")
        else:
            given = repr(err.get("input"))
            given = given if len(given) <= 80 else f"{given[:80]}..."
            out.append(f"{_crd_path(err['loc'])}: {err['msg']}, not {given}")
    return InvalidService("; ".join(out))


def _contract(obj: dict[str, Any]) -> ServiceSpec:
    """`service_spec` of an object whose Kubernetes fields passed; InvalidService names
    the field."""
    meta, spec = obj.get("metadata", {}), obj.get("spec", {})
    model = spec.get("model", {})
    req = field_object("spec.requirements", spec.get("requirements", {}))
    dl = field_object("spec.requirements.deadline", req.get("deadline", {}))
    tr = field_object("spec.traffic", spec.get("traffic", {}))
    variants = [
        field_object(f"spec.model.variants[{i}]", v)
        for i, v in enumerate(field_list("spec.model.variants", model.get("variants", [])))
    ]
    tiers = field_list("spec.allowedTiers", spec.get("allowedTiers", ["edge", "cloud"]))
    data: dict[str, Any] = {
        "name": meta.get("name", ""),
        "model": model.get("name", ""),
        "variants": [_present(v, ("tier", "precision", "quality")) for v in variants],
        "requirements": {
            "deadline": _present(dl, ("seconds", "per_output_token_s", "percentile")),
            **_present(req, ("min_quality",)),
        },
        "traffic": _present(tr, ("rate_rps", "prompt_tokens", "output_tokens", "payload_bytes")),
        "allowed_tiers": tiers,
        "tier_replicas": spec.get("tierReplicas"),
    }
    try:
        return ServiceSpec.model_validate(data)
    except ValidationError as e:
        raise _crd_error(e) from None


def condition(
    type_: str,
    ok: bool | None,
    reason: str,
    message: str,
    old: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A status condition of an LLMService (the operator's and the router's);
    `lastTransitionTime` moves only when the status changes (from `old`, the list now)."""
    import time

    from perllm.timefmt import rfc3339

    status = "Unknown" if ok is None else ("True" if ok else "False")
    prev = next((c for c in old or [] if c.get("type") == type_), None)
    since = prev.get("lastTransitionTime") if prev and prev.get("status") == status else None
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since or rfc3339(time.time()),
    }
