"""Rehearse a run's every phase at full scale, on fake tensors, before anyone rents a GPU.

The recipe's model is built under torch's FakeTensorMode (shapes, dtypes and devices, no data and no
memory) and wrapped by the loop's own `wrap_model`: FSDP2 at the recipe's world size over a fake
process group (collectives are no-ops with outputs of the right shape), its checkpointing and bf16
policy. Then the phases of the run go through the code the loop runs, each under torch's memory
tracker (FSDPMemTracker when sharded, MemTracker otherwise), which counts every tensor's bytes by
category as if it were allocated:
- training: the Stepper's own micro-steps (train/step.py), one micro-batch without gradient sync
  then one with it when the recipe accumulates, clipping and the optimizer step, with the optimizer
  state there already (as from step 2 on);
- validation: token_nats at the loop's micro-batch and length, without gradients;
- sampling: a forward with the KV cache at the sample length (prompt and new tokens), then one token;
- probes and CORE: a forward at their batch (32 probes of 64 tokens with every logit; 16 CORE
  sequences of the run's length with a few logits each);
- checkpoint: host memory, from the tensors each rank stages (its model and optimizer shards) and
  the export's full fp32 weights on rank 0.

What it does not model: the allocator's fragmentation and reserved-but-free memory, the CUDA
context, NCCL's and cuBLAS's workspaces (memory.py assumes those), and the op lists of CUDA's
autocast (a CPU's autocast casts at the same matmuls). Fake tensors live on the CPU with the GPU's
dtypes: fake CUDA tensors abort a CPU-only build in backward.

With `real=True` on a CUDA machine, the same phases run with real tensors for a few steps and the
report adds torch.cuda.max_memory_allocated per phase, tok/s, MFU and the first all-reduce's bus
bandwidth (on a CPU, with tiny shapes, that mode runs too: the tests use it).

The training step is also counted op by op, FLOPs and bytes moved (train/roofline.py), for a roofline
step time on each known GPU beside the planner's time at its assumed MFU.
"""

import contextlib
import functools
import math
import time
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.distributed as dist

from ..errors import ScratchError
from .evaluate import evaluating
from .memory import GIB, TrainingSetup, estimate_memory, settings_that_fit
from .parallel import World, unwrapped, wrap_model
from .roofline import BIASES, StepCounter, step_seconds, summarize
from .step import Stepper

PHASES = ("training", "validation", "sampling", "probes", "core")
PROBE_BATCH, PROBE_TOKENS = 32, 64  # eval/probes.py's batch; probes are a sentence and a short answer
CORE_BATCH, CORE_COLUMNS = 16, 8  # eval/core.py's batch; logits only where a continuation is scored
# The tracker's categories (both trackers' names) mapped onto the planner's families of terms.
FAMILIES = {
    "Sharded Param": "weights", "Parameter": "weights", "Buffer": "weights",
    "Unsharded Param": "weight_copies", "All Gather": "weight_copies",
    "Sharded Grad": "gradients", "Unsharded Grad": "gradients", "Gradient": "gradients",
    "Reduce Scatter": "gradients",
    "OptState": "optimizer", "Optstate": "optimizer",
    "Activation": "activations", "Temp": "transient", "Inputs": "activations", "Other": "activations",
}  # fmt: skip


@dataclass
class Phase:
    name: str
    peak: int  # bytes per rank, allocated
    families: dict[str, int]  # the peak's bytes by family of terms
    measured: int | None = None  # real mode: torch.cuda.max_memory_allocated during the phase
    seconds: float = 0.0


@dataclass
class RehearsalReport:
    world_size: int
    capacity: int  # the GPU's memory, bytes
    phases: list[Phase]
    checkpoint_host: dict[str, int]  # bytes of host memory to write a checkpoint (per rank) and the export
    estimate: dict  # the formula planner's terms for the same run
    seconds: float
    real: dict = field(default_factory=dict)  # real mode: tok/s, MFU, bus bandwidth
    accumulation: int = 1  # micro-batches per step (the roofline's step runs the unsynced one accumulation - 1 times)
    model_flops_per_step: float = 0.0  # one rank's step, as the planner counts FLOPs (6 N + attention, per token)
    roofline_sections: dict = field(default_factory=dict)  # roofline.Section per part of the step

    @property
    def peak(self) -> Phase:
        return max(self.phases, key=lambda p: p.peak)

    def as_dict(self) -> dict:
        from .plan import GPUS

        fields = {k: v for k, v in asdict(self).items() if k != "roofline_sections"}
        roofline = summarize(self.roofline_sections, self.accumulation, GPUS)
        return {**fields, "peak_phase": self.peak.name, "roofline": roofline}


# --- fake tensors, a fake process group, and what torch needs patched for them -------------------------


@contextlib.contextmanager
def fake_world(size: int, bf16: bool):
    """A World of `size` processes on a fake process group, computing in bf16 or not, and its device mesh
    (built before fake mode: the mesh code reads tensor values). Rank 0 stands for every rank: FSDP2 shards
    evenly."""
    from torch.distributed.device_mesh import init_device_mesh

    if dist.is_initialized():
        raise ScratchError("rehearse: a process group is already running in this process")
    sharded = size > 1
    mesh = None
    if sharded:
        dist.init_process_group("fake", store=dist.HashStore(), rank=0, world_size=size)
        mesh = init_device_mesh("cpu", (size,))
    try:
        yield World(rank=0, size=size, local_rank=0, device=torch.device("cpu"), fsdp=sharded, bf16=bf16), mesh
    finally:
        if sharded:
            dist.destroy_process_group()


@contextlib.contextmanager
def flex_on_fake_cpu():
    """flex_attention's fake kernels run forward and backward on CPU tensors, but the public function
    refuses CPU autograd and transformers wraps it, and the block mask, in torch.compile (which cannot
    compile for fake tensors here). For the rehearsal only: call the operator directly, build block masks
    eagerly, skip the CPU-backward check."""
    import torch.nn.attention.flex_attention as flex
    import transformers.integrations.flex_attention as hf_flex
    import transformers.masking_utils as masking

    def direct(query, key, value, training=False, **kwargs):
        return flex.flex_attention(query, key, value, **kwargs)

    def eager_block_mask(*args, _compile=False, **kwargs):
        return flex.create_block_mask(*args, _compile=False, **kwargs)

    saved = (flex._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG, flex._validate_device, hf_flex.compile_friendly_flex_attention,
             masking.create_block_mask)  # fmt: skip
    flex._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG = True
    flex._validate_device = lambda *tensors: None
    hf_flex.compile_friendly_flex_attention = direct
    masking.create_block_mask = eager_block_mask
    try:
        yield
    finally:
        (flex._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG, flex._validate_device, hf_flex.compile_friendly_flex_attention,
         masking.create_block_mask) = saved  # fmt: skip


@contextlib.contextmanager
def quiet():
    """torch's warnings about what the rehearsal does on purpose: trackers' module hooks around compiled blocks."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The module hierarchy tracking maybe be messed up")
        warnings.filterwarnings("ignore", message=r"Using `torch.compile\(module\)` when there are global hooks")
        yield


def tracker_for(model, optimizer, sharded: bool):
    """torch's tracker for one phase, told to accept flex_attention's operator and to track inside
    compiled regions (else dynamo runs them eagerly under it)."""
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
    from torch.distributed._tools.mem_tracker import MemTracker

    base = FSDPMemTracker if sharded else MemTracker

    class Tracker(base):
        supports_higher_order_operators = True

        @classmethod
        def ignore_compile_internals(cls):
            return True

    if sharded:
        return Tracker(model, optimizer)
    tracker = Tracker()
    tracker.track_external(model, optimizer)
    return tracker


def peak_of(tracker) -> tuple[int, dict[str, int]]:
    """The tracker's peak and its bytes by family of terms."""
    snapshot = next(iter(tracker.get_tracker_snapshot("peak").values()))
    families = {}
    for key, value in snapshot.items():
        name = getattr(key, "value", key)
        if name != "Total" and value:
            family = FAMILIES.get(name, "activations")
            families[family] = families.get(family, 0) + value
    return snapshot["Total"], families


# --- the phases -------------------------------------------------------------------------------------


def training_batch(micro_batch: int, seq_len: int, vocab: int, device) -> dict:
    """A micro-batch as the loader makes it: each window packs two documents (the masking path runs)."""
    half = seq_len // 2
    positions = torch.cat([torch.arange(half), torch.arange(seq_len - half)]).to(device).repeat(micro_batch, 1)
    tokens = torch.randint(0, vocab, (micro_batch, seq_len + 1), device=device)
    return {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:], "position_ids": positions}


def fuse_optimizer(optimizer) -> None:
    """The fused AdamW kernel CUDA runs (build_optimizer fuses only where CUDA is): no foreach temporaries."""
    for group in optimizer.param_groups:
        if "fused" in group:
            group.update(fused=True, foreach=False)


def create_optimizer_state(optimizer) -> None:
    """The optimizer's state as from step 2 on: one step on zero gradients."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            param.grad = torch.zeros_like(param)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def training_phase(stepper: Stepper, batches: list[dict], sharded: bool, counter: StepCounter) -> Phase:
    """The loop's step: its micro-steps (without then with gradient sync), clipping, the optimizer step.
    Besides the peak, the bytes by family are read off the last micro-step: the gradients held when it
    starts (after the step's backwards with one micro-batch), what the decoder's forward adds (activations)
    and what the loss adds (its saved gradients); the peak's weights and optimizer state from the tracker's
    categories; what remains of the peak is transient. `counter` counts the same step's ops, by part of the step."""
    model = unwrapped(stepper.model)
    tracker = tracker_for(model, stepper.optimizer, sharded)
    moments = {}
    micro_step = stepper.micro_step

    def tracked_micro_step(batch, sync):
        tracker.reset_mod_stats()  # the trackers refuse a second root forward otherwise; the peak stays
        moments["start"] = held(tracker)
        counter.section = "micro-step with sync" if sync else "micro-step without sync"
        return micro_step(batch, sync)

    stepper.micro_step = tracked_micro_step

    def after_decoder(module, args, output):  # its output (the final hidden states) is the loss's input, not saved
        moments["decoder"] = held(tracker)
        moments["decoder"]["other"] -= output.last_hidden_state.untyped_storage().nbytes()

    hooks = [model.model.register_forward_hook(after_decoder),
             model.register_forward_hook(lambda *_: moments.__setitem__("loss", held(tracker)))]  # fmt: skip
    try:
        with tracker, counter:
            stepper.accumulate(batches)
            moments["backward"] = held(tracker)
            counter.section = "clip"
            stepper.clip()
            counter.section = "optimizer"
            stepper.optimizer.step()
            stepper.optimizer.zero_grad(set_to_none=True)
    finally:
        del stepper.micro_step
        for hook in hooks:
            hook.remove()
    peak, families = peak_of(tracker)
    grads = moments["start" if len(batches) > 1 else "backward"]
    families = {
        "weights": families.get("weights", 0) + families.get("weight_copies", 0),
        "gradients": grads["other"],
        "optimizer": families.get("optimizer", 0),
        "activations": moments["decoder"]["other"] - moments["start"]["other"],
        "loss": moments["loss"]["other"] - moments["decoder"]["other"],
    }
    families["transient"] = peak - sum(families.values())
    return Phase("training", peak, families)


def held(tracker) -> dict[str, int]:
    """What the tracker counts now: weights (sharded, gathered, buffers), optimizer state, and the rest."""
    snapshot = next(iter(tracker.get_tracker_snapshot().values()))
    split = {"weights": 0, "optimizer": 0}
    for key, value in snapshot.items():
        family = FAMILIES.get(getattr(key, "value", key))
        if family in ("weights", "weight_copies", "optimizer"):
            split["optimizer" if family == "optimizer" else "weights"] += value
    split["other"] = snapshot["Total"] - split["weights"] - split["optimizer"]
    return split


def evaluation_phase(name: str, model, optimizer, sharded: bool, forward) -> Phase:
    """A forward without gradients in eval mode, as the evaluations run (the optimizer's state stays)."""
    tracker = tracker_for(model, optimizer, sharded)
    model.eval()
    try:
        with tracker, torch.no_grad():
            forward(tracker.reset_mod_stats)
    finally:
        model.train()
    return Phase(name, *peak_of(tracker))


def evaluation_forwards(model, world: World, plan, sample_tokens: int) -> dict:
    """Each evaluation's forward at its own shapes, under the loop's autocast (train/evaluate.py)."""
    from ..eval.bpb import token_nats

    device, vocab = world.device, model.config.vocab_size

    def validation(between):
        batch = training_batch(plan.micro_batch, plan.seq_len, vocab, device)
        with evaluating(world):
            token_nats(model, batch["input_ids"], batch["labels"], batch["position_ids"])

    def sampling(between):  # generate: the whole length in the cache, then one more token
        ids = torch.randint(0, vocab, (1, sample_tokens), device=device)
        with evaluating(world):
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
            between()
            model(input_ids=ids[:, -1:], cache=out.cache, use_cache=True)

    def probes(between):
        ids = torch.randint(0, vocab, (PROBE_BATCH, PROBE_TOKENS), device=device)
        with evaluating(world):
            model(input_ids=ids, use_cache=False).logits.argmax(-1)

    def core(between):
        ids = torch.randint(0, vocab, (CORE_BATCH, plan.seq_len), device=device)
        columns = torch.arange(plan.seq_len - CORE_COLUMNS, plan.seq_len, device=device)
        with evaluating(world):
            model(input_ids=ids, use_cache=False, logits_to_keep=columns)

    return {"validation": validation, "sampling": sampling, "probes": probes, "core": core}


def checkpoint_host_bytes(model, optimizer, world: World) -> dict[str, int]:
    """Host memory to write a checkpoint: each rank stages its model and optimizer shards for DCP's
    safetensors writer; the export gathers the full fp32 weights on rank 0 (cpu_offload)."""
    for module in model.modules():  # the sharded fp32 parameters, not the gathered bf16 ones an evaluation left
        if hasattr(module, "reshard"):
            module.reshard()
    local = sum(_local(p).numel() * _local(p).element_size() for p in model.parameters())
    state = sum(_local(t).numel() * _local(t).element_size() for s in optimizer.state.values() for t in s.values()
                if torch.is_tensor(t))  # fmt: skip
    full = sum(p.numel() * p.element_size() for p in model.parameters())  # a DTensor's numel is the full size
    return {"checkpoint_per_rank": local + state, "export_rank0": full}


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


# --- the rehearsal ----------------------------------------------------------------------------------


def rehearse(config, model_config, plan, setup: TrainingSetup, capacity: int) -> RehearsalReport:
    """Every phase of the run `config` (a PretrainConfig whose batch `plan` resolved), on fake tensors at
    full scale; `setup` is the planner's view of the same run, estimated beside it."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    started = time.monotonic()
    config = rehearsal_config(config)
    with fake_world(plan.world_size, setup.bf16) as (world, mesh), flex_on_fake_cpu(), FakeTensorMode(), quiet():
        stepper, model = build_step(config, model_config, plan, world, mesh, setup.attention)
        counter = StepCounter()
        phases = run_phases(stepper, model, config, plan, counter)
        host = checkpoint_host_bytes(model, stepper.optimizer, world)
    estimate = estimate_memory(setup).as_dict()
    return RehearsalReport(plan.world_size, capacity, phases, host, estimate, time.monotonic() - started,
                           **step_counts(plan, counter))  # fmt: skip


def step_counts(plan, counter: StepCounter) -> dict:
    """The report's fields for the step's time: the roofline's counts, and one rank's step in the planner's FLOPs."""
    return {"accumulation": plan.accumulation, "roofline_sections": counter.sections,
            "model_flops_per_step": plan.tokens_per_step * plan.flops_per_token / plan.world_size}  # fmt: skip


def run_phases(stepper: Stepper, model, config, plan, counter: StepCounter) -> list[Phase]:
    """Training (its ops counted by `counter`), then each evaluation, each under its own tracker; with real CUDA
    tensors each phase's torch.cuda.max_memory_allocated too."""
    world = stepper.world
    sharded = world.fsdp
    batches = [training_batch(plan.micro_batch, plan.seq_len, model.config.vocab_size, world.device)
               for _ in range(min(2, plan.accumulation))]  # fmt: skip
    if config.torch_compile:  # dynamo traces on the first call: that work must not be what is tracked
        stepper.accumulate(batches[:1])
        stepper.optimizer.zero_grad(set_to_none=True)
    phases = [measured(world, lambda: training_phase(stepper, batches, sharded, counter))]
    sample_tokens = 16 + config.sample_max_new_tokens  # a prompt of a sentence, then the new tokens
    forwards = evaluation_forwards(model, world, plan, sample_tokens)
    for name, forward in forwards.items():
        phases.append(
            measured(world, functools.partial(evaluation_phase, name, model, stepper.optimizer, sharded, forward))
        )
    return phases


def measured(world: World, run) -> Phase:
    """run() -> Phase, timed, with the device's own peak beside the tracker's on CUDA."""
    cuda = world.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(world.device)
        torch.cuda.reset_peak_memory_stats(world.device)
    started = time.monotonic()
    phase = run()
    if cuda:
        torch.cuda.synchronize(world.device)
        phase.measured = torch.cuda.max_memory_allocated(world.device)
    phase.seconds = round(time.monotonic() - started, 3)
    return phase


def rehearse_real(config, model_config, plan, setup: TrainingSetup, capacity: int, steps: int = 3) -> RehearsalReport:
    """The same phases with real tensors, in this launch's world (one process per GPU, as the loop is launched:
    plan.world_size of them), then `steps` of the loop's steps for tok/s and MFU, and the first all-reduce's bus
    bandwidth. On a GPU each phase's torch.cuda.max_memory_allocated stands beside the tracker's count."""
    from .parallel import start_world

    world = start_world(bf16=setup.bf16)  # the planner's precision, as the fake rehearsal's
    if world.size != plan.world_size:
        raise ScratchError(
            f"rehearse: this launch has {world.size} processes, the plan is for {plan.world_size}; launch it on "
            f"{plan.world_size} (accelerate launch / torchrun) or plan for {world.size}"
        )
    started = time.monotonic()
    real = {"all_reduce": first_all_reduce(world)}
    stepper, model = build_step(config, model_config, plan, world, None, setup.attention)
    counter = StepCounter()
    phases = run_phases(stepper, model, config, plan, counter)
    real.update(throughput(stepper, plan, steps))
    host = checkpoint_host_bytes(model, stepper.optimizer, world)
    estimate = estimate_memory(setup).as_dict()
    return RehearsalReport(world.size, capacity, phases, host, estimate, time.monotonic() - started, real,
                           **step_counts(plan, counter))  # fmt: skip


def first_all_reduce(world: World, size_bytes: int = 64 * 2**20) -> dict | None:
    """Bus bandwidth of the launch's first all-reduce (it includes setting up the connections) and of a second:
    2 (n - 1) / n x bytes / seconds, NCCL's own definition."""
    if world.size == 1:
        return None
    tensor = torch.ones(size_bytes // 4, device=world.device)
    result = {}
    for which in ("first", "second"):
        _synchronize(world)
        started = time.monotonic()
        dist.all_reduce(tensor)
        _synchronize(world)
        seconds = time.monotonic() - started
        result[f"{which}_bus_gbps"] = round(2 * (world.size - 1) / world.size * size_bytes / seconds / 1e9, 2)
    return result


def throughput(stepper: Stepper, plan, steps: int) -> dict:
    """tok/s over `steps` of the loop's steps (after one to warm up), and MFU where the GPU's peak is known."""
    from .plan import peak_flops_of

    world = stepper.world
    stepper.loader = random_windows(plan, stepper.model)
    stepper.step(1, False, lambda: None)
    _synchronize(world)
    started = time.monotonic()
    for number in range(2, steps + 2):
        stepper.step(number, False, lambda: None)
    _synchronize(world)
    tok_per_s = plan.tokens_per_step * steps / (time.monotonic() - started)
    peak = peak_flops_of(torch.cuda.get_device_name(world.device)) if world.device.type == "cuda" else 0.0
    mfu = tok_per_s * plan.flops_per_token / (peak * world.size) if peak else None
    return {"steps": steps, "tok_per_s": round(tok_per_s, 1), "mfu": None if mfu is None else round(mfu, 4)}


def random_windows(plan, model):
    """Micro-batches as the loader yields them (on the host, with window ids), of random tokens."""
    vocab = unwrapped(model).config.vocab_size
    for index in range(10**9):
        batch = training_batch(plan.micro_batch, plan.seq_len, vocab, torch.device("cpu"))
        yield {
            **batch,
            "window_ids": torch.tensor([[0, index * plan.micro_batch + row] for row in range(plan.micro_batch)]),
        }


def _synchronize(world: World) -> None:
    if world.device.type == "cuda":
        torch.cuda.synchronize(world.device)


def rehearsal_config(config):
    """The run's config as the rehearsal runs it: compiled blocks through AOTAutograd with inductor's
    partitioner (what inductor saves for backward) and no code generation, which fake tensors cannot have."""
    if not config.torch_compile:
        return config
    return replace(config, torch_compile_backend=partitioned_backend())


@functools.cache
def partitioned_backend() -> str:
    """A dynamo backend, registered once under its name: AOTAutograd's forward and backward graphs as
    inductor's min-cut partitioner splits them, each run as traced."""
    from functorch.compile import make_boxed_func, min_cut_rematerialization_partition
    from torch._dynamo import register_backend
    from torch._dynamo.backends.common import aot_autograd

    def run_as_traced(graph, example_inputs):
        return make_boxed_func(graph)

    backend = aot_autograd(fw_compiler=run_as_traced, bw_compiler=run_as_traced,
                           partition_fn=min_cut_rematerialization_partition)  # fmt: skip
    register_backend(backend, name="scratchlm_rehearsal")
    return "scratchlm_rehearsal"


def build_step(config, model_config, plan, world: World, mesh, attention: str):
    """The model, wrapped by the loop's wrap_model, its optimizer (with state) and the loop's Stepper."""
    from ..model import ScratchForCausalLM
    from .optimizer import build_optimizer

    # The run compiles in a fresh process. Code dynamo compiled earlier in this one (another model, real
    # tensors) would make the rehearsal's blocks recompile on top of it, and the count move with it (a test
    # of compile before the rehearsal put its weights 7.6% off the planner's); so start from nothing.
    torch._dynamo.reset()
    try:
        model = ScratchForCausalLM(model_config)
    except (ValueError, TypeError, RuntimeError) as err:
        raise ScratchError(f"rehearse: the run's model cannot be built: {err}") from None
    model.config._attn_implementation = attention
    wrapped = wrap_model(model, world, config, mesh=mesh)
    optimizer = build_optimizer(unwrapped(wrapped), config)
    fuse_optimizer(optimizer)
    create_optimizer_state(optimizer)
    stepper = Stepper(model=wrapped, optimizer=optimizer, loader=iter(()), accumulation=plan.accumulation,
                      world=world, config=config)  # fmt: skip
    return stepper, unwrapped(wrapped)


# --- the verdict ------------------------------------------------------------------------------------


def device_bytes(allocated: int, world_size: int) -> int:
    """What an allocated peak needs of the card: the planner's allocator slack and CUDA context (memory.py)."""
    from .memory import ALLOCATOR_SLACK, CUDA_CONTEXT_BYTES, NCCL_BYTES

    return math.ceil(allocated * (1 + ALLOCATOR_SLACK)) + CUDA_CONTEXT_BYTES + (NCCL_BYTES if world_size > 1 else 0)


def describe(report: RehearsalReport, setup: TrainingSetup, gpu_name: str, tokens_per_step: bool,
             step_lines: list[str] = ()) -> str:  # fmt: skip
    """One line per phase (its peak per rank beside the card), the planner's estimate, the step's time
    (`step_lines`), then the verdict: every phase that does not fit, by name, with settings of the same tokens per
    step that would."""
    gib = lambda n: f"{n / GIB:6.2f} GiB"  # noqa: E731
    lines = [f"rehearsal on fake tensors ({report.world_size} rank{'s' if report.world_size > 1 else ''}, "
             f"{report.seconds:.0f} s): allocated peak per rank, and with slack and context of the {gpu_name}'s "
             f"{report.capacity / GIB:.1f} GiB"]  # fmt: skip
    for phase in report.phases:
        need = device_bytes(phase.peak, report.world_size)
        measured = f"  measured {gib(phase.measured)}" if phase.measured is not None else ""
        lines.append(
            f"  {phase.name:12s} {gib(phase.peak)}  device {gib(need)} ({need / report.capacity:4.0%}){measured}"
        )
    host = report.checkpoint_host
    lines.append(f"  {'checkpoint':12s} {gib(host['checkpoint_per_rank'])} of host memory per rank "
                 f"(the export: {gib(host['export_rank0'])} on rank 0)")  # fmt: skip
    lines.append(f"  {'planner':12s} {gib(report.estimate['allocated_peak'])}  (training, from formulas)")
    if report.real:
        speed, reduce = report.real, report.real["all_reduce"]
        mfu = f", MFU {speed['mfu']:.0%}" if speed["mfu"] is not None else ""
        bandwidth = f"; first all-reduce {reduce['first_bus_gbps']} GB/s bus" if reduce else ""
        lines.append(f"real tensors: {speed['tok_per_s']:,.0f} tok/s over {speed['steps']} steps{mfu}{bandwidth}")
    lines += step_lines
    failing = [p for p in report.phases if device_bytes(p.peak, report.world_size) > report.capacity]
    if not failing:
        lines.append("every phase fits")
        return "\n".join(lines)
    advice = settings_that_fit(setup, report.capacity, headroom=0.1, tokens_per_step=tokens_per_step)
    for phase in failing:
        lines.append(f"the {phase.name} phase does NOT fit: {gib(device_bytes(phase.peak, report.world_size)).strip()}"
                     f" of {report.capacity / GIB:.1f} GiB")  # fmt: skip
    lines.append(
        "same tokens per step that would fit (10% headroom): " + (" or ".join(advice) or "no micro-batch fits")
    )
    return "\n".join(lines)


def compare_with_planner(report: RehearsalReport) -> dict[str, float]:
    """(planner - rehearsal) / rehearsal for the training peak and each family of terms."""
    terms, training = report.estimate["terms"], report.phases[0]
    # The trackers count FSDP2's gathered bf16 parameters as parameters, but autocast's bf16 copies (one GPU)
    # as what the forward makes: the planner's weight copies go with the family the tracker puts them in.
    copies = terms["weight_copies"]
    sharded = report.world_size > 1
    planner = {
        "total": report.estimate["allocated_peak"],
        "weights": terms["weights"] + (copies if sharded else 0),
        "gradients": terms["gradients"],
        "optimizer": terms["optimizer"],
        "activations": terms["activations"] + (0 if sharded else copies),
        "loss": terms["loss_saved"],
    }
    measured = {"total": training.peak, **training.families}
    return {name: round(value / measured[name] - 1, 4) for name, value in planner.items()}


def step_time(report: RehearsalReport, gpu) -> dict | None:
    """One step on `gpu` (a plan.py GpuProfile), two ways: the roofline of the rehearsed step's ops, and the
    planner's FLOPs at the MFU it assumes for the card; None where the card's bandwidth or peak is not known."""
    if not (gpu.hbm_gbps and gpu.peak_tflops):
        return None
    peak = gpu.peak_tflops * 1e12
    roofline = step_seconds(report.roofline_sections, report.accumulation, peak, gpu.hbm_gbps * 1e9)
    summary = summarize(report.roofline_sections, report.accumulation, {})
    return {
        "gpu": gpu.name,
        "roofline_s": roofline,
        "planner_s": report.model_flops_per_step / (peak * gpu.mfu),
        "planner_mfu": gpu.mfu,
        "roofline_mfu": report.model_flops_per_step / (peak * roofline),  # the MFU the roofline implies
        "flops": summary["flops_per_step"],
        "bytes": summary["bytes_per_step"],
        "biases": BIASES,
    }


def describe_step_time(times: dict | None, gpu_name: str) -> list[str]:
    if times is None:
        return [f"step time, roofline: not estimated (no memory bandwidth or peak known for the {gpu_name})"]
    return [
        f"step time on the {times['gpu']}, per rank: roofline {times['roofline_s']:.3g} s ({times['flops'] / 1e12:,.1f}"
        f" TFLOP and {times['bytes'] / 1e9:,.1f} GB moved; MFU {times['roofline_mfu']:.0%}), planner "
        f"{times['planner_s']:.3g} s (at {times['planner_mfu']:.0%} MFU)",
        f"  the roofline's biases: {times['biases']}",
    ]


def rehearse_recipe(recipe: str, gpu: str, num_gpus: int) -> tuple[RehearsalReport, TrainingSetup]:
    """A pretraining recipe (its YAML) rehearsed for `num_gpus` of the GPU named `gpu` (plan.py's names)."""
    from .config import parse_pretrain_args
    from .memory import setup_for_run
    from .plan import gpu_profile, model_config_of, plan_run

    profile = gpu_profile(gpu)
    config = parse_pretrain_args(["--config", recipe])
    model_config = model_config_of(config)
    plan, _ = plan_run(config, model_config, num_gpus)
    setup = setup_for_run(config, model_config, plan)
    return rehearse(config, model_config, plan, setup, profile.memory_bytes), setup


def run_rehearsal(config, model_config, plan, setup: TrainingSetup, gpu, as_json: bool) -> int:
    """`scratchlm plan --recipe R --gpu G --num-gpus N --rehearse`: on a machine with CUDA the phases run with
    real tensors (in this launch's processes), elsewhere on fake ones. Exit status 1 when a phase does not fit."""
    import json

    if torch.cuda.is_available():
        report = rehearse_real(config, model_config, plan, setup, gpu.memory_bytes)
    else:
        report = rehearse(config, model_config, plan, setup, gpu.memory_bytes)
    fits = all(device_bytes(p.peak, report.world_size) <= report.capacity for p in report.phases)
    times = step_time(report, gpu)
    if as_json:
        record = {**report.as_dict(), "fits": fits, "planner_vs_rehearsal": compare_with_planner(report)}
        print(json.dumps({"rehearsal": {**record, "step_time": times}}))
    else:
        lines = describe_step_time(times, gpu.name)
        print(describe(report, setup, gpu.name, tokens_per_step=bool(config.tokens_per_step), step_lines=lines))
    return 0 if fits else 1
