"""The pretraining config: keys that document themselves in --help, range checks beside their keys, and every
problem reported at once."""

import subprocess
import sys

import pytest

from helpers import REPO
from scratchlm.errors import ScratchError
from scratchlm.train.config import PretrainConfig, parse_pretrain_args

BASE = {"output_dir": "x", "model_preset": "tiny", "data_dir": "d", "max_steps": 1}


def test_help_documents_every_key():
    result = subprocess.run([sys.executable, str(REPO / "recipes" / "pretrain.py"), "--help"], capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for phrase in ("packed documents never attend to each other", "FSDP2: the dtype gradients are reduced",
                   "keep matmul and attention outputs", "windows per micro-batch per process"):  # fmt: skip
        assert phrase in text, phrase
    documented = [line for line in result.stdout.splitlines() if line.strip().startswith("--")]
    assert len(documented) >= len(PretrainConfig.__dataclass_fields__)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ScratchError) as raised:
        PretrainConfig(**BASE, learning_rate=-1.0, adam_beta2=1.0, lr_scheduler_type="linear", save_total_limit=0)
    message = str(raised.value)
    assert message.count(";") == 3 and "\n" not in message
    for part in ("'learning_rate' must be positive", "'adam_beta2' must be in (0, 1), got 1.0",
                 "'lr_scheduler_type' must be one of cosine, wsd, two_stage, constant, got 'linear'",
                 "'save_total_limit' must be positive"):  # fmt: skip
        assert part in message, part


def test_a_mistyped_or_unknown_key_is_named_with_its_file(tmp_path):
    (tmp_path / "run.yaml").write_text("output_dir: x\nmodel_preset: tiny\ndata_dir: d\nmax_step: 1\n")
    with pytest.raises(ScratchError, match=r"run.yaml: unknown key 'max_step' \(did you mean 'max_steps'\?\)"):
        parse_pretrain_args(["--config", str(tmp_path / "run.yaml")])
    with pytest.raises(ScratchError, match=r"'max_steps' must be int, got str \('many'\)"):
        PretrainConfig(**{**BASE, "max_steps": "many"})


def test_the_command_line_overrides_the_file_with_types(tmp_path):
    (tmp_path / "run.yaml").write_text("output_dir: x\nmodel_preset: tiny\ndata_dir: d\nmax_steps: 1\n")
    config = parse_pretrain_args(["--config", str(tmp_path / "run.yaml"), "--document_masking", "false",
                                  "--reduce_dtype", "bfloat16", "--max_steps=7"])  # fmt: skip
    assert (config.document_masking, config.reduce_dtype, config.max_steps) == (False, "bfloat16", 7)
