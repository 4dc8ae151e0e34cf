"""What a run tells its owner: metrics.jsonl, samples.jsonl, wandb, a progress bar, memory, spikes.

Only rank 0 writes. Nothing secret is ever logged: the config is written as given (it holds no
tokens), and wandb's key is read by wandb itself from the environment or its login file.
"""

import os
import resource
import secrets
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..progress import Bar
from ..run_dir import RunDir
from .config import PretrainConfig
from .parallel import World


class RunLog:
    """metrics.jsonl and samples.jsonl of the run, and wandb when the config reports to it; written only where
    `enabled` (rank 0)."""

    def __init__(self, *, run: RunDir, config: PretrainConfig, enabled: bool):
        self.enabled = enabled
        self.run = run
        self.wandb = None
        if enabled:
            run.path.mkdir(parents=True, exist_ok=True)
            if config.report_to == "wandb":
                self.wandb = _start_wandb(run.path, asdict(config), config.wandb_project, config.run_name)

    def metrics(self, record: dict) -> None:
        if self.enabled:
            self.run.append_metrics(record)
            if self.wandb is not None:
                self.wandb.log({k: v for k, v in record.items() if isinstance(v, int | float)}, step=record["step"])

    def samples(self, records: list[dict]) -> None:
        if self.enabled:
            self.run.append_samples(records)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


class Meter:
    """Throughput and the data ledger over the steps since the last record, and the record itself: the one
    place that decides what a training line of metrics.jsonl holds."""

    def __init__(self, *, tokens_per_step: int, flops_per_token: int, world: World, peak_flops: float):
        """The plan's tokens per step and FLOPs per token; `peak_flops` of one GPU (0: unknown, no MFU)."""
        self.tokens_per_step, self.flops_per_token = tokens_per_step, flops_per_token
        self.world, self.peak = world, peak_flops
        self._reset()

    def _reset(self) -> None:
        self.start, self.steps, self.checksum = time.perf_counter(), 0, 0

    def add(self, checksum: int) -> None:
        """One step done; `checksum` of the windows every rank trained on in it."""
        self.steps += 1
        self.checksum += checksum

    def record(self, state, result, lr: float, weight_decay: float, phase: str, epochs: dict, extra: dict) -> dict:
        seconds = time.perf_counter() - self.start
        tok_per_s = self.steps * self.tokens_per_step / seconds
        record = {
            "step": state.step,
            "tokens": state.tokens,
            "loss": result.loss,
            "lr": lr,
            "weight_decay": weight_decay,
            "grad_norm": result.grad_norm,
            "tok_per_s": tok_per_s,
            "mfu": tok_per_s * self.flops_per_token / (self.peak * self.world.size) if self.peak else None,
            **memory_stats(self.world.device),
            "elapsed_s": state.elapsed_s,
            "cost_usd": state.cost_usd,
            "schedule_phase": phase,
            "skipped_steps": state.skipped_steps,
            "eta_s": (state.total_steps - state.step) * seconds / self.steps,
            "windows_checksum": self.checksum,
            "epochs": epochs,
            **extra,
        }
        self._reset()
        return record


def wandb_has_key() -> bool:
    """Whether wandb would find a key (the environment or its login in ~/.netrc); the key is never read here."""
    return bool(os.environ.get("WANDB_API_KEY")) or "api.wandb.ai" in _read(Path.home() / ".netrc")


def _start_wandb(run_dir: Path, config: dict, project: str, name: str):
    import wandb

    # Without a key, log offline (sync later with `wandb sync`) instead of prompting or failing.
    os.environ.setdefault("WANDB_MODE", "online" if wandb_has_key() else "offline")
    id_file = run_dir / "wandb_id"
    run_id = _read(id_file).strip() or secrets.token_hex(4)
    id_file.write_text(run_id)
    return wandb.init(
        project=project, name=name or run_dir.name, id=run_id, resume="allow", dir=str(run_dir), config=config
    )


def _read(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def memory_stats(device: torch.device) -> dict:
    """GPU memory in GB; on CPU the process's resident and peak resident memory."""
    if device.type == "cuda":
        gb = 1024**3
        return {
            "mem_allocated_gb": round(torch.cuda.memory_allocated(device) / gb, 3),
            "mem_reserved_gb": round(torch.cuda.memory_reserved(device) / gb, 3),
            "mem_peak_gb": round(torch.cuda.max_memory_allocated(device) / gb, 3),
        }
    resident = int(_read(Path("/proc/self/statm")).split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024**3
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux
    return {
        "mem_allocated_gb": round(resident, 3),
        "mem_reserved_gb": round(resident, 3),
        "mem_peak_gb": round(peak, 3),
    }


class SpikeDetector:
    """Flags a loss above `factor` x its running average (after a short settling period)."""

    def __init__(self, factor: float, settle_steps: int = 20):
        self.factor, self.settle_steps = factor, settle_steps
        self.average, self.seen = 0.0, 0

    def is_spike(self, loss: float) -> bool:
        spike = self.factor > 0 and self.seen >= self.settle_steps and loss > self.factor * self.average
        if not spike:  # a spike does not drag the average up
            self.average = loss if self.seen == 0 else 0.98 * self.average + 0.02 * loss
            self.seen += 1
        return spike


class Progress(Bar):
    """Training steps: a bar with the run's latest metrics on a terminal, a plain line every 30 s in a log
    file (progress.py), and messages (evaluations, warnings) on stdout."""

    def __init__(self, enabled: bool, total: int, initial: int):
        super().__init__(total, "train", "steps", enabled, interval_s=30, initial=initial)

    def update(self, record: dict) -> None:
        self.fields = {
            "loss": f"{record['loss']:.3f}",
            "lr": f"{record['lr']:.2e}",
            "wd": f"{record['weight_decay']:g}",
            "gnorm": f"{record['grad_norm']:.2f}",
            "tok/s": f"{record['tok_per_s']:,.0f}",
            **({"mfu": f"{record['mfu']:.1%}"} if record.get("mfu") is not None else {}),
            "phase": record["schedule_phase"],
        }

    def write(self, message: str) -> None:
        if self.enabled:
            self.bar.write(message)


@torch.no_grad()
def generate_samples(
    model, tokenizer, prompts: list[str], max_new_tokens: int, step: int, seed: int, synced_gpus: bool = False
) -> list[dict]:
    """Greedy and sampled continuations; the global RNG is restored so training is unaffected.
    `synced_gpus`: the model is sharded over processes, which must run every forward together."""
    if not prompts:
        return []
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    records = []
    for index, prompt in enumerate(prompts):
        inputs = tokenizer(prompt, return_tensors="pt").to(device)
        for mode, kwargs in (
            ("greedy", {"do_sample": False}),
            ("sampled", {"do_sample": True, "temperature": 0.8, "top_k": 50}),
        ):
            torch.manual_seed(seed + 1000 * step + index)
            output = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                synced_gpus=synced_gpus,
                **kwargs,
            )
            text = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            records.append({"step": step, "prompt": prompt, "mode": mode, "text": text})
    torch.set_rng_state(rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state_all(cuda_rng)
    model.train(was_training)
    return records
