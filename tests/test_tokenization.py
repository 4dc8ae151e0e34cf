import json

import datasets
import pytest
from transformers import AutoTokenizer

from conftest import random_documents
from scratchlm.cli import main
from scratchlm.data.sources import Source
from scratchlm.errors import ScratchError
from scratchlm.tokenization import BOS, EOS, IM_END, PAD, SPECIAL_TOKENS, check_tokenizer_fits, train_tokenizer

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of Veloria?"},
    {"role": "assistant", "content": "Tamsin."},
    {"role": "user", "content": "And its river?"},
    {"role": "assistant", "content": "The Orlen."},
]


def test_saved_tokenizer_loads_offline_with_special_tokens(tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert len(tokenizer) == 1024
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (BOS, EOS, PAD)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    for token in SPECIAL_TOKENS:
        assert tokenizer.convert_tokens_to_ids(token) < len(SPECIAL_TOKENS)
    ids = tokenizer("Hello world").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1


@pytest.mark.parametrize("text", ["plain words", "  spaces\tand\nnewlines\n\n", "émoji 🚀 中文 ∑", "x = f(1, 2)  # ok"])
def test_byte_level_round_trip(tokenizer_dir, text):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.unk_token_id is None or tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text


def test_chat_template_renders_and_masks_assistant_turns(tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    text = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert text == (
        "<|bos|><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is the capital of Veloria?"
        "<|im_end|>\n<|im_start|>assistant\nTamsin.<|im_end|>\n<|im_start|>user\nAnd its river?<|im_end|>\n"
        "<|im_start|>assistant\nThe Orlen.<|im_end|>\n"
    )
    prompt = tokenizer.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    out = tokenizer.apply_chat_template(CONVERSATION, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert ids.count(tokenizer.bos_token_id) == 1  # the template's BOS, not a second one
    trained = [i for i, m in zip(ids, mask, strict=True) if m]
    assert tokenizer.decode(trained) == f"Tamsin.{IM_END}The Orlen.{IM_END}"  # end-of-turn is learned
    assert trained.count(tokenizer.convert_tokens_to_ids(IM_END)) == 2


@pytest.mark.parametrize("vocab_size", [300, 1005])
def test_any_vocab_size(tmp_path, vocab_size):
    stats = train_tokenizer(random_documents(1500), vocab_size, tmp_path)
    assert stats["vocab_size"] == vocab_size == len(AutoTokenizer.from_pretrained(tmp_path))
    assert stats["bytes"] > 0 and stats["mb_per_s"] > 0


def write_inputs(tmp_path):
    docs = random_documents(400, seed=1)
    (tmp_path / "a.txt").write_text(docs[0])
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in docs[:200]))
    datasets.Dataset.from_dict({"body": docs[200:]}).to_parquet(str(tmp_path / "c.parquet"))
    datasets.Dataset.from_dict({"body": docs[200:300]}).save_to_disk(str(tmp_path / "saved"))
    return docs


def test_sources_read_every_local_format(tmp_path):
    docs = write_inputs(tmp_path)
    assert list(Source(str(tmp_path / "a.txt")).values()) == [docs[0]]
    assert list(Source(str(tmp_path / "b.jsonl"), column="body").values()) == docs[:200]
    assert list(Source(str(tmp_path / "c.parquet"), column="body").values()) == docs[200:]
    assert list(Source(str(tmp_path / "saved"), column="body").values()) == docs[200:300]
    assert len(list(Source(str(tmp_path / "*.jsonl"), column="body").values())) == 200


def test_cli_trains_on_mixed_inputs(tmp_path, capsys):
    write_inputs(tmp_path)
    inputs = [str(tmp_path / name) for name in ("b.jsonl", "c.parquet", "saved")]
    code = main(
        [
            "tokenizer",
            "train",
            "--input",
            *inputs,
            "--text-column",
            "body",
            "--vocab-size",
            "500",
            "--out",
            str(tmp_path / "tok"),
        ]
    )
    assert code == 0
    stats = json.loads(capsys.readouterr().out.split(": ", 1)[1])
    assert stats["documents"] == 500 and stats["vocab_size"] == 500


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "source '{p}/nope.jsonl': no such file or directory"),
        ("empty", "source '{p}/empty.jsonl' is empty"),
        ("column", "source '{p}/other.jsonl' has no column 'text' (columns: body)"),
        ("utf8", "source '{p}/latin1.txt' is not UTF-8 text"),
    ],
)
def test_bad_inputs_name_the_source(tmp_path, capsys, case, message):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "other.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    (tmp_path / "latin1.txt").write_bytes("café au lait".encode("latin-1"))
    name = {"missing": "nope.jsonl", "empty": "empty.jsonl", "column": "other.jsonl", "utf8": "latin1.txt"}[case]
    code = main(
        ["tokenizer", "train", "--input", str(tmp_path / name), "--vocab-size", "300", "--out", str(tmp_path / "tok")]
    )
    assert code == 2
    assert message.format(p=tmp_path) in capsys.readouterr().err
    assert not (tmp_path / "tok").exists()


def test_tokenizer_larger_than_model_vocab_is_refused(tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    check_tokenizer_fits(tokenizer, 1024, where="ok")
    with pytest.raises(ScratchError, match="tokenizer has 1024 tokens but the model's vocab_size is 1000"):
        check_tokenizer_fits(tokenizer, 1000, where="model x")
