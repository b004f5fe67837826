"""Kubernetes object names (apimachinery `validation.IsDNS1123Label` / `IsDNS1123Subdomain`):
namespaces are labels; pod and node names are subdomains. A name outside them cannot exist
in a cluster, so a request naming one is refused (pods) or fails that node (nodes) before
it reaches a key, a field selector or an API path."""

from __future__ import annotations

import re

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_LABEL_RE = re.compile(_LABEL)
_SUBDOMAIN_RE = re.compile(rf"{_LABEL}(\.{_LABEL})*")


def is_dns_label(s: str) -> bool:
    return len(s) <= 63 and _LABEL_RE.fullmatch(s) is not None


def is_dns_subdomain(s: str) -> bool:
    return len(s) <= 253 and _SUBDOMAIN_RE.fullmatch(s) is not None
