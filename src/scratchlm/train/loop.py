"""The pretraining loop: `accelerate launch recipes/pretrain.py --config recipes/<run>/pretrain.yaml`.

setup → fit → finish. Setup takes every decision that would cost GPU hours if wrong (a bad key, a
tokenizer that does not fit, a batch that does not divide, a checkpoint without optimizer state, a
second run in the same directory) before the first step; fit is the loop; finish exports.
"""

import json
import os
import signal
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from transformers import PreTrainedTokenizerBase

from ..card import write_model_card
from ..config import read_yaml
from ..data.loader import WindowLoader
from ..data.shards import TokenShards
from ..errors import ScratchError
from ..hub import CheckpointUploader, check_write_access, resolve_model_source
from ..model import ScratchConfig, ScratchForCausalLM, attention
from ..model.bitnet import bitnet_stats
from ..model.files import as_scratch, export_model, load_model_from
from ..model.loss import liger_loss
from ..run_dir import RunDir, RunLock
from ..tokenization import (
    check_tokenizer_fits,
    load_tokenizer,
    sample_texts,
    tokenizer_hash,
    train_tokenizer,
    unused_rows_warning,
)
from .checkpoint import Checkpointer, restore, resume_point, trainer_state
from .config import PretrainConfig
from .evaluate import Evaluator
from .hardware import check_first_collective, describe_hardware, prepare_environment
from .memory import check_fits, describe_estimate, setup_for_run
from .monitor import Meter, Progress, RunLog, SpikeDetector
from .optimizer import build_optimizer, set_hyperparameters
from .parallel import World, start_world, unwrapped, wrap_model
from .plan import Plan, batch_for_world, describe_batch, model_config_of, peak_flops_of, plan_run, warmup_warning
from .schedule import Schedule
from .state import TrainState
from .step import Stepper


class Stopped(Exception):
    """A signal asked the run to stop; it saved its progress first."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step:,}; re-run the command to continue")
        self.signum = signum


@dataclass
class Training:
    """What setup() made and fit() and finish() use."""

    config: PretrainConfig
    world: World
    run: RunDir
    lock: RunLock
    model_config: ScratchConfig
    tokenizer: PreTrainedTokenizerBase
    plan: Plan
    schedule: Schedule
    state: TrainState
    checkpointer: Checkpointer
    stepper: Stepper  # holds the model it calls (DDP-wrapped under DDP), the optimizer and the loader
    evaluator: Evaluator
    meter: Meter
    log: RunLog
    progress: Progress

    @property
    def raw_model(self) -> torch.nn.Module:
        return unwrapped(self.stepper.model)

    def close(self) -> None:
        self.progress.close()
        self.log.close()
        self.lock.release()


def train(config: PretrainConfig) -> Path:
    """Train (or resume) the run in config.output_dir; returns the run directory."""
    t = setup(config)
    try:
        fit(t)
        finish(t)
    finally:
        t.close()
    t.world.close()
    return t.run.path


# --- fit ---------------------------------------------------------------------------------------------


def fit(t: Training) -> None:
    """Optimizer steps until the horizon, stop_at_step or a signal: each step's record, checkpoint, evaluations."""
    spikes = SpikeDetector(t.config.spike_factor)
    usd_per_hour = t.config.usd_per_gpu_hour * t.world.size
    t.state.start_clock()
    t.stepper.model.train()
    with StopRequest() as stop:
        while not t.state.done:
            step = t.state.step
            lr, weight_decay = t.schedule.lr(step), t.schedule.weight_decay_at(step)
            set_hyperparameters(t.stepper.optimizer, lr, weight_decay, step)
            result = t.stepper.step(step + 1, lambda: stop.requested is not None, t.checkpointer.latest)
            t.state.advance(t.plan.tokens_per_step, usd_per_hour)
            t.state.skipped_steps += result.skipped
            warn_about(t, result, spikes)
            t.meter.add(result.checksum)
            t.progress.advance()
            done, step = t.state.done, t.state.step
            if step % t.config.logging_steps == 0 or step == 1 or done:
                extra = bitnet_stats(t.raw_model, result.first_inputs[:1])  # {} unless the model is BitNet
                phase = t.schedule.phase(step - 1)
                record = t.meter.record(t.state, result, lr, weight_decay, phase, t.stepper.loader.epochs(), extra)
                t.log.metrics(record)
                t.progress.update(record)
            stopping = step == t.config.stop_at_step or result.stop_requested
            t.checkpointer.maybe_save(step, done, stopping)
            t.evaluator.maybe_run(step, t.state.tokens, done)
            if result.stop_requested and not done:
                raise Stopped(stop.requested or signal.SIGTERM, step)
            if stopping and not done:
                t.progress.write(f"stopped at step {step:,} (stop_at_step); re-run the command to continue")
                break


def warn_about(t: Training, result, spikes: SpikeDetector) -> None:
    """A batch skipped for a non-finite loss (on_nonfinite: skip), a loss far above its running average."""
    step = t.state.step
    if result.skipped:
        t.progress.write(f"non-finite loss or grad norm at step {step}; batch skipped (on_nonfinite: skip)")
    if spikes.is_spike(result.loss):
        t.progress.write(f"warning: loss spike at step {step}: {result.loss:.3f} (average {spikes.average:.3f})")


def finish(t: Training) -> None:
    """The export (a finished run only), its model card, the last uploads."""
    uploader = t.checkpointer.uploader
    if t.state.done:
        t.model_config.training_seq_len = t.plan.seq_len  # what `eval bpb` measures at by default
        t.model_config.training_stage = t.config.stage  # `chat` warns about a model with no chat training
        export_model(t.raw_model, t.model_config, t.tokenizer, t.run.export, t.config.export_format, t.world.main)
        if t.world.main:
            write_model_card(t.run, data_description(t.config.data_dir))
            if uploader:
                uploader.submit(t.run.export, "main")
    t.world.barrier()
    if uploader:  # after the last collective: the other ranks must not sit in a barrier (NCCL times out)
        uploader.finish()


class StopRequest:
    """While open, SIGTERM or SIGINT ask the run to stop at the end of the current step, with a checkpoint;
    a second SIGINT (Ctrl-C twice) stops at once. A SIGTERM once a stop is asked for changes nothing: it is
    the launcher passing Ctrl-C on (accelerate's single-process launcher), and the exit status stays 130."""

    def __enter__(self) -> "StopRequest":
        self.requested: int | None = None
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        if self.requested == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.requested is not None and signum == signal.SIGTERM:
            return
        self.requested = signum
        name, pid = signal.Signals(signum).name, os.getpid()
        print(f"scratchlm: {name}: pid {pid} stops after this step, with a checkpoint", flush=True)


# --- setup -------------------------------------------------------------------------------------------


def setup(config: PretrainConfig) -> Training:
    prepare_environment()
    world = start_world(bf16=config.bf16)
    check_first_collective(world)
    run = RunDir(config.output_dir)
    lock = take_lock(run, world)
    if config.push_to_hub and world.main:  # a refused token is found now, not at the first checkpoint
        check_write_access(config.hub_model_id, config.hub_private_repo)
    torch.manual_seed(config.seed)  # the same initial weights on every rank

    if world.main:  # the other ranks wait, then read what rank 0 prepared
        prepare_data(config)
    world.barrier()
    tokenizer = load_tokenizer(Path(config.data_dir) / "tokenizer")
    shards = TokenShards(config.data_dir, tokenizer)

    resume_from = resume_point(run, world)
    model, model_config = build_model(config, resume_from, tokenizer)
    if warning := unused_rows_warning(tokenizer, model_config.vocab_size):
        print_main(world, warning)
    if resume_from is not None:
        config = keep_checkpoint_batch(config, model_config, world, resume_from)
    plan, stats = plan_run(config, model_config, world.size)
    if world.device.type == "cuda":
        check_memory(config, model_config, plan, world)
    model = wrap_model(model, world, config)
    optimizer = build_optimizer(unwrapped(model), config)  # after sharding: FSDP2 replaces the parameters
    loader = WindowLoader(shards, seq_len=plan.seq_len, micro_batch=plan.micro_batch, rank=world.rank,
                          world_size=world.size, seed=config.seed)  # fmt: skip
    state = TrainState(total_steps=plan.steps)
    states = {"train_state": state, "loader": loader}  # what a checkpoint holds beside weights and moments
    if resume_from is not None:
        resume(config, world, resume_from, unwrapped(model), optimizer, states, plan)
    schedule = Schedule.from_config(config, state.total_steps)
    if config.extend_to:
        state.total_steps = extend(schedule, state, config.extend_to, lambda m: print_main(world, m))
        schedule = Schedule.from_config(config, state.total_steps)
    if warning := warmup_warning(config, state.total_steps):
        print_main(world, warning)

    log = RunLog(run=run, config=config, enabled=world.main)
    if world.main:
        if resume_from is not None:
            run.drop_records_after(state.step)  # the steps after it are about to be trained again
        write_run_files(run, config, plan, state, stats, world)
    describe(world, plan, state, resume_from, model_config, shards)
    progress = Progress(world.main, state.total_steps, state.step)
    checkpointer = Checkpointer(
        run=run, config=config, world=world, model=unwrapped(model), optimizer=optimizer, model_config=model_config,
        tokenizer=tokenizer, states=states, plan=plan, schedule=schedule,
        uploader=start_uploads(config, world, resume_from, progress),
    )  # fmt: skip
    evaluator = Evaluator(config=config, model=unwrapped(model), tokenizer=tokenizer, shards=shards,
                          seq_len=plan.seq_len, micro_batch=plan.micro_batch, world=world, log=log,
                          progress=progress)  # fmt: skip
    if resume_from is not None:
        evaluator.catch_up(state.step, state.tokens, state.done, run.metrics() + run.samples() if world.main else [])
    return Training(
        config=config, world=world, run=run, lock=lock, model_config=model_config, tokenizer=tokenizer, plan=plan,
        schedule=schedule, state=state, checkpointer=checkpointer,
        stepper=Stepper(model=model, optimizer=optimizer, loader=loader, accumulation=plan.accumulation, world=world,
                        config=config),
        evaluator=evaluator, log=log, progress=progress,
        meter=Meter(tokens_per_step=plan.tokens_per_step, flops_per_token=plan.flops_per_token, world=world,
                    peak_flops=peak_flops(config, world)),
    )  # fmt: skip


def peak_flops(config: PretrainConfig, world: World) -> float:
    """One GPU's dense bf16 peak, for MFU: the config's, else its name's (train/plan.py); 0 on a CPU."""
    on_gpu = world.device.type == "cuda"
    return config.peak_tflops * 1e12 or (peak_flops_of(torch.cuda.get_device_name()) if on_gpu else 0)


def resume(config: PretrainConfig, world: World, path: Path, model, optimizer, states: dict, plan: Plan) -> None:
    """Restore the run from its checkpoint `path`: the same global batch, and its own horizon (a config's new
    one takes --extend_to)."""
    saved = restore(path, model, optimizer, states, config.reset_optimizer)
    check_same_batch(path, saved["plan"], plan)
    total_steps = states["train_state"].total_steps
    if plan.steps != total_steps:
        print_main(world, f"note: the config's horizon is {plan.steps:,} steps but the run's is {total_steps:,}; "
                   "keeping the run's (use --extend_to to lengthen it)")  # fmt: skip


def start_uploads(config: PretrainConfig, world: World, resume_from: Path | None, progress: Progress):
    """The uploader of checkpoints to the Hub (rank 0, push_to_hub; else None). A resumed run's checkpoint goes
    again first: its upload may have been cut short (files already there are not sent again)."""
    if not (config.push_to_hub and world.main):
        return None
    uploader = CheckpointUploader(
        config.hub_model_id, config.hub_private_repo, config.hub_retry_seconds, say=progress.write
    )
    if resume_from is not None:
        uploader.submit(resume_from, resume_from.name)
    return uploader


def take_lock(run: RunDir, world: World) -> RunLock:
    """Rank 0 holds the run directory's lock for the run's life; a refusal stops every rank."""
    lock, refusal = RunLock(run), None
    if world.main:
        try:
            lock.acquire()
        except ScratchError as err:
            refusal = str(err)
    refusal = world.broadcast(refusal)
    if refusal:
        raise ScratchError(refusal)
    return lock


def check_memory(config: PretrainConfig, model_config: ScratchConfig, plan: Plan, world: World) -> None:
    """This GPU's memory next to the run's per-GPU estimate, before any of it is spent: a run that cannot fit
    is refused now, with settings of the same tokens per step that would (train/memory.py)."""
    device = torch.cuda.get_device_properties(world.device)
    loss = "liger" if liger_loss(world.device) else "chunked"
    setup = setup_for_run(config, model_config, plan, world, attention=model_config._attn_implementation, loss=loss)
    estimate = check_fits(setup, device.total_memory, device.name, tokens_per_step=bool(config.tokens_per_step))
    print_main(world, describe_estimate(estimate, device.total_memory, f" ({device.name})"))


def print_main(world: World, message: str) -> None:
    if world.main:
        print(message, flush=True)


def prepare_data(config: PretrainConfig) -> None:
    """Make what the run reads if it is absent: the embedded default, the tokenizer, the shards. (Imported
    where used: `datasets` is needed only to prepare data, and a GPU machine may hold shards and no `datasets`.)"""
    if config.default_data and not (Path(config.default_data) / "probes.jsonl").is_file():
        from ..data.default import write_default

        write_default(config.default_data)
    if not config.data_config:
        if not (Path(config.data_dir) / "manifest.json").is_file():
            raise ScratchError(f"{config.data_dir} holds no prepared shards and no data_config says how to make them")
        return
    from ..data.prepare import prepare, read_prepare_config

    data = read_prepare_config(read_yaml(config.data_config), where=config.data_config)
    tokenizer_dir = Path(data.tokenizer)
    if not (tokenizer_dir / "tokenizer.json").is_file():
        if not config.tokenizer_vocab_size:
            raise ScratchError(
                f"tokenizer {tokenizer_dir} does not exist: train one (scratchlm tokenizer train) "
                "or set tokenizer_vocab_size to train it on the data config's text sources"
            )
        texts = sample_texts([s for s in data.sources if s.format == "text"], config.tokenizer_train_chars)
        train_tokenizer(texts, config.tokenizer_vocab_size, tokenizer_dir)
    prepare(data, config.data_dir)


def build_model(config: PretrainConfig, resume_from: Path | None, tokenizer):
    """The model to train: from the checkpoint being resumed, else a preset, a model YAML, or init_from."""
    if resume_from is not None:
        model_config = ScratchConfig.from_pretrained(str(resume_from))
        model = ScratchForCausalLM(model_config)  # weights come with the rest of the checkpoint
    elif config.init_from:
        model, model_config = load_initial_weights(config.init_from, tokenizer)
    else:
        model_config = model_config_of(config)  # what `scratchlm plan` plans
        model = None
    check_tokenizer_fits(tokenizer, model_config.vocab_size, where=f"model for {config.output_dir}")
    model_config.bos_token_id = tokenizer.bos_token_id
    model_config.eos_token_id = tokenizer.eos_token_id
    model_config.pad_token_id = tokenizer.pad_token_id
    model_config._attn_implementation = attention.for_training(config.attn_implementation, config.document_masking)
    if model is None:
        model = ScratchForCausalLM(model_config)
    model.config._attn_implementation = model_config._attn_implementation
    return model, model_config


def load_initial_weights(source: str, tokenizer):
    """Midtraining starts from an exported model directory or a training checkpoint, whose tokenizer
    must be the one the new data was prepared with (else every token id means something else)."""
    model, own_tokenizer = load_model_from(resolve_model_source(source))
    if tokenizer_hash(own_tokenizer) != tokenizer_hash(tokenizer):
        raise ScratchError(
            f"init_from {source} was trained with another tokenizer than the one this run's data "
            "was prepared with; prepare the data with the model's tokenizer"
        )
    model = as_scratch(model)  # a stock llama export continues as our class
    return model, model.config


def keep_checkpoint_batch(config: PretrainConfig, model_config, world: World, resume_from: Path) -> PretrainConfig:
    """A resume on another number of processes keeps the checkpoint's global batch (its losses then continue as
    on the old world): the accumulation follows the world size, or the micro-batch shrinks where it must, and
    the run says so. The same world with another batch is refused (check_same_batch)."""
    saved = trainer_state(resume_from)["plan"]
    tokens, was = saved["tokens_per_step"], saved["world_size"]
    if was == world.size:
        return config
    try:
        kept = batch_for_world(config, model_config, world.size, tokens)
    except ScratchError as err:
        raise ScratchError(
            f"{resume_from} was trained with {tokens:,} tokens per step on {was} process(es), and {err}; resume it "
            f"on {was} processes, or on a number that divides its {tokens // saved['seq_len']:,} windows per step"
        ) from None
    print_main(world, f"resuming on {world.size} processes a run trained on {was}: its {tokens:,} tokens/step kept "
               f"with {describe_batch(kept)} (it trained with {saved['micro_batch']} x {saved['accumulation']} "
               f"accumulation x {was})")  # fmt: skip
    return kept


def check_same_batch(resume_from: Path, saved_plan: dict, plan) -> None:
    if saved_plan["tokens_per_step"] != plan.tokens_per_step:
        raise ScratchError(
            f"{resume_from} was trained with {saved_plan['tokens_per_step']:,} tokens per step, this launch "
            f"gives {plan.tokens_per_step:,} (micro-batch x seq_len x accumulation x world size) on as many "
            "processes; drop the batch keys changed since (per_device_train_batch_size, gradient_accumulation_steps, "
            "tokens_per_step), or finish the run and start another from its export (init_from)"
        )


def extend(schedule: Schedule, state: TrainState, extend_to: int, say) -> int:
    if extend_to <= state.total_steps:
        if extend_to < state.step:
            raise ScratchError(f"extend_to {extend_to} is before the current step {state.step}")
        return state.total_steps
    step = state.step
    before = schedule.lr(max(0, step - 1))
    after = Schedule(**{**asdict(schedule), "total_steps": extend_to}).lr(step)
    say(
        f"extending the run from {state.total_steps:,} to {extend_to:,} steps: the schedule is re-planned for "
        f"the new horizon; learning rate at step {step:,} was {before:.3e}, now {after:.3e}"
    )
    return extend_to


def data_description(data_dir: str) -> list[str]:
    """One line per source of the shards, for the model card."""
    manifest = json.loads((Path(data_dir) / "manifest.json").read_text())
    return [
        f"{s['name']} ({s['path']}): {s['weight']:.0%} of the mixture, {s['train']['tokens']:,} tokens in the shards"
        for s in manifest["sources"]
    ]


def write_run_files(run: RunDir, config: PretrainConfig, plan: Plan, state: TrainState, stats: dict, world: World):
    run.path.mkdir(parents=True, exist_ok=True)
    run.config_file.write_text(yaml.safe_dump(asdict(config), sort_keys=False))
    run.write_plan(
        {
            **plan.as_dict(),
            **stats,
            "stage": config.stage,
            "total_steps": state.total_steps,
            "hardware": describe_hardware(world.size),
        }  # fmt: skip
    )


def describe(world: World, plan: Plan, state: TrainState, resume_from, model_config, shards: TokenShards) -> None:
    """The run in five lines, before its first step."""

    def say(message: str) -> None:
        print_main(world, message)

    say(
        f"model: {plan.params_total:,} parameters, {model_config.num_hidden_layers} layers x "
        f"{model_config.hidden_size}, vocab {model_config.vocab_size}, attention {model_config._attn_implementation}"
    )
    say(
        f"batch: {plan.micro_batch} x {plan.seq_len} tokens x {plan.accumulation} accumulation x {world.size} "
        f"processes = {plan.tokens_per_step:,} tokens/step; bf16 {'on' if world.bf16 else 'off'}; "
        f"{torch.get_num_threads()} threads"
    )
    say(
        f"horizon: {state.total_steps:,} steps = {state.total_steps * plan.tokens_per_step:,} tokens "
        f"({state.total_steps * plan.tokens_per_step / plan.params_total:.1f} tokens/parameter, "
        f"{state.total_steps * plan.tokens_per_step * plan.flops_per_token:.3e} FLOPs)"
    )
    say("data: " + ", ".join(f"{s.name} {s.weight:.0%} ({len(s.train):,} tokens)" for s in shards.sources))
    say(f"resuming from {resume_from} at step {state.step:,}" if resume_from else "starting at step 0")
