"""The pretraining (and midtraining) configuration: one flat dataclass, read from YAML, overridable from
the command line (`--config run.yaml --learning_rate 3e-4`), checked before any work starts.

Every key documents itself (`recipes/pretrain.py --help` prints it) and carries its own range check
(`key(..., check=...)`); `validate` adds the checks that involve several keys, and every problem found
is reported at once (litgpt's validate_args), not the first alone. Keys follow transformers'
TrainingArguments names where one exists. An `env:` block in the YAML is exported before anything
else runs (the place for NCCL_* and WANDB_* variables, as in TRL's CLI).
"""

import argparse
import os
import sys
import typing
from dataclasses import dataclass, field, fields
from typing import Annotated

from transformers import HfArgumentParser

from ..config import convert, read_yaml, unknown_key_error
from ..errors import ScratchError
from ..hub import HUB_PREFIX, parse_repo_spec
from ..model import attention
from .optimizer import MUON_DEFAULTS, OPTIMIZERS
from .schedule import SCHEDULES


def key(default, help: str):
    """A config key's default and help text (`--help` prints it). Its range check, if any, is in its type:
    `Annotated[int, positive]` (HfArgumentParser sees the plain type)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def positive(value):
    return None if value > 0 else f"must be positive, got {value}"


def not_negative(value):
    return None if value >= 0 else f"must not be negative, got {value}"


def one_of(*allowed):
    names = ", ".join(name or "'' (chosen for the hardware)" for name in allowed)
    return lambda value: None if value in allowed else f"must be one of {names}, got '{value}'"


def within(low, high, high_open=False):
    """In (low, high], or (low, high) when high_open."""

    def check(value):
        inside = low < value and (value < high if high_open else value <= high)
        return None if inside else f"must be in ({low}, {high}{')' if high_open else ']'}, got {value}"

    return check


@dataclass
class PretrainConfig:
    output_dir: str = field(metadata={"help": "the run directory: checkpoints, metrics, export (re-run to resume)"})
    run_name: str = key("", "a name for wandb and reports (default: the run directory's name)")
    stage: Annotated[str, one_of("pretrain", "midtrain")] = key("pretrain", "the pipeline stage this run is")
    seed: int = key(0, "initial weights and data order")

    # The model: exactly one of a preset, a model YAML, or weights to start from.
    model_preset: str = key("", "a named model (scratchlm model info --help lists them)")
    model_config: str = key("", "a model YAML: ScratchConfig keys, optionally over a `preset:`")
    init_from: str = key("", "start from an export or checkpoint (midtraining); hub://owner/name@revision too")

    # Data
    data_dir: str = key("", "prepared token shards (made from data_config first when absent)")
    data_config: str = key("", "a `scratchlm data prepare` YAML that makes data_dir when it is absent")
    default_data: str = key("", "write the embedded default dataset here first when it is absent")
    tokenizer_vocab_size: Annotated[int, not_negative] = key(
        0, "train data_config's tokenizer with this vocabulary on its text sources when it is absent"
    )
    tokenizer_train_chars: Annotated[int, positive] = key(2_000_000_000, "the tokenizer's sample, split by weight")
    seq_len: Annotated[int, not_negative] = key(0, "window length in tokens (0: the model's context)")
    document_masking: bool = key(True, "packed documents never attend to each other, in every forward we run")

    # Horizon: exactly one of max_steps, max_tokens, target_flops, tokens_per_param.
    max_steps: Annotated[int, not_negative] = key(0, "horizon in optimizer steps")
    max_tokens: Annotated[int, not_negative] = key(0, "horizon in tokens")
    target_flops: Annotated[float, not_negative] = key(0.0, "horizon in training FLOPs")
    tokens_per_param: Annotated[float, not_negative] = key(0.0, "horizon in tokens per parameter (Chinchilla: 20)")
    extend_to: Annotated[int, not_negative] = key(0, "continue a finished run to this many steps, re-planned")
    stop_at_step: Annotated[int, not_negative] = key(0, "end this session after this step, with a checkpoint")

    # Batch
    per_device_train_batch_size: Annotated[int, positive] = key(8, "windows per micro-batch per process")
    gradient_accumulation_steps: Annotated[int, not_negative] = key(
        0, "micro-batches per step (0: from tokens_per_step, else 1)"
    )
    tokens_per_step: Annotated[int, not_negative] = key(0, "global batch in tokens; accumulation follows the world")

    # Optimisation
    learning_rate: Annotated[float, positive] = key(3e-4, "peak learning rate")
    min_lr: Annotated[float, not_negative] = key(0.0, "learning rate at the end of the schedule")
    lr_scheduler_type: Annotated[str, one_of(*SCHEDULES)] = key("cosine", "the schedule's shape")
    warmup_steps: Annotated[int, not_negative] = key(0, "linear warmup steps")
    decay_fraction: Annotated[float, within(0, 1)] = key(0.2, "wsd: the share of steps spent decaying to min_lr")
    stage_boundary: Annotated[int, not_negative] = key(0, "two_stage: the first step of stage 2")
    stage1_final_lr: Annotated[float, not_negative] = key(0.0, "two_stage: learning rate at the end of stage 1")
    stage2_weight_decay: Annotated[float, not_negative] = key(0.0, "two_stage: weight decay from the boundary on")
    weight_decay: Annotated[float, not_negative] = key(0.1, "AdamW weight decay of matrices (norms never decay)")
    embedding_weight_decay: bool = key(False, "decay the embeddings and the LM head too")
    adam_beta1: Annotated[float, within(0, 1, high_open=True)] = key(0.9, "AdamW beta1")
    adam_beta2: Annotated[float, within(0, 1, high_open=True)] = key(0.95, "AdamW beta2")
    adam_epsilon: Annotated[float, positive] = key(1e-8, "AdamW epsilon")
    max_grad_norm: Annotated[float, not_negative] = key(1.0, "clip the global gradient norm to this (0: never)")
    reset_optimizer: bool = key(False, "resume from a checkpoint without optimizer state (loudly)")
    optimizer: Annotated[str, one_of(*OPTIMIZERS)] = key(
        "adamw",
        "adamw, or muon: Muon for the hidden matrices, AdamW for the embeddings, LM head, norms and biases "
        "(learning_rate is then the norms' and biases' peak; every group follows the schedule's shape)",
    )
    # Muon's keys: None means the default named in the help (nanochat's), and any of them set under
    # optimizer adamw is refused, since it would silently do nothing.
    muon_lr: Annotated[float | None, positive] = key(
        None, f"muon: peak lr of the hidden matrices, times sqrt(max(1, rows/cols)) ({MUON_DEFAULTS['muon_lr']})"
    )
    muon_momentum: Annotated[float | None, within(0, 1, high_open=True)] = key(
        None, f"muon: Nesterov momentum after the warmup ({MUON_DEFAULTS['muon_momentum']})"
    )
    muon_momentum_start: Annotated[float | None, within(0, 1, high_open=True)] = key(
        None, f"muon: momentum at step 0, linear to muon_momentum ({MUON_DEFAULTS['muon_momentum_start']})"
    )
    muon_momentum_warmup_steps: Annotated[int | None, not_negative] = key(
        None, f"muon: steps of the momentum warmup ({MUON_DEFAULTS['muon_momentum_warmup_steps']})"
    )
    muon_ns_steps: Annotated[int | None, positive] = key(
        None, f"muon: Newton-Schulz iterations per update ({MUON_DEFAULTS['muon_ns_steps']})"
    )
    muon_embedding_lr: Annotated[float | None, positive] = key(
        None,
        "muon: AdamW peak lr of untied input embeddings, times (hidden_size/768)^-0.5 "
        f"({MUON_DEFAULTS['muon_embedding_lr']})",
    )
    muon_head_lr: Annotated[float | None, positive] = key(
        None,
        "muon: AdamW peak lr of the LM head (and of tied embeddings), times (hidden_size/768)^-0.5 "
        f"({MUON_DEFAULTS['muon_head_lr']})",
    )

    # Speed and memory
    bf16: bool | None = key(None, "bf16 mixed precision (default: on when the GPU supports it; never on a CPU)")
    gradient_checkpointing: bool = key(False, "recompute each decoder layer in backward: less memory, slower")
    gradient_checkpointing_policy: Annotated[str, one_of("full", "selective")] = key(
        "full", "full: keep layer inputs only; selective: keep matmul and attention outputs, recompute the rest"
    )
    torch_compile: bool = key(False, "compile every decoder block (one graph serves all of them) and the loss")
    torch_compile_backend: str = key("inductor", "torch.compile's backend (aot_eager: compiles fast, runs eager)")
    attn_implementation: Annotated[str, one_of("", *attention.NAMES)] = key(
        "", "sdpa, eager, flex_attention or flash_attention_2 ('': flex_attention on a GPU with document masking)"
    )
    reshard_after_forward: bool | None = key(
        None, "FSDP2: free gathered layers after forward (default: the accelerate config's, else true)"
    )
    reduce_dtype: Annotated[str, one_of("float32", "bfloat16")] = key(
        "float32", "FSDP2: the dtype gradients are reduced and accumulated in"
    )

    # Checkpoints
    save_steps: Annotated[int, not_negative] = key(1000, "save every this many steps (0: never by count)")
    save_minutes: Annotated[float, not_negative] = key(0.0, "also save when this many minutes passed since the last")
    save_total_limit: Annotated[int, positive] = key(3, "checkpoints kept, besides milestones")
    milestones: list[int] = key([], "steps whose checkpoints are saved and never deleted")
    export_format: Annotated[str, one_of("auto", "scratch", "llama", "bitnet-packed")] = key(
        "auto", "the export's format (auto: stock llama unless the model has options Llama lacks)"
    )
    # Hub backup: the token comes from HF_TOKEN or `hf auth login`, never from here.
    push_to_hub: bool = key(False, "upload each checkpoint (branch step_XXXXXXXX) and the export (main)")
    hub_model_id: str = key("", "owner/name of the Hub repository")
    hub_private_repo: bool = key(True, "create the Hub repository private")
    hub_retry_seconds: Annotated[float, not_negative] = key(30.0, "first retry of a failed upload (doubles, 5 tries)")

    # Monitoring
    logging_steps: Annotated[int, positive] = key(10, "a metrics record every this many steps")
    eval_steps: Annotated[int, not_negative] = key(0, "validation loss, bits per byte, probes, CORE this often")
    eval_windows: Annotated[int, positive] = key(64, "validation windows per source per evaluation")
    sample_steps: Annotated[int, not_negative] = key(0, "generate from the sample prompts this often")
    sample_prompts: list[str] = key([], "prompts whose greedy and sampled continuations are kept")
    sample_max_new_tokens: Annotated[int, positive] = key(32, "tokens generated per sample")
    probes: str = key("", "a jsonl of prompt and answer: probe accuracy at eval_steps")
    core_bundle: str = key("", "a CORE bundle directory: CORE at eval_steps")
    core_max_per_task: Annotated[int, not_negative] = key(16, "CORE items per task during training")
    report_to: Annotated[str, one_of("none", "wandb")] = key("none", "wandb too (offline without a key)")
    wandb_project: str = key("scratchlm", "the wandb project")
    on_nonfinite: Annotated[str, one_of("stop", "skip")] = key("stop", "a non-finite loss stops, or skips the batch")
    spike_factor: Annotated[float, not_negative] = key(3.0, "warn at a loss this many times its running average")
    usd_per_gpu_hour: Annotated[float, not_negative] = key(0.0, "price of one GPU hour, for the run's cost")
    peak_tflops: Annotated[float, not_negative] = key(0.0, "dense bf16 peak for MFU (0: from the GPU's name)")

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        annotated = typing.get_type_hints(type(self), include_extras=True)
        problems = []
        for f in fields(self):  # YAML values arrive untyped: check them like the command line does
            try:
                value = convert(getattr(self, f.name), hints[f.name], f"'{f.name}'")
            except ScratchError as err:
                problems.append(str(err))
                continue
            setattr(self, f.name, value)
            for check in getattr(annotated[f.name], "__metadata__", ()):
                if value is not None and (problem := check(value)):
                    problems.append(f"'{f.name}' {problem}")
        problems += self.problems() if not problems else []
        if problems:
            raise ScratchError("config: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """What involves several keys."""
        found = []
        if sum(bool(x) for x in (self.model_preset, self.model_config, self.init_from)) != 1:
            found.append("set exactly one of model_preset, model_config, init_from")
        if not self.data_dir:
            found.append("'data_dir' is required (prepared shards, or where data_config prepares them)")
        if sum(bool(x) for x in (self.max_steps, self.max_tokens, self.target_flops, self.tokens_per_param)) != 1:
            found.append("set exactly one horizon: max_steps, max_tokens, target_flops or tokens_per_param")
        if self.gradient_accumulation_steps and self.tokens_per_step:
            found.append("set gradient_accumulation_steps or tokens_per_step, not both")
        if self.min_lr > self.learning_rate:
            found.append(f"'min_lr' ({self.min_lr}) is above 'learning_rate' ({self.learning_rate})")
        if self.lr_scheduler_type == "two_stage" and not (self.stage_boundary > 0 and self.stage1_final_lr > 0):
            found.append("two_stage needs 'stage_boundary' (a step) and 'stage1_final_lr'")
        muon_keys = [name for name in MUON_DEFAULTS if getattr(self, name) is not None]
        if self.optimizer != "muon" and muon_keys:
            found.append(
                f"{', '.join(muon_keys)} set but optimizer is {self.optimizer}; set optimizer: muon or drop them"
            )
        if self.push_to_hub and not self.hub_model_id:
            found.append("push_to_hub needs 'hub_model_id' (owner/name)")
        if "@" in self.hub_model_id:
            found.append("'hub_model_id' is a repository (owner/name): each checkpoint gets its own branch")
        hub_specs = {"hub_model_id": self.hub_model_id}
        if self.init_from.startswith(HUB_PREFIX):
            hub_specs["init_from"] = self.init_from.removeprefix(HUB_PREFIX)
        for name, spec in hub_specs.items():
            try:
                if spec:
                    parse_repo_spec(spec)
            except ScratchError as err:
                found.append(f"'{name}': {err}")
        problem = attention.config_problem(
            self.attn_implementation, self.document_masking, self.per_device_train_batch_size
        )
        if problem:
            found.append(problem)
        if self.gradient_checkpointing and os.environ.get("FSDP_ACTIVATION_CHECKPOINTING", "").lower() == "true":
            found.append(
                "gradient_checkpointing and the accelerate config's fsdp_activation_checkpointing are both on; use one"
            )
        return found


CONFIG_HELP = (
    "a YAML of the keys below (recipes/<run>/pretrain.yaml; an env: block is exported first); a key given after "
    "it as --key value overrides the file's"
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """A key's default in --help, unless its help says it already or there is none (an empty string or list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, "", [], argparse.SUPPRESS) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def parse_pretrain_args(argv: list[str] | None = None) -> PretrainConfig:
    """`--config FILE` (YAML) then `--key value` overrides; `env:` is exported first."""
    argv = list(sys.argv[1:] if argv is None else argv)
    values = {}
    if "--config" in argv:
        at = argv.index("--config")
        path = argv[at + 1] if at + 1 < len(argv) else ""
        del argv[at : at + 2]
        values = read_yaml(path)
        env = values.pop("env", {}) or {}
        if not isinstance(env, dict):
            raise ScratchError(f"{path}: 'env' must be a mapping of variable names to values")
        for name, value in env.items():
            os.environ[str(name)] = str(value)
        known = {f.name for f in fields(PretrainConfig)}
        for name in values:
            if name not in known:
                raise unknown_key_error(name, known, path)
    parser = HfArgumentParser(
        PretrainConfig,
        allow_abbrev=False,  # --max_step must not mean --max_steps
        usage="[accelerate launch ...] %(prog)s --config FILE [--key value ...]",
        formatter_class=HelpFormatter,
    )
    # Read above, before the keys' defaults are known; listed here for --help (SUPPRESS: no attribute).
    parser.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=CONFIG_HELP)
    listed = parser._optionals._group_actions  # --config first in --help, after -h
    listed.insert(1, listed.pop())
    parser.set_defaults(**values)
    for action in parser._actions:  # a key given in the YAML is no longer required on the command line
        if action.dest in values:
            action.required = False
    config, unused = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    flags = [arg for arg in unused if arg.startswith("--")]
    if unused:
        name = (flags[0] if flags else unused[0]).lstrip("-").split("=")[0]
        raise unknown_key_error(name, {f.name for f in fields(PretrainConfig)}, "command line")
    return config
