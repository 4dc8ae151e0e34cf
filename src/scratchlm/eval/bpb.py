"""Validation loss and bits per byte on the held-out split of prepared shards.

Bits per byte divides the summed loss (in bits) by the UTF-8 bytes of the predicted tokens, so it
compares models with different tokenizers; special tokens (BOS, EOS) have no bytes and are left out
of both sums, as nanochat does. Every rank evaluates the same number of batches (short ranks repeat
a window with zero weight): under FSDP an uneven count would leave a collective waiting forever.
"""

import math

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from transformers.convert_slow_tokenizer import bytes_to_unicode

from ..data.loader import document_positions
from ..data.shards import TokenShards
from ..model import ScratchForCausalLM
from ..model.loss import default_chunk_tokens


def token_byte_lengths(tokenizer, vocab_size: int) -> torch.Tensor:
    """UTF-8 bytes each token id stands for: byte-level BPE tokens map characters back to bytes."""
    byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    lengths = torch.zeros(vocab_size, dtype=torch.int64)
    for token, index in tokenizer.get_vocab().items():
        if index not in special and index < vocab_size:
            lengths[index] = sum(1 for char in token if char in byte_of) or len(token.encode())
    return lengths


def per_token_nats(hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """Loss of every token, its logits made a chunk of tokens at a time (validation must not need more
    memory than training, whose loss is chunked too)."""
    flat, targets = hidden.flatten(0, -2), labels.flatten()
    chunk = default_chunk_tokens(head.weight.shape[0])
    nats = [
        F.cross_entropy(head(flat[i : i + chunk]).float(), targets[i : i + chunk], reduction="none")
        for i in range(0, len(targets), chunk)
    ]
    return torch.cat(nats).view(labels.shape)


def token_nats(model, inputs: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor | None) -> torch.Tensor:
    """Loss of every token, (batch, seq). Our models take the training forward (no cache, so packed
    documents stay apart; no full logits); any other causal LM its own forward, without a cache too."""
    if isinstance(getattr(model, "module", model), ScratchForCausalLM):
        return model(input_ids=inputs, labels=labels, position_ids=position_ids, loss_from_hidden=per_token_nats)
    logits = model(input_ids=inputs, position_ids=position_ids, use_cache=False).logits
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction="none").view(labels.shape)


@torch.no_grad()
def evaluate_bpb(
    model,
    shards: TokenShards,
    token_bytes: torch.Tensor,
    seq_len: int,
    batch_size: int,
    max_windows: int,
    document_masking: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> dict:
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    results, weighted_loss, weighted_bpb = {}, 0.0, 0.0
    for source in shards.sources:
        count = min(max(0, (len(source.val) - 1) // seq_len), max_windows)
        per_rank = math.ceil(count / world_size)
        mine = [rank + world_size * i for i in range(per_rank)]  # the last may lie past the end: weight 0
        sums = torch.zeros(4, dtype=torch.float64, device=device)  # nats, tokens, nats of byte tokens, bytes
        for start in range(0, per_rank, batch_size):
            chosen = mine[start : start + batch_size]
            weight = torch.tensor([[float(w < count)] for w in chosen], dtype=torch.float64, device=device)
            chosen = [w if w < count else 0 for w in chosen]
            windows = np.stack([source.val[w * seq_len : w * seq_len + seq_len + 1] for w in chosen]).astype(np.int64)
            inputs = torch.from_numpy(windows[:, :-1]).to(device)
            labels = torch.from_numpy(windows[:, 1:]).to(device)
            positions = None
            if document_masking:
                positions = torch.from_numpy(document_positions(windows[:, :-1], shards.bos_id)).to(device)
            nats = token_nats(model, inputs, labels, positions)
            nbytes = token_bytes.to(device)[labels]
            sums += torch.stack(
                [
                    (nats * weight).sum(),
                    (weight * labels.shape[1]).sum(),
                    (nats * (nbytes > 0) * weight).sum(),
                    (nbytes * weight).sum(),
                ]
            )
        if dist.is_initialized():
            dist.all_reduce(sums)
        nats, tokens, masked, nbytes = sums.tolist()
        if tokens:
            results[source.name] = {
                "loss": nats / tokens,
                "bpb": masked / math.log(2) / max(nbytes, 1),
                "tokens": int(tokens),
            }
            weighted_loss += source.weight * results[source.name]["loss"]
            weighted_bpb += source.weight * results[source.name]["bpb"]
    model.train(was_training)
    total_weight = sum(s.weight for s in shards.sources if s.name in results)
    return {
        "val_loss": weighted_loss / total_weight if total_weight else float("nan"),
        "val_bpb": weighted_bpb / total_weight if total_weight else float("nan"),
        "sources": results,
    }
