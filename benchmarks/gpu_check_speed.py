"""The speed part of the device check: one model shape per process, so that its peak memory and its
recompile count are its own. gpu_check.py starts it:

    python benchmarks/gpu_check_speed.py SPEC.json OUT.json

1. The loop as users run it: `setup(config)` and `fit` from train/loop.py on a recipe's config (its
   compile, checkpointing and precision; one GPU; the given micro-batch, no accumulation), stopped
   after a few steps. Its checkpoint writes are switched off (a 1B checkpoint is 12 GB of disk and
   seconds of writing that are no part of a step's speed) and it never reaches its export. Speed,
   MFU and peak memory come from its metrics.jsonl; recompiles from dynamo's compilation metrics.
2. The rehearsal's real-tensor mode (train/rehearse.py, as `scratchlm plan --rehearse` runs it on a GPU) on
   the same run: each phase's tracked and measured peak ([tracked, measured] GiB), the planner's training
   peak against the measured one, tok/s and MFU.
3. A torch.profiler profile of one more step of the loop's own Stepper, summarised by category.
4. A bare PyTorch reference of the same step: the same model class, config, micro-batch and
   document layout, random tokens already on the device, fused AdamW, clipping, eager and compiled
   per block as the loop compiles; no data loader, no metrics, no synchronisation per step.

OUT.json is rewritten after each part, so a process killed at its deadline leaves what it measured.
"""

import gc
import inspect
import json
import statistics
import sys
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.autograd import DeviceType

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from scratchlm.config import read_yaml  # noqa: E402
from scratchlm.data.loader import WindowLoader  # noqa: E402
from scratchlm.data.shards import TokenShards  # noqa: E402
from scratchlm.model import ScratchForCausalLM  # noqa: E402
from scratchlm.model.info import model_stats  # noqa: E402
from scratchlm.model.loss import liger_loss  # noqa: E402
from scratchlm.train.config import PretrainConfig  # noqa: E402
from scratchlm.train.loop import fit, setup  # noqa: E402
from scratchlm.train.memory import setup_for_run  # noqa: E402
from scratchlm.train.parallel import checkpoint_layers  # noqa: E402
from scratchlm.train.rehearse import rehearse_real  # noqa: E402

GIB = 2**30


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    deadline = time.monotonic() + spec["budget_s"]
    result = {"shape": spec["shape"], "recipe": spec["recipe"]}

    def save() -> None:
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(out)

    t = loop_training(spec)
    fit(t)
    result["loop"] = loop_figures(t, spec["warmup_steps"])
    save()
    # Each part after the loop's own figures is tried on its own: a failure is its figure, not the process's.
    result["profile"] = attempt(profile_one_step, t)
    save()
    first_batch = next(
        WindowLoader(TokenShards(t.config.data_dir), seq_len=t.plan.seq_len, micro_batch=t.plan.micro_batch)
    )
    bare_inputs = {
        "model_config": t.model_config,
        "micro_batch": t.plan.micro_batch,
        "seq_len": t.plan.seq_len,
        "position_ids": first_batch["position_ids"],  # the loop's document layout: the same attention work
        "loss_fn": inspect.unwrap(t.stepper.loss_fn),  # the loop's, uncompiled (the bare reference compiles it)
        "bf16": t.world.bf16,
        "checkpointing": t.config.gradient_checkpointing and t.config.gradient_checkpointing_policy,
        "max_grad_norm": t.config.max_grad_norm,
        "device": t.world.device,
    }
    flops_per_token, peak = t.plan.flops_per_token, t.meter.peak
    run = (t.config, t.model_config, t.plan, rehearsal_setup(t))
    t.close()
    t.world.close()
    del t  # the loop's model, optimizer and compiled graphs leave the device before the rehearsal starts
    free_device_memory()
    result["estimate"] = attempt(rehearsed_memory, *run)
    save()
    free_device_memory()
    result["bare"] = {}
    # The recipe's own compile setting first: it is what loop/bare is judged on.
    modes = ["compiled", "eager"] if spec["compile"] else ["eager", "compiled"]
    for mode in modes:
        if time.monotonic() > deadline - spec["bare_reserve_s"]:
            result["bare"][mode] = {"status": "not run: time"}
            continue
        backend = spec["compile_backend"] if mode == "compiled" else ""
        steps = {"warmup": spec["bare_warmup"], "steps": spec["bare_steps"]}
        figures = attempt(bare_reference, **bare_inputs, compile_backend=backend, **steps)
        if "tok_per_s" in figures:
            figures["mfu"] = figures["tok_per_s"] * flops_per_token / peak if peak else None
        result["bare"][mode] = figures
        save()
        free_device_memory()
    result["complete"] = True
    save()


def attempt(measure, *args, **kwargs) -> dict:
    try:
        return measure(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - recorded as this part's figure; the parts after it still run
        traceback.print_exc()
        return {"status": f"error: {type(err).__name__}: {str(err).strip()[:400]}"}


# --- the loop ----------------------------------------------------------------------------------------


def loop_training(spec: dict):
    """The recipe's config for a short measured run on one device: the loop's own setup, checkpoints off."""
    values = read_yaml(spec["recipe_yaml"])
    values.pop("env", None)  # NCCL settings for several GPUs; one GPU needs none
    values.update(spec["overrides"])
    t = setup(PretrainConfig(**values))
    t.checkpointer.maybe_save = lambda step, done, stopping: None
    return t


def loop_figures(t, warmup_steps: int) -> dict:
    """Steady-state speed from metrics.jsonl (the first records include compilation), peak memory, recompiles."""
    records = t.run.training_metrics()
    steady = records[warmup_steps:] or records[-1:]
    mfus = [r["mfu"] for r in steady if r.get("mfu") is not None]
    first = records[0]
    return {
        "steps": len(records),
        "measured_steps": len(steady),
        "tok_per_s": statistics.median(r["tok_per_s"] for r in steady),
        "tok_per_s_each_step": [round(r["tok_per_s"]) for r in records],
        "mfu": statistics.median(mfus) if mfus else None,
        "step_s": statistics.median(t.plan.tokens_per_step / r["tok_per_s"] for r in steady),
        "first_step_s": first["tokens"] / first["tok_per_s"],  # compilation included
        "mem_peak_gib": max(r["mem_peak_gb"] for r in records),  # torch.cuda.max_memory_allocated, GiB
        **compilations(),
        "losses": [round(r["loss"], 4) for r in records],
        "micro_batch": t.plan.micro_batch,
        "seq_len": t.plan.seq_len,
        "tokens_per_step": t.plan.tokens_per_step,
        "params": t.plan.params_total,
        "flops_per_token": t.plan.flops_per_token,
        "peak_tflops": t.meter.peak / 1e12,
        "attention": t.model_config._attn_implementation,
        "loss_fn": inspect.unwrap(t.stepper.loss_fn).__name__,
        "compile": t.config.torch_compile,
        "gradient_checkpointing": t.config.gradient_checkpointing,
        "bf16": t.world.bf16,
        "fsdp": t.world.fsdp,
        "device": str(t.world.device),
    }


def compilations() -> dict:
    """What dynamo compiled in this process: frames, graphs, and the recompilations (a frame compiled again
    because a guard failed) with their reasons. (torch's counters["recompiles"] is never incremented.)"""
    from torch._dynamo.utils import counters, get_compilation_metrics

    reasons = [m.recompile_reason for m in get_compilation_metrics() if getattr(m, "recompile_reason", None)]
    return {
        "recompiles": len(reasons),
        "recompile_reasons": [reason.splitlines()[0][:200] for reason in reasons[:5]],
        "frames_compiled": counters["frames"]["total"],
        "unique_graphs": counters["stats"]["unique_graphs"],
    }


def rehearsal_setup(t):
    """train/memory.py's setup of this very run, as the loop's check_memory sets it up."""
    lm = inspect.unwrap(t.stepper.loss_fn).__name__ == "lm_loss"
    loss = ("liger" if liger_loss(t.world.device) else "chunked") if lm else "plain"
    return setup_for_run(
        t.config, t.model_config, t.plan, t.world, loss=loss, attention=t.model_config._attn_implementation
    )


def rehearsed_memory(config, model_config, plan, run_setup) -> dict:
    """The rehearsal's real-tensor mode (train/rehearse.py: what `scratchlm plan --rehearse` runs on a GPU) on
    the same run: every phase's torch.cuda.max_memory_allocated beside what torch's tracker counts, and the
    planner's training peak against the measured one (on a CPU the tracker's count stands for it)."""
    capacity = torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else 12 * GIB
    report = rehearse_real(config, model_config, plan, run_setup, capacity, steps=2)
    training = report.phases[0]
    measured = (training.measured if training.measured is not None else training.peak) / GIB
    estimated = report.estimate["allocated_peak"] / GIB
    return {
        "status": "done",
        "estimated_gib": estimated,
        "measured_gib": measured,
        "relative_error": (estimated - measured) / measured,
        "terms_gib": {name: round(value / GIB, 3) for name, value in report.estimate["terms"].items()},
        "phases_gib": {
            p.name: [round(p.peak / GIB, 3), p.measured and round(p.measured / GIB, 3)] for p in report.phases
        },
        "loss": run_setup.loss,
        **report.real,
    }


def free_device_memory() -> None:
    torch._dynamo.reset()  # compiled graphs hold on to the modules they were traced from
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- one step, profiled ------------------------------------------------------------------------------

# (category, substrings of a kernel's or an operator's name); the first that matches wins. cuBLAS's Hopper
# kernels are sm90_xmma_gemm_* and nvjet_*; flex_attention's are inductor templates (triton_tem_*), and
# without max-autotune inductor makes templates for nothing else.
MATMUL = ("gemm", "gemv", "cutlass", "xmma", "nvjet", "cublas", "wgmma", "aten::mm", "aten::addmm", "aten::bmm")
CATEGORIES = (
    ("communication", ("nccl", "all_reduce", "allreduce", "all_gather", "reduce_scatter", "c10d::")),
    ("attention", ("flash", "fmha", "attention", "flex", "sdpa", "triton_tem")),
    ("optimizer", ("adam", "multi_tensor_apply", "foreach", "optimizer")),
    ("matmul", MATMUL),
    ("memory copy", ("memcpy", "memset")),
)


def category_of(name: str) -> str:
    lowered = name.lower()
    for category, patterns in CATEGORIES:
        if any(p in lowered for p in patterns):
            return category
    return "norm/elementwise/other"


def profile_one_step(t) -> dict:
    """One more step of the loop's Stepper under torch.profiler: where its time goes."""
    from torch.profiler import ProfilerActivity, profile

    cuda = t.world.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    synchronize(t.world.device)
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        t.stepper.step(t.state.step + 1, False, t.checkpointer.latest)
        synchronize(t.world.device)
    wall = time.perf_counter() - start
    summary = summarize_profile(prof.events(), wall, cuda)
    stats = model_stats(t.model_config, t.plan.seq_len)
    tokens = t.plan.tokens_per_step
    matmul_flops = 6 * stats["params_matmul"] * tokens
    attention_flops = (stats["flops_per_token"] - 6 * stats["params_matmul"]) * tokens
    for category, flops in (("matmul", matmul_flops), ("attention", attention_flops)):
        seconds = summary["categories"].get(category, {}).get("ms", 0) / 1e3
        summary[f"{category}_tflops_while_running"] = flops / seconds / 1e12 if seconds else None
    return summary


def summarize_profile(events, wall_s: float, cuda: bool) -> dict:
    """Time by category and the top kernels. On a GPU: device kernels, and idle = the step's wall time the
    device computed nothing; on a CPU: operators' self time."""
    if cuda:
        spans = [(e.name, e.time_range.start, e.time_range.end) for e in events if e.device_type == DeviceType.CUDA]
        by_name = {}
        for name, begin, end in spans:
            by_name.setdefault(name, []).append((end - begin) / 1e3)
        busy_ms = covered_ms([(begin, end) for _, begin, end in spans])
    else:
        by_name = {}
        for e in events:
            if e.device_type == DeviceType.CPU and not e.is_async and e.self_cpu_time_total > 0:
                by_name.setdefault(e.name, []).append(e.self_cpu_time_total / 1e3)
        busy_ms = sum(sum(times) for times in by_name.values())
    wall_ms = wall_s * 1e3
    categories = {}
    for name, times in by_name.items():
        entry = categories.setdefault(category_of(name), {"ms": 0.0})
        entry["ms"] += sum(times)
    idle_ms = max(0.0, wall_ms - busy_ms)
    categories["idle"] = {"ms": idle_ms}
    for entry in categories.values():
        entry["share"] = entry["ms"] / wall_ms
        entry["ms"] = round(entry["ms"], 3)
    top = sorted(by_name.items(), key=lambda item: -sum(item[1]))[:12]
    return {
        "step_ms": round(wall_ms, 3),
        "measured": "device kernels" if cuda else "CPU operators' self time",
        "busy_ms": round(busy_ms, 3),
        "categories": dict(sorted(categories.items(), key=lambda item: -item[1]["ms"])),
        "top": [
            {
                "name": name[:120],
                "category": category_of(name),
                "calls": len(times),
                "ms": round(sum(times), 3),
                "share": sum(times) / wall_ms,
            }
            for name, times in top
        ],
    }


def covered_ms(spans: list[tuple[float, float]]) -> float:
    """Length of the union of [begin, end) intervals in µs, in ms: kernels on several streams overlap."""
    total, reach = 0.0, float("-inf")
    for begin, end in sorted(spans):
        if end > reach:
            total += end - max(begin, reach)
            reach = end
    return total / 1e3


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- the bare reference ------------------------------------------------------------------------------


def bare_reference(model_config, micro_batch, seq_len, position_ids, loss_fn, bf16, checkpointing, max_grad_norm,
                   device, compile_backend: str, warmup: int, steps: int) -> dict:  # fmt: skip
    """The same step as the loop's, written plainly: tok/s over `steps` after `warmup` steps."""
    torch.manual_seed(0)
    with torch.device(device):
        model = ScratchForCausalLM(model_config)
    if checkpointing:  # the policy's name (full, selective), as wrap_model enables it
        checkpoint_layers(model, checkpointing)
    if compile_backend:  # per decoder block as wrap_model compiles, and the loss as train/step.py's training_loss
        for layer in model.model.layers:
            layer.compile(backend=compile_backend)
        loss_fn = torch.compile(loss_fn, backend=compile_backend)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    shape = (micro_batch, seq_len)
    batches = [(torch.randint(model_config.vocab_size, shape, device=device),
                torch.randint(model_config.vocab_size, shape, device=device)) for _ in range(2)]  # fmt: skip
    position_ids = position_ids.to(device)
    precision = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    def step(index: int) -> None:
        inputs, labels = batches[index % 2]
        with precision:
            loss = model(input_ids=inputs, labels=labels, position_ids=position_ids, loss_from_hidden=loss_fn)
        loss.backward()
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for index in range(warmup):
        step(index)
    synchronize(device)
    warmup_s = time.perf_counter() - started
    started = time.perf_counter()
    for index in range(steps):
        step(index)
    synchronize(device)
    seconds = time.perf_counter() - started
    figures = {
        "status": "done",
        "compile_backend": compile_backend or None,
        "tok_per_s": steps * micro_batch * seq_len / seconds,
        "step_s": seconds / steps,
        "warmup_s": warmup_s,
        "steps": steps,
        "mem_peak_gib": torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None,
    }
    return figures


if __name__ == "__main__":
    main()
