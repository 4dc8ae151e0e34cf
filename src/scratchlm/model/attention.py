"""The attention backend: its names, which one a run gets, its fallback, and what each cannot do.

Every other place asks this module: the config's check of a named backend (train/config.py), the
model the loop builds (train/loop.py build_model), the memory planner (train/memory.py setup_for_run),
selective checkpointing's list of attention kernels (train/parallel.py) and model loading
(model/files.py, model/bitnet.py). So the planner estimates the backend the run will get, and a new
backend is added here once.
"""

import functools

import torch

from ..errors import ScratchError

NAMES = ("sdpa", "eager", "flex_attention", "flash_attention_2")
# PyTorch's scaled_dot_product_attention: on every device, for every shape, with or without a mask. What
# a run falls back to, what a CPU trains with, and what loading for evaluation uses. Never a Hub kernel.
FALLBACK = "sdpa"


def choose(requested: str = "", document_masking: bool = False, gpu: bool | None = None) -> str:
    """The backend a training run gets: the config's when it names one, else sdpa on a CPU; on a GPU with
    document masking flex_attention (it keeps packed documents apart with a block mask at flash-like
    speed, where sdpa with a materialised mask falls back to a slow kernel and transformers' flash-attn
    path finds packed documents only at batch size 1), without it flash-attn when it works here.

    gpu: whether the run trains on a GPU; None, whether this machine has one. The planner plans for a GPU
    from any machine; off the GPU flash-attn cannot be probed and counts as absent, which changes no
    estimate (without a mask sdpa and flash-attn save the same tensors: train/memory.py attention_bytes)."""
    if requested:
        return requested
    if not (torch.cuda.is_available() if gpu is None else gpu):
        return FALLBACK
    if document_masking:
        return "flex_attention"
    return "flash_attention_2" if flash_attention_works() else FALLBACK


def for_training(requested: str, document_masking: bool) -> str:
    """The backend a run on this machine trains with, or a ScratchError when it cannot train here."""
    name = choose(requested, document_masking)
    if name == "flex_attention" and not torch.cuda.is_available():
        raise ScratchError("attn_implementation flex_attention trains only on a GPU (torch has no CPU backward for it)")
    return name


def config_problem(name: str, document_masking: bool, micro_batch: int) -> str | None:
    """What is wrong with a config's backend next to its other settings, found at start-up; None when
    nothing is. (The name itself is checked against NAMES where the config's keys are.)"""
    if name == "flash_attention_2" and document_masking and micro_batch > 1:
        return (
            "document_masking with attn_implementation flash_attention_2 needs per_device_train_batch_size 1: "
            "transformers finds packed documents for flash-attn only at batch size 1; use flex_attention (as "
            "fast, with a block mask) or sdpa"
        )
    return None


@functools.cache
def flash_attention_works() -> bool:
    """flash-attn imports and computes on this GPU (a mismatched build imports and then fails, or not even)."""
    if not torch.cuda.is_available():
        return False
    try:
        from flash_attn import flash_attn_func

        q = torch.randn(1, 8, 2, 64, device="cuda", dtype=torch.bfloat16)
        return bool(torch.isfinite(flash_attn_func(q, q, q, causal=True)).all())
    except Exception as err:  # noqa: BLE001 - any failure means: do not use it
        if not isinstance(err, ImportError):
            print(f"scratchlm: flash-attn is installed but does not run here ({type(err).__name__}); using {FALLBACK}")
        return False


# The aten ops sdpa's kernels run as (flash, memory-efficient, cuDNN, and the CPU flash kernel): selective
# activation checkpointing keeps their outputs with the matmuls' (train/parallel.py). Ops this torch
# lacks are left out.
SDPA_KERNELS = frozenset(
    getattr(torch.ops.aten, name).default
    for name in (
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_flash_attention_for_cpu",
        "_flash_attention_forward",
        "_efficient_attention_forward",
    )
    if hasattr(torch.ops.aten, name)
)
