import json
import os

# Tests never touch the network; set before transformers/datasets are imported anywhere.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# pytest-xdist's workers share the cores: every process they start computes on its worker's share, or
# torch's OpenMP threads spin against each other's (the speedrun test's pretraining ran 8x slower).
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    share = (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, share)))

import pytest  # noqa: E402

from helpers import data_config, random_documents, small_config  # noqa: E402


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


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory, tokenizer_dir):
    from scratchlm.model.files import init_model

    out = tmp_path_factory.mktemp("model")
    init_model(small_config(), out, tokenizer_dir, seed=0)
    return out


@pytest.fixture(scope="session")
def scratch_model_dir(tmp_path_factory, small_model_dir):
    """The small model saved with our code beside it, as a model with options Llama lacks would be."""
    from scratchlm.model.files import load_model, save_model

    return save_model(*load_model(small_model_dir), tmp_path_factory.mktemp("scratch_model"), format="scratch")


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


@pytest.fixture(scope="session")
def shards_dir(tmp_path_factory, default_dir, default_tokenizer):
    from scratchlm.data.prepare import prepare

    out = tmp_path_factory.mktemp("shards") / "prepared"
    prepare(data_config(default_dir, default_tokenizer), out, progress=False)
    return out


LONGEST_FIRST = ["test_speedrun.py", "test_pretrain.py", "test_recipe_chains.py"]  # ~10, ~6, ~4.5 min


def pytest_collection_modifyitems(items):
    """The longest files go out to the workers first, so neither idles while the other ends on one: the
    speedrun test's module fixture alone is ~10 min on one core, and test_pretrain.py was the last file."""
    order = {name: rank for rank, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: order.get(item.path.name, len(order)))
