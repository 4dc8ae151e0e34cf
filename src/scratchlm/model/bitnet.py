"""BitNet b1.58 around the model: the metrics a run logs, and the packed export (2 bits per weight).

The layers themselves (BitLinear and its quantizers) live in modeling_scratch.py, so that a saved
checkpoint runs anywhere with trust_remote_code. A packed directory holds every BitLinear weight as
its ternary values, four to a byte, and its scale; everything else as saved. `load_packed` rebuilds
full-precision weights whose quantization gives back exactly those values and scale, so the model
computes the same logits as the one that was packed.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import ScratchError
from .configuration_scratch import ScratchConfig
from .modeling_scratch import BitLinear, ScratchForCausalLM, int8_activations, ternary_weights

PACKED_MARKER = "bitnet_packed.json"
PACKED_WEIGHTS = "model.bitnet.safetensors"


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


def unpack_ternary(packed: torch.Tensor, count: int) -> torch.Tensor:
    codes = torch.stack([(packed >> shift) & 3 for shift in (0, 2, 4, 6)], dim=1).flatten()[:count]
    return codes.to(torch.int8) - 1


@torch.no_grad()
def save_packed(model: ScratchForCausalLM, tokenizer, out_dir: str | Path) -> dict:
    """A packed export; returns the on-disk sizes next to the full-precision weights'."""
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
    save_file(tensors, str(out / PACKED_WEIGHTS))
    model.config.save_pretrained(str(out))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
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


@torch.no_grad()
def load_packed(model_dir: str | Path) -> ScratchForCausalLM:
    model_dir = Path(model_dir)
    config = ScratchConfig.from_pretrained(str(model_dir))
    model = ScratchForCausalLM(config)
    tensors = load_file(str(model_dir / PACKED_WEIGHTS))
    state = {key: value for key, value in tensors.items() if not key.endswith((".weight.ternary", ".weight.scale"))}
    for name, layer in bitlinears(model).items():
        ternary = unpack_ternary(tensors.pop(f"{name}.weight.ternary"), layer.weight.numel())
        ternary = ternary.view_as(layer.weight).float()
        scale = tensors.pop(f"{name}.weight.scale")[0]
        # Every nonzero weight at scale / (share of nonzeros): their mean |w| is then the scale again and
        # w / scale rounds back to the same ternary value, so the quantizer reproduces both exactly.
        nonzero = (ternary != 0).float().mean().clamp(min=1 / ternary.numel())
        state[f"{name}.weight"] = ternary * (scale / nonzero)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise ScratchError(f"{model_dir}/{PACKED_WEIGHTS} does not fit its config: {missing or unexpected}")
    model.tie_weights()
    return model.eval()
