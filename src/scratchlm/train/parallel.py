"""How the model runs on the processes of a launch: one device, DDP, or FSDP2; compiled per decoder block.

`accelerate launch` (or torchrun) starts the processes and describes them in the environment; this
module starts the process group and wraps the model itself, as torchtitan does, so that the code the
GPUs run is the code CPU processes (gloo) run in tests:
- FSDP2 when the accelerate config says `distributed_type: FSDP` (`fsdp_version: 2`): each decoder
  layer, then the root, is `fully_shard`ed with MixedPrecisionPolicy(param_dtype bf16 when bf16,
  reduce_dtype `reduce_dtype`, float32 by default). Gradients then reduce, and accumulate across
  micro-batches, in fp32 (accelerate's own FSDP2 setup reduces and accumulates in bf16).
- DDP for several processes otherwise; the bare module for one.
- torch.compile per decoder block, before sharding: one graph serves every layer. Compiling the whole
  model after wrapping recompiles for each layer (guards on layer_idx and the cache) and, past
  torch's recompile limit, runs the remaining layers eager.
- Activation checkpointing per decoder layer (transformers' own mechanism, non-reentrant).
"""

import contextlib
import functools
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ScratchError
from ..model.attention import SDPA_KERNELS

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class World:
    """This process among the launch's processes, and how it computes."""

    rank: int
    size: int
    local_rank: int
    device: torch.device
    fsdp: bool  # the launcher asked for FSDP (accelerate config distributed_type: FSDP)
    bf16: bool  # bf16 mixed precision: autocast, or FSDP2's bf16 parameters (decided once, in start_world)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (one collective for several numbers)."""
        if self.size == 1:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def broadcast(self, value):
        """Rank 0's value, on every rank (a picklable object)."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def start_world(bf16: bool | None = None, timeout_minutes: float = 30) -> World:
    """The process group of a torchrun / accelerate launch (NCCL on GPUs, gloo on CPUs), or a world of one.
    `bf16` as a config gives it: None is on where the GPU supports it, never on a CPU."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if (size > 1 or fsdp) and not dist.is_initialized():  # FSDP2 shards over a process group, even of one
        backend, timeout = "nccl" if cuda else "gloo", timedelta(minutes=timeout_minutes)
        if size > 1 or "MASTER_ADDR" in os.environ:  # a launcher's rendezvous
            dist.init_process_group(backend, timeout=timeout)
        else:  # a world of one needs no port (two such runs on one machine would meet on a fixed one)
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    if fsdp and os.environ.get("FSDP_VERSION", "2") != "2":
        raise ScratchError(
            "the accelerate config asks for FSDP version 1: scratchlm shards with FSDP2 (fsdp_version: 2)"
        )
    if fsdp and os.environ.get("FSDP_OFFLOAD_PARAMS", "false").lower() == "true":
        raise ScratchError(
            "the accelerate config's fsdp_offload_params: true is not supported by scratchlm; set it false"
        )
    if bf16 is None:
        bf16 = cuda and torch.cuda.is_bf16_supported()
    return World(rank, size, local_rank, device, fsdp, bf16)


def fsdp_reshard_after_forward(recipe_value: bool | None) -> bool:
    """The recipe's `reshard_after_forward`, else the accelerate config's, else True (ZeRO-3)."""
    if recipe_value is not None:
        return recipe_value
    return os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() == "true"


def wrap_model(model: nn.Module, world: World, config, mesh=None) -> nn.Module:
    """Checkpointing, compile and sharding applied in that order; returns the module to call for training.
    Under FSDP2 that is `model` itself (sharded in place), under DDP a wrapper around it. `mesh`: the
    DeviceMesh to shard over (default: FSDP2's own over the process group; the rehearsal passes one built
    outside its fake-tensor mode, where FSDP2's own cannot be built)."""
    if next(model.parameters()).device != world.device:  # a fake model is on its device: it cannot move
        model.to(world.device)
    if config.gradient_checkpointing:
        checkpoint_layers(model, config.gradient_checkpointing_policy)
    if config.torch_compile:
        if config.gradient_checkpointing:
            # transformers' decoder layer sets a context variable in its forward (its output capture); inside a
            # checkpoint dynamo refuses that side effect, breaks the graph and runs every block eager. The
            # variable matters to the forward only, so the recompute in backward need not replay it: dynamo then
            # compiles the block with its checkpoint inside (tests/test_compile.py counts the ops it captures).
            torch._dynamo.config.skip_fwd_side_effects_in_bwd_under_checkpoint = True
        for layer in model.model.layers:
            layer.compile(backend=config.torch_compile_backend)  # in place: parameter names (and checkpoints) stay
    if world.fsdp:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

        policy = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16 if world.bf16 else None, reduce_dtype=DTYPES[config.reduce_dtype]
        )
        reshard = fsdp_reshard_after_forward(config.reshard_after_forward)
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
        fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
        register_fsdp_forward_method(model, "generate")  # samples during training all-gather like forward
        return model
    if world.size > 1:
        device_ids = [world.local_rank] if world.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    return model


def checkpoint_layers(model: nn.Module, policy: str = "full") -> None:
    """Activation checkpointing per decoder layer, non-reentrant (transformers' own mechanism, under the name
    of the installed version: activation_checkpointing_enable from 5.23, gradient_checkpointing_enable before).
    "full" keeps each layer's input and recomputes the layer in backward; "selective" keeps the outputs of its
    matmuls and attention too and recomputes only the cheap rest (norms, activations, casts, RoPE)."""
    kwargs = {"use_reentrant": False}
    if policy == "selective":
        from torch.utils.checkpoint import create_selective_checkpoint_contexts

        kwargs["context_fn"] = functools.partial(create_selective_checkpoint_contexts, _keep_matmul_outputs)
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable(kwargs)


def _keep_matmul_outputs(ctx, op, *args, **kwargs):
    from torch.utils.checkpoint import CheckpointPolicy

    return CheckpointPolicy.MUST_SAVE if op in _EXPENSIVE_OPS else CheckpointPolicy.PREFER_RECOMPUTE


# The matmuls and attention's kernels (model/attention.py names sdpa's).
_EXPENSIVE_OPS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default, *SDPA_KERNELS}


def unwrapped(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def gradient_sync(model: nn.Module, enabled: bool):
    """A context for one micro-batch's backward: gradients are reduced only when `enabled` (the last one)."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext() if enabled else model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2: unsharded gradients accumulate meanwhile
        model.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


def autocast(world: World):
    """bf16 autocast on one device or under DDP; under FSDP2 the mixed-precision policy casts instead."""
    if not world.bf16 or world.fsdp:
        return contextlib.nullcontext()
    return torch.autocast(world.device.type, dtype=torch.bfloat16)


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """The global gradient norm before clipping (over every rank's shards under FSDP2), as a tensor on the
    device: reading its value is the caller's choice (a host synchronisation; fake tensors have none)."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP2
        norm = norm.full_tensor()
    return norm
