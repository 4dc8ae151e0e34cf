"""What the training loop itself costs: scratchlm's loop beside a bare PyTorch loop and transformers' Trainer,
on the same model and data, written to benchmarks/results/loop_overhead.json.

    python benchmarks/loop_overhead.py [--steps 100] [--warmup 10] [--rounds 3] [--threads 2] [--loops ...]

The loops, each trained from the same initial weights on the same windows (8 x 256 tokens, fp32, no
accumulation), for `warmup` steps and then `steps` timed steps:

- scratchlm, document masking off and on: the loop as users run it, `setup(config)` then `fit(t)` from
  train/loop.py on a fresh run directory, with the tiny recipe's config (recipes/tiny/pretrain.yaml: its
  model, batch, schedule, clipping and logging every 10 steps) and no evaluations or samples. Everything
  fit() does per step is inside the timing: the loader, the Stepper's step (chunked loss, the finiteness
  check, the checksum of the windows), the schedule, the record every 10 steps (metrics.jsonl), the spike
  detector, the progress bar. The time is the loop's own clock (TrainState.elapsed_s in metrics.jsonl) from
  the record at step `warmup` to the one at `warmup + steps`; the end-of-run checkpoint comes after it.
- bare: the same model class and initial weights (the loop's own build_model), the same windows already in
  memory, `F.cross_entropy` on the full logits, backward, clip_grad_norm_, AdamW with the recipe's
  hyperparameters, zero_grad; a loss printed every 10 steps.
- trainer: transformers' Trainer on the same model, windows and hyperparameters, its own loss replaced by
  the same `F.cross_entropy`, no saving, no reporting; timed by a callback at the same two steps.

Rounds are interleaved (every other one in reverse order) so that the host's load falls on every loop alike;
the figures are medians over rounds. The data are the tiny recipe's, made by the loop's own prepare_data
(a small default corpus) unless --data names a folder of prepared shards.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path

LOOPS = ("scratchlm", "scratchlm_masked", "bare", "trainer")
OUT = Path(__file__).parent / "results" / "loop_overhead.json"
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="timed steps per loop and round")
    parser.add_argument("--warmup", type=int, default=10, help="steps before the timing starts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--loops", default=",".join(LOOPS), help=f"which of {', '.join(LOOPS)} (bare is required)")
    parser.add_argument("--data", type=Path, help="prepared shards (default: made in a temporary folder)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    args.loops = [name for name in LOOPS if name in args.loops.split(",")]
    if "bare" not in args.loops:
        parser.error("--loops must include bare: every figure is a ratio to it")
    if not (args.warmup == 1 or args.warmup % 10 == 0) or (args.warmup + args.steps) % 10 or args.steps < 1:
        parser.error("the timing runs from record to record: --warmup 1 or a multiple of 10 (the recipe's "
                     "logging_steps), and --warmup + --steps a multiple of 10")  # fmt: skip
    return args


# Threads are fixed before torch starts: every loop computes with the same number.
ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    os.environ["OMP_NUM_THREADS"] = str(ARGS.threads)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402

from scratchlm.config import read_yaml  # noqa: E402
from scratchlm.data.loader import WindowLoader  # noqa: E402
from scratchlm.data.shards import TokenShards  # noqa: E402
from scratchlm.tokenization import load_tokenizer  # noqa: E402
from scratchlm.train.config import PretrainConfig  # noqa: E402
from scratchlm.train.loop import build_model, fit, prepare_data, setup  # noqa: E402


def recipe_config(data: Path, output_dir: Path, steps: int, masking: bool) -> PretrainConfig:
    """The tiny recipe's config on prepared shards, for `steps` steps, without evaluations or samples."""
    values = read_yaml(RECIPE / "pretrain.yaml")
    values.update(
        output_dir=str(output_dir), data_dir=str(data), default_data="", data_config="", max_steps=steps,
        eval_steps=0, sample_steps=0, sample_prompts=[], probes="", core_bundle="", save_steps=0,
        document_masking=masking,
    )  # fmt: skip
    return PretrainConfig(**values)


def make_data(work: Path) -> Path:
    """The tiny recipe's data made by the loop's own prepare_data, from a small embedded default (150,000
    tokens, a 1,024-token vocabulary; the model keeps its 1,280 rows)."""
    from scratchlm.data.default import write_default

    here = os.getcwd()
    os.chdir(work)  # the recipe names its files relative to the working directory
    try:
        values = read_yaml(RECIPE / "pretrain.yaml")
        config = PretrainConfig(**{**values, "data_config": str(RECIPE / "data.yaml"), "tokenizer_vocab_size": 1024})
        write_default(config.default_data, seed=0, tokens=150_000, countries=20)
        prepare_data(config)
    finally:
        os.chdir(here)
    return work / config.data_dir


# --- the loops -----------------------------------------------------------------------------------------


def run_scratchlm(data: Path, work: Path, warmup: int, steps: int, masking: bool) -> dict:
    run_dir = work / f"run-{'masked' if masking else 'plain'}"
    shutil.rmtree(run_dir, ignore_errors=True)
    t = setup(recipe_config(data, run_dir, warmup + steps, masking))
    cpu, write_record = {}, t.log.metrics

    def observed(record: dict) -> None:  # the process's CPU time at each record; the record is written as ever
        cpu[record["step"]] = time.process_time()
        write_record(record)

    t.log.metrics = observed
    try:
        assert torch.get_num_threads() == ARGS.threads, torch.get_num_threads()
        fit(t)
        records = {r["step"]: r for r in t.run.training_metrics()}
    finally:
        t.close()
        t.world.close()
    end = warmup + steps
    seconds = records[end]["elapsed_s"] - records[warmup]["elapsed_s"]
    tokens = records[end]["tokens"] - records[warmup]["tokens"]
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"tok_per_s": tokens / seconds, "seconds": seconds, "cpu_s": cpu[end] - cpu[warmup],
            "loss_1": records[1]["loss"], "loss_last": records[end]["loss"]}  # fmt: skip


def windows(data: Path, config: PretrainConfig, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first `count` micro-batches the loop trains on (one process), as (input_ids, labels)."""
    loader = WindowLoader(
        TokenShards(data), seq_len=config.seq_len, micro_batch=config.per_device_train_batch_size, seed=config.seed
    )
    return [(b["input_ids"], b["labels"]) for b in (next(loader) for _ in range(count))]


def fresh_model(data: Path, config: PretrainConfig):
    """The loop's model and initial weights (its build_model after its seed), without the KV cache in training."""
    torch.manual_seed(config.seed)
    model, _ = build_model(config, None, load_tokenizer(data / "tokenizer"))
    model.config.use_cache = False
    return model


def plain_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten())


def run_bare(data: Path, work: Path, warmup: int, steps: int) -> dict:
    config = recipe_config(data, work / "unused", warmup + steps, masking=False)
    batches = windows(data, config, warmup + steps)
    model = fresh_model(data, config)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay,
                                  betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon)  # fmt: skip
    losses = {}
    for step, (inputs, labels) in enumerate(batches, start=1):
        if step == warmup + 1:
            start, start_cpu = time.perf_counter(), time.process_time()
        loss = plain_loss(model(input_ids=inputs).logits, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 10 == 0 or step == 1:  # the recipe's logging_steps
            losses[step] = loss.item()
            print(f"bare: step {step}, loss {losses[step]:.4f}", flush=True)
    seconds, cpu_s = time.perf_counter() - start, time.process_time() - start_cpu
    tokens = steps * config.per_device_train_batch_size * config.seq_len
    return {"tok_per_s": tokens / seconds, "seconds": seconds, "cpu_s": cpu_s, "loss_1": losses[1],
            "loss_last": losses[step]}  # fmt: skip


def run_trainer(data: Path, work: Path, warmup: int, steps: int) -> dict:
    config = recipe_config(data, work / "unused", warmup + steps, masking=False)
    rows = [{"input_ids": x, "labels": y} for inputs, labels in windows(data, config, warmup + steps)
            for x, y in zip(inputs, labels, strict=True)]  # fmt: skip
    times: dict[int, float] = {}

    class Clock(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            times[state.global_step] = (time.perf_counter(), time.process_time())

    arguments = transformers.TrainingArguments(
        output_dir=str(work / "trainer"), max_steps=warmup + steps, per_device_train_batch_size=8,
        learning_rate=config.learning_rate, weight_decay=config.weight_decay, adam_beta1=config.adam_beta1,
        adam_beta2=config.adam_beta2, adam_epsilon=config.adam_epsilon, max_grad_norm=config.max_grad_norm,
        lr_scheduler_type="cosine", warmup_steps=config.warmup_steps, logging_steps=10, save_strategy="no",
        report_to="none", use_cpu=True, seed=config.seed, dataloader_num_workers=0, remove_unused_columns=False,
    )  # fmt: skip
    trainer = transformers.Trainer(
        model=fresh_model(data, config), args=arguments, train_dataset=rows, callbacks=[Clock()],
        compute_loss_func=lambda outputs, labels, num_items_in_batch=None: plain_loss(outputs.logits, labels),
    )  # fmt: skip
    trainer.train()
    assert torch.get_num_threads() == ARGS.threads, torch.get_num_threads()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    (start, start_cpu), (end, end_cpu) = times[warmup], times[warmup + steps]
    shutil.rmtree(work / "trainer", ignore_errors=True)
    tokens = steps * config.per_device_train_batch_size * config.seq_len
    return {"tok_per_s": tokens / (end - start), "seconds": end - start, "cpu_s": end_cpu - start_cpu,
            "loss_last": losses[-1]}  # fmt: skip


def run(name: str, data: Path, work: Path, warmup: int, steps: int) -> dict:
    if name == "bare":
        return run_bare(data, work, warmup, steps)
    if name == "trainer":
        return run_trainer(data, work, warmup, steps)
    return run_scratchlm(data, work, warmup, steps, masking=name == "scratchlm_masked")


# --- the parts of a step ---------------------------------------------------------------------------


def step_parts(data: Path, work: Path) -> dict:
    """What fit() does beside the step's compute, each part timed alone on the loop's own objects (the best of
    five repeats, in microseconds of wall time); and the chunked loss beside the plain one (logits, then
    F.cross_entropy) on the model's shapes, forward and backward, in milliseconds of CPU time."""
    from scratchlm.model.bitnet import bitnet_stats
    from scratchlm.model.loss import lm_loss, plain_lm_loss
    from scratchlm.train.optimizer import set_hyperparameters
    from scratchlm.train.step import window_checksum

    t = setup(recipe_config(data, work / "run-parts", 10, masking=False))
    t.state.start_clock()
    result = t.stepper.step(1, False, lambda: None)
    t.state.advance(t.plan.tokens_per_step, 0.0)
    batch = next(t.stepper.loader)

    def record() -> None:  # what a step on a logging step adds (every 10th)
        bitnet_stats(t.raw_model, result.first_inputs[:1])
        t.meter.add(result.checksum)
        line = t.meter.record(t.state, result, 1e-3, 0.1, t.schedule.phase(1), t.stepper.loader.epochs(), {})
        t.log.metrics(line)
        t.progress.update(line)

    parts = {
        "next(loader)": lambda: next(t.stepper.loader),
        "window_checksum": lambda: window_checksum(batch["window_ids"]),
        "schedule and set_hyperparameters": lambda: set_hyperparameters(
            t.stepper.optimizer, t.schedule.lr(5), t.schedule.weight_decay_at(5), 5
        ),
        "state, meter, progress, spikes": lambda: (t.state.advance(0, 0.0), t.meter.add(0), t.progress.advance()),
        "evaluator.maybe_run (none due)": lambda: t.evaluator.maybe_run(5, 0, False),
        "checkpointer.maybe_save (none due)": lambda: t.checkpointer.maybe_save(5, False, False),
        "record (bitnet_stats, meter, metrics.jsonl, bar)": record,
    }
    host_us = {name: round(min(timeit.repeat(part, number=20, repeat=5)) / 20 * 1e6, 1) for name, part in parts.items()}
    step_cpu_s = one_thread_steps(t, data)
    head = t.raw_model.lm_head
    t.close()
    t.world.close()
    torch.manual_seed(0)
    hidden = torch.randn(8, 256, head.in_features, requires_grad=True)
    labels = torch.randint(0, head.out_features, (8, 256))
    losses = {"chunked (the loop's)": lm_loss, "plain": plain_lm_loss}
    cpu_ms = {name: [] for name in losses}
    for _ in range(5):
        for name, loss in losses.items():
            start = time.process_time()
            for _ in range(3):
                loss(hidden, head, labels).backward()
            cpu_ms[name].append((time.process_time() - start) / 3 * 1e3)
    return {"host_us": host_us, "loss_cpu_ms": {name: round(min(v), 1) for name, v in cpu_ms.items()},
            "step_cpu_s_one_thread": step_cpu_s}  # fmt: skip


def one_thread_steps(t, data: Path) -> dict:
    """The loop's Stepper.step beside the bare step, interleaved, in CPU seconds per step on one thread: CPU
    time on one thread is what a busy host's scheduling moves least (two threads spin while they wait)."""
    config, threads = t.config, torch.get_num_threads()
    torch.set_num_threads(1)
    batches = windows(data, config, 3)
    model = fresh_model(data, config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    model.train(), t.stepper.model.train()

    def bare(index: int) -> None:
        inputs, labels = batches[index]
        plain_loss(model(input_ids=inputs).logits, labels).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    loops = {"scratchlm": lambda index: t.stepper.step(index + 2, False, lambda: None), "bare": bare}
    seconds = {name: [] for name in loops}
    for repeat in range(5):
        for name, step in loops.items() if repeat % 2 == 0 else reversed(loops.items()):
            start = time.process_time()
            for index in range(2):
                step(index)
            seconds[name].append((time.process_time() - start) / 2)
    torch.set_num_threads(threads)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    return {**{name: round(value, 3) for name, value in medians.items()},
            "ratio": round(medians["scratchlm"] / medians["bare"], 3)}  # fmt: skip


# --- the measurement -----------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    loops = args.loops
    rounds = []
    with tempfile.TemporaryDirectory(prefix="loop_overhead_") as scratch:
        work = Path(scratch)
        data = args.data or make_data(work)
        for index in range(args.rounds):
            order = loops if index % 2 == 0 else loops[::-1]
            figures = {"order": order, "load_before": os.getloadavg()}
            for name in order:
                print(f"loop_overhead: round {index + 1}, {name}", flush=True)
                figures[name] = run(name, data, work, args.warmup, args.steps)
                print(f"loop_overhead: {name}: {figures[name]['tok_per_s']:,.0f} tok/s", flush=True)
            figures["load_after"] = os.getloadavg()
            rounds.append(figures)
        parts = step_parts(data, work)
    medians = {name: statistics.median(r[name]["tok_per_s"] for r in rounds) for name in loops}
    tokens = args.steps * 8 * 256  # the recipe's batch
    cpu_medians = {name: statistics.median(tokens / r[name]["cpu_s"] for r in rounds) for name in loops}
    result = {
        "command": " ".join(["python", *sys.argv]),
        "what": __doc__.split("\n\n")[2].strip(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} threads",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "shape": "tiny preset (6 x 256, vocab 1,280), micro-batch 8 x seq 256, fp32, no accumulation, sdpa",
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "median_tok_per_s": {name: round(value) for name, value in medians.items()},
        "vs_bare": {name: round(value / medians["bare"], 3) for name, value in medians.items()},
        # Tokens per second of the process's CPU time (all its threads): what a busy host's scheduling moves least.
        "median_tok_per_cpu_s": {name: round(value) for name, value in cpu_medians.items()},
        "vs_bare_cpu": {name: round(value / cpu_medians["bare"], 3) for name, value in cpu_medians.items()},
        "rounds": rounds,
        "step_parts": parts,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({key: result[key] for key in ("median_tok_per_s", "vs_bare", "vs_bare_cpu")}, indent=1))


if __name__ == "__main__":
    main(ARGS)
