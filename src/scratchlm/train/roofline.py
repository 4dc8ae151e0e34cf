"""Step time from the rehearsal's own fake step: a roofline, a second opinion beside the planner's MFU.

While the rehearsal runs the loop's training step on fake tensors (train/rehearse.py), a dispatch mode
sees every op the step dispatches, forward, backward (with a checkpoint's recompute), clipping and the
optimizer step, and counts per op:
- FLOPs: torch's own formulas (torch.utils.flop_counter: matmuls, attention, flex_attention forward and
  backward), plus CPU SDPA's kernels, which the fake step runs and torch has no formula for;
- bytes moved: every tensor the op reads (its inputs) and writes (its outputs and the arguments it
  mutates), each at most its storage's size. Views, detaches and allocations move nothing; device,
  size and stride look-ups return no tensor and are not charged.
An op takes max(FLOPs / the GPU's dense bf16 peak, bytes / its HBM bandwidth); the step takes their sum.

Its biases, said wherever it is printed (BIASES): no kernel fusion (an elementwise chain that a fused or
compiled kernel does in one pass is charged every intermediate: optimistic compute, pessimistic bytes),
no compute/communication overlap and no communication time at all (the fake process group's collectives
are not timed), and attention counted dense, as the MFU's FLOPs count it (causal and document-masked
kernels skip the masked blocks). Elementwise ops have no FLOP formula: their time is their bytes.

Not torch's RuntimeEstimator (torch.distributed._tools.runtime_estimator): it needs CUDA, charges a
matmul (FLOPs / 2) / (0.75 peak) (1.5x optimistic against the peak), counts prim.device under fake tensors
as traffic, and cannot take flex_attention.
"""

from collections import Counter
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

BIASES = (
    "no kernel fusion (elementwise chains' bytes over-counted), no compute/communication overlap, "
    "no communication time, attention counted dense"
)
# The collectives' namespaces: communication, not timed.
COMMUNICATION = {"c10d", "_c10d_functional", "c10d_functional", "_dtensor"}
_aten = torch.ops.aten
# Ops that are not views by their schema but move no data: they allocate, re-point or re-describe storage.
NO_TRAFFIC = {
    _aten._unsafe_view.default, _aten.lift_fresh.default, _aten.empty.memory_format, _aten.empty_strided.default,
    _aten.empty_like.default, _aten.new_empty.default, _aten.new_empty_strided.default, _aten.set_.source_Tensor,
    _aten.set_.source_Storage, _aten.set_.source_Storage_storage_offset, _aten.resize_.default,
}  # fmt: skip
# Ops that write their first argument without reading it.
WRITE_ONLY_FIRST = {_aten.copy_.default, _aten.fill_.Scalar, _aten.fill_.Tensor, _aten.zero_.default}


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out, query, key, value)


@dataclass
class Section:
    """One part of the step: each distinct (FLOPs, bytes) an op had, with how many ops had it (the layers
    repeat theirs), so any GPU's time comes out exactly without keeping every op."""

    ops: Counter = field(default_factory=Counter)

    @property
    def flops(self) -> int:
        return sum(f * n for (f, _), n in self.ops.items())

    @property
    def bytes(self) -> int:
        return sum(b * n for (_, b), n in self.ops.items())

    def seconds(self, peak_flops: float, bandwidth: float) -> float:
        return sum(max(f / peak_flops, b / bandwidth) * n for (f, b), n in self.ops.items())


class StepCounter(TorchDispatchMode):
    """Counts FLOPs and bytes per op into the section named by `section` (the caller moves it along the step).
    Enter it inside FakeTensorMode (or with real tensors): it sees each op before the modes below run it."""

    supports_higher_order_operators = True  # flex_attention and its backward are higher-order operators

    def __init__(self):
        super().__init__()
        from torch.utils.flop_counter import FlopCounterMode

        extra = {_aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
                 _aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops}  # fmt: skip
        self.formulas = FlopCounterMode(display=False, custom_mapping=extra).flop_registry
        self.sections: dict[str, Section] = {}
        self.section = "step"

    @classmethod
    def ignore_compile_internals(cls):
        return True  # count what compiled regions run, not dynamo's tracing (else dynamo runs them eagerly)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        flops, moved = op_cost(func, self.formulas, args, kwargs, out)
        if flops or moved:
            self.sections.setdefault(self.section, Section()).ops[(flops, moved)] += 1
        return out


def op_cost(func, formulas, args, kwargs, out) -> tuple[int, int]:
    """(FLOPs, bytes moved) of one op call; communication and ops that move no data cost (0, 0)."""
    if is_communication(func) or func in NO_TRAFFIC or getattr(func, "is_view", False):
        return 0, 0
    args, kwargs, out = tree_map(_local, (args, kwargs, out))
    formula = formulas.get(func) or formulas.get(getattr(func, "_overloadpacket", None))
    flops = int(formula(*args, **kwargs, out_val=out)) if formula else 0
    written = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)] + mutated(func, args, kwargs)
    if not written:  # a look-up (device, size, a scalar): no tensor comes out of it
        return flops, 0
    read = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
    if func in WRITE_ONLY_FIRST:
        read = read[1:]
    return flops, sum(map(nbytes, read)) + sum(map(nbytes, {id(t): t for t in written}.values()))


def is_communication(func) -> bool:
    return getattr(func, "namespace", None) in COMMUNICATION


def mutated(func, args, kwargs) -> list[torch.Tensor]:
    """The tensors an op writes in place, by its schema (the fused optimizer's parameters and moments)."""
    schema = getattr(func, "_schema", None)
    if schema is None:
        return []
    found = []
    for index, argument in enumerate(schema.arguments):
        if argument.alias_info is not None and argument.alias_info.is_write:
            value = args[index] if index < len(args) else kwargs.get(argument.name)
            found += [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]
    return found


def nbytes(tensor: torch.Tensor) -> int:
    """What reading or writing the tensor moves: its elements, at most its storage (an expanded tensor
    re-reads the same memory)."""
    size = tensor.numel() * tensor.element_size()
    try:
        return min(size, tensor.untyped_storage().nbytes())
    except (RuntimeError, NotImplementedError):  # a tensor subclass without storage
        return size


def _local(value):
    """A DTensor's shard (the optimizer and clipping run on sharded DTensors): this rank's bytes and FLOPs."""
    return value.to_local() if hasattr(value, "to_local") and isinstance(value, torch.Tensor) else value


# --- the step's time ---------------------------------------------------------------------------------


def step_sections(sections: dict[str, Section], accumulation: int) -> list[tuple[Section, int]]:
    """The rehearsed parts of the step, each with how often the real step runs it: the micro-step without
    gradient sync accumulation - 1 times, the one with sync, clipping and the optimizer step once."""
    times = {"micro-step without sync": accumulation - 1}
    return [(section, times.get(name, 1)) for name, section in sections.items()]


def step_seconds(sections: dict[str, Section], accumulation: int, peak_flops: float, bandwidth: float) -> float:
    return sum(s.seconds(peak_flops, bandwidth) * n for s, n in step_sections(sections, accumulation))


def summarize(sections: dict[str, Section], accumulation: int, gpus: dict) -> dict:
    """One rank's step: FLOPs, bytes, and seconds on each GPU whose bandwidth is known (plan.py's GpuProfiles)."""
    parts = step_sections(sections, accumulation)
    return {
        "flops_per_step": sum(s.flops * n for s, n in parts),
        "bytes_per_step": sum(s.bytes * n for s, n in parts),
        "seconds_per_step": {
            key: step_seconds(sections, accumulation, gpu.peak_tflops * 1e12, gpu.hbm_gbps * 1e9)
            for key, gpu in gpus.items()
            if gpu.hbm_gbps and gpu.peak_tflops
        },
        "biases": BIASES,
    }
