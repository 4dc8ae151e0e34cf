"""The pretraining loop: `accelerate launch recipes/pretrain.py --config recipes/<run>/pretrain.yaml`.

Read top to bottom: environment, data, model, plan, resume, the loop, export. Every decision that
would cost GPU hours if wrong (a bad key, a tokenizer that does not fit, a batch that does not
divide, a checkpoint without optimizer state) is taken before the first step.
"""

import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from tqdm import tqdm

from ..config import read_yaml
from ..data.default import write_default
from ..data.loader import WindowLoader
from ..data.prepare import prepare, read_prepare_config
from ..data.shards import TokenShards
from ..errors import ScratchError
from ..eval.bpb import evaluate_bpb, token_byte_lengths
from ..eval.chat import read_rows
from ..eval.core import evaluate_core, load_bundle
from ..eval.probes import probe_accuracy
from ..hub import CheckpointUploader, check_write_access, resolve_model_source
from ..model import ScratchConfig, ScratchForCausalLM
from ..model.bitnet import bitnet_stats
from ..model.files import attention_backend, save_model
from ..model.info import model_stats
from ..model.presets import build_config
from ..report import write_model_card
from ..tokenization import check_tokenizer_fits, load_tokenizer, sample_texts, tokenizer_hash, train_tokenizer
from . import checkpoint as ckpt
from .config import PretrainConfig
from .hardware import describe_hardware, prepare_environment
from .monitor import Progress, RunLog, SpikeDetector, generate_samples, is_finite, memory_stats
from .optimizer import build_optimizer, set_hyperparameters
from .plan import peak_flops_of
from .schedule import Schedule


def train(config: PretrainConfig) -> Path:
    """Train (or resume) the run in config.output_dir; returns the run directory."""
    prepare_environment()
    from accelerate import Accelerator  # after the environment: it starts the process group

    on_gpu = torch.cuda.is_available()
    bf16 = config.bf16 if config.bf16 is not None else on_gpu and torch.cuda.is_bf16_supported()
    accelerator = Accelerator(mixed_precision="bf16" if bf16 else "no")
    expected = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != expected:
        raise ScratchError(
            f"launched {expected} processes but accelerate runs {accelerator.num_processes}: each "
            "would train alone on the same data"
        )
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    run_dir = Path(config.output_dir)
    if config.push_to_hub:  # a refused token is found now, not at the first checkpoint
        check_write_access(config.hub_model_id, config.hub_private_repo)
    torch.manual_seed(config.seed)  # the same initial weights on every rank

    # --- data --------------------------------------------------------------------------------------
    with accelerator.main_process_first():
        prepare_data(config)
    tokenizer = load_tokenizer(Path(config.data_dir) / "tokenizer")
    shards = TokenShards(config.data_dir, tokenizer)
    core_tasks = load_bundle(config.core_bundle) if config.core_bundle else None  # checked now, not at step 1,000
    probes = read_rows(config.probes, ("prompt", "answer")) if config.probes else None

    # --- model -------------------------------------------------------------------------------------
    if main:
        ckpt.remove_partial_checkpoints(run_dir)
    accelerator.wait_for_everyone()
    resume_from = ckpt.latest_checkpoint(run_dir)
    model, model_config = build_model(config, resume_from, tokenizer)
    seq_len = config.seq_len or model_config.max_position_embeddings
    if seq_len > model_config.max_position_embeddings:
        raise ScratchError(
            f"config: seq_len {seq_len} exceeds the model's context "
            f"(max_position_embeddings {model_config.max_position_embeddings})"
        )
    stats = model_stats(model_config, seq_len)
    plan = config.plan(stats, seq_len, world)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = build_optimizer(model, config)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model, raw_optimizer = accelerator.unwrap_model(model), optimizer.optimizer
    if config.torch_compile:
        model = torch.compile(model)
    device = accelerator.device
    loader = WindowLoader(shards, seq_len, plan.micro_batch, rank, world, config.seed)

    # --- resume ------------------------------------------------------------------------------------
    state = {"step": 0, "tokens": 0, "elapsed_s": 0.0, "cost_usd": 0.0, "skipped_steps": 0, "total_steps": plan.steps}
    if resume_from is not None:
        saved = ckpt.load_checkpoint(resume_from, raw_model, raw_optimizer, config.reset_optimizer)
        if saved["plan"]["tokens_per_step"] != plan.tokens_per_step:
            raise ScratchError(
                f"{resume_from} was trained with {saved['plan']['tokens_per_step']:,} tokens per step, this launch "
                f"gives {plan.tokens_per_step:,} (micro-batch x seq_len x accumulation x world size); keep the "
                "global batch: set tokens_per_step so accumulation follows the world size"
            )
        loader.load_state_dict(saved["loader"])
        state.update(saved["state"])
        if plan.steps != state["total_steps"]:
            accelerator.print(
                f"note: the config's horizon is {plan.steps:,} steps but the run's is "
                f"{state['total_steps']:,}; keeping the run's (use --extend_to to lengthen it)"
            )
    schedule = Schedule.from_config(config, state["total_steps"])
    if config.extend_to:
        state["total_steps"] = extend(schedule, state, config.extend_to, accelerator.print)
        schedule = Schedule.from_config(config, state["total_steps"])

    log = RunLog(run_dir, main, asdict(config), config.report_to, config.wandb_project, config.run_name)
    if main:
        write_run_files(run_dir, config, plan, state, stats, world)
    describe(accelerator.print, plan, state, resume_from, model_config, world, bf16, shards)
    peak = config.peak_tflops * 1e12 or (peak_flops_of(torch.cuda.get_device_name(device)) if on_gpu else 0.0)
    token_bytes = token_byte_lengths(tokenizer, model_config.vocab_size)
    uploader = None
    if config.push_to_hub and main:
        uploader = CheckpointUploader(
            config.hub_model_id, config.hub_private_repo, config.hub_retry_seconds, say=tqdm.write
        )
        if resume_from is not None:  # its upload may have been cut short (files already there are not sent again)
            uploader.submit(resume_from, resume_from.name)

    def save(reason: str) -> None:
        trainer_state = {
            "step": state["step"],
            "state": dict(state),
            "loader": loader.state_dict(),
            "plan": plan.as_dict(),
            "schedule": asdict(schedule),
            "config": asdict(config),
            "reason": reason,
        }
        path = ckpt.checkpoint_path(run_dir, state["step"])
        ckpt.save_checkpoint(
            path,
            raw_model,
            raw_optimizer,
            trainer_state,
            model_config,
            tokenizer,
        )
        if main:
            keep = set(config.milestones) | schedule.forced_checkpoints()
            if uploader:
                uploader.submit(path, path.name)
                keep |= {ckpt.checkpoint_step(p) for p in uploader.busy_folders()}  # not deleted under its upload
            ckpt.prune_checkpoints(run_dir, config.save_total_limit, keep)

    def evaluate() -> dict:
        with accelerator.autocast():
            result = evaluate_bpb(
                raw_model,
                shards,
                token_bytes,
                seq_len,
                plan.micro_batch,
                config.eval_windows,
                config.document_masking,
                rank,
                world,
            )
            if probes:
                result["probe_accuracy"] = probe_accuracy(raw_model, tokenizer, probes)["probe_accuracy"]
            if core_tasks:
                core = evaluate_core(raw_model, tokenizer, core_tasks, config.core_max_per_task, split=False)
                result["core"] = core["core"]
        return result

    # --- the loop ----------------------------------------------------------------------------------
    progress = Progress(main, state["total_steps"], state["step"])
    spikes = SpikeDetector(config.spike_factor)
    session_start = time.perf_counter()
    base_elapsed, base_cost = state["elapsed_s"], state["cost_usd"]
    interval = {"start": time.perf_counter(), "steps": 0, "checksum": 0}
    last_save = time.perf_counter()
    model.train()
    while state["step"] < state["total_steps"]:
        step = state["step"]
        lr, weight_decay = schedule.lr(step), schedule.weight_decay_at(step)
        set_hyperparameters(optimizer, lr, weight_decay)
        loss_sum = torch.zeros((), device=device)
        for micro in range(plan.accumulation):
            batch = next(loader)
            interval["checksum"] += window_checksum(batch["window_ids"])
            inputs, labels = batch["input_ids"].to(device), batch["labels"].to(device)
            kwargs = {"position_ids": batch["position_ids"].to(device)} if config.document_masking else {}
            sync = micro == plan.accumulation - 1
            with nullcontext() if sync else accelerator.no_sync(model), accelerator.autocast():
                logits = model(input_ids=inputs, **kwargs).logits
                loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())
                accelerator.backward(loss / plan.accumulation)
            loss_sum += loss.detach()
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm or math.inf)
        mean_loss = accelerator.reduce(loss_sum / plan.accumulation, "mean").item()
        grad_norm = float(grad_norm)
        state["step"] += 1
        state["tokens"] += plan.tokens_per_step
        if not is_finite(mean_loss, grad_norm):
            optimizer.zero_grad(set_to_none=True)
            where = ckpt.latest_checkpoint(run_dir)
            message = (
                f"non-finite loss ({mean_loss}) or grad norm ({grad_norm}) at step {state['step']}; "
                f"last good checkpoint: {where or 'none yet'}"
            )
            if config.on_nonfinite == "stop":
                log.close()
                raise ScratchError(message + "; stopped before the optimizer step")
            state["skipped_steps"] += 1
            progress.write(message + "; batch skipped (on_nonfinite: skip)")
        else:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if spikes.is_spike(mean_loss):
            progress.write(
                f"warning: loss spike at step {state['step']}: {mean_loss:.3f} (running average {spikes.average:.3f})"
            )
        progress.advance()
        interval["steps"] += 1
        state["elapsed_s"] = base_elapsed + time.perf_counter() - session_start
        state["cost_usd"] = base_cost + (state["elapsed_s"] - base_elapsed) / 3600 * config.usd_per_gpu_hour * world
        done = state["step"] == state["total_steps"]

        if state["step"] % config.logging_steps == 0 or state["step"] == 1 or done:
            seconds = time.perf_counter() - interval["start"]
            tok_per_s = interval["steps"] * plan.tokens_per_step / seconds
            checksum = torch.tensor(interval["checksum"], dtype=torch.int64, device=device)
            record = {
                "step": state["step"],
                "tokens": state["tokens"],
                "loss": mean_loss,
                "lr": lr,
                "weight_decay": weight_decay,
                "grad_norm": grad_norm,
                "tok_per_s": tok_per_s,
                "mfu": tok_per_s * plan.flops_per_token / (peak * world) if peak else None,
                **memory_stats(device),
                "elapsed_s": state["elapsed_s"],
                "cost_usd": state["cost_usd"],
                "stage": schedule.stage(step),
                "skipped_steps": state["skipped_steps"],
                "eta_s": (state["total_steps"] - state["step"]) * seconds / interval["steps"],
                "windows_checksum": int(accelerator.reduce(checksum, "sum").item()),
                "epochs": loader.epochs(),
                **bitnet_stats(raw_model, inputs[:1]),  # {} unless the model is BitNet
            }
            log.metrics(record)
            progress.update(record)
            interval = {"start": time.perf_counter(), "steps": 0, "checksum": 0}
        # Saved before the evaluations: a failing evaluation must not cost the steps since the last save.
        timed = config.save_minutes and agree(time.perf_counter() - last_save >= 60 * config.save_minutes)
        forced = state["step"] in schedule.forced_checkpoints() or state["step"] in config.milestones
        stopping = state["step"] == config.stop_at_step
        if done or forced or timed or stopping or (config.save_steps and state["step"] % config.save_steps == 0):
            save("end" if done else "forced" if forced else "stop" if stopping else "timed" if timed else "interval")
            last_save = time.perf_counter()
        if config.eval_steps and (state["step"] % config.eval_steps == 0 or done):
            result = evaluate()
            log.metrics({"step": state["step"], "tokens": state["tokens"], **result})
            extra = "".join(
                f", {name} {result[key]:.4f}"
                for key, name in (("probe_accuracy", "probes"), ("core", "CORE"))
                if key in result
            )
            progress.write(
                f"step {state['step']}: val loss {result['val_loss']:.4f}, val bpb {result['val_bpb']:.4f}{extra}"
            )
        if config.sample_steps and (state["step"] % config.sample_steps == 0 or done):
            log.samples(
                generate_samples(
                    raw_model,
                    tokenizer,
                    config.sample_prompts,
                    config.sample_max_new_tokens,
                    state["step"],
                    config.seed,
                )
            )
        if stopping and not done:
            progress.write(f"stopped at step {state['step']:,} (stop_at_step); re-run the command to continue")
            break
    progress.close()
    log.close()
    if state["step"] == state["total_steps"]:
        export(run_dir, raw_model, model_config, tokenizer, config.export_format, main)
        if main:
            write_model_card(run_dir, data_description(config.data_dir))
            if uploader:
                uploader.submit(run_dir / "export", "main")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if uploader:  # after the last collective: the other ranks must not sit in a barrier (NCCL times out)
        uploader.finish()
    return run_dir


# --- the pieces ------------------------------------------------------------------------------------


def prepare_data(config: PretrainConfig) -> None:
    """Make what the run reads if it is absent: the embedded default, the tokenizer, the shards."""
    if config.default_data and not (Path(config.default_data) / "probes.jsonl").is_file():
        write_default(config.default_data)
    if not config.data_config:
        if not (Path(config.data_dir) / "manifest.json").is_file():
            raise ScratchError(f"{config.data_dir} holds no prepared shards and no data_config says how to make them")
        return
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
        spec = {"preset": config.model_preset} if config.model_preset else read_yaml(config.model_config)
        model_config = build_config(spec, where=config.model_config or "model_preset")
        model = None
    check_tokenizer_fits(tokenizer, model_config.vocab_size, where=f"model for {config.output_dir}")
    model_config.bos_token_id = tokenizer.bos_token_id
    model_config.eos_token_id = tokenizer.eos_token_id
    model_config.pad_token_id = tokenizer.pad_token_id
    model_config._attn_implementation = config.attn_implementation or attention_backend()
    if model is None:
        model = ScratchForCausalLM(model_config)
    model.config._attn_implementation = model_config._attn_implementation
    return model, model_config


def load_initial_weights(source: str, tokenizer):
    """Midtraining starts from an exported model directory or a training checkpoint, whose tokenizer
    must be the one the new data was prepared with (else every token id means something else)."""
    model, own_tokenizer = ckpt.load_model_from(resolve_model_source(source))
    if tokenizer_hash(own_tokenizer) != tokenizer_hash(tokenizer):
        raise ScratchError(
            f"init_from {source} was trained with another tokenizer than the one this run's data "
            "was prepared with; prepare the data with the model's tokenizer"
        )
    if not isinstance(model, ScratchForCausalLM):  # a stock llama export: continue as our class
        known = ScratchConfig.__dataclass_fields__
        config = build_config({k: v for k, v in model.config.to_dict().items() if k in known})
        ours = ScratchForCausalLM(config)
        ours.load_state_dict(model.state_dict())
        model = ours
    return model, model.config


def extend(schedule: Schedule, state: dict, extend_to: int, say) -> int:
    if extend_to <= state["total_steps"]:
        if extend_to < state["step"]:
            raise ScratchError(f"extend_to {extend_to} is before the current step {state['step']}")
        return state["total_steps"]
    step = state["step"]
    before = schedule.lr(max(0, step - 1))
    after = Schedule(**{**asdict(schedule), "total_steps": extend_to}).lr(step)
    say(
        f"extending the run from {state['total_steps']:,} to {extend_to:,} steps: the schedule is re-planned for "
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


def window_checksum(window_ids: torch.Tensor) -> int:
    """A sum that is equal for equal sets of (source, window) pairs: the data ledger in metrics."""
    return int(((window_ids[:, 0] * 1_000_003 + window_ids[:, 1]) % 2_147_483_647).sum())


def agree(flag: bool) -> bool:
    """Rank 0's clock decides time-based saves for everyone (the save is collective)."""
    if not dist.is_initialized():
        return flag
    decision = torch.tensor([int(flag)], device="cuda" if torch.cuda.is_available() else "cpu")
    dist.broadcast(decision, src=0)
    return bool(decision.item())


def write_run_files(run_dir: Path, config: PretrainConfig, plan, state: dict, stats: dict, world: int) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(asdict(config), sort_keys=False))
    (run_dir / "plan.json").write_text(
        json.dumps(
            {
                **plan.as_dict(),
                **stats,
                "stage": config.stage,
                "total_steps": state["total_steps"],
                "hardware": describe_hardware(world),
            },
            indent=1,
        )
    )


def describe(say, plan, state, resume_from, model_config, world, bf16, shards) -> None:
    say(
        f"model: {plan.params_total:,} parameters, {model_config.num_hidden_layers} layers x "
        f"{model_config.hidden_size}, vocab {model_config.vocab_size}, attention {model_config._attn_implementation}"
    )
    say(
        f"batch: {plan.micro_batch} x {plan.seq_len} tokens x {plan.accumulation} accumulation x {world} processes "
        f"= {plan.tokens_per_step:,} tokens/step; bf16 {'on' if bf16 else 'off'}; {torch.get_num_threads()} threads"
    )
    say(
        f"horizon: {state['total_steps']:,} steps = {state['total_steps'] * plan.tokens_per_step:,} tokens "
        f"({state['total_steps'] * plan.tokens_per_step / plan.params_total:.1f} tokens/parameter, "
        f"{state['total_steps'] * plan.tokens_per_step * plan.flops_per_token:.3e} FLOPs)"
    )
    say("data: " + ", ".join(f"{s.name} {s.weight:.0%} ({len(s.train):,} tokens)" for s in shards.sources))
    say(f"resuming from {resume_from} at step {state['step']:,}" if resume_from else "starting at step 0")


def export(run_dir: Path, model, model_config, tokenizer, format: str, main: bool) -> Path:
    """The final weights as a self-contained HF directory, output_dir/export (written whole, then renamed)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    target = run_dir / "export"
    if main:
        with torch.device("meta"):
            plain = ScratchForCausalLM(model_config)
        plain.load_state_dict(full, assign=True)
        plain.tie_weights()
        staging = run_dir / "export.tmp"
        save_model(plain, tokenizer, staging, format)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    return target
