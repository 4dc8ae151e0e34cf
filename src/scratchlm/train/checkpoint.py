"""Training checkpoints: complete, atomic, sharded under FSDP, never pickled; and the Checkpointer that
decides when to write them, which to keep and which to resume from.

    runs/<name>/<stage>/checkpoints/step_00001000/
        model/            weights: safetensors written by torch.distributed.checkpoint (each rank its shard)
        optimizer/        the optimizer's state (AdamW's moments; Muon's momentum), same format;
                          param_groups.json holds the non-tensor part and the optimizer's name
        tokenizer/        the tokenizer the run trains with
        config.json       the model config (with our code beside it)
        trainer_state.json   every component's state (train_state, loader), and the plan, schedule, config
        rng/rank_00000.json  every rank's RNG states
        COMPLETE          written last: the step and every file's size and sha256

A checkpoint is written to `step_X.tmp/`, its files synced, COMPLETE written, then the folder is
renamed: a process killed mid-write leaves nothing a resume would pick (run_dir.py owns what counts
as complete, and deletes by renaming first). Sharded files load into any world size
(torch.distributed.checkpoint reshards on load). On resume the newest checkpoint's checksums are
verified; a damaged one is named, moved aside and the one before it used.
"""

import base64
import errno
import json
import os
import random
import shutil
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import HuggingFaceStorageWriter
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from ..disk import publish, staging
from ..errors import ScratchError, one_line
from ..hub import CheckpointUploader
from ..model.files import read_checkpoint_tensors
from ..run_dir import (
    COMPLETE,
    RunDir,
    checkpoint_files,
    checkpoint_step,
    damaged_files,
    file_digest,
    is_complete,
    write_manifest,
)
from .config import PretrainConfig
from .hardware import describe_hardware
from .optimizer import optimizer_name
from .parallel import World
from .plan import Plan
from .schedule import Schedule

# Saving or loading in one process is intended (CPU runs, export), not a misconfiguration.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")

_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)


class Checkpointer:
    """When to save (save_steps, save_minutes by rank 0's clock, milestones, the schedule's forced steps, the
    end, a stop), what to keep (save_total_limit, milestones, forced steps, what the uploader still reads),
    and where. Built once the run's horizon is final (after a resume and an extension: `restore` below), so
    what it records beside the weights (plan, config, schedule) is the run's. `states` are the run's
    components with state_dict()/load_state_dict() (the train state, the loader); `uploader` sends each
    checkpoint to the Hub (rank 0, push_to_hub)."""

    def __init__(
        self,
        *,
        run: RunDir,
        config: PretrainConfig,
        world: World,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        model_config: PretrainedConfig,
        tokenizer: PreTrainedTokenizerBase,
        states: dict,
        plan: Plan,
        schedule: Schedule,
        uploader: CheckpointUploader | None = None,
    ):
        self.run, self.config, self.world = run, config, world
        self.model, self.optimizer = model, optimizer
        self.model_config, self.tokenizer = model_config, tokenizer
        self.states = states
        self.record = {"plan": plan.as_dict(), "config": asdict(config), "schedule": asdict(schedule),
                       "hardware": describe_hardware(world.size)}  # plan.json's is the latest session's  # fmt: skip
        self.forced: set[int] = set(config.milestones) | schedule.forced_checkpoints()
        self.uploader = uploader
        self._last_save = time.perf_counter()

    # --- save -------------------------------------------------------------------------------------

    def maybe_save(self, step: int, done: bool, stopping: bool) -> Path | None:
        """Called once per step, by every rank (saving is collective)."""
        config = self.config
        timed = bool(config.save_minutes) and self._agree(
            time.perf_counter() - self._last_save >= 60 * config.save_minutes
        )
        for reason, due in (
            ("end", done),
            ("forced", step in self.forced),
            ("stop", stopping),
            ("timed", timed),
            ("interval", bool(config.save_steps) and step % config.save_steps == 0),
        ):
            if due:
                return self.save(step, reason)
        return None

    def save(self, step: int, reason: str) -> Path:
        path = self.run.checkpoint(step)
        trainer_state = {
            "step": step,
            "states": {name: component.state_dict() for name, component in self.states.items()},
            **self.record,
            "reason": reason,
        }
        save_checkpoint(path, self.model, self.optimizer, trainer_state, self.model_config, self.tokenizer,
                        last_good=self.latest())  # fmt: skip
        self._last_save = time.perf_counter()
        if self.world.main:
            keep = self.forced
            if self.uploader:
                self.uploader.submit(path, path.name)
                keep = keep | {checkpoint_step(p) for p in self.uploader.busy_folders()}  # not deleted under upload
            prune_checkpoints(self.run, self.config.save_total_limit, keep)
        return path

    def latest(self) -> Path | None:
        return self.run.latest_checkpoint()

    def _agree(self, flag: bool) -> bool:
        """Rank 0's clock decides time-based saves for everyone (the save is collective)."""
        return bool(self.world.broadcast(flag))


def restore(path: Path, model, optimizer, states: dict, reset_optimizer: bool = False) -> dict:
    """Restore model, optimizer, RNG and every component of `states` (as the Checkpointer names them) from a
    checkpoint; returns its trainer state (the plan, schedule and config it was saved with among it)."""
    saved = load_checkpoint(path, model, optimizer, reset_optimizer)
    saved_states = saved.get("states") or {"train_state": saved["state"], "loader": saved["loader"]}  # older format
    for name, component in states.items():
        component.load_state_dict(saved_states[name])
    return saved


def resume_point(run: RunDir, world: World) -> Path | None:
    """The newest intact checkpoint, chosen by rank 0 for every rank (ranks that listed folders on their
    own could disagree, and then wait for each other forever)."""
    chosen = None
    if world.main:
        run.remove_unfinished()
        chosen = newest_intact(run)
    chosen = world.broadcast(str(chosen) if chosen else None)
    unseen = world.sum([0.0 if chosen is None or is_complete(Path(chosen)) else 1.0])[0]
    if unseen:
        raise ScratchError(
            f"{chosen} is not visible (complete) on {int(unseen)} process(es): every node must see the same "
            "output_dir; multi-node runs need a shared filesystem"
        )
    return Path(chosen) if chosen else None


def newest_intact(run: RunDir) -> Path | None:
    """The newest finished checkpoint whose files match their manifest. Damaged ones newer than it are named
    and moved aside (kept, not deleted); when none is intact the run is refused rather than started over."""
    sealed = run.sealed_checkpoints()
    damaged = {}
    for path in reversed(sealed):
        damaged[path] = damaged_files(path)
        if not damaged[path]:
            break
    else:
        if damaged:
            listing = "; ".join(f"{p.name}: {', '.join(files[:3])}" for p, files in damaged.items())
            raise ScratchError(
                f"every checkpoint in {run.checkpoints} is damaged (files that differ from their COMPLETE manifest: "
                f"{listing}); move them away to start over, or restore them"
            )
        return None
    for path, files in damaged.items():
        if files:
            aside = path.with_name(path.name + ".damaged")
            os.replace(path, aside)
            print(
                f"warning: checkpoint {path} is damaged ({', '.join(files[:3])} differ from its COMPLETE manifest); "
                f"moved aside to {aside.name}; resuming from the checkpoint before it"
            )
    return path


def prune_checkpoints(run: RunDir, keep_last: int, keep_steps: set[int]) -> list[Path]:
    """Delete complete checkpoints beyond the newest `keep_last`, except `keep_steps` (rank 0 only)."""
    found = run.complete_checkpoints()
    doomed = [p for p in found[:-keep_last] if checkpoint_step(p) not in keep_steps] if keep_last else []
    for path in doomed:
        run.delete_checkpoint(path)
    return doomed


# --- writing ---------------------------------------------------------------------------------------


def save_checkpoint(path: Path, model, optimizer, trainer_state: dict, model_config, tokenizer, last_good=None):
    """Collective: every rank calls it. `model` is the unwrapped module (FSDP-sharded or not). A write that
    fails (a full disk) removes what it wrote and names the last good checkpoint, which it never touched."""
    path = Path(path)
    tmp = staging(path)
    rank = dist.get_rank() if dist.is_initialized() else 0
    try:
        _write(tmp, rank, model, optimizer, trainer_state, model_config, tokenizer)
    except (OSError, dcp.api.CheckpointException) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        no_space = isinstance(err, OSError) and err.errno == errno.ENOSPC or "No space left" in str(err)
        why = "no space left on the device" if no_space else one_line(err, last=True)
        raise ScratchError(
            f"cannot write checkpoint {path.name} in {path.parent}: {why}; the last good checkpoint is "
            f"{last_good or 'none yet'} (intact)"
        ) from None
    if rank == 0:
        publish(tmp, path)  # over a complete checkpoint of the same step too (a re-run after a crash)
        _fsync(path.parent)
    _barrier()


def _write(tmp: Path, rank: int, model, optimizer, trainer_state, model_config, tokenizer) -> None:
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
        meta = {"optimizer": optimizer_name(optimizer), "groups": groups, "aliases": optim_aliases}
        _write_json(tmp / "optimizer" / "param_groups.json", meta)
        _write_json(tmp / "trainer_state.json", trainer_state)
        model_config.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
    _barrier()
    # Every rank hashes a share of the files (all of them on rank 0's disk: a shared filesystem).
    world_size = dist.get_world_size() if distributed else 1
    names = checkpoint_files(tmp)
    digests = {name: file_digest(tmp / name) for name in names[rank::world_size]}
    if distributed:
        gathered = [None] * world_size
        dist.all_gather_object(gathered, digests)
        digests = {k: v for part in gathered for k, v in part.items()}
    if rank == 0:
        _sync_tree(tmp)
        write_manifest(tmp, trainer_state["step"], digests)
        _sync_tree(tmp)
    _barrier()


# --- loading ---------------------------------------------------------------------------------------


def load_checkpoint(path: Path, model, optimizer=None, reset_optimizer: bool = False) -> dict:
    """Restore weights (and optimizer moments, and this rank's RNG); return the trainer state.

    A checkpoint without optimizer state is refused unless `reset_optimizer`: resuming with fresh
    AdamW moments looks healthy for a while and then diverges (Genesis 1B's "false recovery").
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
    if optimizer is not None and has_optimizer:
        has_optimizer = _same_optimizer(path, optimizer, reset_optimizer)
    model_state = get_model_state_dict(model)
    read_checkpoint_tensors(path / "model", model_state)
    set_model_state_dict(model, model_state)
    if optimizer is not None and has_optimizer:
        optim_state = get_optimizer_state_dict(model, optimizer, options=_OPTIONS)
        tensors = {k: v for k, v in optim_state.items() if torch.is_tensor(v)}
        meta = json.loads((path / "optimizer" / "param_groups.json").read_text())
        read_checkpoint_tensors(path / "optimizer", tensors, meta["aliases"])
        set_optimizer_state_dict(model, optimizer, {**tensors, **meta["groups"]}, options=_OPTIONS)
    rank = dist.get_rank() if dist.is_initialized() else 0
    rng_file = path / "rng" / f"rank_{rank:05d}.json"
    if rng_file.is_file():  # a rank that did not exist in the saved run keeps its fresh seed
        _set_rng_state(json.loads(rng_file.read_text()))
    return trainer_state(path)


def trainer_state(path: Path) -> dict:
    """A checkpoint's step, components' states, and the plan, schedule and config it was trained with."""
    return json.loads((Path(path) / "trainer_state.json").read_text())


def _same_optimizer(path: Path, optimizer, reset_optimizer: bool) -> bool:
    """Whether the saved state is this optimizer's; another's is refused, or left unread when `reset_optimizer`
    (AdamW's moments mean nothing to Muon and back). Checkpoints from before the name was saved hold AdamW's."""
    saved = json.loads((path / "optimizer" / "param_groups.json").read_text()).get("optimizer", "adamw")
    ours = optimizer_name(optimizer)
    if saved != ours and not reset_optimizer:
        raise ScratchError(
            f"{path} holds {saved} optimizer state and this run's optimizer is {ours}; set optimizer: {saved} to "
            f"continue it, or pass --reset_optimizer true to start {ours}'s state from zero"
        )
    return saved == ours


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
