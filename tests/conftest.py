import json
import os
import random
import string

# Tests never touch the network; set before transformers/datasets are imported anywhere.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from scratchlm.model.presets import build_config  # noqa: E402


def random_documents(count: int, seed: int = 0) -> list[str]:
    """Text with a Zipf-like vocabulary of made-up words: enough distinct merges for any test vocab."""
    rng = random.Random(seed)
    lexicon = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(3000)]
    weights = [1 / (rank + 1) for rank in range(len(lexicon))]
    docs = []
    for _ in range(count):
        words = rng.choices(lexicon, weights, k=rng.randint(20, 120))
        docs.append(" ".join(words).capitalize() + f". In {rng.randint(1000, 2100)}, {rng.randint(1, 99)} + 7.")
    return docs


@pytest.fixture(scope="session")
def corpus_jsonl(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": doc}) + "\n" for doc in random_documents(3000)))
    return path


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, corpus_jsonl):
    from scratchlm.data.sources import Source
    from scratchlm.tokenization import train_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(Source(str(corpus_jsonl)).values(), 1024, out)
    return out


# A two-layer model: every code path of the real presets at a size tests can afford.
SMALL_MODEL = {"preset": "tiny", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 1024}  # fmt: skip


def small_config(**overrides):
    return build_config({**SMALL_MODEL, **overrides})


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory, tokenizer_dir):
    from scratchlm.model.files import init_model

    out = tmp_path_factory.mktemp("model")
    init_model(small_config(), out, tokenizer_dir, seed=0)
    return out


@pytest.fixture(scope="session")
def default_dir(tmp_path_factory):
    """A small embedded default: 20 countries, ~150k tokens of pretraining text."""
    from scratchlm.data.default import write_default

    out = tmp_path_factory.mktemp("default")
    write_default(out, seed=0, tokens=150_000, countries=20)
    return out


@pytest.fixture(scope="session")
def default_tokenizer(tmp_path_factory, default_dir):
    from scratchlm.data.sources import Source
    from scratchlm.tokenization import train_tokenizer

    out = tmp_path_factory.mktemp("default_tokenizer")
    train_tokenizer(Source(str(default_dir / "pretrain")).values(), 1024, out)
    return out


def data_config(default_dir, tokenizer, **extra):
    from scratchlm.data.prepare import read_prepare_config

    return read_prepare_config(
        {
            "tokenizer": str(tokenizer),
            "sources": [
                {"path": str(default_dir / "pretrain" / "world.jsonl"), "weight": 0.6},
                {"path": str(default_dir / "pretrain" / "math.jsonl"), "weight": 0.3},
                {"name": "chat", "path": str(default_dir / "chat" / "train.jsonl"), "format": "chat", "weight": 0.1},
            ],
            "num_proc": 2,
            **extra,
        },
        where="test",
    )


@pytest.fixture(scope="session")
def shards_dir(tmp_path_factory, default_dir, default_tokenizer):
    from scratchlm.data.prepare import prepare

    out = tmp_path_factory.mktemp("shards") / "prepared"
    prepare(data_config(default_dir, default_tokenizer), out, progress=False)
    return out
