"""Label, annotation and resource names PerLLM puts on nodes and pods.

One wire contract shared by the local control plane (which labels fake nodes), the
operator (which labels and annotates model-server pods) and the extender (which reads
both), so the three cannot drift apart.
"""

import math
import re
from collections.abc import Mapping

DOMAIN = "perllm.io"

# A label value (and a DNS-1123 label) has at most 63 characters: a node's
# kubernetes.io/hostname label is its name, so a scenario's server names are held to it.
MAX_LABEL_VALUE = 63
# What the apiserver takes as a label value (apimachinery's validation.IsValidLabelValue).
LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")


def is_label_value(v: str) -> bool:
    return len(v) <= MAX_LABEL_VALUE and LABEL_VALUE.fullmatch(v) is not None


# Nodes
LABEL_TIER = f"{DOMAIN}/tier"  # edge | cloud
LABEL_HARDWARE = f"{DOMAIN}/hardware"
ANN_HARDWARE = f"{DOMAIN}/hardware"  # catalogue key
ANN_HARDWARE_SPEC = f"{DOMAIN}/hardware-spec"  # the catalogue entry as JSON
ANN_LINK_BANDWIDTH = f"{DOMAIN}/link-bandwidth-mbps"
ANN_LINK_NOISE = f"{DOMAIN}/link-noise"
ANN_LINK_RTT = f"{DOMAIN}/link-rtt-ms"
ANN_LINK_ENERGY = f"{DOMAIN}/link-energy-uj-per-bit"

# Model-server pods
LABEL_SERVICE = f"{DOMAIN}/service"
ANN_DEADLINE = f"{DOMAIN}/deadline-s"
ANN_DEADLINE_PER_TOKEN = f"{DOMAIN}/deadline-per-token-s"
ANN_PERCENTILE = f"{DOMAIN}/deadline-percentile"
ANN_MIN_QUALITY = f"{DOMAIN}/min-quality"

SCHEDULER_NAME = "perllm-scheduler"
GPU_RESOURCE = "nvidia.com/gpu"


# A number in a label or an annotation (the link-* annotations of a node, the deadline-*
# and min-quality annotations of a pod): a plain decimal, `30`, `2.5`, `1e-05`, `-1`, as the
# operator and the local control plane write them (`f"{x:g}"`): ASCII digits, an optional
# sign, '.' and exponent (YAML 1.2's float without .inf/.nan), nothing around it. `float()`
# reads more, every bit of it silently: "1_0" as 10, " 10 " as 10, Arabic-Indic "١٠" as 10,
# "inf" and "nan". One parser for every reader (the extender, the router's discovery).
DECIMAL = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
DECIMAL_HINT = "digits with an optional sign, '.' and exponent, e.g. 30, 2.5 or 1e-05"


def number_text(x: float) -> str:
    """`x` as a `DECIMAL` for an annotation, read back exactly: a whole number as digits
    (`30`), else `f"{x:g}"` (`2.5`, `1e-05`) where its 6 significant digits hold all of `x`,
    else the shortest exact form (`1.2345678`). `f"{x:g}"` alone wrote a deadline of
    1.2345678 s as 1.23457, and a pod's annotations override its service's requirements."""
    x = float(x)
    if x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    s = f"{x:g}"
    return s if float(s) == x else repr(x)


def shown(v: str, n: int = 40) -> str:
    """`v` quoted for a reason or a log line, its first `n` characters at most: a value
    from a request (an annotation, a label) is as long as its author made it (a 1 MB
    annotation came back whole in the 400 and in its log line)."""
    return repr(v) if len(v) <= n else f"{v[:n]!r}... ({len(v)} characters)"


def decimal(text: str) -> float:
    """`text` as a finite number in the `DECIMAL` format, else a ValueError saying why
    ("not a number", "not a finite number", "not a plain decimal number (...)")."""
    if DECIMAL.fullmatch(text):
        x = float(text)
        if not math.isfinite(x):  # beyond a float's range (1e999)
            raise ValueError("not a finite number")
        return x
    try:
        x = float(text)
    except ValueError:
        raise ValueError("not a number") from None
    if not math.isfinite(x):  # "inf", "nan", "Infinity"
        raise ValueError("not a finite number")
    raise ValueError(f"not a plain decimal number ({DECIMAL_HINT})")


def ann_number(ann: Mapping[str, str], key: str) -> float | None:
    """The number in annotation (or label) `key` of `ann`; None when absent, a ValueError
    naming it and its value when not a finite `DECIMAL` (`float()` reads "inf" and "nan": an
    infinite link energy on one node made every candidate's predicted energy NaN)."""
    v = ann.get(key)
    if v is None:
        return None
    try:
        return decimal(v)
    except ValueError as e:
        raise ValueError(f"annotation {key}={shown(v)} is {e}") from None
