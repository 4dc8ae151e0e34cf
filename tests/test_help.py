"""What --help and --version say, the exit codes of bad input on the commands a user types, and the remarks a
run makes at start-up."""

import re
import runpy

import pytest
import yaml

import scratchlm
from helpers import REPO, small_run
from scratchlm.cli import main as scratchlm_main

PRETRAIN = runpy.run_path(str(REPO / "recipes" / "pretrain.py"), run_name="pretrain")  # its main(), not run


def pretrain(monkeypatch, *args: str) -> int:
    monkeypatch.setattr("sys.argv", ["pretrain.py", *args])
    try:
        return PRETRAIN["main"]()
    except SystemExit as exit:  # argparse's --help and refusals
        return exit.code


def test_pretrain_help_shows_config_and_each_default_once(monkeypatch, capsys):
    assert pretrain(monkeypatch, "--help") == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert text.startswith("usage: [accelerate launch ...] pretrain.py --config FILE [--key value ...]")
    assert "--config FILE a YAML of the keys below (recipes/<run>/pretrain.yaml;" in text
    assert text.index("--config FILE") < text.index("--output_dir")  # first, where a reader looks
    assert "(default: the run directory's name)" in text and "(default: 0.1)" in text  # weight_decay
    assert not re.search(r"\(default: [^)]*\) \(default", text)
    assert "(default: )" not in text and "(default: [])" not in text


def test_scratchlm_version(capsys):
    with pytest.raises(SystemExit) as exit:
        scratchlm_main(["--version"])
    assert exit.value.code == 0 and capsys.readouterr().out.strip() == f"scratchlm {scratchlm.__version__}"


def test_bad_input_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    """argparse's own refusals and ours (ScratchError) end the same way: exit status 2."""
    assert pretrain(monkeypatch, "--max_steps", "3") == 2  # argparse: no output_dir
    assert "required: --output_dir" in capsys.readouterr().err
    config = str(REPO / "recipes" / "tiny" / "pretrain.yaml")
    assert pretrain(monkeypatch, "--config", config, "--learning_rate", "-1") == 2
    assert capsys.readouterr().err == "error: config: 'learning_rate' must be positive, got -1.0\n"
    assert scratchlm_main(["plot", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nowhere'}: no such directory\n"


def test_a_model_with_far_more_rows_than_tokens_is_remarked_on(tmp_path, shards_dir, monkeypatch, capsys):
    """The issue's case in small: a preset's many rows beside a small tokenizer (here 4,096 rows, 1,024 tokens)."""
    config = small_run(tmp_path, shards_dir, max_steps=1, save_steps=0)
    model = yaml.safe_load((tmp_path / "model.yaml").read_text())
    (tmp_path / "model.yaml").write_text(yaml.safe_dump({**model, "vocab_size": 4096}))
    assert pretrain(monkeypatch, "--config", str(config)) == 0
    assert (
        "warning: the model has 4,096 vocabulary rows but its tokenizer 1,024 tokens: 3,072 rows (75%) are never "
        "used; a model for this tokenizer sets vocab_size 1,024\n" in capsys.readouterr().out
    )
    capsys.readouterr()
    (tmp_path / "model.yaml").write_text(yaml.safe_dump({**model, "vocab_size": 1088}))  # padded: no remark
    assert pretrain(monkeypatch, "--config", str(config), "--output_dir", str(tmp_path / "padded")) == 0
    out = capsys.readouterr().out
    assert "vocab 1088" in out and "vocabulary rows" not in out
    # and a horizon that ends inside the warmup (the test runs' 2 warmup steps) is said at start-up too
    assert "warning: the run's 1 steps end inside its 2 warmup steps: the learning rate never reaches" in out
