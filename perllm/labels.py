"""Label, annotation and resource names PerLLM puts on nodes and pods.

One wire contract shared by the local control plane (which labels fake nodes), the
operator (which labels and annotates model-server pods) and the extender (which reads
both), so the three cannot drift apart.
"""

import re

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
