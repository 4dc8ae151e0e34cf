"""The run directory: the one place that knows its layout and its rules. Every command goes through it.

    runs/<name>/<stage>/            one stage of a pipeline: pretrain, midtrain, sft or dpo
        config.yaml                 the configuration as run (pretraining and midtraining)
        plan.json                   stage, horizon, batch, parameters, FLOPs, hardware
        metrics.jsonl               one JSON record per line: training logs and evaluations, by step
        samples.jsonl               generations of the sample prompts, by step
        checkpoints/step_XXXXXXXX/  our checkpoints (pretraining, midtraining): see train/checkpoint.py
        checkpoint-N/               TRL's checkpoints (SFT, DPO)
        export/                     the final model as a self-contained Hugging Face directory
        evals/NAME.json             `scratchlm eval ... --out` results the report reads
        plots/                      loss and bits-per-byte curves
        .lock                       held by the process training in it (pid and host inside)

The rules:
- A checkpoint of ours is complete when its COMPLETE manifest exists and every file it lists is
  there with its size (cheap, for listings); `verify` also compares checksums (on resume).
  Anything else under checkpoints/ (a `.tmp` being written, a `.deleting` being removed) is not a
  checkpoint, and deletion renames first, so a kill never leaves a half-deleted checkpoint that
  still looks complete.
- A TRL checkpoint is complete when it holds trainer_state.json (the last file TRL writes).
- Records (metrics, samples) are appended as they happen; a resumed run first drops the records of
  steps after the checkpoint it resumes from, so every step is recorded exactly once.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path

from .disk import STAGING, write_atomically
from .errors import ScratchError

STAGES = ("pretrain", "midtrain", "sft", "dpo")  # in pipeline order; recipes name each stage's folder after it
COMPLETE = "COMPLETE"
_OURS = re.compile(r"^step_(\d{8})$")
_TRL = re.compile(r"^checkpoint-(\d+)$")
_HASH_CHUNK = 1 << 24


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # --- paths -------------------------------------------------------------------------------------

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def plan_file(self) -> Path:
        return self.path / "plan.json"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def samples_file(self) -> Path:
        return self.path / "samples.jsonl"

    @property
    def export(self) -> Path:
        return self.path / "export"

    @property
    def evals(self) -> Path:
        return self.path / "evals"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def has_export(self) -> bool:
        return (self.export / "config.json").is_file()

    # --- our checkpoints ---------------------------------------------------------------------------

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step_{step:08d}"

    def complete_checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        return [p for p in self.sealed_checkpoints() if is_complete(p)]

    def sealed_checkpoints(self) -> list[Path]:
        """Checkpoint folders that were finished (they hold COMPLETE), intact or not, oldest first."""
        if not self.checkpoints.is_dir():
            return []
        found = [p for p in self.checkpoints.iterdir() if _OURS.match(p.name) and (p / COMPLETE).is_file()]
        return sorted(found, key=lambda p: p.name)

    def latest_checkpoint(self) -> Path | None:
        found = self.complete_checkpoints()
        return found[-1] if found else None

    def remove_unfinished(self) -> None:
        """What a killed process left under checkpoints/: writes (.tmp) and deletions (.deleting) cut short."""
        if self.checkpoints.is_dir():
            for path in self.checkpoints.iterdir():
                if path.name.endswith((STAGING, ".deleting")):
                    shutil.rmtree(path, ignore_errors=True)

    def delete_checkpoint(self, path: Path) -> None:
        """Rename out of the namespace of checkpoints first (atomic), then delete at leisure."""
        doomed = path.with_name(path.name + ".deleting")
        os.replace(path, doomed)
        shutil.rmtree(doomed)

    # --- TRL's checkpoints -------------------------------------------------------------------------

    def trl_checkpoints(self) -> list[Path]:
        """TRL's complete checkpoint-N folders, by N."""
        found = [
            p for p in self.path.glob("checkpoint-*") if _TRL.match(p.name) and (p / "trainer_state.json").is_file()
        ]
        return sorted(found, key=checkpoint_step)

    def latest_trl_checkpoint(self) -> Path | None:
        found = self.trl_checkpoints()
        return found[-1] if found else None

    # --- plan and records --------------------------------------------------------------------------

    def read_plan(self) -> dict:
        if not self.path.is_dir():
            raise ScratchError(f"{self.path}: no such directory")
        if not self.plan_file.is_file():
            raise ScratchError(f"{self.path} is not a run directory (no plan.json)")
        return json.loads(self.plan_file.read_text())

    def write_plan(self, plan: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomically(self.plan_file, json.dumps(plan, indent=1))

    def metrics(self) -> list[dict]:
        return read_jsonl(self.metrics_file)

    def training_metrics(self) -> list[dict]:
        """Records of training steps (evaluations are records of their own)."""
        return [m for m in self.metrics() if "loss" in m]

    def samples(self) -> list[dict]:
        return read_jsonl(self.samples_file)

    def append_metrics(self, record: dict) -> None:
        _append_jsonl(self.metrics_file, record)

    def append_samples(self, records: list[dict]) -> None:
        for record in records:
            _append_jsonl(self.samples_file, record)

    def write_metrics(self, records: list[dict]) -> None:
        write_atomically(self.metrics_file, "".join(json.dumps(r) + "\n" for r in records))

    def write_samples(self, records: list[dict]) -> None:
        write_atomically(self.samples_file, "".join(json.dumps(r) + "\n" for r in records))

    def drop_records_after(self, step: int) -> None:
        """Resuming at `step`: records of later steps were made by a run that is being redone."""
        for path in (self.metrics_file, self.samples_file):
            rows = read_jsonl(path)
            kept = [r for r in rows if r.get("step", 0) <= step]
            if len(kept) != len(rows):
                write_atomically(path, "".join(json.dumps(r) + "\n" for r in kept))

    def eval_results(self) -> dict[str, dict]:
        """evals/NAME.json by NAME."""
        return {p.stem: json.loads(p.read_text()) for p in sorted(self.evals.glob("*.json"))}

    # --- who is training here ----------------------------------------------------------------------

    @property
    def lock_file(self) -> Path:
        return self.path / ".lock"

    def holder(self) -> dict | None:
        """{pid, host, since} of the process training here, or None when none holds the lock."""
        if not self.lock_file.is_file():
            return None
        with self.lock_file.open("r") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _lock_owner(self.lock_file)
            fcntl.flock(f, fcntl.LOCK_UN)
        return None


class RunLock:
    """An exclusive lock on a run directory for the life of a process: a second run on the same output
    directory is refused at start-up. The kernel releases it when the holder dies, however it dies
    (kill -9 included), so a stale lock is simply taken over."""

    def __init__(self, run: RunDir):
        self.run = run
        self._file = None

    def acquire(self) -> None:
        try:
            self.run.path.mkdir(parents=True, exist_ok=True)
            handle = self.run.lock_file.open("a+")
        except OSError as err:  # a file where the directory should be, a read-only disk, no permission
            raise ScratchError(f"output_dir {self.run.path} is not a usable directory: {err.strerror}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _lock_owner(self.run.lock_file) or {}
            handle.close()
            raise ScratchError(
                f"{self.run.path} is in use by another run (pid {owner.get('pid', '?')} on {owner.get('host', '?')}, "
                f"since {owner.get('since', '?')}); stop it first, or choose another output_dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since}))
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def _lock_owner(path: Path) -> dict | None:
    with contextlib.suppress(OSError, json.JSONDecodeError):
        return json.loads(path.read_text() or "null")
    return None


# --- checkpoint completeness: the COMPLETE manifest ---------------------------------------------------


def checkpoint_step(path: Path) -> int:
    """N of step_0000000N or checkpoint-N."""
    match = _OURS.match(Path(path).name) or _TRL.match(Path(path).name)
    if not match:
        raise ScratchError(f"{path} is not a checkpoint folder (step_XXXXXXXX or checkpoint-N)")
    return int(match.group(1))


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_files(folder: Path) -> list[str]:
    """Every file of a checkpoint being written (relative names, sorted), the manifest aside."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != COMPLETE)


def write_manifest(folder: Path, step: int, digests: dict[str, str]) -> None:
    """COMPLETE, written last: the step and, per file, its size and sha256."""
    files = {name: {"bytes": (folder / name).stat().st_size, "sha256": digests[name]} for name in sorted(digests)}
    (folder / COMPLETE).write_text(json.dumps({"step": step, "files": files}, indent=1))


def read_manifest(folder: Path) -> dict | None:
    """COMPLETE's content; checkpoints of scratchlm 0.1 hold only the step (`files` is then {}: unverifiable)."""
    with contextlib.suppress(OSError, json.JSONDecodeError, UnicodeDecodeError):
        manifest = json.loads((folder / COMPLETE).read_text())
        if isinstance(manifest, dict) and isinstance(manifest.get("files", {}), dict):
            return {"files": {}, **manifest}
    return None


def is_complete(folder: Path) -> bool:
    """Its manifest is readable and every file it lists is there with its size."""
    manifest = read_manifest(folder)
    if manifest is None:
        return False
    for name, meta in manifest["files"].items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != meta["bytes"]:
            return False
    return True


def damaged_files(folder: Path) -> list[str]:
    """Files whose bytes differ from the manifest (a truncated, zeroed or flipped file): [] when intact."""
    manifest = read_manifest(folder)
    if manifest is None:
        return [COMPLETE]
    damaged = []
    for name, meta in manifest["files"].items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != meta["bytes"] or file_digest(path) != meta["sha256"]:
            damaged.append(name)
    return damaged


# --- JSON lines --------------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    rows = []
    for line in Path(path).read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line being written right now
            rows.append(json.loads(line))
    return rows


def _append_jsonl(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
