"""Train, save and check tokenizers: byte-level BPE with our special tokens and chat template.

Every tokenizer scratchlm trains has the same shape, so every later stage can rely on it:
- `<|bos|>` is prepended by the tokenizer itself (as Llama's does): plain `tokenizer(text)`,
  pipelines and lm-eval all see the BOS that pretraining documents start with;
- `<|endoftext|>` (eos) ends every document and stops base-model generation;
- `<|pad|>` is distinct from eos, so padding masks never hide a real end of document;
- `<|im_start|>` / `<|im_end|>` frame chat turns; `<|im_end|>` ends an assistant turn.
"""

import hashlib
import json
import time
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from .errors import ScratchError

BOS, EOS, PAD = "<|bos|>", "<|endoftext|>", "<|pad|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [BOS, EOS, PAD, IM_START, IM_END]

# GPT-4's split pattern with numbers in groups of at most two digits (as nanochat): words,
# numbers, punctuation runs and whitespace are never merged across, which keeps merges reusable.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)


def chat_template() -> str:
    return resources.files("scratchlm").joinpath("chat_template.jinja").read_text()


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path) -> dict:
    """Train on `texts`, save an HF tokenizer directory, and return what was measured."""
    if vocab_size < 256 + len(SPECIAL_TOKENS) + 1:
        raise ScratchError(f"--vocab-size {vocab_size} is too small: byte-level BPE needs at least 262")
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
        show_progress=True,
    )
    counted = _CountingIterator(texts)
    start = time.perf_counter()
    backend.train_from_iterator(counted, trainer)
    seconds = time.perf_counter() - start
    if counted.bytes == 0:
        raise ScratchError("tokenizer training got no text: every input was empty")
    tokenizer = wrap_tokenizer(backend)
    tokenizer.save_pretrained(str(out_dir))
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
    return AutoTokenizer.from_pretrained(str(path))


def check_tokenizer_fits(tokenizer: PreTrainedTokenizerBase, vocab_size: int, where: str) -> None:
    """A tokenizer whose ids reach past the embedding table would index out of range mid-run."""
    if len(tokenizer) > vocab_size:
        raise ScratchError(
            f"{where}: tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
            f"{vocab_size}; train the tokenizer with --vocab-size {vocab_size} or set the model's "
            f"vocab_size to at least {len(tokenizer)}"
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
