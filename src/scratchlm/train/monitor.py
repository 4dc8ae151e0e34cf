"""What a run tells its owner: metrics.jsonl, samples.jsonl, wandb, a progress bar, memory, spikes.

Only rank 0 writes. Nothing secret is ever logged: the config is written as given (it holds no
tokens), and wandb's key is read by wandb itself from the environment or its login file.
"""

import json
import math
import os
import resource
import secrets
import sys
from pathlib import Path

import torch
from tqdm import tqdm


class RunLog:
    def __init__(self, run_dir: Path, enabled: bool, config: dict, report_to: str, project: str, name: str):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.wandb = None
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if report_to == "wandb":
                self.wandb = _start_wandb(self.run_dir, config, project, name)

    def metrics(self, record: dict) -> None:
        if self.enabled:
            _append_jsonl(self.run_dir / "metrics.jsonl", record)
            if self.wandb is not None:
                self.wandb.log({k: v for k, v in record.items() if isinstance(v, int | float)}, step=record["step"])

    def samples(self, records: list[dict]) -> None:
        if self.enabled:
            for record in records:
                _append_jsonl(self.run_dir / "samples.jsonl", record)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def _append_jsonl(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _start_wandb(run_dir: Path, config: dict, project: str, name: str):
    import wandb

    # Without a key, log offline (sync later with `wandb sync`) instead of prompting or failing.
    has_key = bool(os.environ.get("WANDB_API_KEY")) or "api.wandb.ai" in _read(Path.home() / ".netrc")
    os.environ.setdefault("WANDB_MODE", "online" if has_key else "offline")
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


class Progress:
    def __init__(self, enabled: bool, total: int, initial: int):
        # In a log file (nohup, a cluster job) a line every 30 s, not one per step.
        interval = 0.1 if sys.stderr.isatty() else 30
        self.bar = tqdm(
            total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True, mininterval=interval
        )

    def update(self, record: dict) -> None:
        fields = {
            "loss": f"{record['loss']:.3f}",
            "lr": f"{record['lr']:.2e}",
            "wd": f"{record['weight_decay']:g}",
            "gnorm": f"{record['grad_norm']:.2f}",
            "tok/s": f"{record['tok_per_s']:,.0f}",
        }
        if record.get("mfu") is not None:
            fields["mfu"] = f"{record['mfu']:.1%}"
        fields["stage"] = record["stage"]
        self.bar.set_postfix(fields, refresh=False)

    def advance(self, steps: int = 1) -> None:
        self.bar.update(steps)

    def write(self, message: str) -> None:
        self.bar.write(message)

    def close(self) -> None:
        self.bar.close()


@torch.no_grad()
def generate_samples(model, tokenizer, prompts: list[str], max_new_tokens: int, step: int, seed: int) -> list[dict]:
    """Greedy and sampled continuations; the global RNG is restored so training is unaffected."""
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
                **inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **kwargs
            )
            text = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            records.append({"step": step, "prompt": prompt, "mode": mode, "text": text})
    torch.set_rng_state(rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state_all(cuda_rng)
    model.train(was_training)
    return records


def is_finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)
