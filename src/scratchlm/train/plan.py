"""Horizon, batch, time and cost: one place computes them for the planner, the schedule and the report.

tokens/step = micro_batch × seq_len × accumulation × world_size. The horizon is given as steps,
tokens, FLOPs (FLOPs/token × tokens) or tokens per parameter; whichever is given, the others follow.
"""

import math
import re
from dataclasses import asdict, dataclass, replace

from ..errors import ScratchError

GIB = 2**30


@dataclass(frozen=True)
class GpuProfile:
    name: str
    peak_tflops: float  # dense bf16 with fp32 accumulate
    memory_gib: float  # total memory as torch.cuda.get_device_properties reports it
    mfu: float  # what the planner assumes without a measured tok/s
    pattern: str  # matches torch.cuda.get_device_name() of this GPU

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * GIB)


# Peaks: NVIDIA's datasheets and whitepapers, dense (half the "with sparsity" figure), bf16 inputs
# with fp32 accumulation (GeForce cards run that at half their fp16-accumulate rate):
#   RTX 3060: 112 third-gen tensor cores at 1.777 GHz boost, 512 dense FLOP/clock per SM with fp32
#     accumulate (GA10x: RTX 3090's 71 TFLOPS / 82 SMs / 1.695 GHz) x 28 SMs = 25.4 TFLOPS;
#   RTX 4090: Ada Lovelace whitepaper, 165.2 TFLOPS (330.3 with fp16 accumulate);
#   A100 (SXM4 and PCIe, 40 and 80 GB): A100 datasheet, 312 TFLOPS;
#   H100 SXM 989.4, H100 PCIe 756.5, H100 NVL 835.5 TFLOPS: H100 datasheet (1,979 / 1,513 / 1,671
#     with sparsity); H200 (SXM) 989.4: H200 datasheet, the H100 SXM's tensor cores.
# Memory: what torch reports as total (CUDA out-of-memory messages show it: 11.76 GiB on a 12 GB
# RTX 3060, 23.65 GiB on an RTX 4090, 39.59 / 79.15 GiB on A100 40/80 GB); Hopper from nvidia-smi's
# total (81,559 MiB for H100 80 GB, 95,830 for H100 NVL, 143,771 for the H200 we test on) less the
# same ~0.5 GiB. The start-up check uses the running device's own total, not these.
# MFUs are what the recipes' public runs measured: 2x RTX 4090 with FSDP and activation checkpointing ran a 1B
# model at ~19,000 tok/s (~40%); one A100 without checkpointing, compiled, at 28,300 tok/s (~60%;
# 50% assumed); 40% elsewhere.
GPUS = {
    "3060": GpuProfile("RTX 3060 12GB", 25.4, 11.76, 0.40, r"RTX 3060(?! Ti)"),
    "4090": GpuProfile("RTX 4090", 165.2, 23.65, 0.40, r"RTX 4090"),
    "a100-40gb": GpuProfile("A100 40GB", 312.0, 39.59, 0.50, r"A100"),
    "a100-80gb": GpuProfile("A100 80GB", 312.0, 79.15, 0.50, r"A100"),
    "h100-pcie": GpuProfile("H100 PCIe", 756.5, 79.1, 0.40, r"H100 PCIe"),
    "h100-sxm": GpuProfile("H100 SXM", 989.4, 79.1, 0.40, r"H100(?! PCIe| NVL)"),
    "h100-nvl": GpuProfile("H100 NVL", 835.5, 93.1, 0.40, r"H100 NVL"),
    "h200": GpuProfile("H200", 989.4, 139.9, 0.40, r"H200(?! NVL)"),
}
GPU_ALIASES = {"a100": "a100-80gb", "h100": "h100-sxm"}


def gpu_profile(key: str) -> GpuProfile:
    profile = GPUS.get(GPU_ALIASES.get(key, key))
    if profile is None:
        raise ScratchError(f"unknown GPU '{key}'; known: {', '.join([*GPUS, *GPU_ALIASES])}")
    return profile


def device_profile(device_name: str, total_memory: int) -> GpuProfile:
    """The profile of a running CUDA device (torch.cuda.get_device_name() and its total memory): the
    matching profile nearest in memory, with the device's own memory; peak 0 when unknown (MFU is then
    not reported)."""
    matches = [p for p in GPUS.values() if re.search(p.pattern, device_name)]
    memory = total_memory / GIB
    if not matches:
        return GpuProfile(device_name, 0.0, memory, 0.40, re.escape(device_name))
    return replace(min(matches, key=lambda p: abs(p.memory_gib - memory)), memory_gib=memory)


def peak_flops_of(device_name: str) -> float:
    """Dense bf16 peak FLOP/s of a CUDA device by name, 0 when unknown (MFU is then not reported)."""
    for profile in GPUS.values():
        if re.search(profile.pattern, device_name):
            return profile.peak_tflops * 1e12
    return 0.0


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
    spec = gpu_profile(gpu)
    mfu = mfu or spec.mfu
    source = "measured" if tok_per_s else f"{spec.name} peak {spec.peak_tflops:.0f} TFLOP/s at {mfu:.0%} MFU"
    tok_per_s = tok_per_s or num_gpus * spec.peak_tflops * 1e12 * mfu / plan.flops_per_token
    hours = plan.tokens / tok_per_s / 3600
    return {
        "gpu": spec.name,
        "num_gpus": num_gpus,
        "tok_per_s": round(tok_per_s),
        "tok_per_s_from": source,
        "hours": round(hours, 2),
        "usd_per_gpu_hour": usd_per_gpu_hour,
        "cost_usd": round(hours * num_gpus * usd_per_gpu_hour, 2),
    }
