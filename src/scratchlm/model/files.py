"""Model directories on disk: create, load with checks, save as stock `llama` or as `scratch`.

A model directory is a complete Hugging Face checkpoint: safetensors weights, config.json (with our
code beside it for `scratch`), generation_config.json and the tokenizer. Everything that reads one
goes through `load_model`, so a corrupt config or a tokenizer that does not fit is caught there.

The `auto` format, every save's default, writes a stock llama checkpoint whenever the model is one: it
loads anywhere (vLLM, llama.cpp's converter) with no code to trust, and nothing asks whether to run any.
For example, transformers' AutoTokenizer reads config.json first and, on seeing our code's auto_map at a
terminal, asks. Only models with options Llama lacks (a logit soft-cap, BitNet) are saved as `scratch`.
"""

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from safetensors import SafetensorError
from torch.distributed.checkpoint import HuggingFaceStorageReader
from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, LlamaForCausalLM, set_seed

from ..disk import publish, staging
from ..errors import ScratchError, one_line
from ..tokenization import IM_END, check_tokenizer_fits, load_tokenizer
from . import ScratchConfig, ScratchForCausalLM, attention
from .bitnet import is_packed, load_packed, save_packed
from .presets import build_config

FORMATS = ("auto", "scratch", "llama", "bitnet-packed")


def load_for_evaluation(model_dir: str | Path, with_tokenizer: bool = True, device=None):
    """(model, tokenizer) ready to evaluate (a model directory or a training checkpoint): on a GPU in bf16
    (every attention backend takes it), on a CPU in fp32; says which, since the numbers differ a little."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    model, tokenizer = load_model_from(model_dir, with_tokenizer=with_tokenizer)
    model = model.to(device, dtype).eval()
    print(f"scratchlm: {model_dir} on {device.type} in {str(dtype).removeprefix('torch.')}", file=sys.stderr)
    return model, tokenizer


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
    config._attn_implementation = attention.choose()
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
            str(model_dir), dtype=dtype, attn_implementation=attention.FALLBACK
        )
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        raise ScratchError(f"cannot load the model in {model_dir}: {one_line(err)}") from None
    return model, tokenizer


def save_model(model, tokenizer, out_dir: str | Path, format: str = "auto") -> Path:
    """Write `model` (+ tokenizer and generation config) as a self-contained checkpoint."""
    if format not in FORMATS:
        raise ScratchError(f"unknown export format '{format}'; choose one of {', '.join(FORMATS)}")
    format = resolved_format(format, model.config)
    if format == "llama":
        model = as_stock_llama(model)
    elif format == "scratch":
        model = as_scratch(model)
    out_dir = Path(out_dir)
    if tokenizer is not None:
        model.generation_config = generation_config(tokenizer)
        tokenizer.model_max_length = model.config.max_position_embeddings
        tokenizer.save_pretrained(str(out_dir))
    if format == "bitnet-packed":
        sizes = save_packed(model, out_dir)
        packed, full = sizes["packed_bytes"] / 1e6, sizes["full_precision_bytes"] / 1e6
        print(f"bitnet-packed: {packed:.2f} MB on disk against {full:.2f} MB of full-precision weights")
        return out_dir
    model.save_pretrained(str(out_dir))
    return out_dir


def resolved_format(format: str, config) -> str:
    """`auto` made definite: llama when the model can be one, else scratch."""
    if format != "auto":
        return format
    return "scratch" if isinstance(config, ScratchConfig) and config.llama_incompatibilities() else "llama"


def as_stock_llama(model: ScratchForCausalLM) -> LlamaForCausalLM:
    """The same weights under `model_type: llama`, loadable with no remote code at all."""
    config = model.config
    problems = config.llama_incompatibilities() if isinstance(config, ScratchConfig) else []
    if problems:
        raise ScratchError(
            f"cannot export as llama: the model uses {', '.join(problems)}, which stock Llama lacks; "
            "export with --format scratch (loads with trust_remote_code=True)"
        )
    llama_keys = set(LlamaConfig.__dataclass_fields__) | {"training_seq_len", "training_stage"}  # `eval bpb`, `chat`
    values = {k: v for k, v in config.to_dict().items() if k in llama_keys}
    llama_config = LlamaConfig(**values)
    with torch.device("meta"):
        llama = LlamaForCausalLM(llama_config)
    llama.load_state_dict(model.state_dict(), assign=True, strict=True)
    llama.tie_weights()
    llama.generation_config = model.generation_config
    return llama.to(model.dtype)


def scratch_config(values: dict, where: str = "model config") -> ScratchConfig:
    """A saved model config as ours: the keys ScratchConfig has (a stock llama config also names its model_type,
    architectures, ...; `__dataclass_fields__` would count the class's model_type too, dataclasses.fields not)."""
    known = {f.name for f in dataclasses.fields(ScratchConfig)}
    return build_config({k: v for k, v in values.items() if k in known}, where=where)


def as_scratch(model) -> ScratchForCausalLM:
    """A stock llama model as our class, with the same weights: for midtraining and `--format scratch`."""
    if isinstance(model, ScratchForCausalLM):
        return model
    config = scratch_config(model.config.to_dict())
    for name in ("training_seq_len", "training_stage"):  # what `eval bpb` and `chat` read, kept
        if hasattr(model.config, name):
            setattr(config, name, getattr(model.config, name))
    ours = ScratchForCausalLM(config)
    ours.load_state_dict(model.state_dict())
    ours.generation_config = model.generation_config
    return ours.to(model.dtype)


def generation_config(tokenizer) -> GenerationConfig:
    """Stop at the end of a document or of an assistant turn; pad with the pad token."""
    stop = [tokenizer.eos_token_id]
    if IM_END in tokenizer.get_vocab():
        stop.append(tokenizer.convert_tokens_to_ids(IM_END))
    return GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=stop, pad_token_id=tokenizer.pad_token_id)


def load_model_from(path: str | Path, with_tokenizer: bool = True):
    """(model, tokenizer) from an exported model directory or a training checkpoint (run_dir.py's layout)."""
    path = Path(path)
    if not (path / "COMPLETE").is_file():
        return load_model(path, with_tokenizer=with_tokenizer)
    model = ScratchForCausalLM(ScratchConfig.from_pretrained(str(path)))
    state = model.state_dict()
    read_checkpoint_tensors(path / "model", state)
    model.load_state_dict(state)
    return model, load_tokenizer(path / "tokenizer") if with_tokenizer else None


def read_checkpoint_tensors(folder: Path, template: dict, aliases: dict | None = None) -> None:
    """Fill `template` (name -> tensor, sharded or not) from a checkpoint's safetensors folder, written by
    torch.distributed.checkpoint; `aliases` (names that share a tensor: a tied head) come from the folder."""
    aliases = aliases if aliases is not None else json.loads((folder / "aliases.json").read_text())
    wanted = {k: v for k, v in template.items() if k not in aliases}
    try:
        dcp.load(wanted, storage_reader=HuggingFaceStorageReader(str(folder)))
    except (Exception, dcp.api.CheckpointException) as err:  # noqa: BLE001 - DCP's own error is a BaseException
        raise ScratchError(f"cannot read {folder}: {one_line(err, last=True)}") from None
    template.update(wanted)
    for alias, original in aliases.items():
        template[alias] = template[original]


def export_model(model, model_config, tokenizer, out_dir: str | Path, format: str, main: bool) -> Path:
    """A trained (possibly FSDP-sharded) model as a self-contained directory, written whole then renamed.
    Collective under FSDP: every rank calls it, rank 0 writes."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    target = Path(out_dir)
    if main:
        with torch.device("meta"):
            plain = ScratchForCausalLM(model_config)
        plain.load_state_dict(full, assign=True)
        plain.tie_weights()
        staged = staging(target)
        shutil.rmtree(staged, ignore_errors=True)
        save_model(plain, tokenizer, staged, format)
        publish(staged, target)
    return target
