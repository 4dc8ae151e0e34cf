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
from typing import TYPE_CHECKING

from ..errors import ScratchError
from ..hub import HUB_PREFIX

if TYPE_CHECKING:  # for the annotations only: importing them pulls in transformers (seconds)
    from ..model import ScratchConfig
    from .config import PretrainConfig

GIB = 2**30


@dataclass(frozen=True)
class GpuProfile:
    name: str
    peak_tflops: float  # dense bf16 with fp32 accumulate
    memory_gib: float  # total memory as torch.cuda.get_device_properties reports it
    mfu: float  # what the planner assumes without a measured tok/s
    pattern: str  # matches torch.cuda.get_device_name() of this GPU
    usd_per_hour: float = 0.0  # a default price (PRICE_SOURCE); 0: none known
    hbm_gbps: float = 0.0  # memory bandwidth, GB/s (10^9 bytes), for the rehearsal's roofline; 0: none known

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * GIB)


# Peaks: the vendors' datasheets and whitepapers, dense (half the "with sparsity" figure), bf16 inputs
# with fp32 accumulation (GeForce cards run that at half their fp16-accumulate rate: SMs x boost clock x
# 512 FLOP per clock for Ampere and Ada GeForce, which gives NVIDIA's published figures):
#   RTX 3060: 28 SMs at 1.777 GHz = 25.4 TFLOPS; RTX 3090: Ampere GA102 whitepaper, 71 (142 with fp16
#     accumulate); RTX 3090 Ti: 84 SMs at 1.86 GHz = 80;
#   RTX 4060 Ti: 34 SMs at 2.535 GHz = 44.1; RTX 4070 Ti: 60 at 2.61 = 80.2; RTX 4080: Ada whitepaper,
#     97.5; RTX 4090: Ada whitepaper, 165.2 (330.3 with fp16 accumulate); RTX 5090: Blackwell RTX
#     whitepaper, 209.5 (170 SMs at 2.407 GHz);
#   A10 125, A40 149.7, RTX A6000 154.8, L4 121, L40S 362: their datasheets (250, 299.4, 309.7, 242, 733
#     with sparsity);
#   A100 (SXM4 and PCIe, 40 and 80 GB): A100 datasheet, 312 TFLOPS;
#   H100 SXM 989.4, H100 PCIe 756.5, H100 NVL 835.5 TFLOPS: H100 datasheet (1,979 / 1,513 / 1,671
#     with sparsity); H200 (SXM) 989.4: H200 datasheet, the H100 SXM's tensor cores; B200: HGX B200
#     datasheet, 2,250 (4,500 with sparsity); AMD Instinct MI300X: AMD's datasheet, 1,307.4.
# HBM bandwidth (GB/s), from the same datasheets and whitepapers: RTX 3060 360, RTX 3090 936, RTX 3090 Ti 1,008,
#   RTX 4060 Ti 16GB 288, RTX 4070 Ti 504 (21 Gbps x 192 bit), RTX 4080 716.8, RTX 4090 1,008, RTX 5090 1,792;
#   A10 600, A40 696, RTX A6000 768, L4 300, L40S 864; A100 40GB 1,555, A100 80GB 2,039 (SXM; PCIe 1,935);
#   H100 PCIe 2,000, H100 SXM 3,350, H100 NVL 3,900; H200 4,800; B200 8,000 (HGX B200: 64 TB/s for 8);
#   MI300X 5,300.
# Memory: what torch reports as total (CUDA out-of-memory messages show it: 11.76 GiB on a 12 GB
# RTX 3060, 23.65 GiB on an RTX 4090, 39.59 / 79.15 GiB on A100 40/80 GB); Hopper from nvidia-smi's
# total (81,559 MiB for H100 80 GB, 95,830 for H100 NVL, 143,771 for the H200 we test on) less the
# same ~0.5 GiB. The cards added since (3090 to 5090, A10 to L40S, B200, MI300X) carry the totals
# their users' out-of-memory messages print, approximate to ~0.1 GiB. The start-up check uses the
# running device's own total, not these.
# MFUs are what the recipes' public runs measured: 2x RTX 4090 with FSDP and activation checkpointing ran a 1B
# model at ~19,000 tok/s (~40%); one A100 without checkpointing, compiled, at 28,300 tok/s (~60%;
# 50% assumed); 40% elsewhere.
PRICE_SOURCE = "RunPod's per-GPU hourly prices, spot/community column, as listed by deploybase.ai (March 2026)"
GPUS = {
    "3060": GpuProfile("RTX 3060 12GB", 25.4, 11.76, 0.40, r"RTX 3060(?! Ti)", hbm_gbps=360),
    "3090": GpuProfile("RTX 3090", 71.0, 23.69, 0.40, r"RTX 3090(?! Ti)", 0.22, hbm_gbps=936),
    "3090-ti": GpuProfile("RTX 3090 Ti", 80.0, 23.69, 0.40, r"RTX 3090 Ti", hbm_gbps=1008),
    "4060-ti-16gb": GpuProfile("RTX 4060 Ti 16GB", 44.1, 15.7, 0.40, r"RTX 4060 Ti", hbm_gbps=288),
    "4070-ti": GpuProfile("RTX 4070 Ti 12GB", 80.2, 11.72, 0.40, r"RTX 4070 Ti(?! SUPER)", hbm_gbps=504),
    "4080": GpuProfile("RTX 4080 16GB", 97.5, 15.7, 0.40, r"RTX 4080(?! SUPER)", hbm_gbps=716.8),
    "4090": GpuProfile("RTX 4090", 165.2, 23.65, 0.40, r"RTX 4090", 0.34, hbm_gbps=1008),
    "5090": GpuProfile("RTX 5090", 209.5, 31.36, 0.40, r"RTX 5090", 0.69, hbm_gbps=1792),
    "a10": GpuProfile("A10", 125.0, 22.07, 0.40, r"\bA10\b", hbm_gbps=600),
    "a40": GpuProfile("A40", 149.7, 44.35, 0.40, r"\bA40\b", hbm_gbps=696),
    "a6000": GpuProfile("RTX A6000", 154.8, 47.54, 0.40, r"RTX A6000", hbm_gbps=768),
    "l4": GpuProfile("L4", 121.0, 21.96, 0.40, r"\bL4\b", 0.44, hbm_gbps=300),
    "l40s": GpuProfile("L40S", 362.0, 44.52, 0.40, r"L40S", 0.79, hbm_gbps=864),
    "a100-40gb": GpuProfile("A100 40GB", 312.0, 39.59, 0.50, r"A100", hbm_gbps=1555),
    "a100-80gb": GpuProfile("A100 80GB", 312.0, 79.15, 0.50, r"A100", 1.39, hbm_gbps=2039),
    "h100-pcie": GpuProfile("H100 PCIe", 756.5, 79.1, 0.40, r"H100 PCIe", 1.99, hbm_gbps=2000),
    "h100-sxm": GpuProfile("H100 SXM", 989.4, 79.1, 0.40, r"H100(?! PCIe| NVL)", 2.69, hbm_gbps=3350),
    "h100-nvl": GpuProfile("H100 NVL", 835.5, 93.1, 0.40, r"H100 NVL", hbm_gbps=3900),
    "h200": GpuProfile("H200", 989.4, 139.9, 0.40, r"H200(?! NVL)", 3.59, hbm_gbps=4800),
    "b200": GpuProfile("B200", 2250.0, 178.35, 0.40, r"B200", 5.98, hbm_gbps=8000),
    "mi300x": GpuProfile("MI300X", 1307.4, 191.98, 0.40, r"MI300X", hbm_gbps=5300),
}
# Names that leave the memory open: the larger card, said so (plan prints it).
GPU_ALIASES = {"a100": "a100-80gb", "h100": "h100-sxm", "4060-ti": "4060-ti-16gb"}


def _spelled(name: str) -> str:
    """A GPU's name as people type it, reduced to what tells cards apart: "RTX 4090", "rtx4090", "4090" and
    "NVIDIA GeForce RTX 4090" are all "4090"; "A100-40GB" and "a100 40gb" "a10040gb"; "H100 SXM5" "h100sxm"."""
    squashed = re.sub(r"[^a-z0-9]", "", name.lower())
    squashed = re.sub(r"^(nvidia|amd)?(geforce|instinct)?(rtx)?", "", squashed)
    return re.sub(r"sxm\d$", "sxm", squashed)


def gpu_profile(key: str) -> GpuProfile:
    """A GPU by any usual spelling of its name (GPUS, GPU_ALIASES), or a ScratchError listing the known ones."""
    spelled = {_spelled(k): v for k, v in {**{a: GPUS[t] for a, t in GPU_ALIASES.items()}, **GPUS}.items()}
    profile = spelled.get(_spelled(key)) or spelled.get(re.sub(r"\d+gb$", "", _spelled(key)))  # "4070 Ti 12GB"
    if profile is None:
        raise ScratchError(
            f"unknown GPU '{key}'; known: {', '.join(GPUS)} (any case and spacing); for another card give "
            "--gpu-memory GIB --gpu-tflops DENSE_BF16_TFLOPS"
        )
    return profile


def gpu_alias_note(key: str) -> str | None:
    """What a name that leaves the card open was taken to mean ("a100": the 80GB one)."""
    for alias, target in GPU_ALIASES.items():
        if _spelled(key) == _spelled(alias):
            return f"--gpu {key}: planned as the {GPUS[target].name} (--gpu {target}); name the card to be sure"
    return None


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
    plan: Plan, spec: GpuProfile, num_gpus: int, tok_per_s: float = 0, usd_per_gpu_hour: float = 0, mfu: float = 0
) -> dict:
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


def model_config_of(config: "PretrainConfig") -> "ScratchConfig":
    """The model a pretraining config trains, as far as it is known before any weights are
    read: its preset, its model YAML, or the config.json of the model directory init_from continues. The loop
    builds a new model from it (train/loop.py build_model; init_from's weights it loads instead)."""
    from ..model.files import read_config, scratch_config
    from ..model.presets import model_config_from

    if config.model_preset or config.model_config:
        return model_config_from(config.model_preset, config.model_config)
    return scratch_config(read_config(config.init_from), where=config.init_from)


def check_seq_len(config: "PretrainConfig", model_config: "ScratchConfig") -> int:
    """The run's window: seq_len, else the model's context; a window longer than the context is refused."""
    from ..model.info import window_length

    seq_len = window_length(model_config, config.seq_len)
    if seq_len > model_config.max_position_embeddings:
        raise ScratchError(
            f"config: seq_len {seq_len} exceeds the model's context "
            f"(max_position_embeddings {model_config.max_position_embeddings})"
        )
    return seq_len


def plan_run(config: "PretrainConfig", model_config: "ScratchConfig", world_size: int) -> tuple[Plan, dict]:
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


def batch_for_world(config, model_config, world_size: int, tokens_per_step: int):
    """`config` with the micro-batch and accumulation that make `tokens_per_step` on `world_size` processes (the
    micro-batch kept, or the largest below it that divides a rank's windows), or a ScratchError saying why no
    setting can. With tokens_per_step in the config the loop works out the accumulation itself."""
    seq_len = check_seq_len(config, model_config)
    windows, rest = divmod(tokens_per_step, seq_len * world_size)  # per rank and step
    if rest or not windows:
        raise ScratchError(
            f"{tokens_per_step:,} tokens per step is no whole number of {seq_len}-token windows on each of "
            f"{world_size} processes"
        )
    micro = max(m for m in range(1, min(config.per_device_train_batch_size, windows) + 1) if windows % m == 0)
    if config.tokens_per_step:
        return replace(config, per_device_train_batch_size=micro, tokens_per_step=tokens_per_step)
    return replace(config, per_device_train_batch_size=micro, gradient_accumulation_steps=windows // micro)


def describe_batch(config) -> str:
    """The keys that set a config's batch, as a reader types them."""
    keys = ["per_device_train_batch_size"]
    keys.append("tokens_per_step" if config.tokens_per_step else "gradient_accumulation_steps")
    return ", ".join(f"{key} {getattr(config, key) or 1}" for key in keys)


def warmup_warning(config, steps: int) -> str | None:
    """A horizon that ends inside the warmup never reaches the peak learning rate: said, not refused (a smoke
    run of a few steps is one)."""
    if config.warmup_steps <= steps:
        return None
    return (
        f"warning: the run's {steps:,} steps end inside its {config.warmup_steps:,} warmup steps: the learning rate "
        f"never reaches learning_rate {config.learning_rate:g} (shorten warmup_steps)"
    )


# --- `scratchlm plan` ---------------------------------------------------------------------------------

# The accelerate config a launch line names, by number of GPUs: one GPU runs unsharded, several FSDP2.
ACCELERATE_CONFIGS = {1: "accelerate_configs/single_gpu.yaml", 2: "accelerate_configs/2x4090_fsdp2.yaml",
                      8: "accelerate_configs/8xh100_fsdp2.yaml"}  # fmt: skip
HEADROOM = 0.1  # of a GPU's memory, kept free by the setting the planner picks


def run_plan(args) -> int:
    """`scratchlm plan` (its arguments: cli.py add_plan_parser): a recipe's plan on the GPUs named, with the
    fastest setting that fits them and the command that runs it, or a model's for a horizon given on the command
    line. The exit status is 1 when the recipe as given does not fit (and no written config replaces it)."""
    from ..config import read_yaml

    recipe = args.recipe or (args.config if args.config and "output_dir" in read_yaml(args.config) else None)
    gpu, notes = plan_gpu(args)
    if recipe:
        return plan_recipe(recipe, gpu, notes, args)
    if args.overrides:
        raise ScratchError(f"plan: {args.overrides[0]} overrides a recipe's key: it goes with --recipe")
    if getattr(args, "rehearse", False):
        raise ScratchError("plan: --rehearse rehearses a recipe's run: give --recipe recipes/<run>/pretrain.yaml")
    plan, stats = horizon_plan(args)
    usd, usd_from = price_of(gpu, args.usd_per_gpu_hour, 0.0)
    cost = estimate_time_and_cost(plan, gpu, args.num_gpus, args.tok_per_s or 0, usd, args.mfu or 0)
    if args.json:
        print(json.dumps({**plan.as_dict(), "params_matmul": stats["params_matmul"], **cost, "usd_from": usd_from}))
        return 0
    for note in notes:
        print(note)
    print_plan(plan, cost, args.num_gpus, usd_from)
    return 0


def plan_gpu(args) -> tuple[GpuProfile, list[str]]:
    """The GPU planned for: a named one (its memory or peak replaced when --gpu-memory or --gpu-tflops are
    given), or one described by both; and what a name that leaves the card open was taken to mean."""
    memory, tflops = args.gpu_memory, args.gpu_tflops
    if args.gpu:
        gpu = gpu_profile(args.gpu)
        gpu = replace(gpu, memory_gib=memory or gpu.memory_gib, peak_tflops=tflops or gpu.peak_tflops)
        return gpu, [note] if (note := gpu_alias_note(args.gpu)) else []
    if not (memory and tflops):
        raise ScratchError(
            "plan: name the GPU (--gpu 4090, --gpu 'RTX 3090', --gpu h100-sxm, ...) or describe it: --gpu-memory "
            "GIB --gpu-tflops DENSE_BF16_TFLOPS"
        )
    return GpuProfile(f"custom GPU ({memory:g} GiB)", tflops, memory, 0.40, "(?!)"), []


def price_of(gpu: GpuProfile, given: float | None, recipe_usd: float) -> tuple[float, str]:
    """USD per GPU hour and where it comes from: --usd-per-gpu-hour, else the GPU's default, else the recipe's."""
    if given:
        return given, "--usd-per-gpu-hour"
    if gpu.usd_per_hour:
        return gpu.usd_per_hour, f"the {gpu.name}'s default: {PRICE_SOURCE}; --usd-per-gpu-hour for yours"
    if recipe_usd:
        return recipe_usd, "the recipe's usd_per_gpu_hour (no default for this GPU)"
    return 0.0, "no price known for this GPU: give --usd-per-gpu-hour"


def print_plan(plan: Plan, cost: dict, num_gpus: int, usd_from: str) -> None:
    print(f"parameters        {plan.params_total:>20,}")
    print(f"FLOPs/token       {plan.flops_per_token:>20,}")
    print(
        f"tokens/step       {plan.tokens_per_step:>20,}  ({plan.micro_batch} x {plan.seq_len} x {plan.accumulation} "
        f"accumulation x {num_gpus} GPUs)"
    )
    print(f"steps             {plan.steps:>20,}")
    print(f"tokens            {plan.tokens:>20,}  ({plan.tokens_per_param:.1f} per parameter)")
    print(f"FLOPs             {plan.flops:>20.3e}")
    print(f"throughput        {cost['tok_per_s']:>20,} tok/s  ({cost['tok_per_s_from']})")
    print(f"wall time         {cost['hours']:>20,.1f} h  ({cost['hours'] / 24:.1f} days)")
    usd = cost["usd_per_gpu_hour"]
    print(f"cost              {cost['cost_usd']:>20,.2f} USD  ({num_gpus} x ${usd:g}/GPU-hour: {usd_from})")


def plan_recipe(path: str, gpu: GpuProfile, notes: list[str], args) -> int:
    """A recipe (with the command line's overrides) on `args.num_gpus` of `gpu`: its global batch kept, its memory
    as given, the fastest setting that fits, and the command that runs that setting."""
    from .memory import estimate_memory, setup_for_run

    config, model_config = read_recipe(path, args)
    if args.write_config and not Path(args.write_config).resolve().parent.is_dir():
        raise ScratchError(f"--write-config {args.write_config}: its directory does not exist")
    given, batch_note = keep_recipe_batch(config, model_config, args.num_gpus)
    plan, stats = plan_run(given, model_config, args.num_gpus)
    setup = setup_for_run(given, model_config, plan)
    estimate = estimate_memory(setup)
    fastest = fastest_fitting(setup, gpu.memory_bytes)
    chosen = given if fastest is None else setting_config(given, fastest)
    usd, usd_from = price_of(gpu, args.usd_per_gpu_hour, config.usd_per_gpu_hour)
    cost = estimate_time_and_cost(plan, gpu, args.num_gpus, args.tok_per_s or 0, usd, args.mfu or 0)
    fits = estimate.device_peak <= gpu.memory_bytes
    if args.write_config and fastest is not None:
        write_recipe(path, chosen, args.write_config)
    launch = launch_line(path, chosen, args.num_gpus, args.write_config if fastest is not None else None)
    if args.json:
        memory = memory_record(estimate, gpu)
        print(json.dumps({**plan.as_dict(), "params_matmul": stats["params_matmul"], **cost, "usd_from": usd_from,
                          "memory": memory, "fastest": fastest and setting_record(fastest, estimate_memory(fastest)),
                          "launch": launch if fastest is not None else None}))  # fmt: skip
    else:
        for line in [*notes, batch_note, warmup_warning(given, plan.steps)]:
            if line:
                print(line)
        print_plan(plan, cost, args.num_gpus, usd_from)
        print_memory(setup, estimate, gpu)
        print_choice(setup, fastest, launch, args.write_config)
    if getattr(args, "rehearse", False):  # the run as given, phase by phase (train/rehearse.py, via cli.py:
        return args.rehearsal(given, model_config, plan, setup, gpu, args.json)  # rehearse imports this module)
    return 0 if fits or (fastest is not None and args.write_config) else 1


def keep_recipe_batch(config, model_config, num_gpus: int):
    """The recipe's global batch on `num_gpus` GPUs: tokens_per_step when it sets one, else its micro-batch x
    window x accumulation on one GPU; the accumulation (or micro-batch) adjusted, and said so."""
    tokens = config.tokens_per_step or plan_run(config, model_config, 1)[0].tokens_per_step
    if num_gpus == 1 and not config.tokens_per_step:
        return config, None
    try:
        kept = batch_for_world(config, model_config, num_gpus, tokens)
    except ScratchError as err:
        return (
            config,
            f"note: the recipe's {tokens:,} tokens/step cannot be kept on {num_gpus} GPUs ({err}); planned as its "
            "keys give it",
        )
    whose = "" if config.tokens_per_step else " (its batch on one GPU)"
    if describe_batch(kept) == describe_batch(config):
        return kept, None
    return kept, (
        f"batch: the recipe's {tokens:,} tokens/step{whose} kept on {num_gpus} GPUs: {describe_batch(kept)} "
        f"(the recipe: {describe_batch(config)})"
    )


def fastest_fitting(setup, capacity: int):
    """The setting of a rank's windows per step that fits `capacity` with HEADROOM and runs fastest: without
    activation checkpointing if any fits (it recomputes every layer: the A100 run measured +18% with it off),
    then the largest micro-batch. None when nothing fits."""
    from .memory import estimate_memory

    windows = setup.micro_batch * setup.accumulation
    for checkpointing in (False, True):
        for micro in (m for m in range(windows, 0, -1) if windows % m == 0):
            trial = replace(
                setup, micro_batch=micro, accumulation=windows // micro, gradient_checkpointing=checkpointing
            )
            if estimate_memory(trial).device_peak <= (1 - HEADROOM) * capacity:
                return trial
    return None


def setting_config(config, setting):
    """The config that trains `setting` (a TrainingSetup from fastest_fitting)."""
    keys = {
        "per_device_train_batch_size": setting.micro_batch,
        "gradient_checkpointing": setting.gradient_checkpointing,
    }
    if not config.tokens_per_step:
        keys["gradient_accumulation_steps"] = setting.accumulation
    return replace(config, **keys)


def overrides_of(path: str, config) -> list[str]:
    """`--key value` for every key in which `config` differs from the recipe file at `path`."""
    recipe, wanted = asdict(parse_recipe(path)), asdict(config)
    words = []
    for key, value in wanted.items():
        if value != recipe[key]:
            shown = (
                [str(v) for v in value]
                if isinstance(value, list)
                else [str(value).lower() if isinstance(value, bool) else str(value)]
            )
            words += [f"--{key}", *shown]
    return words


def launch_line(path: str, config, num_gpus: int, written: str | None) -> str:
    """The command that trains `config` on `num_gpus` GPUs: the accelerate config and the recipe's overrides (or
    the config written with them)."""
    accelerate = ["--config_file", ACCELERATE_CONFIGS.get(num_gpus, ACCELERATE_CONFIGS[8])]
    if num_gpus not in ACCELERATE_CONFIGS:
        accelerate += ["--num_processes", str(num_gpus)]
    recipe = ["--config", written] if written else ["--config", path, *overrides_of(path, config)]
    return " ".join(["accelerate", "launch", "--quiet", *accelerate, "recipes/pretrain.py", *recipe])


def write_recipe(path: str, config, out: str) -> None:
    """The recipe at `path` with `config`'s changes, as a YAML the next command runs unchanged."""
    import yaml

    from ..config import read_yaml

    values = read_yaml(path)
    recipe = asdict(parse_recipe(path))
    values.update({key: value for key, value in asdict(config).items() if value != recipe[key]})
    Path(out).write_text(yaml.safe_dump(values, sort_keys=False))


def parse_recipe(path: str):
    """The recipe file alone, without the command line's overrides."""
    from .config import parse_pretrain_args

    return parse_pretrain_args(["--config", path])


def memory_record(estimate, gpu: GpuProfile) -> dict:
    return {
        **estimate.terms,
        "allocated_peak": estimate.allocated_peak,
        "device_peak": estimate.device_peak,
        "capacity": gpu.memory_bytes,
        "fits": estimate.device_peak <= gpu.memory_bytes,
        "headroom": round(1 - estimate.device_peak / gpu.memory_bytes, 4),
    }


def setting_record(setting, estimate) -> dict:
    return {
        "per_device_train_batch_size": setting.micro_batch,
        "gradient_accumulation_steps": setting.accumulation,
        "gradient_checkpointing": setting.gradient_checkpointing,
        "device_peak": estimate.device_peak,
    }


def horizon_plan(args):
    """The plan of a model (a preset or a model YAML) for a horizon given on the command line; no memory."""
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
    return plan, stats


def print_memory(setup, estimate, gpu: GpuProfile) -> None:
    from .memory import describe_estimate

    how = [
        "FSDP2" if setup.sharded else "one GPU",
        "bf16" if setup.bf16 else "fp32",
        "activation checkpointing" if setup.gradient_checkpointing else "no activation checkpointing",
        "compiled" if setup.compile else "eager",
        f"{setup.attention}{' + document masking' if setup.document_masking else ''}",
    ]
    print(describe_estimate(estimate, gpu.memory_bytes, f" ({gpu.name}; {', '.join(how)})"))
    if estimate.device_peak > gpu.memory_bytes:
        print("the recipe as given does NOT fit")
    elif estimate.device_peak > (1 - HEADROOM) * gpu.memory_bytes:
        print(f"the recipe as given fits, with less than {HEADROOM:.0%} headroom")
    else:
        print("the recipe as given fits")


def print_choice(setup, fastest, launch: str, written: str | None) -> None:
    """The fastest setting that fits and the command that trains it."""
    from .memory import estimate_memory, gib

    if fastest is None:
        print(f"no setting of the same tokens per step fits with {HEADROOM:.0%} headroom, even with activation "
              "checkpointing and a micro-batch of 1: more GPUs, a larger GPU, or a shorter seq_len")  # fmt: skip
        return
    same = (fastest.micro_batch, fastest.accumulation, fastest.gradient_checkpointing) == (
        setup.micro_batch, setup.accumulation, setup.gradient_checkpointing)  # fmt: skip
    checkpointing = "with" if fastest.gradient_checkpointing else "without"
    print(
        f"{'the recipe as given is the fastest' if same else 'fastest'} that fits ({HEADROOM:.0%} headroom): "
        f"micro-batch {fastest.micro_batch} x {fastest.accumulation} accumulation, {checkpointing} activation "
        f"checkpointing, {gib(estimate_memory(fastest).device_peak)} per GPU"
    )
    if written:
        print(f"wrote {written}")
    print(f"launch: {launch}")


# plan's own flags for a model's batch and horizon, as the recipe keys they set with --recipe
HORIZON_KEYS = {"steps": "max_steps", "tokens": "max_tokens", "ratio": "tokens_per_param", "flops": "target_flops"}
BATCH_KEYS = {"micro_batch": "per_device_train_batch_size", "seq_len": "seq_len", "tokens_per_step": "tokens_per_step"}


def recipe_keys_of(args) -> list[str]:
    """`--key value` overrides of a recipe for the plan flags given (--steps 100: --max_steps 100 and the other
    horizons off; --tokens-per-step: the accumulation off)."""
    words = []
    for flag, key in {**HORIZON_KEYS, **BATCH_KEYS}.items():
        value = getattr(args, flag)
        if not value:
            continue
        words += [f"--{key}", str(int(value) if key == "max_tokens" else value)]
        if flag in HORIZON_KEYS:
            words += [word for other in HORIZON_KEYS.values() if other != key for word in (f"--{other}", "0")]
        if flag == "tokens_per_step":
            words += ["--gradient_accumulation_steps", "0"]
    return words


def read_recipe(path: str, args):
    """A pretraining recipe with the command line's `--key value` overrides, and the model it trains, as the
    training loop builds it (model_config_of)."""
    from .config import parse_pretrain_args

    config = parse_pretrain_args(["--config", path, *recipe_keys_of(args), *args.overrides])
    init_from = config.init_from
    if init_from and (init_from.startswith(HUB_PREFIX) or not (Path(init_from) / "config.json").is_file()):
        raise ScratchError(
            f"{path}: init_from {init_from} has no config.json here (it is written by the run this one "
            "continues, or lives on the Hub); plan that run's recipe, or run it first"
        )
    return config, model_config_of(config)
