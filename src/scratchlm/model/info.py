"""Parameter counts and FLOPs per token, read off the real module so they can never drift from it.

FLOPs/token = 6 * N_matmul + 12 * L * d_attn * T (the torchtitan / nanochat / OLMo convention):
N_matmul counts every weight used in a matrix multiply per token, the LM head included and the input
embedding (a lookup) excluded; the second term is attention's QK^T and AV over a context of T.
"""

import torch
from torch import nn

from .configuration_scratch import ScratchConfig
from .modeling_scratch import ScratchForCausalLM


def window_length(config: ScratchConfig, seq_len: int | None = None) -> int:
    """The window a model trains (or is counted) on: `seq_len` when given, else its whole context."""
    return seq_len or config.max_position_embeddings


def model_stats(config: ScratchConfig, seq_len: int | None = None) -> dict:
    with torch.device("meta"):
        model = ScratchForCausalLM(config)
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    total = sum(p.numel() for p in model.parameters())  # counts a tied head once
    vocab_matrices = embedding.numel() + (0 if head is embedding else head.numel())
    matmul = sum(m.weight.numel() for m in model.model.layers.modules() if isinstance(m, nn.Linear)) + head.numel()
    seq_len = window_length(config, seq_len)
    attn_width = config.num_attention_heads * config.head_dim
    return {
        "params_total": total,
        "params_non_embedding": total - vocab_matrices,
        "params_matmul": matmul,
        "flops_per_token": 6 * matmul + 12 * config.num_hidden_layers * attn_width * seq_len,
        "seq_len": seq_len,
    }
