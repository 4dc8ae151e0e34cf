"""Where text comes from: local files (parquet, jsonl/json, txt/md, Python source; optionally compressed),
folders and globs of them, Hub datasets downloaded with `hf download --local-dir`, datasets saved with
`save_to_disk`, and Hub datasets by name/config/split (streamed).

A local path reads as the Hub would read it, so that no data is trained on that the config did not ask
for, and none twice:
- A downloaded snapshot (a folder whose README.md card has `configs:`) is the Hub id: `config` and `split`
  select files exactly as the card says, through `datasets` itself.
- Any other folder, and a glob, is a dataset of the files it holds (hidden files, README.md and metadata
  files are never data). Files named by split as the Hub names them (train-*, test-*, data/<split>/...)
  are read only for their `split`; `config` names a subfolder. Anything else asked of them is an error.
  A folder of Python files is code, read whole.
- A file is read whole. Text files (.txt, .md, .py) are one document each.
- The files of one source must share their columns, and no two sources may read the same file or the
  same bytes (`check_disjoint`).

Every problem with a source (missing, empty, no such config/split/column, mixed columns, not UTF-8, a
conversation with an unknown role) is reported with the source's name before any work is done on it,
or for a bad row, with its row number (counting from 0, as `dataset[i]` does).
"""

import glob
import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq
import yaml
from datasets.data_files import FILES_TO_IGNORE, DataFilesList, get_data_patterns, resolve_pattern

from ..errors import ScratchError, one_line

BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".txt": "text", ".md": "text", ".py": "text"}
COMPRESSIONS = (".gz", ".zst", ".bz2", ".xz")
ROLES = ("system", "user", "assistant")  # what the chat template renders (it has no tool-call format)


@dataclass
class Source:
    path: str  # a local file, directory or glob; a save_to_disk directory; or a Hub dataset id
    name: str = ""  # a label for shards and reports; defaults to the file or dataset name
    config: str | None = None  # Hub dataset config (also of a downloaded snapshot; a subfolder of a plain folder)
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
        """Command-line form: a path or glob, or `dataset[:config][@split]` (a Hub id or a downloaded snapshot)."""
        if Path(spec).exists() or any(ch in spec for ch in "*?["):
            return cls(path=spec, column=column)
        path, _, split = spec.partition("@")
        path, _, config = path.partition(":")
        return cls(path=path, config=config or None, split=split or "train", column=column)

    def __str__(self) -> str:
        return (
            self.path + (f":{self.config}" if self.config else "") + (f"@{self.split}" if self.split != "train" else "")
        )

    @property
    def is_local(self) -> bool:
        return Path(self.path).exists() or any(ch in self.path for ch in "*?[")

    def rows(self) -> datasets.IterableDataset:
        local = Path(self.path)
        try:
            if _is_saved(local):
                saved = datasets.load_from_disk(str(local))
                if isinstance(saved, datasets.DatasetDict):
                    saved = saved[self.split]
                return saved.to_iterable_dataset()
            if _card_configs(local):  # the downloaded Hub dataset, read as the Hub id is
                return datasets.load_dataset(str(local), self.config, split=self.split, streaming=True)
            if self.is_local:
                files = self.files()
                builder = _builder_for(files, self)
                kwargs = {"sample_by": "document"} if builder == "text" else {}
                return datasets.load_dataset(builder, data_files=files, split="train", streaming=True, **kwargs)
            if self.path.startswith((".", "/", "~")) or _suffix(local) in BUILDERS:
                raise ScratchError(f"source '{self}': no such file or directory")
            return datasets.load_dataset(self.path, self.config, split=self.split, streaming=True)
        except StopIteration:  # raised while inferring the columns of an empty file
            raise ScratchError(f"source '{self}' is empty") from None
        except (ConnectionError, FileNotFoundError, datasets.exceptions.DatasetNotFoundError, ValueError) as err:
            raise ScratchError(f"source '{self}' could not be opened: {one_line(err)}") from None

    def files(self) -> list[str]:
        """The local files this source reads ([] for a Hub id or a saved dataset), config and split applied."""
        local = Path(self.path)
        if not self.is_local or _is_saved(local):
            return []
        if configs := _card_configs(local):
            return self._snapshot_files(local, configs)
        if local.is_file():
            for key, value, default in (("config", self.config, None), ("split", self.split, "train")):
                if value != default:
                    raise ScratchError(f"source '{self}': '{key}' does not apply to a single file (it is read whole)")
            return [str(local)]
        if local.is_dir():
            return self._folder_files(local)
        if self.config:
            raise ScratchError(f"source '{self}': 'config' does not apply to a glob; name the config's files in it")
        paths = glob.glob(self.path, recursive=True)
        matches = sorted(os.path.abspath(f) for f in paths if Path(f).is_file() and _is_data_file(Path(f)))
        if not matches:
            raise ScratchError(f"source '{self}' matches no files of a known type ({', '.join(BUILDERS)})")
        return self._split_of(Path(os.path.commonpath([os.path.dirname(f) for f in matches])), matches)

    def check(self) -> None:
        """Fail now, naming this source, if it cannot give even one value (before hours of work)."""
        _check_same_columns(self.files(), self)
        next(iter(self.values()))

    def values(self) -> Iterator:
        """Each row's non-empty `column` value, up to max_documents; the column is checked on the first row,
        and each conversation of a chat source as it passes."""
        yielded = 0
        try:
            for index, row in enumerate(self.rows()):
                if index == 0 and self.column not in row:
                    raise ScratchError(
                        f"source '{self}' has no column '{self.column}' (columns: {', '.join(row)}); set column"
                    )
                if value := row[self.column]:
                    if self.format == "chat":
                        check_conversation(value, self, index)
                    yielded += 1
                    yield value
                    if yielded == self.max_documents:
                        return
        except UnicodeDecodeError as err:
            raise ScratchError(f"source '{self}' is not UTF-8 text: {err}") from None
        if yielded == 0:
            raise ScratchError(f"source '{self}' is empty")

    # --- resolving local files ---------------------------------------------------------------------

    def _snapshot_files(self, root: Path, configs: list[str]) -> list[str]:
        if self.config is None and len(configs) > 1 and "default" not in configs:
            raise ScratchError(f"source '{self}': its dataset card has several configs; set config to one of {configs}")
        if self.config is not None and self.config not in configs:
            raise ScratchError(f"source '{self}': its dataset card has no config '{self.config}' (configs: {configs})")
        try:
            data_files = datasets.load_dataset_builder(str(root), self.config).config.data_files
        except (FileNotFoundError, ValueError) as err:
            raise ScratchError(f"source '{self}' could not be opened: {one_line(err)}") from None
        if self.split not in data_files:
            raise ScratchError(f"source '{self}' has no split '{self.split}' (splits: {', '.join(data_files)})")
        return [str(f) for f in data_files[self.split]]

    def _folder_files(self, folder: Path) -> list[str]:
        if self.config:  # no card to define configs: the config must be a subfolder's name
            found = [p for p in folder.rglob(self.config) if p.is_dir() and _is_data_file(p, folder, directory=True)]
            if len(found) != 1:
                subfolders = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
                raise ScratchError(
                    f"source '{self}': {folder} has no dataset card (README.md with configs:) and "
                    f"{'no' if not found else 'more than one'} folder named '{self.config}' (subfolders: "
                    f"{', '.join(subfolders) or 'none'}); restore the card from the Hub or point path at the "
                    "config's folder"
                )
            folder = found[0]
        try:
            files = [f for f in resolve_pattern("**", str(folder)) if _is_data_file(Path(f))]
        except FileNotFoundError:
            files = []
        if not files:
            raise ScratchError(f"source '{self}' has no files of a known type ({', '.join(BUILDERS)})")
        return self._split_of(folder, sorted(files))

    def _split_of(self, base: Path, files: list[str]) -> list[str]:
        """The files of `split`, when the files are named by split the way the Hub names them."""
        patterns = get_data_patterns(str(base))
        if list(patterns.values()) == [["**"]] or all(f.endswith(".py") for f in files):
            splits = {"train": files}  # no split names (in code, test_x.py names a file, not a split)
        else:
            chosen = set(files)
            splits = {}
            for split, split_patterns in patterns.items():
                try:
                    named = DataFilesList.from_patterns(split_patterns, base_path=str(base))
                except FileNotFoundError:
                    continue
                if mine := sorted(chosen.intersection(named)):
                    splits[str(split)] = mine
            unnamed = chosen.difference(*splits.values())
            if unnamed and splits:
                raise ScratchError(
                    f"source '{self}' holds files of splits ({', '.join(splits)}) and files of none, e.g. "
                    f"'{sorted(unnamed)[0]}'; point path at the files you mean"
                )
            splits = splits or {"train": files}
        if self.split not in splits:
            raise ScratchError(f"source '{self}' has no split '{self.split}' (splits: {', '.join(splits)})")
        return splits[self.split]


def check_conversation(messages, source: Source, row: int) -> None:
    """A conversation the chat template can render and that trains a reply: known roles, text content."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise ScratchError(
            f"source '{source}' row {row}: each conversation must be a list of {{role, content}} messages"
        )
    for message in messages:
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            close = get_close_matches(str(role), ROLES, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ScratchError(
                f"source '{source}' row {row}: unknown role {role!r}{hint}; roles are {', '.join(ROLES)}"
            )
        if not isinstance(content, str) or (role == "assistant" and not content.strip()):
            raise ScratchError(f"source '{source}' row {row}: {role} message without content")


def check_disjoint(sources: list[Source]) -> None:
    """Refuse data that would be trained on twice: two sources (or one) reading the same file, files with
    the same bytes, or the same Hub dataset, config and split. Rows copied into different files of
    different shape (a Hub config that samples another) are beyond what this can see."""
    hub, owner, by_size = {}, {}, {}
    for source in sources:
        if not source.is_local and not _is_saved(Path(source.path)):
            key = (source.path, source.config, source.split)
            if key in hub:
                raise ScratchError(f"sources '{hub[key].name}' and '{source.name}' both read {source}")
            hub[key] = source
        for file in source.files():
            real = os.path.realpath(file)
            if real in owner:
                raise ScratchError(f"{_pair(owner[real], source)} read the same file '{file}'")
            owner[real] = source
            if size := os.path.getsize(real):  # empty files give no document
                by_size.setdefault(size, []).append(real)
    for same_size in by_size.values():
        seen = {}
        for real in same_size if len(same_size) > 1 else []:
            with open(real, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            if digest in seen:
                raise ScratchError(
                    f"{_pair(owner[seen[digest]], owner[real])} read the same content twice: "
                    f"'{seen[digest]}' and '{real}' are identical"
                )
            seen[digest] = real


def _pair(first: Source, second: Source) -> str:
    return f"source '{first.name}'" if first is second else f"sources '{first.name}' and '{second.name}'"


def _is_saved(path: Path) -> bool:
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def _card_configs(path: Path) -> list[str]:
    """The config names a downloaded snapshot's dataset card defines in its YAML front matter ([] if none)."""
    card = path / "README.md"
    if not path.is_dir() or not card.is_file():
        return []
    front = re.match(r"---\s*\n(.*?)\n---\s*(\n|$)", card.read_text(encoding="utf-8"), re.DOTALL)
    try:
        metadata = yaml.safe_load(front.group(1)) if front else {}
    except yaml.YAMLError as err:
        raise ScratchError(f"{card}: the dataset card's front matter is not YAML: {one_line(err)}") from None
    configs = metadata.get("configs") if isinstance(metadata, dict) else None
    return [c["config_name"] for c in configs or [] if isinstance(c, dict) and "config_name" in c]


def _is_data_file(path: Path, base: Path | None = None, directory: bool = False) -> bool:
    """Not hidden (the download's .cache/, .gitattributes), not a card or metadata file, of a known type."""
    *folders, name = path.relative_to(base).parts if base else path.parts[-1:]
    if name.startswith(".") or any(p.startswith((".", "__")) for p in folders):  # as datasets skips them
        return False
    return directory or (path.name not in FILES_TO_IGNORE and _suffix(path) in BUILDERS)


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


def _check_same_columns(files: list[str], source: Source) -> None:
    """Files of one source with different columns would fail mid-preparation (a CastError): fail now."""
    first, first_columns = None, None
    for file in files:
        columns = _columns(file)
        if columns is None:
            continue
        if first_columns is None:
            first, first_columns = file, columns
        elif columns != first_columns:
            only_first = [f"{k} ({v})" for k, v in first_columns.items() if k not in columns]
            only_this = [f"{k} ({v})" for k, v in columns.items() if k not in first_columns]
            changed = [
                f"{k}: {v} vs {columns[k]}" for k, v in first_columns.items() if k in columns and v != columns[k]
            ]
            differences = "; ".join(
                f"{label} {', '.join(items)}"
                for label, items in (("only in the first:", only_first), ("only in this one:", only_this),
                                     ("types differ:", changed)) if items
            )  # fmt: skip
            raise ScratchError(
                f"source '{source}': '{file}' does not have the columns of '{first}' ({differences}); "
                "give each kind of file its own source"
            )


def _columns(file: str) -> dict[str, str] | None:
    """Column names and types: parquet from its footer, JSON lines as `datasets` infers them (from the
    first block; the first file's types are what the others are cast to); None for text."""
    kind = BUILDERS.get(_suffix(Path(file)))
    if kind == "parquet":
        return {field.name: str(field.type) for field in pq.read_schema(file)}
    if kind == "json":
        try:
            with pa.input_stream(file, compression="detect") as stream:
                return {field.name: str(field.type) for field in pa_json.open_json(stream).schema}
        except pa.ArrowException:  # empty, a JSON document rather than lines, or a compression arrow lacks
            return None
    return None
