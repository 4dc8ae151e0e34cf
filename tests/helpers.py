"""What several test files share: the small model, generated text, and running pretraining as users do."""

import os
import random
import shutil
import socket
import string
import subprocess
from pathlib import Path

import yaml

from scratchlm.model.presets import build_config
from scratchlm.run_dir import RunDir

REPO = Path(__file__).resolve().parents[1]


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


# A two-layer model: every code path of the real presets at a size tests can afford.
SMALL_MODEL = {"preset": "tiny", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 1024}  # fmt: skip


def small_config(**overrides):
    return build_config({**SMALL_MODEL, **overrides})


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


# Pretraining runs in tests use a shorter context than SMALL_MODEL's (fewer tokens per window).
RUN_MODEL = {**SMALL_MODEL, "max_position_embeddings": 64}


def free_port() -> int:
    """A port nobody listens on now: two test workers' launches must not meet on the config's 29533."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_command(*args: str, processes: int = 1) -> list[str]:
    if processes == 1:
        where = ["--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    else:
        config = REPO / "accelerate_configs" / "cpu_2proc.yaml"
        where = ["--config_file", str(config), "--main_process_port", str(free_port())]
    # --quiet as every documented command: a refused launch ends with the script's own error line
    return [shutil.which("accelerate"), "launch", "--quiet", *where, str(REPO / "recipes" / "pretrain.py"), *args]


def launch(cwd: Path, *args: str, processes: int = 1, fails: bool = False, timeout: int = 600):
    """`accelerate launch`: it reports any failure of the script as exit status 1."""
    command = launch_command(*args, processes=processes)
    result = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "WANDB_MODE": "offline"}
    )
    assert (result.returncode != 0) == fails, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def small_run(tmp_path: Path, shards_dir: Path, **overrides) -> Path:
    """A run config for a 2-layer model on the session's prepared shards; returns the YAML path."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(RUN_MODEL))
    config = {
        "output_dir": str(tmp_path / "run"),
        "model_config": str(tmp_path / "model.yaml"),
        "data_dir": str(shards_dir),
        "seq_len": 32,
        "per_device_train_batch_size": 4,
        "max_steps": 12,
        "learning_rate": 3e-3,
        "warmup_steps": 2,
        "min_lr": 3e-4,
        "logging_steps": 1,
        "save_steps": 4,
        "save_total_limit": 2,
        "eval_steps": 0,
        **overrides,
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def train_losses(run_dir: Path) -> dict[int, dict]:
    return {m["step"]: m for m in RunDir(run_dir).training_metrics()}
