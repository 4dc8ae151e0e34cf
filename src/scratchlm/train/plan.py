"""Horizon, batch, time and cost: one place computes them for the planner, the schedule and the report;
and `scratchlm plan`, which prints them for a recipe or a model before any GPU hour is paid for.

tokens/step = micro_batch × seq_len × accumulation × world_size. The horizon is given as steps,
tokens, FLOPs (FLOPs/token × tokens) or tokens per parameter; whichever is given, the others follow.
A pretraining config's model and plan are worked out here once (`model_config_of`, `plan_run`): the
loop trains what the planner plans. Imports of torch and the model are inside the functions that need
them: the CLI imports this module to list the GPUs.
"""

import json
import math
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..errors import ScratchError
from ..hub import HUB_PREFIX

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


# --- a pretraining config's model and plan: the loop and the planner both ask here ----------------------


def model_config_of(config):
    """The model a pretraining config (PretrainConfig) trains, as far as it is known before any weights are
    read: its preset, its model YAML, or the config.json of the model directory init_from continues. The loop
    builds a new model from it (train/loop.py build_model; init_from's weights it loads instead)."""
    from ..model.files import read_config, scratch_config
    from ..model.presets import model_config_from

    if config.model_preset or config.model_config:
        return model_config_from(config.model_preset, config.model_config)
    return scratch_config(read_config(config.init_from), where=config.init_from)


def check_seq_len(config, model_config) -> int:
    """The run's window: seq_len, else the model's context; a window longer than the context is refused."""
    from ..model.info import window_length

    seq_len = window_length(model_config, config.seq_len)
    if seq_len > model_config.max_position_embeddings:
        raise ScratchError(
            f"config: seq_len {seq_len} exceeds the model's context "
            f"(max_position_embeddings {model_config.max_position_embeddings})"
        )
    return seq_len


def plan_run(config, model_config, world_size: int) -> tuple[Plan, dict]:
    """The batch and horizon of a pretraining config for its model and world size, and the model's stats
    (model_stats at the run's window): what the loop trains and what `scratchlm plan --recipe` prints."""
    from ..model.info import model_stats

    seq_len = check_seq_len(config, model_config)
    stats = model_stats(model_config, seq_len)
    plan = resolve_plan(
        stats,
        seq_len,
        config.per_device_train_batch_size,
        world_size,
        accumulation=config.gradient_accumulation_steps,
        tokens_per_step=config.tokens_per_step,
        max_steps=config.max_steps,
        max_tokens=config.max_tokens,
        target_flops=config.target_flops,
        tokens_per_param=config.tokens_per_param,
    )
    return plan, stats


# --- `scratchlm plan` ---------------------------------------------------------------------------------


def run_plan(args) -> None:
    """`scratchlm plan` (its arguments: cli.py add_plan_parser): a recipe's plan with its memory per GPU, or a
    model's for a horizon given on the command line."""
    from ..config import read_yaml

    recipe = args.recipe or (args.config if args.config and "output_dir" in read_yaml(args.config) else None)
    gpu = gpu_profile(args.gpu)
    plan, stats, setup, usd, by_tokens = recipe_plan(recipe, args) if recipe else horizon_plan(args)
    cost = estimate_time_and_cost(plan, args.gpu, args.num_gpus, args.tok_per_s or 0, usd, args.mfu or 0)
    result = {**plan.as_dict(), "params_matmul": stats["params_matmul"], **cost}
    estimate = None
    if setup is not None:
        from .memory import estimate_memory

        estimate = estimate_memory(setup)
        result["memory"] = {
            **estimate.terms,
            "allocated_peak": estimate.allocated_peak,
            "device_peak": estimate.device_peak,
            "capacity": gpu.memory_bytes,
            "fits": estimate.device_peak <= gpu.memory_bytes,
            "headroom": round(1 - estimate.device_peak / gpu.memory_bytes, 4),
        }
    if args.json:
        print(json.dumps(result))
        return
    print(f"parameters        {plan.params_total:>20,}")
    print(f"FLOPs/token       {plan.flops_per_token:>20,}")
    print(
        f"tokens/step       {plan.tokens_per_step:>20,}  ({plan.micro_batch} x {plan.seq_len} x {plan.accumulation} "
        f"accumulation x {args.num_gpus} GPUs)"
    )
    print(f"steps             {plan.steps:>20,}")
    print(f"tokens            {plan.tokens:>20,}  ({plan.tokens_per_param:.1f} per parameter)")
    print(f"FLOPs             {plan.flops:>20.3e}")
    print(f"throughput        {cost['tok_per_s']:>20,} tok/s  ({cost['tok_per_s_from']})")
    print(f"wall time         {cost['hours']:>20,.1f} h  ({cost['hours'] / 24:.1f} days)")
    print(f"cost              {cost['cost_usd']:>20,.2f} USD  ({args.num_gpus} x ${usd}/GPU-hour)")
    if setup is not None:
        print_memory(setup, estimate, gpu, by_tokens)


def recipe_plan(recipe: str, args):
    """(plan, model stats, memory setup, USD per GPU hour, batch given in tokens) of a pretraining recipe."""
    from .memory import setup_for_run

    config, model_config = read_recipe(recipe, args)
    plan, stats = plan_run(config, model_config, args.num_gpus)
    setup = setup_for_run(config, model_config, plan)
    return plan, stats, setup, args.usd_per_gpu_hour or config.usd_per_gpu_hour, bool(config.tokens_per_step)


def horizon_plan(args):
    """The same for a model (a preset or a model YAML) and a horizon given on the command line; no memory."""
    from ..model.info import model_stats, window_length
    from ..model.presets import model_config_from

    if not (args.steps or args.tokens or args.ratio or args.flops):
        raise ScratchError("plan: give a horizon (--steps, --tokens, --ratio or --flops) or a --recipe")
    model_config = model_config_from(args.preset, args.config)
    seq_len = window_length(model_config, args.seq_len)
    stats = model_stats(model_config, seq_len)
    plan = resolve_plan(
        stats,
        seq_len,
        args.micro_batch or 1,
        args.num_gpus,
        tokens_per_step=args.tokens_per_step or 524_288,
        max_steps=args.steps or 0,
        max_tokens=int(args.tokens or 0),
        target_flops=args.flops or 0,
        tokens_per_param=args.ratio or 0,
    )
    return plan, stats, None, args.usd_per_gpu_hour or 0, True


def print_memory(setup, estimate, gpu: GpuProfile, by_tokens: bool) -> None:
    from .memory import describe_estimate, estimate_memory, settings_that_fit

    how = [
        "FSDP2" if setup.sharded else "one GPU",
        "bf16" if setup.bf16 else "fp32",
        "activation checkpointing" if setup.gradient_checkpointing else "no activation checkpointing",
        "compiled" if setup.compile else "eager",
        f"{setup.attention}{' + document masking' if setup.document_masking else ''}",
    ]
    print(describe_estimate(estimate, gpu.memory_bytes, f" ({gpu.name}; {', '.join(how)})"))
    if estimate.device_peak > gpu.memory_bytes:
        advice = settings_that_fit(setup, gpu.memory_bytes, headroom=0.1, tokens_per_step=by_tokens)
        print("does NOT fit; same tokens per step, 10% headroom: " + (" or ".join(advice) or "no micro-batch fits"))
    elif estimate.device_peak > 0.9 * gpu.memory_bytes:
        print("fits, with less than 10% headroom")
    else:
        print("fits")
    if setup.gradient_checkpointing:
        unchecked = replace(setup, gradient_checkpointing=False)
        if estimate_memory(unchecked).device_peak <= 0.9 * gpu.memory_bytes:
            print("fits without activation checkpointing too (10% headroom), which is faster")


def read_recipe(path: str, args):
    """A pretraining recipe and the model it trains, as the training loop builds it (model_config_of)."""
    from .config import parse_pretrain_args

    flags = ("steps", "tokens", "ratio", "flops", "micro_batch", "seq_len", "tokens_per_step")
    given = [flag for flag in flags if getattr(args, flag)]
    if given:
        raise ScratchError(
            f"plan --recipe takes the batch and horizon from the recipe; drop --{given[0].replace('_', '-')} "
            "(or change the recipe)"
        )
    config = parse_pretrain_args(["--config", path])
    init_from = config.init_from
    if init_from and (init_from.startswith(HUB_PREFIX) or not (Path(init_from) / "config.json").is_file()):
        raise ScratchError(
            f"{path}: init_from {init_from} has no config.json here (it is written by the run this one "
            "continues, or lives on the Hub); plan that run's recipe, or run it first"
        )
    return config, model_config_of(config)
