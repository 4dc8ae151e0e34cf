"""The pretraining (and midtraining) configuration: one flat dataclass, read from YAML, overridable
from the command line (`--config run.yaml --learning_rate 3e-4`), checked before any work starts.

Keys follow transformers' TrainingArguments names where one exists. An `env:` block in the YAML is
exported before anything else runs (the place for NCCL_* and WANDB_* variables, as in TRL's CLI).
"""

import os
import sys
import typing
from dataclasses import dataclass, field, fields

from transformers import HfArgumentParser

from ..config import convert, read_yaml, unknown_key_error
from ..errors import ScratchError
from ..hub import HUB_PREFIX, parse_repo_spec
from .plan import Plan, resolve_plan

SCHEDULES = ("cosine", "wsd", "two_stage", "constant")


@dataclass
class PretrainConfig:
    output_dir: str
    run_name: str = ""
    stage: str = "pretrain"  # or "midtrain": how reports name the run
    seed: int = 0

    # The model: exactly one of a preset, a model YAML (ScratchConfig keys + optional preset), or
    # weights to start from (an exported model directory or a training checkpoint: midtraining; either
    # may be on the Hub: hub://owner/name@revision).
    model_preset: str = ""
    model_config: str = ""
    init_from: str = ""

    # Data: prepared shards; prepared first from data_config if absent. For a run from nothing,
    # default_data writes the embedded default and tokenizer_vocab_size trains the data config's
    # tokenizer on its text sources, each only if absent.
    data_dir: str = ""
    data_config: str = ""
    default_data: str = ""
    tokenizer_vocab_size: int = 0
    tokenizer_train_chars: int = 2_000_000_000  # the sample it trains on, split by source weight
    seq_len: int = 0  # 0: the model's context length
    document_masking: bool = True  # attention stays within each packed document

    # Horizon: exactly one of these is set.
    max_steps: int = 0
    max_tokens: int = 0
    target_flops: float = 0.0
    tokens_per_param: float = 0.0  # 20 is Chinchilla-optimal
    extend_to: int = 0  # continue a finished run to this many steps, schedule re-planned
    stop_at_step: int = 0  # end this session after this step, with a checkpoint (re-run to go on)

    # Batch: micro-batch and accumulation, or a target tokens per step that sets the accumulation.
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 0  # 0: from tokens_per_step, else 1
    tokens_per_step: int = 0

    # Optimisation
    learning_rate: float = 3e-4
    min_lr: float = 0.0
    lr_scheduler_type: str = "cosine"
    warmup_steps: int = 0
    decay_fraction: float = 0.2  # wsd: the share of steps spent decaying to min_lr
    stage_boundary: int = 0  # two_stage: the first step of stage 2
    stage1_final_lr: float = 0.0  # two_stage: lr reached at the end of stage 1
    stage2_weight_decay: float = 0.0  # two_stage: weight decay from the boundary on
    weight_decay: float = 0.1
    embedding_weight_decay: bool = False
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    reset_optimizer: bool = False  # resume from a checkpoint without optimizer state (loudly)

    # Speed and memory
    bf16: bool | None = None  # None: on when the GPU supports it; never on CPU
    gradient_checkpointing: bool = False
    torch_compile: bool = False
    attn_implementation: str = ""  # sdpa, eager, flash_attention_2, flex_attention; "": automatic

    # Checkpoints
    save_steps: int = 1000
    save_minutes: float = 0.0
    save_total_limit: int = 3
    milestones: list[int] = field(default_factory=list)  # steps whose checkpoints are never deleted
    export_format: str = "scratch"
    # Hub backup: each checkpoint uploaded in the background to branch step_XXXXXXXX of hub_model_id,
    # the export to main (see hub.py); the token comes from HF_TOKEN or `hf auth login`, never from here.
    push_to_hub: bool = False
    hub_model_id: str = ""  # owner/name
    hub_private_repo: bool = True
    hub_retry_seconds: float = 30.0  # first retry of a failed upload; doubles, 5 attempts in all

    # Monitoring
    logging_steps: int = 10
    eval_steps: int = 0
    eval_windows: int = 64  # validation windows per source per evaluation
    sample_steps: int = 0
    sample_prompts: list[str] = field(default_factory=list)
    sample_max_new_tokens: int = 32
    # At eval_steps too, every process scoring everything (see eval/core.py):
    probes: str = ""  # jsonl of {prompt, answer}: probe accuracy
    core_bundle: str = ""  # a CORE bundle directory
    core_max_per_task: int = 16
    report_to: str = "none"  # or "wandb"
    wandb_project: str = "scratchlm"
    on_nonfinite: str = "stop"  # or "skip": drop the batch, count it, go on
    spike_factor: float = 3.0  # warn when loss exceeds this multiple of its running average
    usd_per_gpu_hour: float = 0.0
    peak_tflops: float = 0.0  # 0: from the GPU's name (RTX 4090 165, A100 312, H100/H200 989)

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in fields(self):  # YAML values arrive untyped: check them like the command line does
            setattr(self, f.name, convert(getattr(self, f.name), hints[f.name], f"config: '{f.name}'"))
        self.validate()

    def plan(self, stats: dict, seq_len: int, world_size: int) -> Plan:
        """Horizon and batch resolved for a model (stats from model_stats) and a world size."""
        return resolve_plan(
            stats,
            seq_len,
            self.per_device_train_batch_size,
            world_size,
            accumulation=self.gradient_accumulation_steps,
            tokens_per_step=self.tokens_per_step,
            max_steps=self.max_steps,
            max_tokens=self.max_tokens,
            target_flops=self.target_flops,
            tokens_per_param=self.tokens_per_param,
        )

    def validate(self) -> None:
        def fail(message: str):
            raise ScratchError(f"config: {message}")

        if sum(bool(x) for x in (self.model_preset, self.model_config, self.init_from)) != 1:
            fail("set exactly one of model_preset, model_config, init_from")
        if not self.data_dir:
            fail("'data_dir' is required (prepared shards, or where data_config prepares them)")
        if sum(bool(x) for x in (self.max_steps, self.max_tokens, self.target_flops, self.tokens_per_param)) != 1:
            fail("set exactly one horizon: max_steps, max_tokens, target_flops or tokens_per_param")
        if self.gradient_accumulation_steps and self.tokens_per_step:
            fail("set gradient_accumulation_steps or tokens_per_step, not both")
        positive = ["per_device_train_batch_size", "learning_rate", "logging_steps", "save_total_limit"]
        for name in positive:
            if not getattr(self, name) > 0:
                fail(f"'{name}' must be positive, got {getattr(self, name)}")
        nonnegative = [
            "max_steps",
            "max_tokens",
            "target_flops",
            "tokens_per_param",
            "warmup_steps",
            "min_lr",
            "weight_decay",
            "max_grad_norm",
            "save_steps",
            "save_minutes",
            "eval_steps",
            "sample_steps",
            "core_max_per_task",
            "seq_len",
            "extend_to",
            "usd_per_gpu_hour",
            "hub_retry_seconds",
            "peak_tflops",
            "tokens_per_step",
        ]
        for name in nonnegative:
            if getattr(self, name) < 0:
                fail(f"'{name}' must not be negative, got {getattr(self, name)}")
        if self.lr_scheduler_type not in SCHEDULES:
            fail(f"'lr_scheduler_type' must be one of {', '.join(SCHEDULES)}, got '{self.lr_scheduler_type}'")
        if self.min_lr > self.learning_rate:
            fail(f"'min_lr' ({self.min_lr}) is above 'learning_rate' ({self.learning_rate})")
        if not 0 < self.decay_fraction <= 1:
            fail(f"'decay_fraction' must be in (0, 1], got {self.decay_fraction}")
        if self.lr_scheduler_type == "two_stage" and not (self.stage_boundary > 0 and self.stage1_final_lr > 0):
            fail("two_stage needs 'stage_boundary' (a step) and 'stage1_final_lr'")
        if not 0 < self.adam_beta1 < 1 or not 0 < self.adam_beta2 < 1:
            fail("'adam_beta1' and 'adam_beta2' must be in (0, 1)")
        choices = {
            "on_nonfinite": ("stop", "skip"),
            "report_to": ("none", "wandb"),
            "export_format": ("scratch", "llama", "bitnet-packed"),
            "stage": ("pretrain", "midtrain"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                fail(f"'{name}' must be one of {', '.join(allowed)}, got '{getattr(self, name)}'")
        if self.push_to_hub and not self.hub_model_id:
            fail("push_to_hub needs 'hub_model_id' (owner/name)")
        if "@" in self.hub_model_id:
            fail("'hub_model_id' is a repository (owner/name): each checkpoint gets its own branch")
        hub_specs = {"hub_model_id": self.hub_model_id}
        if self.init_from.startswith(HUB_PREFIX):
            hub_specs["init_from"] = self.init_from.removeprefix(HUB_PREFIX)
        for name, spec in hub_specs.items():
            try:
                if spec:
                    parse_repo_spec(spec)
            except ScratchError as err:
                fail(f"'{name}': {err}")
        if self.gradient_checkpointing and os.environ.get("FSDP_ACTIVATION_CHECKPOINTING", "").lower() == "true":
            fail(
                "gradient_checkpointing and the accelerate config's fsdp_activation_checkpointing are both on; use one"
            )


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
        for key in values:
            if key not in known:
                raise unknown_key_error(key, known, path)
    parser = HfArgumentParser(PretrainConfig, allow_abbrev=False)  # --max_step must not mean --max_steps
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
