"""Training checkpoints: complete, atomic, sharded under FSDP, and never pickled.

    runs/<name>/checkpoints/step_00001000/
        model/            weights: safetensors written by torch.distributed.checkpoint (each rank its shard)
        optimizer/        AdamW moments, same format; param_groups.json holds the non-tensor part
        tokenizer/        the tokenizer the run trains with
        config.json       the model config (with our code beside it)
        trainer_state.json   step, tokens, loader position, wall time, cost, plan, schedule, config
        rng/rank_00000.json  every rank's RNG states
        COMPLETE          written last

A checkpoint is written to `step_X.tmp/`, its files synced, COMPLETE written, then the folder is
renamed; resume only considers `step_X/` folders holding COMPLETE, so a process killed mid-write
leaves nothing a resume would pick. Older checkpoints are deleted only after a newer one is complete.
Sharded files load into any world size (torch.distributed.checkpoint reshards on load).
"""

import base64
import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import HuggingFaceStorageReader, HuggingFaceStorageWriter
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor

from ..errors import ScratchError
from ..model import ScratchConfig, ScratchForCausalLM
from ..model.files import load_model
from ..tokenization import load_tokenizer

# Saving or loading in one process is intended (CPU runs, export), not a misconfiguration.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")

COMPLETE = "COMPLETE"
_NAME = re.compile(r"^step_(\d{8})$")
_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:08d}"


def complete_checkpoints(run_dir: Path) -> list[Path]:
    folder = Path(run_dir) / "checkpoints"
    found = [p for p in folder.iterdir() if _NAME.match(p.name) and (p / COMPLETE).is_file()] if folder.is_dir() else []
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def checkpoint_step(path: Path) -> int:
    return int(_NAME.match(Path(path).name).group(1))


# --- saving ----------------------------------------------------------------------------------------


def save_checkpoint(path: Path, model, optimizer, trainer_state: dict, model_config, tokenizer) -> None:
    """Collective: every rank calls it. `model` is the unwrapped module (FSDP-sharded or not)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    model_state, optim_state = get_state_dict(model, optimizer, options=_OPTIONS)
    model_tensors, model_aliases = _unique_tensors(model_state)
    optim_tensors, optim_aliases = _unique_tensors({k: v for k, v in optim_state.items() if torch.is_tensor(v)})
    distributed = dist.is_initialized()
    dcp.save(model_tensors, storage_writer=HuggingFaceStorageWriter(str(tmp / "model"), save_distributed=distributed))
    dcp.save(
        optim_tensors, storage_writer=HuggingFaceStorageWriter(str(tmp / "optimizer"), save_distributed=distributed)
    )
    (tmp / "rng").mkdir(exist_ok=True)
    _write_json(tmp / "rng" / f"rank_{rank:05d}.json", _rng_state())
    if rank == 0:
        _write_json(tmp / "model" / "aliases.json", model_aliases)
        groups = {k: v for k, v in optim_state.items() if not torch.is_tensor(v)}
        _write_json(tmp / "optimizer" / "param_groups.json", {"groups": groups, "aliases": optim_aliases})
        _write_json(tmp / "trainer_state.json", trainer_state)
        model_config.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
    _barrier()
    if rank == 0:
        _sync_tree(tmp)
        _write_json(tmp / COMPLETE, {"step": trainer_state["step"]})
        _sync_tree(tmp)
        if path.exists():  # a complete checkpoint of the same step (a re-run after a crash): replace it
            shutil.rmtree(path)
        os.replace(tmp, path)
        _fsync(path.parent)
    _barrier()


def prune_checkpoints(run_dir: Path, keep_last: int, keep_steps: set[int]) -> list[Path]:
    """Delete complete checkpoints beyond the newest `keep_last`, except `keep_steps` (rank 0 only)."""
    found = complete_checkpoints(run_dir)
    doomed = [p for p in found[:-keep_last] if checkpoint_step(p) not in keep_steps] if keep_last else []
    for p in doomed:
        shutil.rmtree(p)
    return doomed


def remove_partial_checkpoints(run_dir: Path) -> None:
    folder = Path(run_dir) / "checkpoints"
    if folder.is_dir():
        for p in folder.glob("step_*.tmp"):
            shutil.rmtree(p, ignore_errors=True)


# --- loading ---------------------------------------------------------------------------------------


def load_checkpoint(path: Path, model, optimizer=None, reset_optimizer: bool = False) -> dict:
    """Restore weights (and optimizer moments, and this rank's RNG); return the trainer state.

    A checkpoint without optimizer state is refused unless `reset_optimizer`: resuming with fresh
    AdamW moments looks healthy for a while and then diverges (the seeds' "false recovery").
    """
    path = Path(path)
    if not (path / COMPLETE).is_file():
        raise ScratchError(f"{path} is not a complete checkpoint (no {COMPLETE} marker)")
    has_optimizer = (path / "optimizer" / "param_groups.json").is_file()
    if optimizer is not None and not has_optimizer and not reset_optimizer:
        raise ScratchError(
            f"{path} has no optimizer state; resuming with fresh AdamW moments silently degrades training. "
            "Pass --reset_optimizer true to continue anyway (the moments restart from zero)"
        )
    model_state = get_model_state_dict(model)
    _load_tensors(path / "model", model_state)
    set_model_state_dict(model, model_state)
    if optimizer is not None and has_optimizer:
        optim_state = get_optimizer_state_dict(model, optimizer, options=_OPTIONS)
        tensors = {k: v for k, v in optim_state.items() if torch.is_tensor(v)}
        meta = json.loads((path / "optimizer" / "param_groups.json").read_text())
        _load_tensors(path / "optimizer", tensors, meta["aliases"])
        set_optimizer_state_dict(model, optimizer, {**tensors, **meta["groups"]}, options=_OPTIONS)
    rank = dist.get_rank() if dist.is_initialized() else 0
    rng_file = path / "rng" / f"rank_{rank:05d}.json"
    if rng_file.is_file():  # a rank that did not exist in the saved run keeps its fresh seed
        _set_rng_state(json.loads(rng_file.read_text()))
    return json.loads((path / "trainer_state.json").read_text())


def load_model_from(path: str | Path, with_tokenizer: bool = True):
    """(model, tokenizer) from an exported model directory or a training checkpoint."""
    path = Path(path)
    if not (path / COMPLETE).is_file():
        return load_model(path, with_tokenizer=with_tokenizer)
    model = ScratchForCausalLM(ScratchConfig.from_pretrained(str(path)))
    state = model.state_dict()
    _load_tensors(path / "model", state)
    model.load_state_dict(state)
    return model, load_tokenizer(path / "tokenizer") if with_tokenizer else None


def _load_tensors(folder: Path, template: dict, aliases: dict | None = None) -> None:
    aliases = aliases if aliases is not None else json.loads((folder / "aliases.json").read_text())
    wanted = {k: v for k, v in template.items() if k not in aliases}
    try:
        dcp.load(wanted, storage_reader=HuggingFaceStorageReader(str(folder)))
    except Exception as err:  # noqa: BLE001 - DCP wraps every failure in its own exception types
        raise ScratchError(f"cannot read {folder}: {str(err).strip().splitlines()[-1][:300]}") from None
    template.update(wanted)
    for alias, original in aliases.items():
        template[alias] = template[original]


# --- helpers ---------------------------------------------------------------------------------------


def _unique_tensors(state: dict) -> tuple[dict, dict]:
    """Safetensors cannot hold two names for one storage (tied embeddings): keep one, record the alias."""
    unique, aliases, seen = {}, {}, {}
    for name, tensor in state.items():
        local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
        key = (local.untyped_storage().data_ptr(), local.storage_offset(), tuple(local.shape))
        if key in seen and local.numel() > 0:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            unique[name] = tensor
    return unique, aliases


def _rng_state() -> dict:
    state = {"python": random.getstate(), "torch": base64.b64encode(torch.get_rng_state().numpy()).decode()}
    if torch.cuda.is_available():
        state["cuda"] = [base64.b64encode(s.numpy()).decode() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch"])), dtype=torch.uint8))
    if torch.cuda.is_available() and "cuda" in state:
        cuda = [torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8) for s in state["cuda"]]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=1))


def _sync_tree(root: Path) -> None:
    for p in sorted(root.rglob("*")):
        if p.is_file():
            _fsync(p)
    for p in sorted((d for d in root.rglob("*") if d.is_dir()), reverse=True):
        _fsync(p)
    _fsync(root)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
