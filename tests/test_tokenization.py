import json
import os
import shutil
import subprocess
import sys
import zipfile
from itertools import groupby
from pathlib import Path

import datasets
import pytest
from transformers import AutoTokenizer

from conftest import random_documents
from scratchlm.cli import main
from scratchlm.data.sources import Source
from scratchlm.errors import ScratchError
from scratchlm.tokenization import BOS, EOS, IM_END, PAD, check_tokenizer_fits, train_tokenizer

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "tokenizer"
GOLDEN = json.loads((SPEC / "golden_conversation.json").read_text())


def test_saved_tokenizer_loads_offline_with_special_tokens(tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert len(tokenizer) == 1024
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (BOS, EOS, PAD)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    spec_tokens = list(json.loads((SPEC / "special_tokens.json").read_text()).values())
    assert tokenizer.convert_tokens_to_ids(spec_tokens) == list(range(len(spec_tokens)))  # the file's order: the ids
    ids = tokenizer("Hello world").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1


def test_trained_tokenizer_follows_the_spec_files(tokenizer_dir):
    saved = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    split, byte_level = saved["pre_tokenizer"]["pretokenizers"]
    assert split["pattern"]["Regex"] == (SPEC / "split_pattern.txt").read_text().rstrip("\n")
    assert (split["behavior"], byte_level["type"], byte_level["use_regex"]) == ("Isolated", "ByteLevel", False)
    assert (tokenizer_dir / "chat_template.jinja").read_text() == (SPEC / "chat_template.jinja").read_text()


@pytest.mark.parametrize("text", ["plain words", "  spaces\tand\nnewlines\n\n", "émoji 🚀 中文 ∑", "x = f(1, 2)  # ok"])
def test_byte_level_round_trip(tokenizer_dir, text):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.unk_token_id is None or tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text


def test_chat_template_renders_the_golden_conversation(tokenizer_dir):
    """tokenizer/golden_conversation.json, rendered by a freshly trained tokenizer: text, trained-on spans, prompt."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    messages = GOLDEN["messages"]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == GOLDEN["rendered"]
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    assert prompt == GOLDEN["generation_prompt"]
    out = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert tokenizer.decode(ids) == GOLDEN["rendered"]
    assert ids.count(tokenizer.bos_token_id) == 1  # the template's BOS, not a second one
    assert trained_spans(tokenizer, ids, mask) == GOLDEN["trained_on"]
    assert all(span.endswith(IM_END) for span in GOLDEN["trained_on"])  # end-of-turn is learned


def trained_spans(tokenizer, ids, mask) -> list[str]:
    """Each run of consecutive masked tokens, decoded: what SFT's assistant_only_loss trains on."""
    runs = groupby(zip(ids, mask, strict=True), key=lambda pair: pair[1])
    return [tokenizer.decode([token for token, _ in run]) for trained, run in runs if trained]


@pytest.mark.parametrize("vocab_size", [300, 1005])
def test_any_vocab_size(tmp_path, capsys, vocab_size):
    stats = train_tokenizer(random_documents(1500), vocab_size, tmp_path)
    assert stats["vocab_size"] == vocab_size == len(AutoTokenizer.from_pretrained(tmp_path))
    assert stats["bytes"] > 0 and stats["mb_per_s"] > 0
    assert "warning" not in capsys.readouterr().err


def test_text_that_cannot_fill_the_vocabulary_is_reported(tmp_path, capsys):
    """The embedded default gives 1,275 of 4,096 tokens: the tokenizer says so instead of a silent shortfall."""
    (tmp_path / "few_words.jsonl").write_text(json.dumps({"text": "the cat sat on the mat. " * 40}) + "\n")
    command = ["tokenizer", "train", "--input", str(tmp_path / "few_words.jsonl"), "--vocab-size", "1000"]
    assert main([*command, "--out", str(tmp_path / "tok")]) == 0
    captured = capsys.readouterr()
    got = json.loads(captured.out.split(": ", 1)[1])["vocab_size"]
    assert got == len(AutoTokenizer.from_pretrained(tmp_path / "tok")) < 1000
    warning = f"warning: asked for 1,000 tokens, got {got:,}: every distinct word of the 960 bytes of text is already"
    assert warning in captured.err and f"ask for {got} (and give the model that vocab_size" in captured.err


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


# A fresh interpreter that never imports scratchlm, where any question on stdin ends the process:
# what it loads, it loads with no prompt and none of the checkpoint's code.
FRESH_LOAD = """
import builtins, json, sys
def refuse(prompt=""):
    raise SystemExit("asked: " + prompt.strip().splitlines()[-1])
builtins.input = refuse
from transformers import AutoTokenizer
loaded = []
for directory, kwargs in json.loads(sys.argv[1]):
    tokenizer = AutoTokenizer.from_pretrained(directory, **kwargs)
    loaded.append({"ids": tokenizer("Hello world").input_ids, "template": tokenizer.chat_template})
imported = sorted(m for m in sys.modules if m.startswith(("scratchlm", "transformers_modules")))
print(json.dumps({"loaded": loaded, "imported": imported}))
"""


def test_tokenizers_load_with_no_model_code(tokenizer_dir, small_model_dir, scratch_model_dir, tmp_path):
    loads = [
        (str(tokenizer_dir), {}),  # what `tokenizer train` writes: no config.json, nothing to ask
        (str(small_model_dir), {}),  # what every model Llama can express is saved as: nothing to ask either
        # A `scratch` export: transformers 5 reads config.json (our auto_map) before tokenizer_config.json and
        # would ask whether to run the model's code; trust_remote_code=False says no up front (tokenizer/README.md).
        (str(scratch_model_dir), {"trust_remote_code": False}),
    ]
    result = subprocess.run(
        [sys.executable, "-c", FRESH_LOAD, json.dumps(loads)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=tmp_path, timeout=120,
        env={**os.environ, "HF_HOME": str(tmp_path / "hf_home")},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    expected = AutoTokenizer.from_pretrained(tokenizer_dir)("Hello world").input_ids
    assert len(out["loaded"]) == 3 and out["imported"] == []
    for loaded in out["loaded"]:
        assert loaded["ids"] == expected and loaded["ids"][0] == 0  # the same tokens, BOS first
        assert loaded["template"] == (SPEC / "chat_template.jinja").read_text()


def test_exported_tokenizer_config_keeps_no_loading_flags(small_model_dir):
    """The export reloaded our tokenizer under HF_HUB_OFFLINE; how it found the files is not part of it."""
    config = json.loads((small_model_dir / "tokenizer_config.json").read_text())
    assert os.environ["HF_HUB_OFFLINE"] == "1" and config["pad_token"] == PAD
    assert "local_files_only" not in config and "is_local" not in config


def test_installed_wheel_carries_the_spec(tmp_path):
    """A non-editable install: build the wheel, install it alone, train and render from outside the repo."""
    source = tmp_path / "source"  # what the build reads, copied: no build/ or egg-info left in the checkout
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("src", "tokenizer"):
        shutil.copytree(REPO / name, source / name, symlinks=True, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = [*pip, "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist")]
    subprocess.run(build, check=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("scratchlm-*.whl")
    packed = {name for name in zipfile.ZipFile(wheel).namelist() if name.startswith("scratchlm/tokenizer/")}
    assert packed == {f"scratchlm/tokenizer/{f.name}" for f in SPEC.iterdir()}
    install = [*pip, "install", str(wheel), "--no-deps", "--no-index", "--target", str(tmp_path / "site")]
    subprocess.run(install, check=True, timeout=300)
    code = f"""
import json, sys, scratchlm
from transformers import AutoTokenizer
from scratchlm.tokenization import SPEC, train_tokenizer
train_tokenizer({random_documents(50)!r} * 4, 400, "tok")
tokenizer = AutoTokenizer.from_pretrained("tok")
golden = json.loads(SPEC.joinpath("golden_conversation.json").read_text())
print(json.dumps({{"module": scratchlm.__file__, "spec": str(SPEC), "size": len(tokenizer),
                  "rendered": tokenizer.apply_chat_template(golden["messages"], tokenize=False)}}))
"""
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}  # the installed copy, ahead of any checkout
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(out["module"]).is_relative_to(tmp_path / "site") and Path(out["spec"]).is_relative_to(tmp_path / "site")
    assert out["size"] == 400 and out["rendered"] == GOLDEN["rendered"]
