"""Evaluation during training: validation loss and bits per byte, probe accuracy and CORE at `eval_steps`,
generations of the sample prompts at `sample_steps`. Every rank takes part (a sharded model's forward is
collective); rank 0 writes the records.

A checkpoint is written before the evaluations of its step (a failing evaluation must not cost the
steps since the last save), so a run killed in between would lose them for good: on resume,
`catch_up` redoes those of the checkpoint's step that its records lack.

Evaluations run eager even when training is compiled: their shapes (the validation batch, probe and CORE
lengths, sampling's growing KV cache) would each be another compile of the decoder layer, and past torch's
recompile limit (8) the rest run eager anyway, after minutes of compiling on a large model and with a
warning in the log. Training keeps its graphs; evaluation is a small share of a run.
"""

import contextlib

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ..data.shards import TokenShards
from ..disk import read_rows
from ..eval.bpb import evaluate_bpb, token_byte_lengths
from ..eval.core import evaluate_core, load_bundle
from ..eval.probes import probe_accuracy
from .config import PretrainConfig
from .monitor import Progress, RunLog, generate_samples
from .parallel import World, autocast


class Evaluator:
    """The evaluations a config asks for, of `model` (the unwrapped module) in windows of `seq_len` tokens,
    `micro_batch` at a time (the run's plan); results go to the run's log, a line of them to the progress messages."""

    def __init__(
        self,
        *,
        config: PretrainConfig,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        shards: TokenShards,
        seq_len: int,
        micro_batch: int,
        world: World,
        log: RunLog,
        progress: Progress,
    ):
        self.config, self.model, self.tokenizer, self.shards = config, model, tokenizer, shards
        self.seq_len, self.micro_batch, self.world = seq_len, micro_batch, world
        self.log, self.progress = log, progress
        # Read now, not at the first evaluation a thousand steps in.
        self.core_tasks = load_bundle(config.core_bundle) if config.core_bundle else None
        self.probes = read_rows(config.probes, ("prompt", "answer")) if config.probes else None
        self.token_bytes = token_byte_lengths(tokenizer, model.config.vocab_size)

    def evaluation_due(self, step: int, done: bool) -> bool:
        return bool(self.config.eval_steps) and (step % self.config.eval_steps == 0 or done)

    def samples_due(self, step: int, done: bool) -> bool:
        return bool(self.config.sample_steps) and (step % self.config.sample_steps == 0 or done)

    def evaluating(self) -> contextlib.ExitStack:
        return evaluating(self.world)

    def maybe_run(self, step: int, tokens: int, done: bool) -> None:
        with self.evaluating():
            if self.evaluation_due(step, done):
                self.evaluate(step, tokens)
            if self.samples_due(step, done):
                self.sample(step)

    def catch_up(self, step: int, tokens: int, done: bool, records: list[dict]) -> None:
        """Resumed at `step`: redo its evaluation and samples if a kill cut them short (rank 0 has the records)."""
        evaluated = any(r.get("step") == step and "val_loss" in r for r in records)
        sampled = any(r.get("step") == step and "mode" in r for r in records)
        evaluated, sampled = self.world.broadcast((evaluated, sampled))
        with self.evaluating():
            if self.evaluation_due(step, done) and not evaluated:
                self.evaluate(step, tokens)
            if self.samples_due(step, done) and not sampled:
                self.sample(step)

    def evaluate(self, step: int, tokens: int) -> dict:
        config = self.config
        result = evaluate_bpb(
            self.model, self.shards, self.token_bytes, self.seq_len, self.micro_batch, config.eval_windows,
            config.document_masking, self.world.rank, self.world.size,
        )  # fmt: skip
        if self.probes:
            result["probe_accuracy"] = probe_accuracy(self.model, self.tokenizer, self.probes)["probe_accuracy"]
        if self.core_tasks:
            core = evaluate_core(self.model, self.tokenizer, self.core_tasks, config.core_max_per_task, split=False)
            result["core"] = core["core"]
        self.log.metrics({"step": step, "tokens": tokens, **result})
        extra = "".join(
            f", {name} {result[key]:.4f}"
            for key, name in (("probe_accuracy", "probes"), ("core", "CORE"))
            if key in result
        )
        self.progress.write(f"step {step}: val loss {result['val_loss']:.4f}, val bpb {result['val_bpb']:.4f}{extra}")
        return result

    def sample(self, step: int) -> None:
        config = self.config
        synced = self.world.fsdp and self.world.size > 1  # ranks that stop generating early must keep pace
        records = generate_samples(
            self.model, self.tokenizer, config.sample_prompts, config.sample_max_new_tokens, step, config.seed, synced
        )
        self.log.samples(records)


def evaluating(world: World) -> contextlib.ExitStack:
    """How every evaluation runs: under the loop's autocast, eager even when the blocks are compiled (each
    evaluation's shapes would recompile the decoder layer past torch's limit). The rehearsal runs them so too."""
    stack = contextlib.ExitStack()
    stack.enter_context(autocast(world))
    stack.enter_context(torch.compiler.set_stance("force_eager"))
    return stack
