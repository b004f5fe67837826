"""Kubernetes resource quantities and a variant's `resources` (requests and limits) as the
apiserver would take them on a pod: the grammar, names, whole units of extended resources,
huge pages, requests within limits. The CRD's CEL rules say the same (tests/unit/test_crd.py
checks the limits agree); `perllm.crd_fields` reports a failure as `InvalidService`."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from perllm.labels import GPU_RESOURCE

MAX_RESOURCES = 16  # keys per requests/limits map
MAX_QUANTITY = 64  # characters of a quantity string

_RESOURCE_NAME = re.compile(
    r"([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
)
_STANDARD_RESOURCES = ("cpu", "memory", "ephemeral-storage")
# Kubernetes' quantity grammar (k8s.io/apimachinery/pkg/api/resource): a signed decimal
# number and a binary-SI, decimal-SI or exponent suffix.
_QUANTITY = re.compile(
    r"(?P<num>[+-]?(\d+(\.\d*)?|\.\d+))"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][+-]?\d+|)"
)
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


def parse_quantity(value: object) -> Decimal:
    """The value of a Kubernetes quantity (an int, or a string such as 500m, 16Gi, 1e3);
    ValueError if it is none."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"must be an integer or a quantity string, not {value!r}")
    if isinstance(value, int):
        return Decimal(value)
    if len(value) > MAX_QUANTITY:
        raise ValueError(f"at most {MAX_QUANTITY} characters")
    m = _QUANTITY.fullmatch(value)
    if m is None:
        raise ValueError(f"must be a Kubernetes quantity such as 500m, 4 or 16Gi, not {value!r}")
    try:
        num, suffix = Decimal(m["num"]), m["suffix"]
        if suffix in _BINARY:
            return num * _BINARY[suffix]
        exp = _DECIMAL[suffix] if suffix in _DECIMAL else int(suffix[1:])
        return num.scaleb(exp)
    except (InvalidOperation, ValueError, OverflowError):
        raise ValueError(f"not a representable quantity: {value!r}") from None


def requests_gpu(resources: dict[str, Any]) -> bool:
    """A GPU asked for: nvidia.com/gpu above 0 (a request or a limit). `nvidia.com/gpu: 0`
    gets no GPU from Kubernetes, so it is a CPU variant (it got vLLM's CUDA image)."""
    for kind in ("requests", "limits"):
        value = (resources.get(kind) or {}).get(GPU_RESOURCE)
        if value is None:
            continue
        try:
            if parse_quantity(value) > 0:
                return True
        except ValueError:  # (service_spec refuses it, naming the field)
            return True
    return False


def _extended(key: str) -> bool:
    """An extended resource (a name with a domain other than kubernetes.io, e.g.
    nvidia.com/gpu): never overcommitted, counted in whole units."""
    return "/" in key and not key.startswith("kubernetes.io/")


HUGEPAGES = "hugepages-"  # hugepages-<page size>: never overcommitted, in whole pages
_INT64 = 2**63  # what the apiserver's CEL quantity().asInteger() takes


def _hugepages(key: str) -> bool:
    return key.startswith(HUGEPAGES)


def _check_hugepages_amount(field: str, key: str, q: Decimal, val: Any) -> None:
    """Kubernetes refuses huge pages that are not a whole number of pages of the size their
    name gives (`<q> is not positive integer multiple of hugepages-<size>`)."""
    try:
        size = parse_quantity(key.removeprefix(HUGEPAGES))
    except ValueError:
        size = Decimal(0)
    if not (0 < size < _INT64 and size == size.to_integral_value()):
        raise ValueError(
            f"{field}: not a page size in {key!r} (hugepages-<size> with a size such as 2Mi or 1Gi)"
        )
    if not (q < _INT64 and q == q.to_integral_value() and q % size == 0):
        raise ValueError(
            f"{field}: must be a whole number of {key.removeprefix(HUGEPAGES)} pages (such as "
            f"1Gi), not {val}"
        )


def check_resources(field: str, res: Any) -> None:
    """A variant's `resources` as Kubernetes would take them on a pod; ValueError naming
    the field (under `field`) if not."""
    if not isinstance(res, dict):
        raise ValueError(f"{field}: must be an object")
    lists: dict[str, dict[str, Decimal]] = {}
    for kind in ("requests", "limits"):
        if kind not in res:
            continue
        items = res[kind]
        if not isinstance(items, dict):
            raise ValueError(f"{field}.{kind}: must be an object")
        if len(items) > MAX_RESOURCES:
            raise ValueError(f"{field}.{kind}: at most {MAX_RESOURCES} resources")
        values: dict[str, Decimal] = {}
        for key, val in items.items():
            if not (
                isinstance(key, str)
                and len(key) <= 253
                and _RESOURCE_NAME.fullmatch(key)
                and ("/" in key or key in _STANDARD_RESOURCES or key.startswith("hugepages-"))
            ):
                raise ValueError(
                    f"{field}.{kind}: {key!r} is not a resource name (cpu, memory, "
                    "ephemeral-storage, hugepages-<size> or a qualified name such as "
                    "nvidia.com/gpu)"
                )
            try:
                q = parse_quantity(val)
            except ValueError as e:
                raise ValueError(f"{field}.{kind}[{key}]: {e}") from None
            if q < 0:
                raise ValueError(f"{field}.{kind}[{key}]: must not be negative, not {val}")
            if _extended(key) and q != q.to_integral_value():
                # Kubernetes refuses the pod ("must be an integer"); under KServe nothing said so
                raise ValueError(
                    f"{field}.{kind}[{key}]: an extended resource is a whole number, not {val}"
                )
            if _hugepages(key):
                _check_hugepages_amount(f"{field}.{kind}[{key}]", key, q, val)
            values[key] = q
        lists[kind] = values
    if not any(lists.values()):
        # empty maps passed too, and the pod ran with no resources at all
        raise ValueError(
            f"{field}: a variant needs at least one request or limit (an entry such as cpu "
            "or memory in resources.requests or resources.limits)"
        )
    req, lim = lists.get("requests", {}), lists.get("limits", {})
    for key in sorted(req.keys() - lim.keys()):
        # Kubernetes refuses the pod: "Limit must be set for non overcommitable resources"
        if _extended(key):
            raise ValueError(
                f"{field}.requests[{key}]: an extended resource needs a limit equal to its "
                f"request in {field}.limits (or the limit alone)"
            )
        if _hugepages(key):
            raise ValueError(
                f"{field}.requests[{key}]: huge pages need a limit equal to their request in "
                f"{field}.limits (or the limit alone): Kubernetes does not overcommit them"
            )
    for key in sorted(req.keys() & lim.keys()):
        if req[key] > lim[key]:
            raise ValueError(f"{field}.requests[{key}]: must not exceed limits[{key}]")
        if _extended(key) and req[key] != lim[key]:
            raise ValueError(
                f"{field}.requests[{key}]: an extended resource must request exactly its limit"
            )
        if _hugepages(key) and req[key] != lim[key]:
            raise ValueError(
                f"{field}.requests[{key}]: huge pages must request exactly their limit "
                "(Kubernetes does not overcommit them)"
            )
    keys = req.keys() | lim.keys()
    if any(_hugepages(k) for k in keys) and not keys & {"cpu", "memory"}:
        # Kubernetes refuses the pod: "HugePages require cpu or memory"
        raise ValueError(
            f"{field}: huge pages (hugepages-<size>) need a cpu or memory request or limit "
            "beside them"
        )
