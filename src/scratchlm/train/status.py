"""`scratchlm status RUN_DIR [--watch]`: where a run is, from its files alone (works while it trains)."""

import contextlib
import json
from pathlib import Path

from ..errors import ScratchError
from .checkpoint import latest_checkpoint


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line being written right now
            rows.append(json.loads(line))
    return rows


def summarize(run_dir: str | Path) -> str:
    run_dir = Path(run_dir)
    if not (run_dir / "plan.json").is_file():
        raise ScratchError(f"{run_dir} is not a run directory (no plan.json)")
    plan = json.loads((run_dir / "plan.json").read_text())
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    train = [m for m in metrics if "loss" in m]
    evals = [m for m in metrics if "val_loss" in m]
    total = plan["total_steps"]
    lines = [f"run {run_dir}"]
    if not train:
        lines.append(f"  not started: 0 / {total:,} steps")
    else:
        last = train[-1]
        tokens = f", {last['tokens']:,.0f} tokens" if last.get("tokens") else ""
        lines.append(f"  step {last['step']:,} / {total:,} ({last['step'] / total:.1%}){tokens}")
        loss = f"  loss {last['loss']:.4f}, lr {last['lr']:.3g}, grad norm {last['grad_norm']:.3f}"
        if evals:
            val = evals[-1]
            loss += f"; val loss {val['val_loss']:.4f}, val bpb {val['val_bpb']:.4f} (step {val['step']:,})"
        lines.append(loss)
        if "tok_per_s" in last:  # our trainer's metrics (TRL stages log fewer)
            mfu = f", MFU {last['mfu']:.1%}" if last.get("mfu") is not None else ""
            lines.append(
                f"  {last['tok_per_s']:,.0f} tok/s{mfu}, elapsed {_duration(last['elapsed_s'])}, "
                f"ETA {_duration(last['eta_s'])}, cost ${last['cost_usd']:.2f}"
            )
        repeated = {k: v for k, v in last.get("epochs", {}).items() if v > 1}
        if repeated:
            lines.append("  data repeating: " + ", ".join(f"{k} {v:.2f} epochs" for k, v in repeated.items()))
    trl_checkpoints = sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    checkpoint = latest_checkpoint(run_dir) or (trl_checkpoints[-1] if trl_checkpoints else None)
    lines.append(f"  latest checkpoint: {checkpoint.name if checkpoint else 'none'}")
    if (run_dir / "export" / "config.json").is_file():
        lines.append(f"  exported: {run_dir / 'export'}")
    samples = read_jsonl(run_dir / "samples.jsonl")
    if samples:
        step = samples[-1]["step"]
        lines.append(f"  samples at step {step:,}:")
        for s in (s for s in samples if s["step"] == step):
            lines.append(f"    [{s['mode']}] {s['prompt']!r} -> {s['text']!r}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
