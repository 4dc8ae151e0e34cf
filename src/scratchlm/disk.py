"""Files written whole or not at all, and JSON-lines files read whole.

Everything that must never be seen half-written (a checkpoint, an export, prepared shards, a run's plan and
logs rewritten on resume) is written under a staging name beside its place and then renamed onto it: a
rename within a filesystem is atomic, so a reader, or a process killed mid-write, finds the old or the new,
never a part. Staging names end in STAGING (run_dir.py clears what a killed process left there) unless
they say more (prepared shards are staged as OUT.partial).
"""

import json
import os
import shutil
from pathlib import Path

from .errors import ScratchError

STAGING = ".tmp"


def staging(path: Path, suffix: str = STAGING) -> Path:
    """Where `path` is written before it is published."""
    return path.with_name(path.name + suffix)


def publish(staged: Path, path: Path) -> None:
    """`staged`, written whole, takes the place of `path` in one rename; a directory already there (the same
    step written again after a crash, an export made again) is removed first."""
    if staged.is_dir() and path.is_dir():
        shutil.rmtree(path)
    os.replace(staged, path)


def write_atomically(path: Path, text: str) -> None:
    tmp = staging(path)
    tmp.write_text(text)
    publish(tmp, path)


def read_rows(path: str | Path, required: tuple[str, ...]) -> list[dict]:
    """The rows of a JSON-lines file a user gives (evaluation data, probes), each a JSON object, the first
    with every `required` key; a missing, empty or malformed file is a ScratchError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ScratchError(f"{path}: no such file")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ScratchError(f"{path}, line {number}: not JSON ({err.msg})") from None
            if not isinstance(rows[-1], dict):
                raise ScratchError(f"{path}, line {number}: not a JSON object")
    if not rows:
        raise ScratchError(f"{path} is empty")
    missing = [key for key in required if key not in rows[0]]
    if missing:
        raise ScratchError(f"{path} has no {', '.join(missing)} (columns: {', '.join(rows[0])})")
    return rows
