"""What went wrong applying children, in words that name the field, and how long to wait.

The API server answers a refused object with a `Status` whose `details.causes` name the
fields (`spec.predictor.model.runtime: Unsupported value ...`); the operator puts them in
the `Reconciled` condition and a Warning Event, and retries with a growing delay. Any other
exception in a handler is reported the same way (reason `InternalError`), never only in
the log. Messages are bounded: they go into conditions, Events and kopf's progress
annotation.
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes.client.exceptions import ApiException

from perllm.profiles import default_catalogue

MAX_MESSAGE = 1024
BASE_DELAY_S = 15.0
MAX_DELAY_S = 600.0


def backoff(retry: int, base: float = BASE_DELAY_S) -> float:
    """base, 2 base, 4 base, ... up to MAX_DELAY_S (kopf's `retry` counts from 0)."""
    return float(min(base * 2.0 ** min(max(retry, 0), 16), MAX_DELAY_S))


def bounded(text: str, limit: int = MAX_MESSAGE) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _status_body(e: ApiException) -> dict[str, Any]:
    try:
        body = json.loads(e.body) if e.body else {}
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def api_failure(e: ApiException, what: str, prefix: str = "Apply") -> tuple[str, str]:
    """(reason, message) of a refused API call on `what` (e.g. "InferenceService x"):
    reason `<prefix>Invalid` / `<prefix>Forbidden` / ... from the Status, the fields from
    its causes."""
    body = _status_body(e)
    details = body.get("details") or {}
    causes = [c for c in details.get("causes") or [] if isinstance(c, dict)]
    fields = [
        f"{c.get('field') or '?'}: {c.get('message') or c.get('reason') or ''}" for c in causes
    ]
    reason = str(body.get("reason") or e.reason or "ApiError").replace(" ", "")
    detail = "; ".join(fields) or str(body.get("message") or e.reason or "no detail")
    msg = f"{what}: the API server refused it ({e.status} {reason}): {detail}"
    return (f"{prefix}{reason}" if reason.isalnum() else f"{prefix}Refused"), bounded(msg)


# The cause the API server's NamespaceLifecycle admission gives a create refused in a
# namespace being deleted (corev1.NamespaceTerminatingCause): 403 Forbidden, "unable to
# create new content in namespace X because it is being terminated".
NAMESPACE_TERMINATING = "NamespaceTerminating"


def namespace_terminating(e: ApiException) -> bool:
    """Whether `e` refuses a create because the namespace is being deleted (a StatusCause's
    type is `reason` in its JSON; the message alone where a server gives no cause)."""
    if e.status != 403:
        return False
    body = _status_body(e)
    causes = (body.get("details") or {}).get("causes") or []
    if any(isinstance(c, dict) and c.get("reason") == NAMESPACE_TERMINATING for c in causes):
        return True
    return "because it is being terminated" in str(body.get("message") or "")


def internal_failure(e: BaseException, where: str) -> tuple[str, str]:
    return "InternalError", bounded(f"{where}: {type(e).__name__}: {e}")


def model_known(model: str) -> tuple[bool, str, str]:
    """The `ModelKnown` condition: is `spec.model.name` a model the extender can predict?"""
    models = default_catalogue().models
    if model in models:
        return True, "ModelInCatalogue", f"spec.model.name {model!r} is in the PerLLM catalogue"
    known = ", ".join(sorted(models))
    return (
        False,
        "ModelNotInCatalogue",
        bounded(
            f"spec.model.name {model!r} is not in the PerLLM catalogue ({known}): the "
            "extender cannot predict its latency or energy and refuses its pods (they stay Pending)"
        ),
    )
