"""Horizon, batch, time and cost: one place computes them for the planner, the schedule and the report.

tokens/step = micro_batch × seq_len × accumulation × world_size. The horizon is given as steps,
tokens, FLOPs (FLOPs/token × tokens) or tokens per parameter; whichever is given, the others follow.
"""

import math
from dataclasses import asdict, dataclass

from ..errors import ScratchError

# Dense bf16 peaks, and the MFU a planner assumes without a measured tok/s. The MFUs are what the
# seeds measured: 2×RTX 4090 with FSDP and activation checkpointing ran a 1B model at ~19,000 tok/s
# (~40%); one A100 without checkpointing, compiled, at 28,300 tok/s (~60%; 50% assumed).
GPUS = {
    "4090": {"name": "RTX 4090", "peak_tflops": 165.0, "mfu": 0.40},
    "a100": {"name": "A100", "peak_tflops": 312.0, "mfu": 0.50},
    "h100": {"name": "H100", "peak_tflops": 989.0, "mfu": 0.40},
    "h200": {"name": "H200", "peak_tflops": 989.0, "mfu": 0.40},
}


@dataclass
class Plan:
    params_total: int
    flops_per_token: int
    seq_len: int
    micro_batch: int
    accumulation: int
    world_size: int
    tokens_per_step: int
    steps: int
    tokens: int
    flops: float
    tokens_per_param: float

    def as_dict(self) -> dict:
        return asdict(self)


def resolve_plan(
    stats: dict,
    seq_len: int,
    micro_batch: int,
    world_size: int,
    accumulation: int = 0,
    tokens_per_step: int = 0,
    max_steps: int = 0,
    max_tokens: int = 0,
    target_flops: float = 0,
    tokens_per_param: float = 0,
) -> Plan:
    per_micro_step = micro_batch * seq_len * world_size
    if tokens_per_step:
        accumulation, remainder = divmod(tokens_per_step, per_micro_step)
        if remainder or accumulation == 0:
            raise ScratchError(
                f"tokens_per_step {tokens_per_step:,} is not a multiple of micro_batch × seq_len × world_size = "
                f"{micro_batch} × {seq_len} × {world_size} = {per_micro_step:,}; the nearest that is: "
                f"{max(1, round(tokens_per_step / per_micro_step)) * per_micro_step:,}"
            )
    accumulation = accumulation or 1
    step_tokens = per_micro_step * accumulation
    if max_steps:
        steps = max_steps
    elif max_tokens:
        steps = math.ceil(max_tokens / step_tokens)
    elif target_flops:
        steps = math.ceil(target_flops / (stats["flops_per_token"] * step_tokens))
    elif tokens_per_param:
        steps = math.ceil(tokens_per_param * stats["params_total"] / step_tokens)
    else:
        raise ScratchError("no horizon: set max_steps, max_tokens, target_flops or tokens_per_param")
    tokens = steps * step_tokens
    return Plan(
        params_total=stats["params_total"],
        flops_per_token=stats["flops_per_token"],
        seq_len=seq_len,
        micro_batch=micro_batch,
        accumulation=accumulation,
        world_size=world_size,
        tokens_per_step=step_tokens,
        steps=steps,
        tokens=tokens,
        flops=float(tokens) * stats["flops_per_token"],
        tokens_per_param=tokens / stats["params_total"],
    )


def estimate_time_and_cost(
    plan: Plan, gpu: str, num_gpus: int, tok_per_s: float = 0, usd_per_gpu_hour: float = 0, mfu: float = 0
) -> dict:
    if gpu not in GPUS:
        raise ScratchError(f"unknown GPU '{gpu}'; known: {', '.join(GPUS)}")
    spec = GPUS[gpu]
    mfu = mfu or spec["mfu"]
    source = "measured" if tok_per_s else f"{spec['name']} peak {spec['peak_tflops']:.0f} TFLOP/s at {mfu:.0%} MFU"
    tok_per_s = tok_per_s or num_gpus * spec["peak_tflops"] * 1e12 * mfu / plan.flops_per_token
    hours = plan.tokens / tok_per_s / 3600
    return {
        "gpu": spec["name"],
        "num_gpus": num_gpus,
        "tok_per_s": round(tok_per_s),
        "tok_per_s_from": source,
        "hours": round(hours, 2),
        "usd_per_gpu_hour": usd_per_gpu_hour,
        "cost_usd": round(hours * num_gpus * usd_per_gpu_hour, 2),
    }


def peak_flops_of(device_name: str) -> float:
    """Dense bf16 peak FLOP/s of a CUDA device by name, 0 when unknown (MFU is then not reported)."""
    for key, spec in GPUS.items():
        if key.upper() in device_name.upper():
            return spec["peak_tflops"] * 1e12
    return 0.0
