"""ScratchConfig: a LlamaConfig with its own model_type and the few options stock Llama lacks.

This file is copied into every saved checkpoint (trust_remote_code), so it imports only
transformers and huggingface_hub (a transformers dependency).
"""

from huggingface_hub.dataclasses import strict
from transformers import LlamaConfig


@strict
class ScratchConfig(LlamaConfig):
    model_type = "scratch"

    # nanochat / Gemma 2 style soft cap on the output logits: cap * tanh(logits / cap).
    # None means plain logits, which is what stock Llama computes.
    logit_softcap: float | None = None

    # BitNet b1.58: the decoder's linear layers become BitLinear (ternary weights, 8-bit activations,
    # an RMSNorm on their input); embeddings, the LM head and the other norms stay full precision.
    bitnet: bool = False

    def llama_incompatibilities(self) -> list[str]:
        """Options in use that a stock `model_type: llama` checkpoint cannot express."""
        problems = []
        if self.logit_softcap is not None:
            problems.append(f"logit_softcap={self.logit_softcap}")
        if self.bitnet:
            problems.append("bitnet=True")
        return problems


__all__ = ["ScratchConfig"]
