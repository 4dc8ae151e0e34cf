import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from transformers import AutoTokenizer

from conftest import data_config
from scratchlm.cli import main
from scratchlm.data.default import write_default
from scratchlm.data.loader import BLOCK, WindowLoader, document_positions
from scratchlm.data.prepare import prepare, read_prepare_config, token_dtype
from scratchlm.data.shards import TokenShards
from scratchlm.data.world import PRETRAIN, make_world
from scratchlm.errors import ScratchError

FIXTURES = Path(__file__).parent / "fixtures"


def jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


# --- the embedded default ------------------------------------------------------------------------


def test_default_is_deterministic_from_its_seed(tmp_path, default_dir):
    write_default(tmp_path / "same", seed=0, tokens=150_000, countries=20)
    write_default(tmp_path / "other", seed=1, tokens=150_000, countries=20)
    files = sorted(p.relative_to(default_dir) for p in default_dir.rglob("*") if p.is_file())
    files = [f for f in files if "__pycache__" not in f.parts]  # Python's, once lm-eval imported the loader
    assert len(files) == 18
    for name in files:  # byte for byte: nothing names the folder it was written in
        assert (tmp_path / "same" / name).read_bytes() == (default_dir / name).read_bytes(), name
    assert (tmp_path / "other" / "probes.jsonl").read_bytes() != (default_dir / "probes.jsonl").read_bytes()


def test_default_layout_and_schemas(default_dir):
    for name in ("world", "math", "code"):
        docs = jsonl(default_dir / "pretrain" / f"{name}.jsonl")
        assert docs and all(set(d) == {"text"} and d["text"] for d in docs)
    text_chars = sum(len(d["text"]) for d in jsonl(default_dir / "pretrain" / "world.jsonl"))
    assert 400_000 < text_chars < 800_000  # --tokens 150000 at ~4 characters per token, 85% world
    for split in ("train", "test"):
        for row in jsonl(default_dir / "chat" / f"{split}.jsonl"):
            roles = [m["role"] for m in row["messages"]]
            assert roles[-1] == "assistant" and set(roles) <= {"system", "user", "assistant"}
        for row in jsonl(default_dir / "preference" / f"{split}.jsonl"):
            assert row["prompt"][0]["role"] == "user" and row["chosen"] != row["rejected"]
            assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"
    probes = jsonl(default_dir / "probes.jsonl")
    country = json.loads((default_dir / "world.json").read_text())["countries"][0]
    assert probes[0] == {"prompt": f"The capital of {country['name']} is", "answer": " " + country["capital"]}
    assert len(probes) == 20 * 8
    assert all(p["answer"].startswith(" ") and not p["prompt"].endswith(" ") for p in probes)


def test_core_bundle_has_the_reference_format(default_dir):
    ours, reference = default_dir / "core", FIXTURES / "core-sample"
    with (ours / "eval_meta_data.csv").open() as a, (reference / "eval_meta_data.csv").open() as b:
        assert next(csv.reader(a)) == next(csv.reader(b))
    keys_by_type = {}
    for bundle in (reference, ours):
        for task in yaml.safe_load((bundle / "core.yaml").read_text())["icl_tasks"]:
            assert set(task) <= {"label", "dataset_uri", "num_fewshot", "icl_task_type", "continuation_delimiter"}
            keys = set(jsonl(bundle / "eval_data" / task["dataset_uri"])[0])
            keys_by_type.setdefault(task["icl_task_type"], []).append(keys)
    for kind, keys in keys_by_type.items():
        assert len(keys) >= 2 and all(k == keys[0] for k in keys), kind  # ours match the sample's per type
    assert set(keys_by_type) == {"multiple_choice", "schema", "language_modeling"}


def test_eval_items_never_appear_in_training_text_but_their_facts_do(default_dir):
    training = " ".join(
        d["text"] for name in ("world", "math", "code") for d in jsonl(default_dir / "pretrain" / f"{name}.jsonl")
    )
    chat_train = [m["content"] for r in jsonl(default_dir / "chat" / "train.jsonl") for m in r["messages"]]
    training_lower = (training + " ".join(chat_train)).lower()
    items = [p["prompt"] + p["answer"] for p in jsonl(default_dir / "probes.jsonl")]
    core = yaml.safe_load((default_dir / "core" / "core.yaml").read_text())["icl_tasks"]
    for task in core:
        delimiter = task.get("continuation_delimiter", " ")
        for row in jsonl(default_dir / "core" / "eval_data" / task["dataset_uri"]):
            if task["icl_task_type"] == "multiple_choice":
                items.append(row["query"] + delimiter + row["choices"][row["gold"]])
            elif task["icl_task_type"] == "schema":
                items.append(row["context_options"][row["gold"]] + delimiter + row["continuation"])
            else:
                items.append(row["context"] + delimiter + row["continuation"])
    for item in items:
        assert not re.search(r"(?<![\w])" + re.escape(item.lower()) + r"(?![\w])", training_lower), item
    # ... while every fact is stated in pretraining text in at least one paraphrase.
    world = make_world(0, 20)
    for fact in world.facts:
        assert any(fact.sentence(t) in training for t in PRETRAIN[fact.relation]), fact


def test_chat_test_questions_are_held_out_from_chat_training(default_dir):
    asked = {
        m["content"] for r in jsonl(default_dir / "chat" / "train.jsonl") for m in r["messages"] if m["role"] == "user"
    }
    test = jsonl(default_dir / "chat" / "test.jsonl")
    assert len(test) == 64  # a fifth of 20 countries x 8 facts, asked with and without a warm-up turn
    for row in test:
        assert row["messages"][-2]["content"] not in asked
        assert row["answer"] in row["messages"][-1]["content"]


# --- prepare -------------------------------------------------------------------------------------


def test_prepare_marks_each_document_boundary_exactly_once(tmp_path, default_tokenizer):
    docs = ["first document", "second one ends like a web dump<|endoftext|>", "<|bos|>third", "  fourth\n"]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    config = read_prepare_config(
        {"tokenizer": str(default_tokenizer), "sources": [{"path": str(tmp_path / "docs.jsonl")}], "val_fraction": 0},
        where="test",
    )
    manifest = prepare(config, tmp_path / "out", progress=False)
    tokenizer = AutoTokenizer.from_pretrained(default_tokenizer)
    ids = np.fromfile(tmp_path / "out" / "docs" / "train.bin", dtype=np.uint16).tolist()
    assert ids.count(tokenizer.bos_token_id) == ids.count(tokenizer.eos_token_id) == 4
    assert manifest["sources"][0]["train"] == {"documents": 4, "tokens": len(ids), "bytes": len("".join(docs).encode())}
    decoded, start = [], 0
    for end in [i for i, t in enumerate(ids) if t == tokenizer.eos_token_id]:
        assert ids[start] == tokenizer.bos_token_id
        decoded.append(tokenizer.decode(ids[start + 1 : end]))
        start = end + 1
    assert decoded == docs  # special-token strings in text stay text, and round-trip


def test_prepare_manifest_and_validation_split(shards_dir, default_dir, default_tokenizer):
    manifest = json.loads((shards_dir / "manifest.json").read_text())
    TokenShards(shards_dir, AutoTokenizer.from_pretrained(shards_dir / "tokenizer"))  # self-contained
    assert manifest["dtype"] == "uint16" and manifest["val_every"] == 100
    assert [round(s["weight"], 3) for s in manifest["sources"]] == [0.6, 0.3, 0.1]
    world = manifest["sources"][0]
    total_docs = len(jsonl(default_dir / "pretrain" / "world.jsonl"))
    assert world["val"]["documents"] == total_docs // 100
    assert world["train"]["documents"] + world["val"]["documents"] == total_docs
    for source in manifest["sources"]:
        for split in ("train", "val"):
            assert (shards_dir / source["name"] / f"{split}.bin").stat().st_size == 2 * source[split]["tokens"]
    chat = np.fromfile(shards_dir / "chat" / "train.bin", dtype=np.uint16)
    tokenizer = AutoTokenizer.from_pretrained(default_tokenizer)
    assert tokenizer.decode(chat[:6]).startswith("<|bos|><|im_start|>")


def test_token_dtype_follows_vocabulary_size():
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


def test_prepare_is_idempotent_and_never_overwrites(tmp_path, shards_dir, default_dir, default_tokenizer):
    before = {p: p.stat().st_mtime_ns for p in shards_dir.rglob("*")}
    prepare(data_config(default_dir, default_tokenizer), shards_dir, progress=False)
    assert {p: p.stat().st_mtime_ns for p in shards_dir.rglob("*")} == before
    with pytest.raises(ScratchError, match="already holds shards prepared from a different config"):
        prepare(data_config(default_dir, default_tokenizer, val_fraction=0.05), shards_dir, progress=False)
    assert {p: p.stat().st_mtime_ns for p in shards_dir.rglob("*")} == before


def test_shards_refuse_another_tokenizer(tmp_path, shards_dir, tokenizer_dir, default_tokenizer):
    TokenShards(shards_dir, AutoTokenizer.from_pretrained(default_tokenizer))
    with pytest.raises(ScratchError, match="were made with another tokenizer"):
        TokenShards(shards_dir, AutoTokenizer.from_pretrained(tokenizer_dir))


def test_damaged_shard_is_reported(tmp_path, shards_dir):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(shards_dir, copy)
    with open(copy / "math" / "train.bin", "r+b") as f:
        f.truncate(100)
    with pytest.raises(ScratchError, match=r"math/train.bin is damaged: 100 bytes"):
        TokenShards(copy)


@pytest.mark.parametrize(
    "source, message",
    [
        ({"path": "{d}/chat/train.jsonl"}, "has no column 'text' (columns: messages)"),
        ({"path": "{d}/empty.jsonl"}, "is empty"),
        ({"path": "{d}/latin1.txt"}, "is not UTF-8 text"),
        ({"path": "{d}/pretrain/world.jsonl", "format": "chat", "column": "text"}, "must be a list of {role, content}"),
        ({"path": "{d}/pretrain/world.jsonl", "wieght": 2}, "unknown key 'wieght' (did you mean 'weight'?)"),
        ({"path": "{d}/pretrain/world.jsonl", "weight": "high"}, "'weight' must be float, got str"),
    ],
)
def test_bad_sources_fail_before_any_work_naming_the_source(
    tmp_path, capsys, default_dir, default_tokenizer, source, message
):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "latin1.txt").write_bytes("naïve café".encode("latin-1"))
    good = {"path": str(default_dir / "pretrain" / "math.jsonl")}
    bad = {
        k: v.format(d=default_dir if "pretrain" in v or "chat" in v else tmp_path) if isinstance(v, str) else v
        for k, v in source.items()
    }
    config = tmp_path / "data.yaml"
    config.write_text(yaml.safe_dump({"tokenizer": str(default_tokenizer), "sources": [good, bad]}))
    code = main(["data", "prepare", "--config", str(config), "--out", str(tmp_path / "out")])
    assert code == 2
    error = capsys.readouterr().err
    assert message in error and error.startswith("error: ")
    if "key" not in message and "must be float" not in message:
        assert f"'{bad['path']}'" in error  # names the source
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


# --- the loader ----------------------------------------------------------------------------------


def take(loader, steps):
    return [next(loader) for _ in range(steps)]


def test_resume_yields_exactly_the_uninterrupted_batches(shards_dir):
    shards = TokenShards(shards_dir)
    straight = take(WindowLoader(shards, seq_len=64, micro_batch=4, seed=3), 40)
    first = WindowLoader(shards, seq_len=64, micro_batch=4, seed=3)
    take(first, 17)
    state = json.loads(json.dumps(first.state_dict()))  # as saved in a checkpoint
    resumed = WindowLoader(shards, seq_len=64, micro_batch=4, seed=3)
    resumed.load_state_dict(state)
    for expected, got in zip(straight[17:], take(resumed, 23), strict=True):
        for key in expected:
            assert np.array_equal(expected[key], got[key]), key


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_ranks_read_disjoint_windows_and_together_the_single_process_stream(shards_dir, world_size):
    shards = TokenShards(shards_dir)
    steps, micro = 30, 4
    single = [
        tuple(w)
        for b in take(WindowLoader(shards, seq_len=64, micro_batch=micro * world_size), steps)
        for w in b["window_ids"].tolist()
    ]
    per_rank = []
    for rank in range(world_size):
        loader = WindowLoader(shards, seq_len=64, micro_batch=micro, rank=rank, world_size=world_size)
        per_rank.append([tuple(w) for b in take(loader, steps) for w in b["window_ids"].tolist()])
    seen = [w for rank in per_rank for w in rank]
    assert len(seen) == len(set(seen)) == steps * micro * world_size  # no window twice, across ranks
    assert sorted(seen) == sorted(single)


def test_a_different_world_size_continues_the_same_global_stream(shards_dir):
    shards = TokenShards(shards_dir)
    reference = [
        tuple(w) for b in take(WindowLoader(shards, seq_len=64, micro_batch=8), 10) for w in b["window_ids"].tolist()
    ]
    before = WindowLoader(shards, seq_len=64, micro_batch=4, rank=0, world_size=2)
    take(before, 3)  # 24 samples by 2 ranks
    after = [WindowLoader(shards, seq_len=64, micro_batch=2, rank=r, world_size=4) for r in range(4)]
    for loader in after:
        loader.load_state_dict(before.state_dict())
    resumed = []
    for _ in range(7):
        for loader in after:
            resumed += [tuple(w) for w in next(loader)["window_ids"].tolist()]
    assert resumed == reference[24:]


def test_mixture_weights_are_honoured(shards_dir):
    loader = WindowLoader(TokenShards(shards_dir), seq_len=32, micro_batch=1000)
    sources = np.concatenate([b["window_ids"][:, 0].numpy() for b in take(loader, BLOCK * 3 // 1000)])
    assert np.bincount(sources).tolist() == [18000, 9000, 3000]  # exact every BLOCK samples
    partial = np.bincount(sources[:12345], minlength=3) / 12345
    assert np.allclose(partial, [0.6, 0.3, 0.1], atol=0.01)


def test_epochs_wrap_without_repeating_inside_one(shards_dir):
    shards = TokenShards(shards_dir)
    loader = WindowLoader(shards, seq_len=512, micro_batch=500)
    chat = int(loader.windows[2])
    batches = take(loader, int(1.5 * chat / 0.1 / 500))  # chat, 10% of samples, drawn 1.5 times over
    drawn = [w for b in batches for s, w in b["window_ids"].tolist() if s == 2]
    assert chat < len(drawn) < 2 * chat
    assert sorted(drawn[:chat]) == list(range(chat))  # the first epoch is a permutation
    assert drawn[chat:] != drawn[: len(drawn) - chat]  # the second is shuffled differently
    assert loader.epochs()["chat"] == pytest.approx(len(drawn) / chat)


@pytest.mark.parametrize("change, message", [({"seed": 1}, "seed was 0, now 1"), ({"seq_len": 32}, "seq_len was 64")])
def test_resume_with_changed_settings_is_refused(shards_dir, change, message):
    shards = TokenShards(shards_dir)
    state = WindowLoader(shards, seq_len=64, micro_batch=4).state_dict()
    with pytest.raises(ScratchError, match=message):
        WindowLoader(shards, **{"seq_len": 64, "micro_batch": 4, **change}).load_state_dict(state)


def test_windows_hold_next_token_targets_and_document_positions(shards_dir):
    shards = TokenShards(shards_dir)
    batch = next(WindowLoader(shards, seq_len=64, micro_batch=8))
    assert np.array_equal(batch["input_ids"][:, 1:], batch["labels"][:, :-1])
    ids, positions = batch["input_ids"].numpy(), batch["position_ids"].numpy()
    assert (positions[ids == shards.bos_id] == 0).all() and (positions[:, 0] == 0).all()
    for row_ids, row_positions in zip(ids, positions, strict=True):
        for j in range(1, len(row_ids)):
            assert row_positions[j] == (0 if row_ids[j] == shards.bos_id else row_positions[j - 1] + 1)
    manual = np.array([[5, 0, 7, 8, 0, 9]])
    assert document_positions(manual, bos_id=0).tolist() == [[0, 0, 1, 2, 0, 1]]


def test_cli_default_then_prepare(tmp_path, capsys, default_tokenizer):
    assert main(["data", "default", "--out", str(tmp_path / "d"), "--tokens", "20000", "--countries", "5"]) == 0
    assert (tmp_path / "d" / "core" / "core.yaml").is_file()
    config = tmp_path / "data.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "tokenizer": str(default_tokenizer),
                "sources": [
                    {"path": str(tmp_path / "d" / "pretrain"), "weight": 0.7},
                    {"name": "chat", "path": str(tmp_path / "d" / "chat" / "train.jsonl"), "format": "chat"},
                ],
            }
        )
    )
    capsys.readouterr()
    assert main(["data", "prepare", "--config", str(config), "--out", str(tmp_path / "shards")]) == 0
    out = capsys.readouterr().out
    assert "pretrain  weight 0.412" in out and "chat  weight 0.588" in out
    shards = TokenShards(tmp_path / "shards", AutoTokenizer.from_pretrained(default_tokenizer))
    assert [s.name for s in shards.sources] == ["pretrain", "chat"]
