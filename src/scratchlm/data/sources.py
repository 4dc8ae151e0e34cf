"""Where text comes from: local files (parquet, jsonl/json, txt, optionally compressed), datasets
saved with `save_to_disk`, and Hub datasets by name/config/split (streamed).

Every source is read through `datasets` as a stream of rows, and every problem with one (missing,
empty, no such column, not UTF-8) is reported with the source's name before any work is done on it.
"""

import glob
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets

from ..errors import ScratchError

BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".txt": "text", ".md": "text"}
COMPRESSIONS = (".gz", ".zst", ".bz2", ".xz")


@dataclass
class Source:
    path: str  # a local file, directory or glob; a save_to_disk directory; or a Hub dataset id
    name: str = ""  # a label for shards and reports; defaults to the file or dataset name
    config: str | None = None  # Hub dataset config
    split: str = "train"
    format: str = "text"  # "text": a text column; "chat": a messages column rendered by the chat template
    column: str = ""  # defaults to "text" or "messages" by format
    weight: float = 1.0  # share of training windows drawn from this source (normalised over sources)
    max_documents: int | None = None  # stop after this many (a slice of a large Hub dataset)

    def __post_init__(self):
        if self.format not in ("text", "chat"):
            raise ScratchError(f"source '{self.path}': format must be 'text' or 'chat', not '{self.format}'")
        self.column = self.column or ("messages" if self.format == "chat" else "text")
        self.name = self.name or Path(self.path.rstrip("/")).name.split(".")[0].replace("*", "all")
        if not self.weight > 0:
            raise ScratchError(f"source '{self.name}': weight must be positive, not {self.weight}")

    @classmethod
    def parse(cls, spec: str, column: str = "text") -> "Source":
        """Command-line form: a local path, or `owner/dataset[:config][@split]` on the Hub."""
        if Path(spec).exists() or any(ch in spec for ch in "*?["):
            return cls(path=spec, column=column)
        path, _, split = spec.partition("@")
        path, _, config = path.partition(":")
        return cls(path=path, config=config or None, split=split or "train", column=column)

    def __str__(self) -> str:
        return self.path + (f":{self.config}" if self.config else "")

    def rows(self) -> datasets.IterableDataset:
        local = Path(self.path)
        if (local / "state.json").is_file() or (local / "dataset_dict.json").is_file():
            saved = datasets.load_from_disk(str(local))
            if isinstance(saved, datasets.DatasetDict):
                saved = saved[self.split]
            return saved.to_iterable_dataset()
        try:
            if local.exists() or any(ch in self.path for ch in "*?["):
                files = _local_files(self.path)
                if not files:
                    raise ScratchError(f"source '{self}' has no files of a known type ({', '.join(BUILDERS)})")
                builder = _builder_for(files, self)
                kwargs = {"sample_by": "document"} if builder == "text" else {}
                return datasets.load_dataset(builder, data_files=files, split="train", streaming=True, **kwargs)
            if self.path.startswith((".", "/", "~")) or _suffix(local) in BUILDERS:
                raise ScratchError(f"source '{self}': no such file or directory")
            return datasets.load_dataset(self.path, self.config, split=self.split, streaming=True)
        except StopIteration:  # raised while inferring the columns of an empty file
            raise ScratchError(f"source '{self}' is empty") from None
        except (ConnectionError, FileNotFoundError, datasets.exceptions.DatasetNotFoundError, ValueError) as err:
            raise ScratchError(f"source '{self}' could not be opened: {_one_line(err)}") from None

    def check(self) -> None:
        """Fail now, naming this source, if it cannot give even one value (before hours of work)."""
        first = next(iter(self.values()))
        if self.format == "chat":
            check_conversation(first, self)

    def values(self) -> Iterator:
        """Each row's non-empty `column` value, up to max_documents; the column is checked on the first row."""
        yielded = 0
        try:
            for index, row in enumerate(self.rows()):
                if index == 0 and self.column not in row:
                    raise ScratchError(
                        f"source '{self}' has no column '{self.column}' (columns: {', '.join(row)}); set column"
                    )
                if value := row[self.column]:
                    yielded += 1
                    yield value
                    if yielded == self.max_documents:
                        return
        except UnicodeDecodeError as err:
            raise ScratchError(f"source '{self}' is not UTF-8 text: {err}") from None
        if yielded == 0:
            raise ScratchError(f"source '{self}' is empty")


def check_conversation(messages, source: Source) -> None:
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages
    ):
        raise ScratchError(f"source '{source}': each conversation must be a list of {{role, content}} messages")


def _local_files(pattern: str) -> list[str]:
    """A file, every readable file under a directory, or what a glob matches."""
    path = Path(pattern)
    if path.is_file():
        return [pattern]
    candidates = path.rglob("*") if path.is_dir() else map(Path, glob.glob(pattern, recursive=True))
    return sorted(str(p) for p in candidates if p.is_file() and _suffix(p) in BUILDERS)


def _suffix(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s not in COMPRESSIONS]
    return suffixes[-1].lower() if suffixes else ""


def _builder_for(files: list[str], source: Source) -> str:
    kinds = {BUILDERS.get(_suffix(Path(f))) for f in files}
    if None in kinds:
        bad = next(f for f in files if _suffix(Path(f)) not in BUILDERS)
        raise ScratchError(f"source '{source}': cannot read '{bad}' (known: {', '.join(BUILDERS)})")
    if len(kinds) > 1:
        raise ScratchError(f"source '{source}' mixes file types ({', '.join(sorted(kinds))}); split it")
    return kinds.pop()


def _one_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
