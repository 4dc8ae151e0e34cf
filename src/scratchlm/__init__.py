"""scratchlm: train Llama-style language models from scratch on the Hugging Face stack."""

__version__ = "0.1.0"
