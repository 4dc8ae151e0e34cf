"""`scratchlm sft|dpo --config recipes/<run>/<stage>.yaml [--key value | --key=value ...]`: TRL's own CLI,
with our checks before it and our run layout after it.

Why a wrapper at all: `trl sft` and `trl dpo` run TRL's packaged scripts, which take no callbacks, and
their YAML hands unknown keys to accelerate (so our own keys cannot live there). The recipe therefore
stays a plain TRL YAML that `trl sft --config` runs unchanged, and this wrapper only adds what TRL
cannot:
- Checks that fail in seconds instead of minutes in. They read the arguments as TRL's own parser types
  them (trl.scripts.<stage>.make_parser), so they judge what TRL will run: `--key=value` and
  `--flag false` mean what they mean to TRL. Then: an exported model with a chat template; accelerate's
  mixed precision not overriding the recipe's bf16/fp16; wandb without a key logging offline, as
  pretraining does; and TRL's own trainer built on the first CHECK_ROWS rows of what it will train on,
  so a dataset TRL would refuse is refused here, naming the dataset, the row and the field.
- Resuming: the same command after a kill continues from the newest complete checkpoint-N in
  output_dir (it adds `--resume_from_checkpoint` to the user's arguments and says so), as pretraining
  does; a command that names a checkpoint itself keeps it.
- Afterwards, the layout every stage shares: metrics.jsonl (from TRL's log history), samples.jsonl
  (replies of every saved checkpoint), plan.json and export/.

Why the data check builds TRL's trainer itself (SFTTrainer/DPOTrainer, through their public constructor)
rather than calling the private method that prepares the data: every decision the constructor makes
before it prepares the rows (the format read from the first row, the training chat template, packing,
completion-only loss, the eval split, what it refuses outright) is then TRL's, in whatever TRL version is
installed, not a copy of it here that a minor release could leave behind. What a probe leaves out is
what preparing rows never reads: the model's weights (a one-layer stand-in, milliseconds instead of
seconds and gigabytes), the GPU, and the output, the tracker and the Hub repository the run itself
writes to (probe_arguments). The parser (trl.scripts.<stage>.make_parser) and the accelerate keys
(trl.cli.accelerate_config) are what the `trl` command itself uses; the tests run every check through
them, so a TRL release that moves them fails there, loudly.
"""

import contextlib
import copy
import functools
import importlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from .card import write_model_card
from .config import unknown_key_error
from .errors import ScratchError, one_line
from .eval.chat import chat_replies
from .model.files import load_model, read_config, save_model
from .run_dir import RunDir, checkpoint_step
from .tokenization import check_tokenizer_fits, load_tokenizer
from .train.hardware import describe_hardware
from .train.monitor import wandb_has_key

CHECK_ROWS = 256  # rows of each dataset that TRL's trainer is built on before TRL starts
SAMPLE_PROMPTS = 3
HELP = """scratchlm {stage} --config RECIPE.yaml [--key value | --key=value ...]

Runs `trl {stage}` with the same arguments, after checking them (the model, the chat template, accelerate's
mixed precision, wandb, TRL's trainer built on the first {rows} rows of each dataset); re-running the same
command resumes from the newest complete checkpoint-N in output_dir. Afterwards it writes metrics.jsonl,
samples.jsonl, plan.json and export/ into output_dir. The keys, in the YAML or as flags, are TRL's:
"""


@dataclass
class Recipe:
    """A stage's arguments as TRL's parser types them, and what TRL hands on to `accelerate launch`."""

    where: str  # the YAML (or the command line), for messages
    script: Any  # trl ScriptArguments: dataset_name, dataset_config, splits
    training: Any  # SFTConfig or DPOConfig
    model: Any  # ModelConfig
    mixture: Any  # DatasetMixtureConfig: the `datasets:` entries
    launch: list[str]  # accelerate launch's own arguments (recipe keys no TRL dataclass knows)
    argv: list[str]  # as given: the data check parses it again, with its own overrides after it


def run_stage(stage: str, argv: list[str]) -> Path | None:
    """Runs `trl <stage> ARGV` after the checks, then lays out the run; returns its export/ (None for --help)."""
    parser = trl_parser(stage)
    if "-h" in argv or "--help" in argv:
        print(HELP.format(stage=stage, rows=CHECK_ROWS))
        parser.print_help()
        return None
    recipe = parse_recipe(stage, parser, argv)
    env = launch_env(stage, recipe)
    model_dir, tokenizer = check_model(stage, recipe)
    first_rows = check_datasets(stage, recipe, tokenizer)
    output_dir = Path(recipe.training.output_dir)
    command = [command_path("trl"), stage, *argv, *resume_arguments(recipe)]
    print(f"scratchlm: {model_dir} -> {output_dir}: running {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    if run_passing_sigterm(command, env=env) != 0:
        raise ScratchError(f"trl {stage} failed (its messages are above); {output_dir} keeps its checkpoints")
    finish_stage(stage, recipe, first_rows, wall_s=time.perf_counter() - start)
    return RunDir(output_dir).export


# --- the arguments, as TRL reads them -------------------------------------------------------------


def trl_parser(stage: str):
    parser = importlib.import_module(f"trl.scripts.{stage}").make_parser(prog=f"scratchlm {stage}")

    def refuse(message: str):  # argparse would print its usage and exit; one line instead
        raise ScratchError(f"scratchlm {stage}: {message}")

    parser.error = refuse
    return parser


def parse_recipe(stage: str, parser, argv: list[str]) -> Recipe:
    """What `trl` does with ARGV: the YAML under the command line, typed by TRL's dataclasses (their
    __post_init__ checks included), and the keys none of them knows, which `trl` passes to accelerate."""
    from trl.cli.accelerate_config import resolve_accelerate_config_argument

    where = argv[argv.index("--config") + 1] if "--config" in argv[:-1] else "the command line"
    try:
        *parsed, from_config, from_cli = parser.parse_args_and_config(
            list(argv), return_remaining_strings=True, separate_remaining_strings=True
        )
        launch = resolve_accelerate_config_argument(from_config + from_cli)
    except OSError as err:
        raise ScratchError(f"{where}: {err.strerror}: {err.filename}") from None
    except (ValueError, TypeError, IndexError) as err:  # also yaml.YAMLError, a ValueError
        raise ScratchError(f"{where}: {one_line(err)}") from None
    recipe = Recipe(where, *parsed, launch, list(argv))
    check_launch_arguments(stage, parser, recipe)
    return recipe


def check_launch_arguments(stage: str, parser, recipe: Recipe) -> None:
    """The leftovers must be accelerate's: a misspelled TRL key would otherwise fail late, in accelerate."""
    from accelerate.commands.launch import launch_command_parser

    launcher = launch_command_parser()
    launcher.error = parser.error
    _, unknown = launcher.parse_known_args([*recipe.launch, "train.py"])
    flags = [u for u in unknown if u.startswith("--")]
    if flags:
        known = [a.dest for a in parser._actions] + [a.dest for a in launcher._actions]
        raise unknown_key_error(flags[0][2:].split("=")[0], known, f"{recipe.where} (trl {stage} or accelerate)")


def resume_arguments(recipe: Recipe) -> list[str]:
    """Re-running a killed stage continues it: TRL resumes only when told where from."""
    latest = RunDir(recipe.training.output_dir).latest_trl_checkpoint()
    if recipe.training.resume_from_checkpoint or latest is None:
        return []
    print(f"scratchlm: resuming from {latest}, the newest complete checkpoint in {recipe.training.output_dir}")
    return ["--resume_from_checkpoint", str(latest)]


# --- checks: what accelerate and wandb will do ------------------------------------------------------


def launch_env(stage: str, recipe: Recipe) -> dict:
    """The environment `trl` runs in, once accelerate's precision and wandb's logging are known to be right."""
    check_mixed_precision(recipe)
    env = dict(os.environ)
    if not _has_cuda():
        env.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))  # `accelerate launch` pins each to one thread
        # Without it, the processes of a multi-process accelerate config (cpu_2proc.yaml) each train alone
        # on all the data and write the same output_dir: transformers sees a process group but no
        # distributed accelerate state.
        env.setdefault("ACCELERATE_USE_CPU", "true")
    if "wandb" in recipe.training.report_to:
        if importlib.util.find_spec("wandb") is None:
            raise ScratchError(f"{recipe.where}: report_to wandb needs `pip install wandb` (or report_to: none)")
        # As pretraining does: without a key, log offline (sync later with `wandb sync`) instead of
        # failing after the data is tokenized. Only whether a key exists is looked at; it is never shown.
        if not wandb_has_key() and "WANDB_MODE" not in env:
            env["WANDB_MODE"] = "offline"
            print(f"scratchlm: no wandb API key: trl {stage} logs to wandb offline (`wandb sync` uploads it later)")
    return env


def check_mixed_precision(recipe: Recipe) -> None:
    """transformers trains in the recipe's bf16 or fp16 when one is on, and otherwise in accelerate's
    mixed precision: an accelerate config's bf16 would silently override a recipe's `bf16: false`."""
    from accelerate.commands.config.config_args import default_config_file, load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    args, _ = launch_command_parser().parse_known_args([*recipe.launch, "train.py"])
    # accelerate launch's own rule (_validate_launch_command): a flag, else the config file, else "no".
    config_file = args.config_file
    if config_file is None and os.path.isfile(default_config_file) and not args.cpu:
        config_file = default_config_file
    try:
        configured = load_config_from_file(config_file).mixed_precision if config_file else None
    except OSError as err:
        raise ScratchError(f"{recipe.where}: accelerate config {config_file}: {err.strerror}") from None
    precision = str(args.mixed_precision or configured or "no")
    if precision != "no" and not (recipe.training.bf16 or recipe.training.fp16):
        source = "--mixed_precision" if args.mixed_precision else f"the accelerate config {config_file}"
        raise ScratchError(
            f"{recipe.where}: bf16 and fp16 are off, but {source} sets mixed_precision: {precision}, which "
            f"transformers would train in; set bf16: true, or use an accelerate config with mixed_precision: 'no'"
        )


# --- checks: the model -------------------------------------------------------------------------------


def check_model(stage: str, recipe: Recipe):
    """The model directory and its tokenizer, if TRL can load and train them."""
    if not recipe.model.model_name_or_path:
        raise ScratchError(f"{recipe.where}: model_name_or_path is required")
    model_dir = Path(recipe.model.model_name_or_path)
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
    if getattr(recipe.training, "assistant_only_loss", False) and "generation" not in tokenizer.chat_template:
        raise ScratchError(f"assistant_only_loss needs {{% generation %}} in the chat template of {model_dir}")
    if config.get("model_type") not in ("llama", None) and not recipe.training.trust_remote_code:
        raise ScratchError(
            f"{model_dir} is a '{config['model_type']}' model saved with its code: set "
            "trust_remote_code: true in the recipe"
        )
    return model_dir, tokenizer


# --- checks: the data, through TRL's own trainer ------------------------------------------------------


@dataclass
class Sample:
    """The first rows of one dataset TRL will read, opened as TRL opens it (but streamed, to be quick)."""

    description: str
    rows: list[dict]
    features: datasets.Features | None


def check_datasets(stage: str, recipe: Recipe, tokenizer) -> list[dict]:
    """TRL's trainer built on the first rows of what it will train (and evaluate) on: what it would refuse
    minutes in, after loading the model, is refused now. Returns the first training rows."""
    groups, evaluates = dataset_groups(recipe), recipe.training.eval_strategy != "no"
    with tempfile.TemporaryDirectory() as scratch:
        args = probe_arguments(stage, recipe.argv, scratch)
        for purpose, group in groups:
            try:
                rows = datasets.concatenate_datasets(
                    [datasets.Dataset.from_list(s.rows, features=s.features) for s in group]
                )
            except ValueError as err:
                names = ", ".join(s.description for s in group)
                raise ScratchError(
                    f"the datasets {names} cannot be mixed (as TRL mixes them): {one_line(err)}"
                ) from None
            probe = functools.partial(build_trainer, stage, recipe, args, tokenizer)
            if purpose == "train":  # the same rows evaluated on, if the run evaluates: the trainer wants both
                train, build = rows, functools.partial(probe, same_eval=evaluates)
            else:  # beside the first training row, which passed (the trainer reads the format from it)
                build = functools.partial(probe, train=train.select([0]))
            check_preparation(stage, rows, group, build)
    _, first_group = groups[0]
    return first_group[0].rows


def probe_arguments(stage: str, argv: list[str], output_dir: str):
    """The training arguments `trl <stage> ARGV` parses, for probes in this process: on the CPU (this process
    is not started by `accelerate launch`: on several GPUs it would be nn.DataParallel, which DPOTrainer
    refuses, and on one it would hold memory while TRL trains), hence in float32; writing into a scratch
    output_dir; no tracker or Hub repository; nothing the data does not need."""
    probe = ["--output_dir", output_dir, "--use_cpu", "true", "--bf16", "false", "--fp16", "false"]
    probe += ["--report_to", "none", "--push_to_hub", "false"]
    if stage == "dpo":
        probe += ["--precompute_ref_log_probs", "false"]  # the stand-in's log-probabilities mean nothing
    parsed = trl_parser(stage).parse_args_and_config(
        [*argv, *probe], return_remaining_strings=True, separate_remaining_strings=True
    )
    args = parsed[1]
    args.dataset_num_proc = None  # a few hundred rows: worker processes would cost more than they save
    return args


def dataset_groups(recipe: Recipe) -> list[tuple[str, list[Sample]]]:
    """("train" or "eval", samples) for each dataset TRL prepares: a `datasets:` mixture is one; a
    `dataset_name` gives its train split, and its test split too when the run evaluates."""
    script, training = recipe.script, recipe.training
    evaluates = training.eval_strategy != "no"  # TRL's scripts: an eval split only when evaluating
    if recipe.mixture.datasets:
        # TRL's get_dataset() names the mixture's splits itself: train, and test when it splits one off
        # (the same rows, so the training check covers both).
        made = ["train", "test"] if recipe.mixture.test_split_size is not None else ["train"]
        for split in [script.dataset_train_split] + ([script.dataset_test_split] if evaluates else []):
            if split not in made:
                raise ScratchError(f"{recipe.where}: a `datasets:` mixture has no split '{split}' (it has {made})")
        entries = [(d.path, d.name, d.data_dir, d.data_files, d.split, d.columns) for d in recipe.mixture.datasets]
        return [("train", [open_sample(*entry, entry=True) for entry in entries])]
    if not script.dataset_name:
        raise ScratchError(f"{recipe.where} names no dataset: set datasets: or dataset_name:")
    splits = {"train": script.dataset_train_split, **({"eval": script.dataset_test_split} if evaluates else {})}
    name, config = script.dataset_name, script.dataset_config
    return [(purpose, [open_sample(name, config, None, None, split, None)]) for purpose, split in splits.items()]


def open_sample(path, name, data_dir, data_files, split, columns, entry: bool = False) -> Sample:
    """load_dataset with TRL's arguments, streamed: a `datasets:` entry names its split to load_dataset; a
    `dataset_name` is opened whole and then indexed by split, as TRL's scripts do."""
    description = " ".join(str(v) for v in (data_files or path, name and f"(config {name})", f"split {split}") if v)
    try:
        if entry:
            rows = datasets.load_dataset(
                path, name, data_dir=data_dir, data_files=data_files, split=split, streaming=True
            )
        else:
            splits = datasets.load_dataset(path, name, streaming=True)
            if split not in splits:
                raise ScratchError(f"dataset {path} has no split '{split}' (its splits: {', '.join(splits)})")
            rows = splits[split]
        if columns is not None:
            rows = rows.select_columns(columns)
        first = list(rows.take(CHECK_ROWS))
    except (OSError, ValueError, KeyError, datasets.exceptions.DatasetNotFoundError) as err:
        raise ScratchError(f"dataset {description} could not be opened: {one_line(err)}") from None
    if not first:
        raise ScratchError(f"dataset {description} is empty")
    return Sample(f"dataset {description}", first, rows.features)


def check_preparation(stage: str, rows: datasets.Dataset, group: list[Sample], build) -> None:
    """BUILD (TRL's trainer) on ROWS; if it fails, the first row it fails on, and the field, in one line."""

    def failure(subset: datasets.Dataset) -> Exception | None:
        try:
            build(subset)
        except Exception as err:  # whatever TRL's trainer raises is what `trl` would stop with
            return err
        return None

    with _quiet():
        if failure(rows) is None:
            return
        index, error = first_failing_row(rows, failure)
        donor = passing_row(rows, index, failure)
        field = failing_field(rows, index, donor, failure) if donor is not None else None
    offset = index
    for sample in group:  # the row in its own dataset
        if offset < len(sample.rows):
            break
        offset -= len(sample.rows)
    row, reason = rows[index], f"{type(error).__name__}: {one_line(error)}"
    if field:
        raise ScratchError(
            f"{sample.description}, row {offset} (from 0), field '{field}' ({describe(row[field])}): "
            f"TRL's {stage} preparation fails on it: {reason}"
        )
    fields = "; ".join(f"{key}: {describe(value)}" for key, value in row.items())
    hint = ""
    if donor is None:
        hint = (
            f"; the next rows fail alone too, so this layout (or the recipe's arguments) is not one `trl {stage}` "
            "takes (a `datasets:` entry with `columns:` keeps only the columns TRL should read)"
        )
    raise ScratchError(
        f"{sample.description}, row {offset} (from 0): TRL's {stage} preparation fails on it: {reason} "
        f"(its fields: {fields}){hint}"
    )


def first_failing_row(rows: datasets.Dataset, failure) -> tuple[int, Exception]:
    """The row that ends the shortest failing prefix, and its error. TRL decides the format from the
    first row, so a prefix is prepared as the whole is."""
    low, high = 1, len(rows)
    while low < high:
        middle = (low + high) // 2
        low, high = (middle + 1, high) if failure(rows.select(range(middle))) is None else (low, middle)
    return low - 1, failure(rows.select(range(low)))


def passing_row(rows: datasets.Dataset, index: int, failure) -> dict | None:
    """A row TRL prepares: the one before INDEX, or else one of the next few that passes alone."""
    if index:
        return rows[index - 1]
    passing = (i for i in range(1, min(len(rows), 8)) if failure(rows.select([i])) is None)
    good = next(passing, None)
    return None if good is None else rows[good]


def build_trainer(stage: str, recipe: Recipe, args, tokenizer, rows: datasets.Dataset, train=None, same_eval=False):
    """TRL's trainer for STAGE, built as `trl <stage>` builds it (trl/scripts/<stage>.py) but on a stand-in
    model and a few rows: ROWS to train on (and to evaluate on, with SAME_EVAL), or to evaluate on beside
    TRAIN. A streamed dataset is then read through: TRL prepares it as it reads it."""
    from trl import DPOTrainer, SFTTrainer

    streaming = recipe.mixture.streaming if recipe.mixture.datasets else recipe.script.dataset_streaming
    splits = [train, rows] if train is not None else [rows, rows] if same_eval else [rows]
    opened = [split.to_iterable_dataset() if streaming else split for split in splits]
    reference = {"ref_model": stand_in(tokenizer)} if stage == "dpo" else {}
    trainer = (DPOTrainer if stage == "dpo" else SFTTrainer)(
        model=stand_in(tokenizer),
        args=args,
        train_dataset=opened[0],
        eval_dataset=opened[1] if len(opened) > 1 else None,
        processing_class=copy.deepcopy(tokenizer),  # the trainer sets its pad and eos tokens
        **reference,
    )
    for prepared in (trainer.train_dataset, trainer.eval_dataset):
        if isinstance(prepared, datasets.IterableDataset):
            for _ in prepared:
                pass


def stand_in(tokenizer):
    """A one-layer Llama over the tokenizer's vocabulary: the trainers prepare data from the tokenizer and the
    arguments alone and never read the model's weights, so the real model (seconds to load, gigabytes, twice
    for DPO's reference) is not loaded for a probe that costs milliseconds with this."""
    from transformers import LlamaConfig, LlamaForCausalLM

    width = {"hidden_size": 8, "intermediate_size": 8, "num_attention_heads": 1, "num_key_value_heads": 1}
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), num_hidden_layers=1, **width))


def failing_field(rows: datasets.Dataset, index: int, donor: dict, failure) -> str | None:
    """The field of row INDEX that TRL fails on: the one whose value, taken from a row TRL prepares
    (DONOR), makes the row pass."""
    culprit, before = rows[index], rows.select(range(index)).to_list()
    for field in culprit:
        repaired = datasets.Dataset.from_list([*before, {**culprit, field: donor[field]}], features=rows.features)
        if failure(repaired) is None:
            return field
    return None


def describe(value) -> str:
    """A field's shape, as a message can show it: the roles of a conversation, what is missing."""
    if value is None:
        return "missing"
    if isinstance(value, str):
        return f"text of {len(value)} characters"
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        turns = [f"{m.get('role')}{'' if m.get('content') is not None else ' without content'}" for m in value]
        return f"{len(value)} messages: {', '.join(turns)}"
    return type(value).__name__


@contextlib.contextmanager
def _quiet():
    """Probes without progress bars or warnings: a few hundred rows, built a few times over, and whatever
    TRL has to say about them it says again when it runs."""
    shown = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    loggers = [logging.getLogger(name) for name in ("trl", "transformers", "accelerate")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        if shown:
            datasets.enable_progress_bars()


# --- after TRL ------------------------------------------------------------------------------------


def finish_stage(stage: str, recipe: Recipe, first_rows: list[dict], wall_s: float) -> None:
    run = RunDir(recipe.training.output_dir)
    checkpoints = run.trl_checkpoints()
    if not checkpoints:
        raise ScratchError(f"{run.path} has no checkpoint-*/: set save_strategy: steps so the log is kept")
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
    model, tokenizer = load_stage_model(run.path)
    model.config.training_stage = stage  # not the stage the model came from (`chat` reads it)
    save_model(model, tokenizer, run.export)
    write_model_card(run, data_descriptions(recipe))
    prompts, samples = sample_prompts(first_rows), []  # no prompts: rows of plain text
    for checkpoint in checkpoints if prompts else []:  # the last one holds the final weights
        model, tokenizer = load_stage_model(checkpoint)
        for prompt, (reply, _) in zip(prompts, chat_replies(model, tokenizer, prompts), strict=True):
            samples.append(
                {"step": checkpoint_step(checkpoint), "prompt": prompt[-1]["content"], "mode": "greedy", "text": reply}
            )
    run.write_samples(samples)


def data_descriptions(recipe: Recipe) -> list[str]:
    """A line per training dataset, for the model card."""
    if recipe.mixture.datasets:
        entries = [(d.path, d.name, d.data_files, d.split) for d in recipe.mixture.datasets]
    else:
        entries = [(recipe.script.dataset_name, recipe.script.dataset_config, None, recipe.script.dataset_train_split)]
    return [" ".join(str(v) for v in entry if v) for entry in entries]


def load_stage_model(path: Path):
    """A full model from a TRL output: LoRA adapters (use_peft) are merged into their base."""
    if not (path / "adapter_config.json").is_file():
        return load_model(path)
    from peft import AutoPeftModelForCausalLM

    model = AutoPeftModelForCausalLM.from_pretrained(str(path)).merge_and_unload()
    return model, load_tokenizer(path)


def sample_prompts(rows: list[dict]) -> list[list[dict]]:
    """The first conversations of the training data, cut after their first user turn (a preference
    row's prompt is what TRL extracts from it; rows of plain text have none)."""
    from trl.data_utils import is_conversational, maybe_extract_prompt

    prompts = []
    for row in rows:
        conversation = row.get("messages") or maybe_extract_prompt(row).get("prompt")
        if is_conversational({"messages": conversation}) and any(m["role"] == "user" for m in conversation):
            first_user = next(i for i, m in enumerate(conversation) if m["role"] == "user")
            prompts.append(conversation[: first_user + 1])
        if len(prompts) == SAMPLE_PROMPTS:
            break
    return prompts


def command_path(name: str) -> str:
    """The console script installed beside this Python (a venv not on PATH still works)."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.is_file() else shutil.which(name) or name


def run_passing_sigterm(command: list[str], **popen) -> int:
    """The command's exit status. SIGTERM to this process reaches it too: `kill PID` of a wrapper (the
    speedrun, `scratchlm sft`) stops the work it started, which would otherwise train on, orphaned, holding
    its run directory. Ctrl-C at a terminal signals the whole process group already."""
    child = subprocess.Popen(command, **popen)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
    try:
        return child.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
