"""ScratchForCausalLM: transformers' Llama (RMSNorm, RoPE, GQA, SwiGLU) plus ScratchConfig's options.

This file is copied into every saved checkpoint (trust_remote_code), so it imports only torch,
transformers and its sibling configuration file. Parameter names are exactly Llama's, which is what
lets a model without custom options export as a stock `llama` checkpoint with the same weights.
"""

import torch
from torch import nn
from transformers import LlamaForCausalLM, LlamaModel, LlamaPreTrainedModel

from .configuration_scratch import ScratchConfig


class SoftCappedLinear(nn.Linear):
    """The LM head with logits squashed into (-cap, cap); its state dict is a plain Linear's."""

    def __init__(self, in_features: int, out_features: int, cap: float):
        super().__init__(in_features, out_features, bias=False)
        self.cap = cap

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        logits = super().forward(hidden_states)
        return self.cap * torch.tanh(logits / self.cap)


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
        self.post_init()


__all__ = ["ScratchForCausalLM"]
