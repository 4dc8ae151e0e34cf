"""What a run (or a pipeline of runs) bought: `scratchlm report RUN_DIR... [--out DIR]`.

Reads only what the runs wrote (plan.json, config.yaml, metrics.jsonl, samples.jsonl, export/ and
evals/*.json from `scratchlm eval ... --out RUN_DIR/evals/NAME.json`) and writes report.md,
report.json and plots/*.png. A number that was not measured is shown as "—" and left out of the JSON.
"""

import json
import math
from pathlib import Path

import yaml

from .errors import ScratchError
from .run_dir import RunDir

EVAL_COLUMNS = [  # (key in the stage's evals, heading)
    ("val_bpb", "val bpb"),
    ("core", "CORE"),
    ("probe_accuracy", "probe acc"),
    ("chat_accuracy", "chat acc"),
    ("stop_rate", "stop rate"),
    ("preference_accuracy", "pref acc"),
    ("reward_margin", "reward margin"),
]
PHASES = 4  # the diminishing-returns table splits a run at 1/8, 1/4, 1/2 of its steps


def plot_loss(run_dir: str | Path) -> Path:
    """RUN_DIR/plots/loss.png: training and validation loss of one run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():  # not "no loss measured yet" (a TRL run has no plan.json until it ends: no read_plan)
        raise ScratchError(f"{run_dir}: no such directory")
    return plot_curves([run_dir], "loss", RunDir(run_dir).plots / "loss.png")


def plot_curves(run_dirs: list[Path], what: str, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    columns = min(2, len(run_dirs))
    rows = math.ceil(len(run_dirs) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6 * columns, 4 * rows), squeeze=False)
    for ax in axes.flat[len(run_dirs) :]:
        ax.set_visible(False)
    drawn = False
    for ax, run_dir in zip(axes.flat, run_dirs, strict=False):
        metrics = RunDir(run_dir).metrics()
        train = [m for m in metrics if "loss" in m]
        evals = [m for m in metrics if f"val_{what}" in m]
        if what == "loss" and train:
            ax.plot([m["step"] for m in train], [m["loss"] for m in train], label="train loss", linewidth=1)
        if evals:
            ax.plot([m["step"] for m in evals], [m[f"val_{what}"] for m in evals], "o-", label=f"validation {what}")
        drawn |= bool(evals or (what == "loss" and train))
        ax.set_xlabel("step")
        plan = RunDir(run_dir).plan_file
        dpo = plan.is_file() and json.loads(plan.read_text()).get("stage") == "dpo"
        ax.set_ylabel("bits per byte" if what == "bpb" else "DPO loss (per pair)" if dpo else "loss (nats/token)")
        ax.set_title(run_dir.name)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    if not drawn:
        plt.close(fig)
        raise ScratchError(f"no {what} measured yet in {', '.join(str(r) for r in run_dirs)} (metrics.jsonl)")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


# --- numbers ---------------------------------------------------------------------------------------


def parameters(export: Path) -> int | None:
    from safetensors import safe_open

    files = sorted(export.glob("*.safetensors"))
    if not files or (export / "bitnet_packed.json").is_file():  # packed tensors are not parameter counts
        return None
    total = 0
    for path in files:
        with safe_open(str(path), "pt") as f:
            total += sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())  # noqa: SIM118 (not iterable)
    return total


def run_summary(run_dir: Path, until_step: int | None = None) -> dict:
    """What the run measured; up to `until_step` only, for a checkpoint's model card (the evals/ results
    were measured on the final model, so they are left out then)."""
    run = RunDir(run_dir)
    plan = run.read_plan()
    metrics = [m for m in run.metrics() if until_step is None or m["step"] <= until_step]
    train = [m for m in metrics if "loss" in m]
    if not train:
        raise ScratchError(f"{run_dir} has no training metrics yet (metrics.jsonl)")
    last = train[-1]
    params = parameters(run.export) or plan.get("params_total")
    tokens = last.get("tokens")
    total_steps = plan.get("total_steps")
    summary = {
        "stage": plan.get("stage", "pretrain"),
        "hardware": plan.get("hardware"),
        "parameters": params,
        "steps": last["step"],
        "total_steps": total_steps,
        "finished": _finished(plan, last["step"]),
        "tokens": tokens,
        "tokens_per_parameter": tokens / params if tokens and params else None,
        "flops": tokens * plan["flops_per_token"] if tokens and plan.get("flops_per_token") else None,
        "wall_s": last.get("elapsed_s") or plan.get("wall_s"),
        "tok_per_s": last.get("tok_per_s"),
        "mfu": last.get("mfu"),
        "mem_peak_gb": max((m["mem_peak_gb"] for m in train if m.get("mem_peak_gb")), default=None),
        "cost_usd": last.get("cost_usd") if _priced(run_dir) else None,
        "final_loss": last["loss"],
        "evals": stage_evals(run_dir, metrics, with_results=until_step is None),
        "phases": phases(train, _priced(run_dir)),
    }
    return {key: value for key, value in summary.items() if value is not None}


def _finished(plan: dict, last_step: int) -> bool | None:
    """Whether the numbers are the run's result, or where it stopped (killed, stopped, still going). Our loop
    logs its last step; TRL's stages write plan.json when they end, but log every logging_steps only."""
    if plan.get("stage") in ("sft", "dpo"):
        return True
    return last_step >= plan["total_steps"] if plan.get("total_steps") else None


def _priced(run_dir: Path) -> bool:
    """Cost is a measurement only when the run was given a price per GPU hour."""
    config = RunDir(run_dir).config_file
    return config.is_file() and float((yaml.safe_load(config.read_text()) or {}).get("usd_per_gpu_hour") or 0) > 0


def stage_evals(run_dir: Path, metrics: list[dict], with_results: bool = True) -> dict:
    """The last in-training evaluation, then every evals/*.json on top of it."""
    evals = {}
    last_eval = next((m for m in reversed(metrics) if "val_loss" in m), {})
    for key in ("val_loss", "val_bpb", "probe_accuracy", "core"):
        if key in last_eval:
            evals[key] = last_eval[key]
    for result in RunDir(run_dir).eval_results().values() if with_results else ():
        numbers = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        evals.update({k: v for k, v in numbers.items() if k != "n"})  # every eval's item count is "n"
    return evals


def phases(train: list[dict], priced: bool) -> list[dict]:
    """Per phase (steps up to 1/8, 1/4, 1/2, all of the run): the loss drop and what it cost."""
    if len(train) < 2 * PHASES:
        return []
    total = train[-1]["step"]
    bounds = [0] + [total // 2**k for k in range(PHASES - 1, 0, -1)] + [total]
    rows, previous = [], train[0]
    for end in bounds[1:]:
        at = [m for m in train if m["step"] <= end][-3:]  # the loss near the boundary, smoothed over 3 logs
        loss = sum(m["loss"] for m in at) / len(at)
        record = {"step": end, "loss": loss, "elapsed_s": at[-1].get("elapsed_s"), "cost_usd": at[-1].get("cost_usd")}
        drop = previous["loss"] - loss
        row = {
            "steps": f"{previous['step']}-{end}",
            "loss_start": previous["loss"],
            "loss_end": loss,
            "loss_drop": drop,
        }
        if record["elapsed_s"] is not None and previous.get("elapsed_s") is not None:
            row["wall_s"] = record["elapsed_s"] - previous["elapsed_s"]
        if priced and record["cost_usd"] is not None:
            row["cost_usd"] = record["cost_usd"] - (previous.get("cost_usd") or 0.0)
        if drop > 0:  # what each 0.01 of loss cost in this phase
            for spent in ("wall_s", "cost_usd"):
                if spent in row:
                    row[f"{spent}_per_0.01"] = row[spent] / (drop * 100)
        rows.append(row)
        previous = record
    return rows


# --- the report ------------------------------------------------------------------------------------


def build_report(run_dirs: list[str | Path], out: str | Path | None = None, pipeline: dict | None = None) -> Path:
    """report.md and report.json for runs in pipeline order; `pipeline` ({step: seconds}) is the
    wall time of every step of a speedrun, data and evaluations included."""
    runs = [Path(r) for r in run_dirs]
    out = Path(out) if out else runs[0].parent
    summaries = [run_summary(run) for run in runs]
    names = [s["stage"] for s in summaries]
    if len(set(names)) < len(names):  # several runs of one stage, compared: named by directory
        names = [run.name for run in runs]
    stages = dict(zip(names, summaries, strict=True))
    plots = [plot_curves(runs, "loss", out / "plots" / "loss.png")]
    with_bpb = [run for run, s in zip(runs, summaries, strict=True) if "val_bpb" in s["evals"]]
    if with_bpb:
        plots.append(plot_curves(with_bpb, "bpb", out / "plots" / "bpb.png"))
    report = {
        "wall_s": sum(pipeline.values()) if pipeline else sum(s.get("wall_s", 0) for s in summaries),
        **({"pipeline_s": pipeline} if pipeline else {}),
        # Flat per stage, the keys scripts read: stages.<stage>.{final_loss, tokens, core, chat_accuracy, ...}
        "stages": {name: {**{k: v for k, v in s.items() if k != "evals"}, **s["evals"]} for name, s in stages.items()},
        "plots": [str(p.relative_to(out)) for p in plots],
    }
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "report.md").write_text(markdown(runs, stages, report["plots"], pipeline))
    return out / "report.md"


def fmt(value, kind: str = "") -> str:
    if value is None:
        return "—"
    if kind == "int":
        return f"{value:,.0f}"
    if kind == "pct":
        return f"{value:.1%}"
    if kind == "time":
        if value >= 3600:
            return f"{value / 3600:.2f} h"
        return f"{value / 60:.1f} min" if value >= 60 else f"{value:.1f} s"
    if kind == "usd":
        return f"${value:,.2f}"
    if kind == "sci":
        return f"{value:.3e}"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _table(headings: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headings) + " |", "|" + "---|" * len(headings)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows] + [""]


def markdown(runs: list[Path], summaries: dict, plots: list[str], pipeline: dict | None) -> str:
    lines = ["# Run report", ""]
    if pipeline:
        lines += [f"## Speedrun: {fmt(sum(pipeline.values()), 'time')} in all", ""]
        lines += _table(list(pipeline), [[fmt(seconds, "time") for seconds in pipeline.values()]])
    cost = [("hardware", ""), ("parameters", "int"), ("steps", "int"), ("tokens", "int"),
            ("tokens_per_parameter", ""), ("flops", "sci"), ("wall_s", "time"), ("tok_per_s", "int"),
            ("mfu", "pct"), ("mem_peak_gb", ""), ("cost_usd", "usd"), ("final_loss", "")]  # fmt: skip
    for name, s in summaries.items():
        if s.get("finished") is False:
            where = f"step {s['steps']:,} of {s['total_steps']:,}"
            lines += [f"**{name} is unfinished** ({where}): its numbers are where it stopped, not its result.", ""]
    lines += ["## What each stage cost", ""]
    lines += _table(
        ["stage", *(k for k, _ in cost)],
        [[_stage_name(n, s), *(fmt(s.get(k), f) for k, f in cost)] for n, s in summaries.items()],
    )
    lines += ["## Evaluations", ""]
    lines += _table(
        ["stage", *(h for _, h in EVAL_COLUMNS)],
        [[_stage_name(n, s), *(fmt(s["evals"].get(k)) for k, _ in EVAL_COLUMNS)] for n, s in summaries.items()],
    )
    lines += ["## Curves", ""] + [f"![{p}]({p})" for p in plots] + [""]
    for name, run in zip(summaries, runs, strict=True):
        lines += samples_section(run, name)
    for name, summary in summaries.items():
        if summary["phases"]:
            lines += [f"## Diminishing returns: {name}", ""]
            keys = [("steps", ""), ("loss_start", ""), ("loss_end", ""), ("loss_drop", ""), ("wall_s", "time"),
                    ("wall_s_per_0.01", "time"), ("cost_usd", "usd"), ("cost_usd_per_0.01", "usd")]  # fmt: skip
            lines += _table([k for k, _ in keys], [[fmt(p.get(k), f) for k, f in keys] for p in summary["phases"]])
    for name, run in zip(summaries, runs, strict=True):
        config = RunDir(run).config_file
        if config.is_file():
            lines += [
                f"## Configuration: {name}",
                "",
                "```yaml",
                config.read_text().strip(),
                "```",
                "",
            ]
    return "\n".join(lines)


def _stage_name(name: str, summary: dict) -> str:
    return f"{name} (unfinished)" if summary.get("finished") is False else name


def samples_section(run: Path, name: str, columns: int = 4) -> list[str]:
    """Greedy samples at up to four milestones of the run, side by side."""
    samples = [s for s in RunDir(run).samples() if s.get("mode", "greedy") == "greedy"]
    if not samples:
        return []
    steps = sorted({s["step"] for s in samples})
    shown = min(columns, len(steps))
    picked = sorted({steps[round(i * (len(steps) - 1) / max(shown - 1, 1))] for i in range(shown)})
    text = {(s["prompt"], s["step"]): s["text"].replace("\n", " ").replace("|", "\\|") for s in samples}
    prompts = list(dict.fromkeys(s["prompt"] for s in samples))
    rows = [[repr(p)[1:-1], *(text.get((p, step), "—") for step in picked)] for p in prompts]
    return [f"## Samples: {name}", ""] + _table(["prompt", *(f"step {step:,}" for step in picked)], rows)
