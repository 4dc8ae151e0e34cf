"""BitNet b1.58 around the model: the metrics a run logs, and the packed export (2 bits per weight).

The layers themselves (BitLinear and its quantizers) live in modeling_scratch.py, so that a saved
checkpoint runs anywhere with trust_remote_code; so does the reading of packed weights, for the same
reason. A packed directory holds every BitLinear weight as its ternary values, four to a byte, and its
scale; everything else as saved; and the model code, config and generation config of any export.
Loading rebuilds full-precision weights whose quantization gives back exactly those values and scale,
so the model computes the same logits as the one that was packed.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers.dynamic_module_utils import custom_object_save

from ..errors import ScratchError, one_line
from .attention import FALLBACK
from .modeling_scratch import PACKED_WEIGHTS, BitLinear, ScratchForCausalLM, int8_activations, ternary_weights

PACKED_MARKER = "bitnet_packed.json"


def bitlinears(model) -> dict[str, BitLinear]:
    return {name: module for name, module in model.named_modules() if isinstance(module, BitLinear)}


@torch.no_grad()
def bitnet_stats(model, input_ids: torch.Tensor) -> dict:
    """Share of weights quantized to 0 and mean weight scale over every BitLinear, and the activation
    clipping rate on `input_ids`; {} for a model without BitLinear. The rate costs one forward pass,
    taken here (at logging steps) rather than in every training forward."""
    layers = list(bitlinears(model).values())
    if not layers:
        return {}
    zeros, total, scales = 0, 0, []
    for layer in layers:
        weight = layer.weight.full_tensor() if hasattr(layer.weight, "full_tensor") else layer.weight  # FSDP2
        ternary, scale = ternary_weights(weight.float())
        zeros += int((ternary == 0).sum())
        total += ternary.numel()
        scales.append(float(scale))
    clip_rates = []
    hooks = [
        layer.input_norm.register_forward_hook(lambda _m, _i, x: clip_rates.append(clip_rate(x))) for layer in layers
    ]
    try:
        model(input_ids=input_ids)
    finally:
        for hook in hooks:
            hook.remove()
    return {
        "bitnet_zero_fraction": zeros / total,
        "bitnet_weight_scale": sum(scales) / len(scales),
        "bitnet_act_clip_rate": sum(clip_rates) / len(clip_rates),
    }


def clip_rate(x: torch.Tensor) -> float:
    """Share of activations at the ends of the int8 range. Per-token absmax puts each token's largest
    value there and clips nothing else, so this is the quantizer's clipping rate: near 1/features
    for tokens with one outlier, higher for flat ones."""
    codes, _ = int8_activations(x.float())
    return float((codes.abs() >= 127).float().mean())


def pack_ternary(values: torch.Tensor) -> torch.Tensor:
    """{-1, 0, +1} -> codes {0, 1, 2}, four per byte (the first in the low bits)."""
    codes = (values.flatten().to(torch.int16) + 1).to(torch.uint8)
    codes = torch.cat([codes, codes.new_ones((-codes.numel()) % 4)])  # pad with code 1: a zero weight
    codes = codes.view(-1, 4)
    return codes[:, 0] | (codes[:, 1] << 2) | (codes[:, 2] << 4) | (codes[:, 3] << 6)


@torch.no_grad()
def save_packed(model: ScratchForCausalLM, out_dir: str | Path) -> dict:
    """The weights packed, with the config, the model code and the generation config (save_model writes
    the tokenizer); returns the on-disk sizes next to the full-precision weights'."""
    layers = bitlinears(model)
    if not layers:
        raise ScratchError("--format bitnet-packed needs a BitNet model (bitnet: true in its config)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, layer in layers.items():
        ternary, scale = ternary_weights(layer.weight.float())
        tensors[f"{name}.weight.ternary"] = pack_ternary(ternary)
        tensors[f"{name}.weight.scale"] = scale.reshape(1)
    packed = {f"{name}.weight" for name in layers}
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    for key, value in model.state_dict().items():
        if key not in packed | tied:
            tensors[key] = value.contiguous()
    save_file(tensors, str(out / PACKED_WEIGHTS), metadata={"format": "pt"})
    custom_object_save(model, out, config=model.config)  # what save_pretrained does: the code, and auto_map
    model.config.save_pretrained(str(out))
    model.generation_config.save_pretrained(str(out))
    ternary = sum(layer.weight.numel() for layer in layers.values())
    sizes = {
        "packed_bytes": (out / PACKED_WEIGHTS).stat().st_size,
        "full_precision_bytes": sum(
            v.numel() * v.element_size() for k, v in model.state_dict().items() if k not in tied
        ),
        "ternary_weights": ternary,
    }
    (out / PACKED_MARKER).write_text(json.dumps({"format": "bitnet b1.58, 2 bits per weight", **sizes}, indent=1))
    return sizes


def is_packed(model_dir: str | Path) -> bool:
    return (Path(model_dir) / PACKED_MARKER).is_file()


def load_packed(model_dir: str | Path) -> ScratchForCausalLM:
    """The same call as a process without scratchlm makes (the unpacking is in the model's code)."""
    try:
        return ScratchForCausalLM.from_pretrained(str(model_dir), attn_implementation=FALLBACK).eval()
    except ValueError as err:
        raise ScratchError(f"cannot load the model in {model_dir}: {one_line(err)}") from None
