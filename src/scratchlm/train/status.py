"""`scratchlm status RUN_DIR [--watch]`: where a run is, from its files alone (works while it trains)."""

import time

from ..progress import duration
from ..run_dir import RunDir


def summarize(run_dir) -> str:
    run = RunDir(run_dir)
    plan = run.read_plan()
    metrics = run.metrics()
    train = [m for m in metrics if "loss" in m]
    evals = [m for m in metrics if "val_loss" in m]
    total = plan["total_steps"]
    holder = run.holder()
    lines = [f"run {run.path}"]
    if holder:
        lines.append(f"  running: pid {holder['pid']} on {holder['host']} since {holder['since']}")
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
        age = time.time() - run.metrics_file.stat().st_mtime
        if "tok_per_s" in last:  # our trainer's metrics (TRL stages log fewer)
            mfu = f", MFU {last['mfu']:.1%}" if last.get("mfu") is not None else ""
            eta = f"ETA {duration(last['eta_s'])}" if holder else "not running"
            lines.append(
                f"  {last['tok_per_s']:,.0f} tok/s{mfu}, elapsed {duration(last['elapsed_s'])}, {eta}, "
                f"cost ${last['cost_usd']:.2f}"
            )
        finished = last["step"] >= total
        lines.append(f"  last record {duration(age)} ago" + ("" if holder or finished else "; not running"))
        repeated = {k: v for k, v in last.get("epochs", {}).items() if v > 1}
        if repeated:
            lines.append("  data repeating: " + ", ".join(f"{k} {v:.2f} epochs" for k, v in repeated.items()))
    checkpoint = run.latest_checkpoint() or run.latest_trl_checkpoint()
    lines.append(f"  latest checkpoint: {checkpoint.name if checkpoint else 'none'}")
    if run.has_export():
        lines.append(f"  exported: {run.export}")
    samples = run.samples()
    if samples:
        step = samples[-1]["step"]
        lines.append(f"  samples at step {step:,}:")
        for s in (s for s in samples if s["step"] == step):
            lines.append(f"    [{s['mode']}] {s['prompt']!r} -> {s['text']!r}")
    return "\n".join(lines)
