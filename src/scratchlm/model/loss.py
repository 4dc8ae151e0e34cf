"""The training loss from the final hidden states, without ever holding the micro-batch's logits.

`F.cross_entropy(lm_head(hidden).float(), labels)` materialises B·T·V logits: in bf16, again in
fp32, the fp32 log-softmax it saves for backward, and the fp32 and bf16 gradients in backward. For
h100-d20 at 32 × 2048 tokens and a 65,536 vocabulary each fp32 copy is 17 GB. Here the tokens are
cut into chunks; each chunk's logits are computed (matmul in the compute dtype, then fp32), turned
into its loss and, right away, into the gradients w.r.t. the hidden states and the head weight, and
dropped (the Liger / "cut cross-entropy" approach). Only one chunk's logits exist at a time, and the
backward just scales the stored gradients. The loss and gradients are the plain computation's
(`plain_lm_loss`), to fp32 rounding (tests/test_loss.py).

On CUDA, when liger_kernel is installed (the `gpu` extra), its fused Triton kernel does the same.
"""

import importlib.util

import torch

from ..errors import ScratchError

# One chunk's fp32 logits take at most this many bytes (the chunk is a power of two of tokens): a
# chunk's transients are a few of these, whatever the micro-batch. 256 MiB keeps the matmuls large
# (1,024 tokens at a 65,536 vocabulary) and the loss small next to a 12 GB card.
CHUNK_LOGITS_BYTES = 256 * 2**20
IGNORE_INDEX = -100


def default_chunk_tokens(vocab_size: int) -> int:
    """The largest power of two of tokens whose fp32 logits fit CHUNK_LOGITS_BYTES (at least 1)."""
    tokens = max(1, CHUNK_LOGITS_BYTES // (4 * vocab_size))
    return 1 << (tokens.bit_length() - 1)


def lm_loss(hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor, chunk_tokens: int = 0):
    """Mean cross-entropy of `head(hidden)` over the labels that are not -100 (nan when there are none,
    as F.cross_entropy). `head` is the model's lm_head: an nn.Linear, or a SoftCappedLinear
    (cap · tanh(x Wᵀ / cap)). Under FSDP2 its weight is the unsharded parameter while the root
    module runs, which is all this reads."""
    if getattr(head, "bias", None) is not None:
        raise ScratchError("lm_loss: an LM head with a bias is not supported (ScratchForCausalLM's has none)")
    cap = getattr(head, "cap", None)
    hidden, labels = hidden.flatten(0, -2), labels.flatten()
    fused = liger_loss(hidden.device)
    if fused is not None:
        return fused(hidden, head.weight, labels, cap)
    chunk_tokens = chunk_tokens or default_chunk_tokens(head.weight.shape[0])
    # Decided here: inside an autograd.Function's forward, grad mode is always off.
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or head.weight.requires_grad)
    return ChunkedLinearCrossEntropy.apply(hidden, head.weight, labels, cap, chunk_tokens, needs_grad)


def plain_lm_loss(hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """The plain computation, for comparison: every logit at once, in fp32 for the cross-entropy."""
    logits = head(hidden)
    return torch.nn.functional.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(), ignore_index=IGNORE_INDEX)


def liger_loss(device: torch.device):
    """Liger's fused linear cross-entropy on CUDA when liger_kernel is installed, else None (its Triton
    kernels run nowhere else). Its weight gradient is accumulated in fp32 across chunks: with bf16
    parameters (FSDP2's param_dtype) its default accumulates in bf16."""
    if device.type != "cuda" or importlib.util.find_spec("liger_kernel") is None:
        return None
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    def fused(hidden, weight, labels, cap):
        return liger_fused_linear_cross_entropy(
            hidden, weight, labels, ignore_index=IGNORE_INDEX, softcap=cap, accum_dtype=torch.float32
        )

    return fused


def compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    """The dtype the head's matmul runs in: autocast's when it is on (as nn.Linear would), else the input's."""
    device = hidden.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Loss and both gradients chunk by chunk in the forward; the backward scales them."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, cap, chunk_tokens, needs_grad):
        dtype = compute_dtype(hidden)
        with torch.autocast(hidden.device.type, enabled=False):  # every dtype below is chosen, not cast
            matrix = weight.to(dtype)  # a no-op unless autocast runs an fp32 weight in bf16
            valid = labels != IGNORE_INDEX
            count = valid.sum()
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_hidden = torch.empty_like(hidden) if needs_grad and hidden.requires_grad else None
            grad_weight = torch.zeros_like(weight, dtype=torch.float32) if needs_grad and weight.requires_grad else None
            for start in range(0, hidden.shape[0], chunk_tokens):
                rows = slice(start, start + chunk_tokens)
                inputs = hidden[rows].to(dtype)
                logits = (inputs @ matrix.T).float()
                if cap is not None:
                    squashed = logits.div_(cap).tanh_()  # kept: the cap's derivative is 1 - tanh²
                    logits = squashed * cap
                target = labels[rows].clamp(min=0).unsqueeze(1)  # ignored rows pick class 0, masked below
                picked = logits.gather(1, target).squeeze(1)
                # log-sum-exp and softmax in place on the fp32 logits: no second chunk-sized buffer.
                peak = logits.amax(dim=1, keepdim=True)
                exp = logits.sub_(peak).exp_()
                norm = exp.sum(dim=1, keepdim=True)
                lse = (norm.log() + peak).squeeze(1)
                total += ((lse - picked) * valid[rows]).sum()
                if not needs_grad:
                    continue
                # d loss_i / d logit_ij = (softmax_ij - [j = label_i]) / count, for valid rows; in place.
                grad = exp.div_(norm)
                grad.scatter_add_(1, target, torch.full_like(target, -1, dtype=grad.dtype))
                grad.mul_((valid[rows] / count).unsqueeze(1))
                if cap is not None:
                    grad.mul_(squashed.square_().neg_().add_(1))
                grad = grad.to(dtype)
                if grad_hidden is not None:
                    grad_hidden[rows] = grad @ matrix
                if grad_weight is not None:
                    grad_weight.add_(grad.T @ inputs)  # the chunk's product in the compute dtype, summed in fp32
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        # Saved like any activation, so saved-tensor accounting (and offloading hooks) see them.
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.scaled = False
        return total / count

    @staticmethod
    def backward(ctx, grad_output):
        if ctx.scaled:
            raise RuntimeError("ChunkedLinearCrossEntropy: backward twice through the same loss (retain_graph)")
        ctx.scaled = True  # scaled in place and handed over: no second copy of the weight's gradient
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden.mul_(grad_output.to(grad_hidden.dtype))
        if grad_weight is not None:
            grad_weight.mul_(grad_output.to(grad_weight.dtype))
        return grad_hidden, grad_weight, None, None, None, None


__all__ = ["default_chunk_tokens", "liger_loss", "lm_loss", "plain_lm_loss"]
