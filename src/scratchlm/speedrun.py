"""`scratchlm speedrun [--out DIR] [--recipe recipes/tiny]`: every step of a recipe, one command.

It runs the commands a user would type, in order, in DIR (default: here), each as its own process:
the embedded default corpus, the tokenizer, the shards, `accelerate launch recipes/pretrain.py` for
pretraining and midtraining, `scratchlm sft|dpo` around `trl sft|dpo`, the evaluations (CORE,
probes, chat, preference), then the report and one chat exchange. With --out elsewhere, the recipe
and recipes/pretrain.py are copied into DIR/recipes/ first, so the recipe's relative paths land there.

DIR/speedrun.json records each finished step and its wall time: a re-run skips finished steps, and
the interrupted one resumes: its own command does, run again (pretraining from its newest checkpoint,
`scratchlm sft|dpo` from their newest complete checkpoint-N).
"""

import json
import os
import shutil
import time
from pathlib import Path

from .config import read_yaml
from .disk import read_rows, write_atomically
from .errors import ScratchError
from .posttrain import command_path, run_passing_sigterm
from .report import build_report
from .train.config import parse_pretrain_args

STATE = "speedrun.json"
# --quiet: a failing script's own one-line error is the last thing printed (no launcher traceback after it).
ACCELERATE_CPU = ["--quiet", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
                  "--dynamo_backend", "no"]  # fmt: skip


def speedrun(out: str | Path, recipe: str | Path) -> Path:
    """Runs what is left of the pipeline in `out`; returns the report's path."""
    out, recipe = Path(out).resolve(), Path(recipe)
    if not (recipe / "pretrain.yaml").is_file():
        raise ScratchError(f"{recipe} is not a recipe directory: it has no pretrain.yaml")
    out.mkdir(parents=True, exist_ok=True)
    recipe = workspace(out, recipe)
    os.chdir(out)  # the recipe's paths are relative to the directory holding recipes/
    steps, runs, data = plan_steps(recipe)
    state = read_state(out)
    for number, (name, commands) in enumerate(steps, 1):
        if name in state:
            print(f"[{number}/{len(steps)}] {name}: finished by an earlier run in {state[name]:.0f} s, skipped")
            continue
        print(f"[{number}/{len(steps)}] {name}", flush=True)
        start = time.perf_counter()
        for command in commands:
            print(f"  $ {' '.join([Path(command[0]).name, *command[1:]])}", flush=True)
            if run_passing_sigterm(command) != 0:
                raise ScratchError(
                    f"speedrun step '{name}' failed (its messages are above); fix the cause and run the same "
                    f"command again: finished steps are skipped and '{name}' resumes"
                )
        state[name] = round(time.perf_counter() - start, 1)
        write_state(out, state)
    report = build_report(list(runs.values()), out, pipeline=state)
    print_exchange(Path(runs["dpo"]) / "export", data / "chat" / "test.jsonl")
    print(f"speedrun: {sum(state.values()):.0f} s of steps; report: {report}")
    return report


def print_exchange(model_dir: Path, questions: Path) -> None:
    """One held-out question and the final model's answer."""
    from .eval.chat import chat_replies
    from .model.files import load_model

    model, tokenizer = load_model(model_dir)
    conversation = read_rows(questions, ("messages",))[0]["messages"]
    conversation = conversation[: max(i for i, m in enumerate(conversation) if m["role"] == "user") + 1]
    ((reply, _),) = chat_replies(model, tokenizer, [conversation])
    for message in conversation:
        print(f"{message['role']}: {message['content']}")
    print(f"assistant ({model_dir}): {reply}")


def workspace(out: Path, recipe: Path) -> Path:
    """The recipe as DIR sees it: itself when DIR holds it, else a copy in DIR/recipes/."""
    inside = Path("recipes") / recipe.resolve().name
    if (out / inside).resolve() == recipe.resolve():
        return inside
    (out / "recipes").mkdir(parents=True, exist_ok=True)
    shutil.copytree(recipe, out / inside, dirs_exist_ok=True)
    shutil.copy2(recipe.resolve().parent / "pretrain.py", out / "recipes" / "pretrain.py")
    return inside


def plan_steps(recipe: Path) -> tuple[list[tuple[str, list[list[str]]]], dict, Path]:
    """The steps and their commands, the pipeline stages' run directories, and the embedded default's directory."""
    pretrain = parse_pretrain_args(["--config", str(recipe / "pretrain.yaml")])
    midtrain = parse_pretrain_args(["--config", str(recipe / "midtrain.yaml")])
    sft, dpo = read_yaml(recipe / "sft.yaml"), read_yaml(recipe / "dpo.yaml")
    if not pretrain.default_data or not pretrain.tokenizer_vocab_size or not pretrain.data_config:
        raise ScratchError(f"{recipe}/pretrain.yaml: a speedrun needs default_data, data_config, tokenizer_vocab_size")
    data, data_config = Path(pretrain.default_data), read_yaml(pretrain.data_config)
    runs = {"pretrain": pretrain.output_dir, "midtrain": midtrain.output_dir, "sft": sft["output_dir"],
            "dpo": dpo["output_dir"]}  # fmt: skip
    scratchlm, launch = [command_path("scratchlm")], [command_path("accelerate"), "launch", *ACCELERATE_CPU]
    texts = [s["path"] for s in data_config["sources"] if s.get("format", "text") == "text"]
    vocab, chars = str(pretrain.tokenizer_vocab_size), str(pretrain.tokenizer_train_chars)
    tokenizer = [*scratchlm, "tokenizer", "train", "--input", *texts, "--out", data_config["tokenizer"],
                 "--vocab-size", vocab, "--max-chars", chars]  # fmt: skip
    steps = [
        ("corpus", [[*scratchlm, "data", "default", "--out", str(data)]]),
        ("tokenizer", [tokenizer]),
        ("shards", [[*scratchlm, "data", "prepare", "--config", pretrain.data_config, "--out", pretrain.data_dir]]),
        ("pretrain", [[*launch, "recipes/pretrain.py", "--config", str(recipe / "pretrain.yaml")]]),
        ("midtrain", [[*launch, "recipes/pretrain.py", "--config", str(recipe / "midtrain.yaml")]]),
        ("sft", [[*scratchlm, "sft", "--config", str(recipe / "sft.yaml")]]),
        ("dpo", [[*scratchlm, "dpo", "--config", str(recipe / "dpo.yaml")]]),
        ("evals", eval_commands(scratchlm, runs, data, pretrain.core_max_per_task)),
    ]
    return steps, runs, data


def eval_commands(scratchlm: list[str], runs: dict, data: Path, core_max_per_task: int) -> list[list[str]]:
    """What the trained stages are measured on, into RUN_DIR/evals/ where the report reads it.
    Pretraining and midtraining measured CORE and probes at their last step already."""

    def evaluate(what: str, stage: str, *args: str) -> list[str]:
        model, out = f"{runs[stage]}/export", f"{runs[stage]}/evals/{what}.json"
        return [*scratchlm, "eval", what, "--model", model, *args, "--out", out]

    core = ("--bundle", str(data / "core"), "--max-per-task", str(core_max_per_task))
    chat = ("--data", str(data / "chat" / "test.jsonl"))
    preference = ("--reference", f"{runs['sft']}/export", "--data", str(data / "preference" / "test.jsonl"))
    return [
        *(evaluate("core", stage, *core) for stage in ("sft", "dpo")),
        *(evaluate("chat", stage, *chat) for stage in ("midtrain", "sft", "dpo")),
        *(evaluate("preference", stage, *preference) for stage in ("sft", "dpo")),
    ]


def read_state(out: Path) -> dict:
    """{finished step: seconds it took}."""
    path = out / STATE
    return json.loads(path.read_text()) if path.is_file() else {}


def write_state(out: Path, state: dict) -> None:
    write_atomically(out / STATE, json.dumps(state, indent=1))
