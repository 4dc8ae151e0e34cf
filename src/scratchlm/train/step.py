"""One optimizer step: micro-batches, loss, backward, clipping, and what to do with a non-finite loss.

The step is cut in two. `Stepper.accumulate` and `Stepper.clip` are the device work (forwards,
backwards, gradient sync, clipping) and never read a tensor's value on the host: the rehearsal
(train/rehearse.py) runs exactly this code on fake tensors, which refuse `.item()` and `float()`.
`Stepper.step` adds what needs values: the one collective the ranks agree on, the finiteness check
and the optimizer step it decides.
"""

import math
from dataclasses import dataclass

import torch

from ..errors import ScratchError
from ..model.loss import lm_loss
from .parallel import World, autocast, clip_grad_norm, gradient_sync


@dataclass
class StepResult:
    loss: float  # mean over micro-batches and ranks
    grad_norm: float  # before clipping
    checksum: int  # of the windows every rank trained on
    skipped: bool  # non-finite, dropped (on_nonfinite: skip)
    stop_requested: bool  # some rank was asked to stop (SIGTERM, SIGINT)
    first_inputs: torch.Tensor  # this rank's first micro-batch (BitNet's statistics look at it)


def training_loss(config):
    """The loss from the final hidden states (chunked: no micro-batch's worth of logits), compiled with the
    decoder blocks when they are."""
    return torch.compile(lm_loss, backend=config.torch_compile_backend) if config.torch_compile else lm_loss


class Stepper:
    def __init__(
        self,
        *,
        model: torch.nn.Module,  # what wrap_model returned
        optimizer: torch.optim.Optimizer,
        loader,  # an iterator of micro-batches (input_ids, labels, position_ids, window_ids)
        accumulation: int,
        world: World,  # its bf16 decides the autocast
        config,  # PretrainConfig: document_masking, max_grad_norm, on_nonfinite, torch_compile
        loss_fn=None,  # (hidden, lm_head, labels) -> loss; default training_loss(config)
    ):
        self.model, self.optimizer, self.loader = model, optimizer, loader
        self.accumulation, self.world, self.config = accumulation, world, config
        self.loss_fn = loss_fn or training_loss(config)
        self.max_norm = config.max_grad_norm or math.inf

    def step(self, number: int, stop_requested, last_good) -> StepResult:
        """Optimizer step `number` (1-based); `stop_requested`, a bool or a callable read after the compute,
        says whether this rank was asked to stop; `last_good()` names the checkpoint to go back to when the loss
        is not finite."""
        # The step's micro-batches are taken (and copied to the GPU, pinned and non-blocking) before any
        # compute is queued: no host synchronisation inside the loop, and the loader's position is exactly
        # what the step consumed, for the checkpoint.
        batches = [next(self.loader) for _ in range(self.accumulation)]
        checksum = sum(window_checksum(b["window_ids"]) for b in batches)
        batches = [self.on_device(b) for b in batches]
        loss_sum = self.accumulate(batches)
        grad_norm = float(self.clip())
        # One collective for everything the ranks must agree on.
        # A stop asked for during this step's compute counts for this step (the loop passes a callable).
        stop = stop_requested() if callable(stop_requested) else stop_requested
        total, checksum, stops = self.world.sum([loss_sum.item(), checksum, float(stop)])
        mean_loss = total / (self.accumulation * self.world.size)
        finite = math.isfinite(mean_loss) and math.isfinite(grad_norm)
        if finite:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if not finite and self.config.on_nonfinite == "stop":
            raise ScratchError(
                f"non-finite loss ({mean_loss}) or grad norm ({grad_norm}) at step {number}; stopped before the "
                "optimizer step; "
                f"last good checkpoint: {last_good() or 'none yet'}"
            )
        return StepResult(mean_loss, grad_norm, int(checksum), not finite, stops > 0, batches[0]["input_ids"])

    def accumulate(self, batches: list[dict]) -> torch.Tensor:
        """Forward and backward of each micro-batch, gradients synchronised on the last one only (FSDP2
        keeps unsharded gradients meanwhile); the summed loss, as a tensor on the device."""
        loss_sum = torch.zeros((), device=self.world.device)
        for micro, batch in enumerate(batches):
            loss_sum += self.micro_step(batch, sync=micro == len(batches) - 1)
        return loss_sum

    def micro_step(self, batch: dict, sync: bool) -> torch.Tensor:
        """One micro-batch's forward (the decoder, then the loss from its hidden states) and backward, its
        loss scaled by the accumulation; returns the loss, detached, so nothing of its graph outlives it."""
        kwargs = {"labels": batch["labels"], "loss_from_hidden": self.loss_fn}
        if self.config.document_masking:
            kwargs["position_ids"] = batch["position_ids"]
        with gradient_sync(self.model, sync), autocast(self.world):
            loss = self.model(input_ids=batch["input_ids"], **kwargs)
        (loss / self.accumulation).backward()
        return loss.detach()

    def clip(self) -> torch.Tensor:
        """Clip the gradients to max_grad_norm; the global norm before clipping, as a tensor."""
        return clip_grad_norm(self.model, self.max_norm)

    def on_device(self, batch: dict) -> dict:
        device = self.world.device
        if device.type != "cuda":
            return batch
        return {k: v if k == "window_ids" else v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}


def window_checksum(window_ids: torch.Tensor) -> int:
    """A sum that is equal for equal sets of (source, window) pairs: the data ledger in metrics."""
    return int(((window_ids[:, 0] * 1_000_003 + window_ids[:, 1]) % 2_147_483_647).sum())
