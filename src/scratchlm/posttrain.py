"""`scratchlm sft|dpo --config recipes/<run>/<stage>.yaml [--key value ...]`: TRL's own CLI, with our
checks before it and our run layout after it.

Why a wrapper at all: `trl sft` and `trl dpo` run TRL's packaged scripts, which take no callbacks, and
their YAML hands unknown keys to accelerate (so our own keys cannot live there). The recipe therefore
stays a plain TRL YAML that `trl sft --config` runs unchanged, and this wrapper only adds what TRL
cannot: checks that fail in seconds instead of minutes in (an exported model, a chat template, the
dataset's columns), and afterwards the layout every stage shares: metrics.jsonl (from TRL's log
history), samples.jsonl (replies of every saved checkpoint), plan.json and export/.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import datasets

from .config import read_yaml
from .errors import ScratchError
from .eval.chat import chat_replies
from .model.card import write_model_card
from .model.files import load_model, read_config, save_model
from .run_dir import RunDir, checkpoint_step
from .tokenization import check_tokenizer_fits, load_tokenizer
from .train.hardware import describe_hardware

COLUMNS = {"sft": ("messages",), "dpo": ("prompt", "chosen", "rejected")}
SAMPLE_PROMPTS = 3


def run_stage(stage: str, argv: list[str]) -> Path:
    values = stage_values(argv)
    model_dir, output_dir = check_stage(stage, values)
    env = dict(os.environ)
    if not _has_cuda():  # `accelerate launch`, which TRL uses, pins each CPU process to one thread
        env.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    command = [command_path("trl"), stage, *argv]
    print(f"scratchlm: {model_dir} -> {output_dir}: running {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    if subprocess.run(command, env=env).returncode != 0:
        raise ScratchError(f"trl {stage} failed (its messages are above); {output_dir} keeps its checkpoints")
    finish_stage(stage, output_dir, values, wall_s=time.perf_counter() - start)
    return output_dir


def stage_values(argv: list[str]) -> dict:
    """The recipe YAML with `--key value` overrides on top, as TRL will read it."""
    if "--config" not in argv or argv.index("--config") + 1 >= len(argv):
        raise ScratchError("give the recipe: --config recipes/<run>/<stage>.yaml")
    values = read_yaml(argv[argv.index("--config") + 1])
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag.startswith("--") and flag != "--config" and not value.startswith("--"):
            values[flag[2:]] = value
    return values


def check_stage(stage: str, values: dict) -> tuple[Path, Path]:
    """Everything that would otherwise fail minutes into a TRL run, checked now."""
    for key in ("model_name_or_path", "output_dir"):
        if not values.get(key):
            raise ScratchError(f"{stage} recipe: '{key}' is required")
    model_dir = Path(values["model_name_or_path"])
    if not (model_dir / "config.json").is_file() or not list(model_dir.glob("*.safetensors")):
        raise ScratchError(
            f"model_name_or_path {model_dir} is not an exported model directory (config.json and "
            "safetensors weights); export one with `scratchlm export` or use a run's export/"
        )
    config = read_config(model_dir)
    tokenizer = load_tokenizer(model_dir)
    check_tokenizer_fits(tokenizer, config.get("vocab_size", 0), where=f"model {model_dir}")
    if not tokenizer.chat_template:
        raise ScratchError(
            f"the tokenizer in {model_dir} has no chat template; {stage} needs one to render "
            "conversations (tokenizers trained by scratchlm have it)"
        )
    if values.get("assistant_only_loss") and "generation" not in tokenizer.chat_template:
        raise ScratchError(f"assistant_only_loss needs {{% generation %}} in the chat template of {model_dir}")
    if config.get("model_type") not in ("llama", None) and not values.get("trust_remote_code"):
        raise ScratchError(
            f"{model_dir} is a '{config['model_type']}' model saved with its code: set "
            "trust_remote_code: true in the recipe"
        )
    for description, kept, columns in dataset_columns(values):
        missing = [c for c in COLUMNS[stage] if c not in kept]
        if missing:
            raise ScratchError(
                f"dataset {description} has no column {', '.join(repr(m) for m in missing)} "
                f"(columns: {', '.join(columns)}); {stage} needs {', '.join(COLUMNS[stage])}"
            )
    return model_dir, Path(values["output_dir"])


def dataset_entries(values: dict) -> list[dict]:
    """The datasets a recipe trains on, in TRL's two ways to name them, as `datasets:` entries."""
    entries = values.get("datasets") or [
        {
            "path": values.get("dataset_name"),
            "name": values.get("dataset_config"),
            "split": values.get("dataset_train_split", "train"),
        }
    ]
    if not all(entry.get("path") for entry in entries):
        raise ScratchError("the recipe names no dataset: set datasets: or dataset_name:")
    return entries


def open_dataset(entry: dict) -> tuple[str, datasets.IterableDataset]:
    description = str(entry.get("data_files") or entry["path"])
    try:
        rows = datasets.load_dataset(
            entry["path"],
            entry.get("name"),
            data_files=entry.get("data_files"),
            split=entry.get("split") or "train",
            streaming=True,
        )
    except (FileNotFoundError, ValueError, ConnectionError, datasets.exceptions.DatasetNotFoundError) as err:
        raise ScratchError(f"dataset {description} could not be opened: {str(err).splitlines()[0]}") from None
    return description, rows


def dataset_columns(values: dict):
    """(description, columns TRL keeps, all columns) of every dataset the recipe trains on."""
    for entry in dataset_entries(values):
        description, rows = open_dataset(entry)
        try:
            first = next(iter(rows))
        except StopIteration:
            raise ScratchError(f"dataset {description} is empty") from None
        # TRL keeps only an entry's `columns:`, so the stage's columns must be among them too.
        yield description, [c for c in first if c in (entry.get("columns") or first)], list(first)


# --- after TRL ------------------------------------------------------------------------------------


def finish_stage(stage: str, output_dir: Path, values: dict, wall_s: float) -> None:
    run = RunDir(output_dir)
    checkpoints = run.trl_checkpoints()
    if not checkpoints:
        raise ScratchError(f"{output_dir} has no checkpoint-*/: set save_strategy: steps so the log is kept")
    state = json.loads((checkpoints[-1] / "trainer_state.json").read_text())
    # TRL's log history under the names status, plots and reports read, beside TRL's own.
    run.write_metrics(
        [
            {**entry, "lr": entry.get("learning_rate"), "tokens": entry.get("num_tokens")}
            for entry in state["log_history"]
            if "loss" in entry
        ]
    )
    run.write_plan(
        {"stage": stage, "total_steps": state["max_steps"], "wall_s": wall_s, "hardware": describe_hardware()}
    )
    model, tokenizer = load_stage_model(output_dir)
    save_model(model, tokenizer, run.export)
    data = [
        " ".join(str(e[k]) for k in ("path", "name", "data_files", "split") if e.get(k))
        for e in dataset_entries(values)
    ]
    write_model_card(run, data)
    prompts = sample_prompts(values)
    samples = []
    for checkpoint in checkpoints:  # the last one holds the final weights
        model, tokenizer = load_stage_model(checkpoint)
        for prompt, (reply, _) in zip(prompts, chat_replies(model, tokenizer, prompts), strict=True):
            samples.append(
                {"step": checkpoint_step(checkpoint), "prompt": prompt[-1]["content"], "mode": "greedy", "text": reply}
            )
    run.write_samples(samples)


def load_stage_model(path: Path):
    """A full model from a TRL output: LoRA adapters (use_peft) are merged into their base."""
    if not (path / "adapter_config.json").is_file():
        return load_model(path)
    from peft import AutoPeftModelForCausalLM

    model = AutoPeftModelForCausalLM.from_pretrained(str(path)).merge_and_unload()
    return model, load_tokenizer(path)


def sample_prompts(values: dict) -> list[list[dict]]:
    """The first conversations of the training data, cut after their first user turn."""
    _, rows = open_dataset(dataset_entries(values)[0])
    prompts = []
    for row in rows.take(SAMPLE_PROMPTS):
        messages = row.get("messages") or row["prompt"]
        first_user = next(i for i, m in enumerate(messages) if m["role"] == "user")
        prompts.append(messages[: first_user + 1])
    return prompts


def command_path(name: str) -> str:
    """The console script installed beside this Python (a venv not on PATH still works)."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.is_file() else shutil.which(name) or name


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
