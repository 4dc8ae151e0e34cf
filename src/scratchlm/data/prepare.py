"""`scratchlm data prepare`: tokenize sources into memmap token shards with a manifest.

    OUT/manifest.json        tokenizer hash, sources, weights, documents/tokens/bytes per source and split
    OUT/tokenizer/           the tokenizer the shards were made with (the shards need nothing else)
    OUT/<source>/train.bin   token ids (uint16 when the vocabulary fits, else uint32), documents back to back
    OUT/<source>/val.bin     every `val_every`-th document, held out

Each document is stored as <|bos|> tokens <|endoftext|>: both boundaries exactly once. The BOS comes
from the tokenizer, the EOS is appended here, and special-token strings inside source text are
encoded as plain text, so a corpus that already ends rows with "<|endoftext|>" cannot double them
(the nanochat notebook's EOS bug). Chat sources are rendered with the tokenizer's chat template first.

The work is written to OUT.partial and renamed at the end: OUT either holds a complete preparation
or does not exist. Preparing the same config again is a no-op; a different one into OUT is refused.
"""

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from itertools import islice
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from ..config import from_mapping
from ..disk import publish, staging
from ..errors import ScratchError
from ..progress import Bar
from ..tokenization import load_tokenizer, tokenizer_hash
from .shards import MANIFEST_VERSION
from .sources import Source, check_disjoint


@dataclass
class PrepareConfig:
    tokenizer: str
    sources: list[Source]
    val_fraction: float = 0.01  # every round(1 / val_fraction)-th document goes to validation
    num_proc: int = 0  # tokenizer processes; 0 = one per CPU core
    batch_documents: int = 256

    def __post_init__(self):
        if not 0 <= self.val_fraction < 0.5:
            raise ScratchError(f"val_fraction must be in [0, 0.5), not {self.val_fraction}")
        names = [s.name for s in self.sources]
        if not names:
            raise ScratchError("data config: 'sources' is empty")
        if len(set(names)) != len(names):
            raise ScratchError(f"data config: source names must differ, got {names}; set name: for each")

    @property
    def val_every(self) -> int:
        return round(1 / self.val_fraction) if self.val_fraction else 0


def read_prepare_config(data: dict, where: str) -> PrepareConfig:
    return from_mapping(PrepareConfig, data, where)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def prepare(config: PrepareConfig, out_dir: str | Path, progress: bool = True) -> dict:
    out = Path(out_dir)
    if not any((Path(config.tokenizer) / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise ScratchError(
            f"tokenizer {config.tokenizer} does not exist: train it first (scratchlm tokenizer train --input "
            "<text> --vocab-size N --out DIR), or let the pretraining recipe train it on this config's text "
            "sources by setting tokenizer_vocab_size"
        )
    tokenizer = load_tokenizer(config.tokenizer)
    identity = _identity(config, tokenizer_hash(tokenizer))
    if (out / "manifest.json").is_file():
        manifest = json.loads((out / "manifest.json").read_text())
        if manifest.get("config_hash") == identity["config_hash"]:
            return manifest
        raise ScratchError(
            f"{out} already holds shards prepared from a different config or tokenizer; "
            "prepare into another directory (nothing was changed)"
        )
    if out.exists():
        raise ScratchError(f"{out} exists but holds no manifest.json; prepare into another directory")
    check_disjoint(config.sources)  # every source fails now, not after hours on the first ones
    for source in config.sources:
        source.check()
        if source.max_documents and config.val_every > source.max_documents:
            raise _no_validation(source, source.max_documents, config)
    fingerprints = {s.name: first_documents(s) for s in config.sources} if len(config.sources) > 1 else {}

    partial = staging(out, ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    tokenizer.save_pretrained(str(partial / "tokenizer"))
    dtype = token_dtype(len(tokenizer))
    start = time.perf_counter()
    try:
        sources = _prepare_sources(config, partial, dtype, progress, fingerprints)
    except ScratchError:  # a bad row or a source too small: nothing half-made is left behind
        shutil.rmtree(partial, ignore_errors=True)
        raise
    seconds = time.perf_counter() - start
    manifest = {
        "version": MANIFEST_VERSION,
        **identity,
        "tokenizer_path": str(config.tokenizer),
        "vocab_size": len(tokenizer),
        "bos_id": tokenizer.bos_token_id,
        "eos_id": tokenizer.eos_token_id,
        "dtype": dtype.name,
        "val_every": config.val_every,
        "sources": sources,
        "seconds": round(seconds, 3),
    }
    (partial / "manifest.json").write_text(json.dumps(manifest, indent=2))
    publish(partial, out)
    return manifest


def _prepare_sources(config: PrepareConfig, partial: Path, dtype, progress: bool, fingerprints: dict) -> list[dict]:
    total_weight = sum(s.weight for s in config.sources)
    sources = []
    processes = config.num_proc or os.cpu_count() or 1
    workers = (
        Pool(processes, _init_worker, (config.tokenizer, False)) if processes > 1 else _InProcess(config.tokenizer)
    )
    with workers as pool:
        for source in config.sources:
            others = {name: found for name, found in fingerprints.items() if name != source.name}
            counts = _prepare_source(source, config, partial / source.name, dtype, pool, progress, others)
            if counts["train"]["tokens"] == 0:
                raise ScratchError(f"source '{source.name}' gave no training tokens")
            if config.val_every and counts["val"]["documents"] == 0:
                raise _no_validation(source, counts["train"]["documents"], config)
            sources.append({**asdict(source), "weight": source.weight / total_weight, **counts})
    return sources


def _no_validation(source: Source, documents: int, config: PrepareConfig) -> ScratchError:
    """Validation of a source with no held-out document would report nan; say so while it is cheap."""
    return ScratchError(
        f"source '{source.name}' has {documents} documents, too few for a validation split: val_fraction "
        f"{config.val_fraction} holds out every {config.val_every}th document; raise val_fraction to at least "
        f"1/{documents}, or set it to 0 to hold out nothing"
    )


def _identity(config: PrepareConfig, tok_hash: str) -> dict:
    """What decides the shards' contents: sources, split and tokenizer (not process counts)."""
    spec = {"sources": [asdict(s) for s in config.sources], "val_every": config.val_every, "tokenizer": tok_hash}
    return {"tokenizer_hash": tok_hash, "config_hash": hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:16]}


def _prepare_source(source: Source, config: PrepareConfig, out: Path, dtype, pool, progress: bool, others) -> dict:
    out.mkdir(parents=True)
    counts = {split: {"documents": 0, "tokens": 0, "bytes": 0} for split in ("train", "val")}
    batches = _batches(not_in(others, source.values(), source), config.batch_documents)
    jobs = ((source, batch) for batch in batches)
    bar = Bar(source.max_documents, f"prepare {source.name}", "docs", enabled=progress)
    with bar, open(out / "train.bin", "wb") as train, open(out / "val.bin", "wb") as val:
        index = 0
        for docs in pool.imap(_encode_batch, jobs):
            for ids, n_bytes in docs:
                index += 1
                split = "val" if config.val_every and index % config.val_every == 0 else "train"
                (val if split == "val" else train).write(np.asarray(ids, dtype=dtype).tobytes())
                counts[split]["documents"] += 1
                counts[split]["tokens"] += len(ids)
                counts[split]["bytes"] += n_bytes
            bar.advance(len(docs))
            bar.fields["tokens"] = f"{counts['train']['tokens'] + counts['val']['tokens']:,}"
    return counts


# Rows one source shares with another (a Hub config that samples another, FineWeb-Edu's sample-10BT inside
# sample-100BT) are found by fingerprint: the first documents of every source, against every document of the
# others as it is read. That catches any source holding a copy of another's start (a subset, a superset, the
# same rows re-split) for the cost of a hash per document, without holding the hashes of a whole corpus.
FINGERPRINTED = 1000


def _fingerprint(value) -> bytes:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=8).digest()


def first_documents(source: Source) -> set[bytes]:
    return {_fingerprint(value) for value in islice(source.values(), FINGERPRINTED)}


def not_in(others: dict[str, set[bytes]], values, source: Source):
    """The values, refusing the first one that is among another source's first documents."""
    for index, value in enumerate(values):
        digest = _fingerprint(value)
        for name, found in others.items():
            if digest in found:
                raise ScratchError(
                    f"sources '{source.name}' and '{name}' overlap: document {index} of '{source.name}' is also one "
                    f"of the first {FINGERPRINTED} of '{name}' (the same rows, e.g. one Hub config sampling "
                    "another): training would see them twice; keep one of the two sources"
                )
        yield value


def _batches(values, size: int):
    iterator = iter(values)
    while batch := list(islice(iterator, size)):
        yield batch


# --- workers: each holds its own tokenizer -------------------------------------------------------

_tokenizer = None


def _init_worker(tokenizer_dir: str, threads: bool) -> None:
    global _tokenizer
    if not threads:  # parallelism comes from the processes
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _tokenizer = load_tokenizer(tokenizer_dir)


def _encode_batch(job) -> list[tuple[list[int], int]]:
    """[(ids with BOS ... EOS, UTF-8 bytes of the text)] for one batch of documents."""
    source, values = job  # chat rows were checked as they were read (Source.values)
    backend = _tokenizer.backend_tokenizer
    if source.format == "chat":
        texts = [_tokenizer.apply_chat_template(messages, tokenize=False) for messages in values]
        backend.encode_special_tokens = False  # the template's own special tokens must be parsed
        encodings = backend.encode_batch_fast(texts, add_special_tokens=False)  # the template adds BOS
    else:
        texts = values
        backend.encode_special_tokens = True  # "<|endoftext|>" inside text is just text
        encodings = backend.encode_batch_fast(texts, add_special_tokens=True)
    eos = _tokenizer.eos_token_id
    return [(e.ids + [eos], len(t.encode("utf-8"))) for e, t in zip(encodings, texts, strict=True)]


class _InProcess:
    """The Pool interface in this process: no workers to start for num_proc=1."""

    def __init__(self, tokenizer_dir: str):
        _init_worker(tokenizer_dir, threads=True)

    def imap(self, fn, jobs):
        return map(fn, jobs)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
