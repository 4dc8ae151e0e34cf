"""ScratchForCausalLM: transformers' Llama (RMSNorm, RoPE, GQA, SwiGLU) plus ScratchConfig's options.

This file is copied into every saved checkpoint (trust_remote_code), so it imports only torch,
transformers (and safetensors, one of its dependencies) and its sibling configuration file. Parameter
names are exactly Llama's, which is what lets a model without custom options export as a stock `llama`
checkpoint with the same weights. It also reads `bitnet-packed` exports (2-bit weights): a process that
never imported scratchlm loads one with `from_pretrained(dir, trust_remote_code=True)` like any other.
"""

import contextlib
import os

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from transformers import GenerationConfig, LlamaForCausalLM, LlamaModel, LlamaPreTrainedModel, PreTrainedConfig
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.utils import cached_file

from .configuration_scratch import ScratchConfig

# A bitnet-packed export holds this file instead of model.safetensors: every BitLinear weight as its
# ternary values, four to a byte (`NAME.weight.ternary`), and its scale (`NAME.weight.scale`); every
# other tensor as saved. A loader that does not know the format finds no weights, rather than wrong ones.
PACKED_WEIGHTS = "model.bitnet.safetensors"
DOWNLOAD_ARGUMENTS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision", "subfolder")


class SoftCappedLinear(nn.Linear):
    """The LM head with logits squashed into (-cap, cap); its state dict is a plain Linear's."""

    def __init__(self, in_features: int, out_features: int, cap: float):
        super().__init__(in_features, out_features, bias=False)
        self.cap = cap

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        logits = super().forward(hidden_states)
        return self.cap * torch.tanh(logits / self.cap)


def ternary_weights(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BitNet b1.58's absmean quantizer: (round(W / s) clamped to {-1, 0, +1}, s = mean |W|)."""
    scale = weight.abs().mean().clamp(min=1e-5)
    return (weight / scale).round().clamp(-1, 1), scale


def int8_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax: (round(x * s) in [-128, 127], s = 127 / max |x| over the token's features)."""
    scale = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    return (x * scale).round().clamp(-128, 127), scale


class BitLinear(nn.Linear):
    """A BitNet b1.58 linear layer: RMSNorm of the input, 8-bit activations, ternary weights; both
    quantizers pass gradients straight through (forward quantized, backward as if the identity).
    The full-precision weight is what trains and what is saved; `ternary_weights` gives its values."""

    def __init__(self, in_features: int, out_features: int, bias: bool, eps: float):
        super().__init__(in_features, out_features, bias=bias)
        self.input_norm = LlamaRMSNorm(in_features, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_norm(x)
        codes, x_scale = int8_activations(x)
        x = x + (codes / x_scale - x).detach()
        ternary, w_scale = ternary_weights(self.weight)
        weight = self.weight + (ternary * w_scale - self.weight).detach()
        return F.linear(x, weight, self.bias)


def unpack_ternary(packed: torch.Tensor, count: int) -> torch.Tensor:
    """Codes {0, 1, 2}, four per byte (the first in the low bits) -> the first `count` values {-1, 0, +1}."""
    codes = torch.stack([(packed >> shift) & 3 for shift in (0, 2, 4, 6)], dim=1).flatten()[:count]
    return codes.to(torch.int8) - 1


def weight_from_ternary(ternary: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """A full-precision weight that `ternary_weights` quantizes back to exactly `ternary` and `scale`: every
    nonzero at scale / (share of nonzeros), so their mean |w| is the scale again and w / scale rounds (and
    clamps) back to the same sign; zeros stay zero."""
    ternary = ternary.float()
    nonzero = (ternary != 0).float().mean().clamp(min=1 / ternary.numel())
    return ternary * (scale / nonzero)


class ScratchForCausalLM(LlamaForCausalLM):
    config_class = ScratchConfig
    config: ScratchConfig

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """transformers' from_pretrained; a bitnet-packed export (PACKED_WEIGHTS) is unpacked first and
        then loaded through the same call, so dtype, device_map and attn_implementation mean what they
        always do."""
        packed = _packed_weights(pretrained_model_name_or_path, kwargs)
        if packed is None:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        download = {key: kwargs.pop(key) for key in DOWNLOAD_ARGUMENTS if key in kwargs}
        kwargs.pop("_commit_hash", None)
        config = kwargs.pop("config", None)
        if not isinstance(config, PreTrainedConfig):
            config = cls.config_class.from_pretrained(config or pretrained_model_name_or_path, **download)
        state = cls._unpacked_state(packed, config)
        wants_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(
            None, *model_args, config=config, state_dict=state, output_loading_info=True, **kwargs
        )
        if info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]:  # never a random weight
            found = sorted(info["missing_keys"] or info["unexpected_keys"]) or info["mismatched_keys"]
            raise ValueError(f"{packed} does not fit its config: {found[:3]}")
        model.name_or_path = model.config.name_or_path = str(pretrained_model_name_or_path)
        with contextlib.suppress(OSError):  # packed before exports carried one: keep the config's default
            model.generation_config = GenerationConfig.from_pretrained(pretrained_model_name_or_path, **download)
        return (model, info) if wants_info else model

    @classmethod
    def _unpacked_state(cls, packed: str, config: ScratchConfig) -> dict[str, torch.Tensor]:
        tensors = load_file(packed)
        with torch.device("meta"):  # the shapes of the BitLinear weights, for free
            skeleton = cls(config)
        shapes = {f"{name}.weight": m.weight.shape for name, m in skeleton.named_modules() if isinstance(m, BitLinear)}
        state = {key: value for key, value in tensors.items() if not key.endswith((".ternary", ".scale"))}
        for key, shape in shapes.items():
            codes = tensors.get(f"{key}.ternary")
            if codes is None or codes.numel() != (shape.numel() + 3) // 4:  # four weights a byte
                raise ValueError(f"{packed} does not fit its config: {key} is not {tuple(shape)} ternary weights")
            ternary = unpack_ternary(codes, shape.numel()).view(shape)
            state[key] = weight_from_ternary(ternary, tensors[f"{key}.scale"][0])
        return state

    def __init__(self, config: ScratchConfig):
        # LlamaForCausalLM.__init__ with our choice of head; skipping it avoids initialising twice.
        LlamaPreTrainedModel.__init__(self, config)
        self.model = LlamaModel(config)
        self.vocab_size = config.vocab_size
        if config.logit_softcap is None:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        else:
            self.lm_head = SoftCappedLinear(config.hidden_size, config.vocab_size, config.logit_softcap)
        if config.bitnet:
            self._use_bitlinear(config.rms_norm_eps)
        self.post_init()

    def forward(self, *args, loss_from_hidden=None, **kwargs):
        """Llama's forward; or, with `loss_from_hidden`, how training and evaluation run packed windows:
        the decoder without a cache (transformers builds the per-document mask from position_ids only
        when no cache is passed), then loss_from_hidden(final hidden states, lm_head, labels), so the
        caller decides how logits are made (in chunks, never all at once). Being `forward`, it gets
        the hooks of whatever wraps the model (FSDP2, DDP)."""
        if loss_from_hidden is None:
            return super().forward(*args, **kwargs)
        labels = kwargs.pop("labels")
        kwargs.pop("use_cache", None)
        hidden = self.model(*args, use_cache=False, **kwargs).last_hidden_state
        return loss_from_hidden(hidden, self.lm_head, labels)

    def _use_bitlinear(self, eps: float) -> None:
        """Every linear layer of the decoder blocks becomes a BitLinear of the same shape."""
        for layer in self.model.layers:
            for block in (layer.self_attn, layer.mlp):
                for name, old in list(block.named_children()):
                    if isinstance(old, nn.Linear):
                        setattr(block, name, BitLinear(old.in_features, old.out_features, old.bias is not None, eps))


def _packed_weights(name_or_path, kwargs: dict) -> str | None:
    """The packed weights file of a local directory or Hub repository, None when it has none."""
    if name_or_path is None:  # from_pretrained(None, state_dict=...): nothing to look for
        return None
    download = {key: kwargs[key] for key in DOWNLOAD_ARGUMENTS if key in kwargs}
    if os.path.isdir(name_or_path):
        path = os.path.join(name_or_path, download.get("subfolder") or "", PACKED_WEIGHTS)
        return path if os.path.isfile(path) else None
    try:
        return cached_file(
            name_or_path,
            PACKED_WEIGHTS,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            **download,
        )
    except OSError:  # not a repository we can reach: from_pretrained itself says why
        return None


__all__ = ["BitLinear", "ScratchForCausalLM", "int8_activations", "ternary_weights", "unpack_ternary"]
