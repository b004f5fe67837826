"""The calibration catalogue (models, hardware) and the derived performance profiles.

`catalogue.yaml` holds the sourced numbers; `perf_profile()` turns a (model, precision,
hardware) triple into the handful of coefficients the cost model needs. The formulas
are calibration study §1.1 (edge: llama.cpp on a CPU socket; cloud: vLLM on one GPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from perllm.contract import Precision

GB = 1e9

# Upper bounds of a catalogue entry's numbers, 50× or more beyond any model or machine of
# today (docs/scenarios.md lists them). They keep a typo in a scenario's own `models:` or
# `hardware:` entry from overflowing the cost model: params_b 1e300 made every GPU time
# NaN (a RuntimeWarning, then a linprog traceback in the bound), a CPU's mem_bw_eff_gbps of
# 1e300 NaN decode times, a power of 1e300 W a report of 1e301×.
MAX_PARAMS_B = 1e5  # 100 T parameters (the largest models: ~2 T)
MAX_SIZE_GB = 1e6  # weights, (GPU) memory, runtime overhead: 1 PB
MAX_BW_GBPS = 1e6  # effective memory bandwidth: 1 PB/s (an H200: 4.8 TB/s)
MAX_TFLOPS = 1e6  # an exaflop a server
MAX_POWER_W = 1e6  # a megawatt a server
MAX_OVERHEAD_S = 3600.0  # a decode step's or a first token's fixed overhead
MAX_PREFILL_COEFF = 1e9  # a CPU's prefill tokens/s × B parameters (the Xeon: 257)
MAX_KAPPA = 1e3  # a CPU's aggregate decode over its prefill rate (the Xeon: 0.8)
MAX_SHAPE = 65_536  # layers, KV heads, head dimension, CPU cores, GPUs
MAX_CONTEXT = 2**30  # tokens
# Requests one server runs at once (a GPU's `max_seqs`; a CPU's derived B* = pp / tg(1),
# calibration study §3.3): 256 on the paper's A100, 3 to 9 on its Xeon. The bound and the
# cost model hold arrays of this length: max_seqs 1e12, or a CPU of 1e-300 GB/s, ran out
# of memory in a traceback (scenario.load checks the derived one).
MAX_CONCURRENCY = 65_536

Size = Annotated[float, Field(strict=True, gt=0, le=MAX_SIZE_GB)]
Power = Annotated[float, Field(strict=True, ge=0, le=MAX_POWER_W)]
Overhead = Annotated[float, Field(strict=True, ge=0, le=MAX_OVERHEAD_S)]
Shape = Annotated[int, Field(strict=True, gt=0, le=MAX_SHAPE)]


class _Entry(BaseModel):
    # Finite numbers only (a scenario's own `models:`/`hardware:` too): `gt=0` lets .inf
    # through, and an infinite power, bandwidth or TFLOPS makes energies or times inf or 0.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ModelInfo(_Entry):
    display: str
    params_b: Annotated[float, Field(strict=True, gt=0, le=MAX_PARAMS_B)]
    layers: Shape
    kv_heads: Shape
    head_dim: Shape
    # at least a prompt token and an output token (`world.workload.whole_tokens`)
    context: Annotated[int, Field(strict=True, ge=2, le=MAX_CONTEXT)]
    weights_gb: dict[Precision, Size]
    mmlu: dict[Precision, Annotated[float, Field(strict=True, ge=0, le=100)]]
    source: str = ""

    @property
    def kv_bytes_per_token(self) -> int:
        # K and V, fp16 cache: 2 × layers × kv_heads × head_dim × 2 bytes (calibration study §2.2)
        return 2 * self.layers * self.kv_heads * self.head_dim * 2

    def quality(self, precision: Precision) -> float:
        return self.mmlu[precision] / 100.0


class HardwareInfo(_Entry):
    display: str
    kind: Literal["cpu", "gpu"]
    cpu_cores: Shape
    memory_gib: Size
    gpus: Annotated[int, Field(strict=True, ge=0, le=MAX_SHAPE)] = 0
    gpu_model: str | None = None
    gpu_memory_gb: Size | None = None
    mem_bw_eff_gbps: Annotated[float, Field(strict=True, gt=0, le=MAX_BW_GBPS)]
    # CPU (llama.cpp)
    prefill_coeff: Annotated[float, Field(strict=True, gt=0, le=MAX_PREFILL_COEFF)] | None = None
    kappa: Annotated[float, Field(strict=True, gt=0, le=MAX_KAPPA)] | None = None
    power_busy_w: Power | None = None
    # GPU (vLLM)
    peak_tflops: Annotated[float, Field(strict=True, gt=0, le=MAX_TFLOPS)] | None = None
    prefill_mfu: Annotated[float, Field(strict=True, gt=0, le=1)] | None = None
    decode_flops_eff: Annotated[float, Field(strict=True, gt=0, le=1)] | None = None
    step_overhead_s: Overhead = 0.001
    ttft_overhead_s: Overhead = 0.015
    max_seqs: Annotated[int, Field(strict=True, gt=0, le=MAX_CONCURRENCY)] = 256
    gpu_memory_utilization: Annotated[float, Field(strict=True, gt=0, le=1)] = 0.9
    runtime_overhead_gb: Annotated[float, Field(strict=True, ge=0, le=MAX_SIZE_GB)] = 3.0
    power_prefill_w: Power | None = None
    power_decode_w: Power | None = None
    power_idle_w: Power
    source: str = ""

    def model_post_init(self, __context: object) -> None:
        need = (
            ("prefill_coeff", "kappa", "power_busy_w")
            if self.kind == "cpu"
            else (
                "gpu_memory_gb",
                "peak_tflops",
                "prefill_mfu",
                "decode_flops_eff",
                "power_prefill_w",
                "power_decode_w",
            )
        )
        missing = [k for k in need if getattr(self, k) is None]
        if missing:
            raise ValueError(f"{self.kind} hardware needs {', '.join(missing)}")


class Catalogue(_Entry):
    models: dict[str, ModelInfo]
    hardware: dict[str, HardwareInfo]

    def merged(self, models: dict[str, ModelInfo], hardware: dict[str, HardwareInfo]) -> Catalogue:
        return Catalogue(models={**self.models, **models}, hardware={**self.hardware, **hardware})


@cache
def default_catalogue() -> Catalogue:
    text = resources.files("perllm.data").joinpath("catalogue.yaml").read_text()
    return Catalogue.model_validate(yaml.safe_load(text))


@dataclass(frozen=True, slots=True)
class PerfProfile:
    """Coefficients of one model variant on one hardware type.

    CPU: t = L_in·b/pp + L_out/tg(b), tg(b) = min(bw/(W + ctx·kv), κ·pp/b), at most `max_conc`.
    GPU: TTFT = ttft0 + L_in/r_pf; decode step T(b) = step0 + W/bw + b·(ctx·kv/bw + 2P/f_dec).
    """

    kind: Literal["cpu", "gpu"]
    weights_bytes: float
    kv_bytes: float
    bw: float  # effective memory bandwidth, bytes/s
    max_conc: int  # concurrency cap (CPU: useful parallel slots; GPU: max sequences)
    kv_budget_bytes: float  # GPU KV cache budget; inf for CPU
    fits: bool  # weights fit in (GPU) memory
    quality: float
    p_busy: float  # CPU busy wall power / GPU decode power (W)
    p_prefill: float  # GPU prefill power (CPU: = p_busy)
    p_idle: float
    # CPU
    pp: float = 0.0
    kappa: float = 0.0
    # GPU
    r_pf: float = 0.0
    ttft0: float = 0.0
    step0: float = 0.0  # fixed part of a decode step: overhead + weight read
    per_seq_flop_s: float = 0.0  # 2P/f_dec


def perf_profile(model: ModelInfo, precision: Precision, hw: HardwareInfo) -> PerfProfile:
    if precision not in model.weights_gb:
        raise ValueError(f"model {model.display} has no {precision.value} weights in the catalogue")
    w = model.weights_gb[precision] * GB
    kv = float(model.kv_bytes_per_token)
    bw = hw.mem_bw_eff_gbps * GB
    q = model.quality(precision)
    if hw.kind == "cpu":
        assert hw.prefill_coeff and hw.kappa and hw.power_busy_w is not None
        pp = hw.prefill_coeff / model.params_b
        tg1 = bw / w
        # Useful concurrency B* ≈ pp/tg1 (calibration study §3.3): 3 / 5 / 9 for
        # Q4_K_M / Q8_0 / F16.
        conc = max(1, round(pp / tg1))
        return PerfProfile(
            kind="cpu",
            weights_bytes=w,
            kv_bytes=kv,
            bw=bw,
            max_conc=conc,
            kv_budget_bytes=float("inf"),
            fits=w <= hw.memory_gib * 2**30 * 0.9,
            quality=q,
            p_busy=hw.power_busy_w,
            p_prefill=hw.power_busy_w,
            p_idle=hw.power_idle_w,
            pp=pp,
            kappa=hw.kappa,
        )
    assert hw.gpu_memory_gb and hw.peak_tflops and hw.prefill_mfu and hw.decode_flops_eff
    assert hw.power_prefill_w is not None and hw.power_decode_w is not None
    p = model.params_b * 1e9
    budget = hw.gpu_memory_utilization * hw.gpu_memory_gb * GB - w - hw.runtime_overhead_gb * GB
    return PerfProfile(
        kind="gpu",
        weights_bytes=w,
        kv_bytes=kv,
        bw=bw,
        max_conc=hw.max_seqs,
        kv_budget_bytes=max(budget, 0.0),
        fits=budget > 0,
        quality=q,
        p_busy=hw.power_decode_w,
        p_prefill=hw.power_prefill_w,
        p_idle=hw.power_idle_w,
        r_pf=hw.prefill_mfu * hw.peak_tflops * 1e12 / (2 * p),
        ttft0=hw.ttft_overhead_s,
        step0=hw.step_overhead_s + w / bw,
        per_seq_flop_s=2 * p / (hw.decode_flops_eff * hw.peak_tflops * 1e12),
    )
