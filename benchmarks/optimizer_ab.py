"""AdamW against Muon on the tiny recipe, each at its best of five learning rates, written to
benchmarks/results/optimizer_ab.json and optimizer_ab.png (validation bits per byte against tokens).

    python benchmarks/optimizer_ab.py [--work DIR] [--steps 600] [--eval-every 50] [--keep]

Every run is `recipes/pretrain.py --config recipes/tiny/pretrain.yaml` as users run it, with the same seed,
so the same windows in the same order (the metrics' windows checksums are compared), shortened to --steps
(the warmup scaled with it; CORE and samples off, probes on). The learning rates, a factor of 2 apart: AdamW's
learning_rate 2.5e-4 to 4e-3 (the recipe's is 1e-3); Muon's muon_lr 0.005 to 0.08 (nanochat's is 0.02), the
rest of its groups at their defaults. "Best" is the lowest final validation bpb; the JSON says whether a best
lies at an end of its grid (then the grid was too narrow to call it tuned). --keep reads a pair whose two runs
already finished under --work instead of training it again: widening the grid costs only the new pairs (the
runs must come from the same code and --steps; that is yours to ensure).

Time per step is measured side by side: each AdamW run trains at the same moment as the Muon run of the
same rank in the grid, two processes of one thread each on the same cores, so a load from elsewhere
slows both; a step's time is the median over its metrics records (one per step) of tokens / tok_per_s.

Reported: the tokens each optimizer needs to reach AdamW's final validation bpb (linear between
evaluations), their ratio (the goal: Muon <= 0.75x), the time per step of each (the goal: Muon <= 1.05x
AdamW's), and the probe accuracy at the end. Beside them, where a step's time goes (`step_split`): the
forward and backward of one micro-batch, AdamW's step and Muon's step, each alone on one thread, interleaved.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from scratchlm.run_dir import RunDir

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
RECIPE = REPO / "recipes" / "tiny" / "pretrain.yaml"
GRID = {
    "adamw": ("learning_rate", [2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3]),
    "muon": ("muon_lr", [0.005, 0.01, 0.02, 0.04, 0.08]),
}
RECIPE_STEPS, RECIPE_WARMUP = 600, 30


def data_files(work: Path) -> dict:
    """The recipe's data, prepared under `work` instead of runs/tiny (another run there is left alone)."""
    spec = yaml.safe_load((REPO / "recipes" / "tiny" / "data.yaml").read_text())
    spec["tokenizer"] = str(work / "tokenizer")
    for source in spec["sources"]:
        source["path"] = str(work / "data" / Path(source["path"]).relative_to("runs/tiny/data"))
    (work / "data.yaml").write_text(yaml.safe_dump(spec))
    return {"default_data": work / "data", "data_config": work / "data.yaml", "data_dir": work / "shards",
            "probes": work / "data" / "probes.jsonl"}  # fmt: skip


def command(work: Path, optimizer: str, lr: float, steps: int, eval_every: int) -> tuple[list[str], Path]:
    key = GRID[optimizer][0]
    run = work / f"{optimizer}-{lr:g}"
    keys = {**data_files(work), "output_dir": run, "max_steps": steps, "optimizer": optimizer, key: lr,
            "warmup_steps": max(1, round(RECIPE_WARMUP * steps / RECIPE_STEPS)), "eval_steps": eval_every,
            "eval_windows": 16, "logging_steps": 1, "save_steps": 0, "sample_steps": 0, "core_bundle": ""}  # fmt: skip
    args = [sys.executable, str(REPO / "recipes" / "pretrain.py"), "--config", str(RECIPE)]
    for name, value in keys.items():
        args += [f"--{name}", str(value)]
    return args, run


def prepare(work: Path) -> None:
    """The data, once, before two runs start side by side (each would otherwise prepare it)."""
    from scratchlm.train.config import PretrainConfig
    from scratchlm.train.loop import prepare_data

    files = {k: str(v) for k, v in data_files(work).items()}
    prepare_data(PretrainConfig(output_dir=str(work / "unused"), model_preset="tiny", max_steps=1,
                                tokenizer_vocab_size=1275, **files))  # fmt: skip


def side_by_side(commands: list[list[str]]) -> float:
    """Start every command at once, one thread each; wait for all; the seconds it took."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    children = [subprocess.Popen(c, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                for c in commands]  # fmt: skip
    for child, cmd in zip(children, commands, strict=True):
        _, err = child.communicate()
        if child.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return time.perf_counter() - start


def finished(run: Path, steps: int) -> bool:
    """The run's metrics reach its last step and the evaluation there."""
    return any(r.get("step") == steps and "val_bpb" in r for r in RunDir(run).metrics())


def curve(run: Path) -> dict:
    records = RunDir(run).metrics()
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "val_bpb" in r]
    tokens_per_step = train[0]["tokens"] // train[0]["step"]
    return {
        "tokens": [r["tokens"] for r in evals],
        "val_bpb": [r["val_bpb"] for r in evals],
        "probe_accuracy": evals[-1].get("probe_accuracy"),
        "final_val_bpb": evals[-1]["val_bpb"],
        "final_loss": train[-1]["loss"],
        "seconds_per_step": statistics.median(tokens_per_step / r["tok_per_s"] for r in train[1:]),
        "windows_checksums": [r["windows_checksum"] for r in train],
    }


def tokens_to_reach(result: dict, target: float) -> float | None:
    """Tokens at which the validation bpb first reaches `target`, linear between evaluations (reached at the
    first evaluation already: that evaluation's tokens, an upper bound)."""
    points = list(zip(result["tokens"], result["val_bpb"], strict=True))
    for (t0, b0), (t1, b1) in zip([(0, float("inf"))] + points, points, strict=False):
        if b1 <= target:
            if b0 == float("inf"):
                return float(t1)
            return t0 + (t1 - t0) * (b0 - target) / (b0 - b1)
    return None


def step_split(repeats: int = 7) -> dict:
    """Milliseconds, on one thread, of the tiny model's forward and backward of one micro-batch (8 x 256, the
    loop's chunked loss), of AdamW's step and of Muon's step (each optimizer as the loop builds it, with its
    state), each alone, interleaved, medians over `repeats`: Newton-Schulz's cost grows with the parameters,
    the forward and backward's with the parameters times the tokens of a step."""
    import torch

    from scratchlm.config import read_yaml
    from scratchlm.model import ScratchForCausalLM
    from scratchlm.model.loss import lm_loss
    from scratchlm.model.presets import build_config
    from scratchlm.train.config import PretrainConfig
    from scratchlm.train.optimizer import build_optimizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = ScratchForCausalLM(build_config({"preset": "tiny"}))
    model.config._attn_implementation = "sdpa"
    recipe = read_yaml(RECIPE)
    optimizers = {name: build_optimizer(model, PretrainConfig(**{**recipe, "optimizer": name})) for name in GRID}
    tokens = torch.randint(0, model.config.vocab_size, (8, 257))

    def forward_backward() -> None:
        model(input_ids=tokens[:, :-1], labels=tokens[:, 1:], loss_from_hidden=lm_loss, use_cache=False).backward()

    forward_backward()
    parts = {"forward_backward": forward_backward, **{f"{n}_step": o.step for n, o in optimizers.items()}}
    for step in optimizers.values():  # their state, as from step 2 on
        step.step()
    times = {name: [] for name in parts}
    for repeat in range(repeats):
        for name, part in parts.items() if repeat % 2 == 0 else reversed(parts.items()):
            start = time.perf_counter()
            part()
            times[name].append((time.perf_counter() - start) * 1e3)
    torch.set_num_threads(threads)
    return {name: round(statistics.median(values), 1) for name, values in times.items()}


def plot(results: dict, best: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {"adamw": "tab:blue", "muon": "tab:orange"}
    for name, runs in results.items():
        for lr, result in runs.items():
            chosen = lr == best[name]
            ax.plot(result["tokens"], result["val_bpb"], "o-" if chosen else "--", color=colors[name],
                    alpha=1.0 if chosen else 0.35, linewidth=2 if chosen else 1,
                    label=f"{name} lr {lr}" + (" (best)" if chosen else ""))  # fmt: skip
    ax.axhline(results["adamw"][best["adamw"]]["final_val_bpb"], color="gray", linewidth=0.8, linestyle=":")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation bits per byte")
    ax.set_title("tiny recipe: AdamW vs Muon (same data order)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "optimizer_ab")
    parser.add_argument("--steps", type=int, default=RECIPE_STEPS)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--keep", action="store_true", help="read pairs already trained under --work")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    prepare(args.work)
    results, pair_seconds = {"adamw": {}, "muon": {}}, []
    for rank in range(len(GRID["adamw"][1])):  # AdamW's i-th learning rate beside Muon's i-th
        pair = {name: command(args.work, name, GRID[name][1][rank], args.steps, args.eval_every) for name in GRID}
        kept = args.keep and all(finished(run, args.steps) for _, run in pair.values())
        pair_seconds.append(None if kept else side_by_side([c for c, _ in pair.values()]))
        for name, (_, run) in pair.items():
            results[name][GRID[name][1][rank]] = curve(run)
    checksums = {r["windows_checksums"] == results["adamw"][1e-3]["windows_checksums"]
                 for runs in results.values() for r in runs.values()}  # fmt: skip
    best = {name: min(runs, key=lambda lr: runs[lr]["final_val_bpb"]) for name, runs in results.items()}
    target = results["adamw"][best["adamw"]]["final_val_bpb"]
    reach = {name: tokens_to_reach(results[name][best[name]], target) for name in GRID}
    rank = GRID["adamw"][1].index(best["adamw"])
    step_time = {name: results[name][GRID[name][1][rank]]["seconds_per_step"] for name in GRID}
    summary = {
        "best_lr": best,
        "adamw_final_val_bpb": target,
        "muon_final_val_bpb": results["muon"][best["muon"]]["final_val_bpb"],
        "tokens_to_reach_adamw_final_val_bpb": reach,
        "muon_tokens_ratio": reach["muon"] / reach["adamw"] if reach["muon"] else None,
        "muon_reached_it_at_its_first_evaluation": reach["muon"] == results["muon"][best["muon"]]["tokens"][0],
        "seconds_per_step_side_by_side": step_time,
        "muon_time_per_step_ratio": step_time["muon"] / step_time["adamw"],
        "seconds_per_step_all_pairs": {
            f"adamw {a} | muon {m}": [results["adamw"][a]["seconds_per_step"], results["muon"][m]["seconds_per_step"]]
            for a, m in zip(GRID["adamw"][1], GRID["muon"][1], strict=True)
        },
        "probe_accuracy_at_end": {name: results[name][best[name]]["probe_accuracy"] for name in GRID},
        "best_lr_at_an_end_of_the_grid": {name: best[name] in (GRID[name][1][0], GRID[name][1][-1]) for name in GRID},
        "step_split_one_thread_ms": step_split(),
    }
    summary["goal_met"] = bool(summary["muon_tokens_ratio"] is not None and summary["muon_tokens_ratio"] <= 0.75
                               and summary["muon_time_per_step_ratio"] <= 1.05)  # fmt: skip
    for runs in results.values():
        for result in runs.values():
            del result["windows_checksums"]
    report = {
        "what": f"tiny recipe, AdamW vs Muon, each at its best of {len(GRID['adamw'][1])} learning rates, same seed "
        "and data order",
        "steps": args.steps,
        "note": f"{args.steps} steps of the recipe's {RECIPE_STEPS} (the warmup scaled to match); evaluations every "
        f"{args.eval_every} steps on 16 validation windows per source",
        "same_data_order": checksums == {True},
        "summary": summary,
        "runs": {name: {str(lr): r for lr, r in runs.items()} for name, runs in results.items()},
        "pair_wall_seconds": pair_seconds,
        "total_seconds": time.perf_counter() - started,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "load_average": os.getloadavg()},
        "command": f"python benchmarks/optimizer_ab.py --steps {args.steps} --eval-every {args.eval_every}"
        + " --keep" * args.keep,  # not --work: a path of this machine
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "optimizer_ab.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(results, best, RESULTS / "optimizer_ab.png")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
