"""Train, save and check tokenizers: byte-level BPE with our special tokens and chat template.

Every tokenizer scratchlm trains has the same shape, so every later stage can rely on it. The shape is
data: the special tokens, split pattern and chat template in the repository's `tokenizer/` (shipped in
the package as `scratchlm/tokenizer/`), whose README says why each is what it is. In short:
- `<|bos|>` is prepended by the tokenizer itself (as Llama's does): plain `tokenizer(text)`,
  pipelines and lm-eval all see the BOS that pretraining documents start with;
- `<|endoftext|>` (eos) ends every document and stops base-model generation;
- `<|pad|>` is distinct from eos, so padding masks never hide a real end of document;
- `<|im_start|>` / `<|im_end|>` frame chat turns; `<|im_end|>` ends an assistant turn.
"""

import hashlib
import json
import sys
import time
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from .errors import ScratchError

# A symlink to the repository's tokenizer/ in a checkout; real files in an installed wheel.
SPEC = resources.files("scratchlm") / "tokenizer"


def read_spec(name: str) -> str:
    try:
        return SPEC.joinpath(name).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScratchError(
            f"the tokenizer spec {SPEC / name} is missing (scratchlm/tokenizer is a link to the repository's "
            "tokenizer/ folder, whose files every install copies)"
        ) from None


_SPECIAL = json.loads(read_spec("special_tokens.json"))
BOS, EOS, PAD = _SPECIAL["bos"], _SPECIAL["eos"], _SPECIAL["pad"]
IM_START, IM_END = _SPECIAL["im_start"], _SPECIAL["im_end"]
SPECIAL_TOKENS = list(_SPECIAL.values())  # the file's order is the ids: <|bos|> is 0

# GPT-4's split pattern with numbers in groups of at most two digits (as nanochat): words,
# numbers, punctuation runs and whitespace are never merged across, which keeps merges reusable.
SPLIT_PATTERN = read_spec("split_pattern.txt").rstrip("\n")


def chat_template() -> str:
    return read_spec("chat_template.jinja")


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path) -> dict:
    """Train on `texts`, save an HF tokenizer directory, and return what was measured."""
    smallest = 256 + len(SPECIAL_TOKENS) + 1  # every byte, the special tokens and one merge
    if vocab_size < smallest:
        raise ScratchError(f"--vocab-size {vocab_size} is too small: byte-level BPE needs at least {smallest}")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # any byte can be encoded
        show_progress=sys.stderr.isatty(),  # its bar redraws with carriage returns: one endless line in a log
    )
    counted = _CountingIterator(texts)
    start = time.perf_counter()
    backend.train_from_iterator(counted, trainer)
    seconds = time.perf_counter() - start
    if counted.bytes == 0:
        raise ScratchError("tokenizer training got no text: every input was empty")
    tokenizer = wrap_tokenizer(backend)
    tokenizer.save_pretrained(str(out_dir))
    if len(tokenizer) < vocab_size:  # BPE stops early only when no pair is left to merge
        print(
            f"warning: asked for {vocab_size:,} tokens, got {len(tokenizer):,}: every distinct word of the "
            f"{counted.bytes:,} bytes of text is already a single token; ask for {len(tokenizer)} (and give the "
            f"model that vocab_size, so no embedding row goes unused) or train on more varied text",
            file=sys.stderr,
        )
    return {
        "vocab_size": len(tokenizer),
        "documents": counted.documents,
        "bytes": counted.bytes,
        "seconds": round(seconds, 3),
        "mb_per_s": round(counted.bytes / 1e6 / seconds, 3),
    }


def sample_texts(sources, max_chars: int) -> Iterator[str]:
    """Text from each source up to its weight's share of `max_chars` (a tokenizer needs a sample,
    not a whole 100B-token corpus, and a sample with the mixture's proportions)."""
    total = sum(source.weight for source in sources)
    for source in sources:
        budget = max_chars * source.weight / total
        seen = 0
        for text in source.values():
            yield text[: int(budget - seen)]
            seen += len(text)
            if seen >= budget:
                break


def wrap_tokenizer(backend: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        add_bos_token=True,
        chat_template=chat_template(),
        model_max_length=1_000_000_000,  # the model's context decides; set when saved with a model
    )


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    path = Path(path)
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise ScratchError(f"{path} is not a tokenizer directory (no tokenizer.json)")
    # trust_remote_code=False: an export's config names our model code, which a tokenizer never needs
    # (and without the flag transformers asks whether to run it).
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    # from_pretrained notes how it found the files (`is_local`, and `local_files_only: true` under
    # HF_HUB_OFFLINE) among the init arguments, and save_pretrained would write them into every
    # tokenizer_config.json we export: flags about our machine, not about the tokenizer.
    for key in ("is_local", "local_files_only"):
        tokenizer.init_kwargs.pop(key, None)
    return tokenizer


def check_tokenizer_fits(tokenizer: PreTrainedTokenizerBase, vocab_size: int, where: str) -> None:
    """A tokenizer whose ids reach past the embedding table would index out of range mid-run."""
    if len(tokenizer) > vocab_size:
        raise ScratchError(
            f"{where}: tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
            f"{vocab_size}; train the tokenizer with --vocab-size {vocab_size} or set the model's "
            f"vocab_size to at least {len(tokenizer)}"
        )


def unused_rows_warning(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> str | None:
    """A model with many more vocabulary rows than the tokenizer has tokens trains rows no token ever selects
    (a preset's 32,000 beside a 1,275-token tokenizer): parameters, memory and an LM head's softmax spent on
    nothing, and the sign of a tokenizer or preset picked by mistake. Padding to a round size is normal."""
    tokens = len(tokenizer)
    unused = vocab_size - tokens
    if unused < 128 or unused < 0.1 * vocab_size:
        return None
    fitted = -(-tokens // 64) * 64
    return (
        f"warning: the model has {vocab_size:,} vocabulary rows but its tokenizer {tokens:,} tokens: {unused:,} "
        f"rows ({unused / vocab_size:.0%}) are never used; a model for this tokenizer sets vocab_size {fitted:,}"
    )


def tokenizer_hash(tokenizer: PreTrainedTokenizerBase) -> str:
    """Identifies a vocabulary and its merges: token shards record it and refuse any other."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    payload = json.dumps({"model": spec["model"], "added": spec["added_tokens"]}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class _CountingIterator:
    """Passes texts through to the trainer, counting documents and UTF-8 bytes on the way."""

    def __init__(self, texts: Iterable[str]):
        self.texts = texts
        self.documents = 0
        self.bytes = 0

    def __iter__(self):
        for text in self.texts:
            self.documents += 1
            self.bytes += len(text.encode("utf-8"))
            yield text
