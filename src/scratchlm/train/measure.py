"""Measuring what a training step really holds, to check the estimate in memory.py against.

Only tests (tests/test_memory.py) and benchmarks (benchmarks/memory_validation.py) use these: the
estimate must never depend on them. SavedTensors counts what autograd saves, tensor by tensor, split
into activations, weight copies and the loss's; measure_micro_step counts one micro-batch's bytes
with torch's MemTracker, as the loop's Stepper runs it.
"""

import gc
import weakref

import torch
from torch import nn


class SavedTensors:
    """What autograd saves while it is active, by storage, split into activations, weight copies and
    the loss's. The pack hook keeps a detached alias: returning the tensor itself would make a saved
    output hold its own graph node alive (a reference cycle), so graphs that should die (BitLinear's
    detached quantizers) would be counted. Parameters are not counted; they are weights."""

    def __init__(self, model: nn.Module):
        self.parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.saved = []
        self.kind = "activations"

    def hooks(self, kind: str):
        self.kind = kind
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda alias: alias)

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        alias = tensor.detach()
        copy = self.kind == "activations" and is_weight_copy(tensor)  # the loss's copies are the loss's
        self.saved.append((weakref.ref(alias), "weight_copies" if copy else self.kind))
        return alias

    def bytes(self) -> dict[str, int]:
        gc.collect()
        storages = {}
        for ref, kind in self.saved:
            alias = ref()
            if alias is not None and alias.untyped_storage().data_ptr() not in self.parameters:
                storages[alias.untyped_storage().data_ptr()] = (kind, alias.untyped_storage().nbytes())
        totals = {"activations": 0, "weight_copies": 0, "loss_saved": 0}
        for kind, size in storages.values():
            totals[kind] += size
        return totals


def is_weight_copy(tensor: torch.Tensor) -> bool:
    """A parameter seen through casts, transposes or a straight-through add: autocast's bf16 copies
    and BitLinear's quantized weight. Activations are never a parameter's size a few nodes from it."""
    node = tensor.grad_fn
    for _ in range(4):
        if node is None or not node.next_functions:
            return False
        node = node.next_functions[0][0]
        variable = getattr(node, "variable", None)
        if variable is not None:
            return variable.numel() == tensor.numel()
    return False


def training_forward(model, input_ids, position_ids, labels, saved: SavedTensors | None = None, loss="chunked"):
    """The loop's training forward: the model's own forward with loss_from_hidden (the decoder without
    a cache, then the loss from its hidden states); `saved` counts the decoder's and the loss's saved
    tensors apart."""
    from ..model.loss import lm_loss, plain_lm_loss

    loss_fn = plain_lm_loss if loss == "plain" else lm_loss
    if saved is None:
        return model(input_ids=input_ids, position_ids=position_ids, labels=labels, loss_from_hidden=loss_fn)

    def counted_loss(hidden, head, labels):
        with saved.hooks("loss_saved"):
            return loss_fn(hidden, head, labels)

    with saved.hooks("activations"):
        return model(input_ids=input_ids, position_ids=position_ids, labels=labels, loss_from_hidden=counted_loss)


def measure_micro_step(model, optimizer, batches, autocast: torch.dtype | None, loss="chunked") -> dict[str, int]:
    """Bytes above weights, gradients and optimizer state during one micro-batch, with the gradients
    and optimizer state already there (as from the second step on): live after the forward (what it
    holds for backward, checkpointed inputs and autocast's weight cache included) and the peak over
    forward and backward, run as the loop's Stepper runs them. Counted tensor by tensor
    with torch's MemTracker, on CPU or CUDA alike; eager only (it cannot see inside compiled kernels)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    device = batches[0][0].device

    def micro_step(batch, tracker=None):
        with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            value = training_forward(model, *batch, loss=loss)
            live = tracker.get_tracker_snapshot()[device]["Total"] if tracker else 0
        value.backward()  # outside autocast, as the loop's Stepper runs it
        return live

    micro_step(batches[0])
    optimizer.step()  # creates the moments; the gradients stay and accumulate
    tracker = MemTracker()
    tracker.track_external(model, optimizer)
    with tracker:
        static = tracker.get_tracker_snapshot()[device]["Total"]
        live = micro_step(batches[1], tracker)
        peak = tracker.get_tracker_snapshot("peak")[device]["Total"]
    return {"live_after_forward": live - static, "peak_above_static": peak - static}
