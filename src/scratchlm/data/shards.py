"""Open prepared token shards: the manifest, one memmap per source and split, the tokenizer check."""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ScratchError
from ..tokenization import tokenizer_hash

MANIFEST_VERSION = 1  # of manifest.json, which prepare.py writes


@dataclass
class SourceTokens:
    name: str
    weight: float
    train: np.ndarray
    val: np.ndarray


class TokenShards:
    def __init__(self, path: str | Path, tokenizer=None):
        self.path = Path(path)
        manifest_path = self.path / "manifest.json"
        if not manifest_path.is_file():
            raise ScratchError(f"{self.path} holds no prepared shards (no manifest.json); run `scratchlm data prepare`")
        try:
            self.manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as err:
            raise ScratchError(f"{manifest_path} is corrupt: {err}") from None
        if self.manifest.get("version") != MANIFEST_VERSION:
            raise ScratchError(
                f"{manifest_path} has format version {self.manifest.get('version')}, "
                f"this scratchlm reads version {MANIFEST_VERSION}; prepare the data again"
            )
        if tokenizer is not None and tokenizer_hash(tokenizer) != self.manifest["tokenizer_hash"]:
            raise ScratchError(
                f"shards in {self.path} were made with another tokenizer ({self.manifest['tokenizer_path']}, "
                f"hash {self.manifest['tokenizer_hash']}) than this run's (hash {tokenizer_hash(tokenizer)}); "
                "prepare the data with this tokenizer"
            )
        dtype = np.dtype(self.manifest["dtype"])
        self.sources = [
            SourceTokens(s["name"], s["weight"], *(self._open(s, split, dtype) for split in ("train", "val")))
            for s in self.manifest["sources"]
        ]
        self.bos_id = self.manifest["bos_id"]
        self.config_hash = self.manifest["config_hash"]

    def _open(self, source: dict, split: str, dtype: np.dtype) -> np.ndarray:
        path = self.path / source["name"] / f"{split}.bin"
        expected = source[split]["tokens"] * dtype.itemsize
        if not path.is_file() or path.stat().st_size != expected:
            size = path.stat().st_size if path.is_file() else "missing"
            raise ScratchError(f"{path} is damaged: {size} bytes, the manifest says {expected}")
        if expected == 0:
            return np.empty(0, dtype)
        return np.memmap(path, dtype=dtype, mode="r")
