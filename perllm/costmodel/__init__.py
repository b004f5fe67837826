"""Cost model: processing time and energy of a request on a server.

`formulas` holds every time and energy formula (scalar and vectorised alike); `table`
gathers their coefficients per (service class, server) into a `CostTable`.
"""

from perllm.costmodel.formulas import (
    BYTES_PER_TOKEN,
    WIRE_OVERHEAD,
    Num,
    busy_times,
    context,
    cpu_decode,
    cpu_prefill,
    cpu_times,
    download_bits,
    gpu_decode,
    gpu_prefill,
    gpu_times,
    idle_energy_saved,
    inference_energy,
    marginal_energy,
    queue_wait,
    server_energy,
    transmission_energy,
    transmission_time,
    upload_bits,
)
from perllm.costmodel.table import (
    COEFFS,
    ROUND,
    CostTable,
    build_cost_table,
)

__all__ = [
    "BYTES_PER_TOKEN",
    "COEFFS",
    "ROUND",
    "WIRE_OVERHEAD",
    "CostTable",
    "Num",
    "build_cost_table",
    "busy_times",
    "context",
    "cpu_decode",
    "cpu_prefill",
    "cpu_times",
    "download_bits",
    "gpu_decode",
    "gpu_prefill",
    "gpu_times",
    "idle_energy_saved",
    "inference_energy",
    "marginal_energy",
    "queue_wait",
    "server_energy",
    "transmission_energy",
    "transmission_time",
    "upload_bits",
]
