"""Model directories on disk: create, load with checks, save as `scratch` or stock `llama`.

A model directory is a complete Hugging Face checkpoint: safetensors weights, config.json (with our
code beside it for `scratch`), generation_config.json and the tokenizer. Everything that reads one
goes through `load_model`, so a corrupt config or a tokenizer that does not fit is caught there.
"""

import importlib.util
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, LlamaForCausalLM, set_seed

from ..errors import ScratchError
from ..tokenization import IM_END, check_tokenizer_fits, load_tokenizer
from . import ScratchConfig, ScratchForCausalLM
from .bitnet import is_packed, load_packed, save_packed

FORMATS = ("scratch", "llama", "bitnet-packed")


def attention_backend() -> str:
    """flash-attn when it is installed and a GPU is present, else PyTorch SDPA (never a Hub kernel)."""
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def init_model(config: ScratchConfig, out_dir: str | Path, tokenizer_dir: str | Path | None, seed: int = 0):
    """A randomly initialised model directory, with the tokenizer when one is given."""
    tokenizer = None
    if tokenizer_dir is not None:
        tokenizer = load_tokenizer(tokenizer_dir)
        check_tokenizer_fits(tokenizer, config.vocab_size, where=f"tokenizer {tokenizer_dir}")
        config.bos_token_id = tokenizer.bos_token_id
        config.eos_token_id = tokenizer.eos_token_id
        config.pad_token_id = tokenizer.pad_token_id
    set_seed(seed)
    config._attn_implementation = attention_backend()
    model = ScratchForCausalLM(config)
    save_model(model, tokenizer, out_dir)
    return model, tokenizer


def read_config(model_dir: str | Path) -> dict:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ScratchError(f"{model_dir} is not a model directory (no config.json)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ScratchError(f"{path} is corrupt: not valid JSON ({err})") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ScratchError(f"{path} is corrupt: no model_type")
    return config


def load_model(model_dir: str | Path, dtype: torch.dtype = torch.float32, with_tokenizer: bool = True):
    """(model, tokenizer) from a directory; the tokenizer is None when asked not to load it."""
    config = read_config(model_dir)
    tokenizer = None
    if with_tokenizer:  # checked before the weights: a mismatch is found in a second, not a minute
        tokenizer = load_tokenizer(model_dir)
        check_tokenizer_fits(tokenizer, config.get("vocab_size", 0), where=f"model {model_dir}")
    try:
        if is_packed(model_dir):
            return load_packed(model_dir).to(dtype), tokenizer
        model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=dtype, attn_implementation=attention_backend()
        )
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        raise ScratchError(f"cannot load the model in {model_dir}: {str(err).splitlines()[0]}") from None
    return model, tokenizer


def save_model(model, tokenizer, out_dir: str | Path, format: str = "scratch") -> Path:
    """Write `model` (+ tokenizer and generation config) as a self-contained checkpoint."""
    if format not in FORMATS:
        raise ScratchError(f"unknown export format '{format}'; choose one of {', '.join(FORMATS)}")
    if format == "llama":
        model = as_stock_llama(model)
    out_dir = Path(out_dir)
    if format == "bitnet-packed":
        sizes = save_packed(model, tokenizer, out_dir)
        packed, full = sizes["packed_bytes"] / 1e6, sizes["full_precision_bytes"] / 1e6
        print(f"bitnet-packed: {packed:.2f} MB on disk against {full:.2f} MB of full-precision weights")
        return out_dir
    if tokenizer is not None:
        model.generation_config = generation_config(tokenizer)
        tokenizer.model_max_length = model.config.max_position_embeddings
        tokenizer.save_pretrained(str(out_dir))
    model.save_pretrained(str(out_dir))
    return out_dir


def as_stock_llama(model: ScratchForCausalLM) -> LlamaForCausalLM:
    """The same weights under `model_type: llama`, loadable with no remote code at all."""
    config = model.config
    problems = config.llama_incompatibilities() if isinstance(config, ScratchConfig) else []
    if problems:
        raise ScratchError(
            f"cannot export as llama: the model uses {', '.join(problems)}, which stock Llama lacks; "
            "export with --format scratch (loads with trust_remote_code=True)"
        )
    llama_keys = set(LlamaConfig.__dataclass_fields__)
    values = {k: v for k, v in config.to_dict().items() if k in llama_keys}
    llama_config = LlamaConfig(**values)
    with torch.device("meta"):
        llama = LlamaForCausalLM(llama_config)
    llama.load_state_dict(model.state_dict(), assign=True, strict=True)
    llama.tie_weights()
    llama.generation_config = model.generation_config
    return llama.to(model.dtype)


def generation_config(tokenizer) -> GenerationConfig:
    """Stop at the end of a document or of an assistant turn; pad with the pad token."""
    stop = [tokenizer.eos_token_id]
    if IM_END in tokenizer.get_vocab():
        stop.append(tokenizer.convert_tokens_to_ids(IM_END))
    return GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=stop, pad_token_id=tokenizer.pad_token_id)
