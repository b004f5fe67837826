"""The PromQL behind an LLMService's status: attainment, latency quantiles, request rate
and energy per request of one service's pods.

Metric names come from `perllm.telemetry.names`. A service's pods are selected by their
live names (`namespace`, `pod` labels of the vLLM series), so a replaced pod's old series
stop counting as soon as it is gone.
"""

from __future__ import annotations

from collections.abc import Sequence

from perllm.telemetry import names

# Matches no pod: an object name starts and ends with [a-z0-9]. (An empty regex would match
# the series without a `pod` label, which are no pod's.)
NO_POD = "-"


def pod_regex(pods: Sequence[str]) -> str:
    """Exactly the live pods; without any, none. (A service with no pod has no series of
    its own: the name prefix `<service>-.*` that stood in matched another service's pods,
    `chat-b-...` for `chat`, and a hand-made copy's, and reported their attainment.)"""
    if pods:
        return "|".join(_escape(p) for p in sorted(pods))
    return NO_POD


def _escape(name: str) -> str:
    # Object names hold only [a-z0-9.-]; `.` is the one regex metacharacter. Its escape is
    # doubled because the regex sits in a PromQL string literal, where `\.` alone would be
    # an invalid escape sequence (HTTP 400).
    return name.replace(".", "\\\\.")


def _pods(namespace: str, regex: str) -> str:
    return f'namespace="{namespace}",pod=~"{regex}"'


def service_attainment(
    namespace: str, regex: str, deadline_s: float, window: str = "5m"
) -> str | None:
    """Fraction of the pods' requests finished within the deadline over `window`, counted
    with the largest vLLM bucket at or below it (None: the deadline is below all buckets)."""
    le = names.deadline_bucket(deadline_s)
    if le is None:
        return None
    sel, m = _pods(namespace, regex), names.VLLM_E2E_LATENCY
    return (
        f'sum(rate({m}_bucket{{{sel},le="{names.fmt_le(le)}"}}[{window}])) / '
        f"sum(rate({m}_count{{{sel}}}[{window}]))"
    )


def service_latency_quantile(q: float, namespace: str, regex: str, window: str = "5m") -> str:
    sel = _pods(namespace, regex)
    return (
        f"histogram_quantile({q}, sum by (le) "
        f"(rate({names.VLLM_E2E_LATENCY}_bucket{{{sel}}}[{window}])))"
    )


def requests_per_second(namespace: str, regex: str, window: str) -> str:
    sel = _pods(namespace, regex)
    return f"sum(rate({names.VLLM_E2E_LATENCY}_count{{{sel}}}[{window}]))"


def service_energy_per_request(namespace: str, service: str, window: str = "5m") -> str:
    sel = f'namespace="{namespace}",service="{service}"'
    return (
        f"increase({names.SERVICE_ENERGY_J}{{{sel}}}[{window}]) / "
        f"increase({names.SERVICE_REQUESTS}{{{sel}}}[{window}])"
    )


def pod_latency(window: str) -> str:
    """Mean latency per (namespace, pod), the same series the extender reads."""
    return names.pod_latency(window)
