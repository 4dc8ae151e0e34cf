"""ScratchForCausalLM: transformers' Llama (RMSNorm, RoPE, GQA, SwiGLU) plus ScratchConfig's options.

This file is copied into every saved checkpoint (trust_remote_code), so it imports only torch,
transformers and its sibling configuration file. Parameter names are exactly Llama's, which is what
lets a model without custom options export as a stock `llama` checkpoint with the same weights.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaForCausalLM, LlamaModel, LlamaPreTrainedModel
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from .configuration_scratch import ScratchConfig


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


class ScratchForCausalLM(LlamaForCausalLM):
    config_class = ScratchConfig
    config: ScratchConfig

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


__all__ = ["BitLinear", "ScratchForCausalLM", "int8_activations", "ternary_weights"]
