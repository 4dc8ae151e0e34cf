"""CORE evaluation, batched against one item per forward pass, written to benchmarks/results/core_batching.json.

    python benchmarks/core_batching.py [--model DIR] [--max-per-task N] [--repeats R]

Runs `evaluate_core` on the core-sample bundle (tests/fixtures/core-sample) with batch size 1 (each
option of each item in its own forward pass) and with batch size 16, side by side, and reports the
median wall time of each, the speed-up, and whether both gave identical results. Without --model it
uses the tiny preset with random weights and a tokenizer trained on the embedded default: the speed
of scoring does not depend on what the weights know.
"""

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from scratchlm.data.default import write_default
from scratchlm.data.sources import Source
from scratchlm.eval.core import evaluate_core, load_bundle
from scratchlm.model.files import init_model, load_model
from scratchlm.model.presets import build_config
from scratchlm.tokenization import train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "core_batching.json"
BUNDLE = ROOT / "tests" / "fixtures" / "core-sample"


def tiny_model(work: Path) -> Path:
    write_default(work / "default", seed=0, tokens=300_000, countries=16)
    train_tokenizer(Source(str(work / "default" / "pretrain")).values(), 4096, work / "tokenizer")
    init_model(build_config({"preset": "tiny", "vocab_size": 4096}), work / "model", work / "tokenizer", seed=0)
    return work / "model"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", help="a model directory (default: the tiny preset, random weights)")
    parser.add_argument("--max-per-task", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model_dir = Path(args.model) if args.model else tiny_model(Path(tempfile.mkdtemp(prefix="scratchlm-core-")))
    model, tokenizer = load_model(model_dir)
    tasks, timings, results = load_bundle(BUNDLE), {}, {}
    for _ in range(args.repeats):  # interleaved, so both see the same machine state
        for batch_size in (1, 16):
            start = time.perf_counter()
            results[batch_size] = evaluate_core(model, tokenizer, tasks, args.max_per_task, batch_size)
            timings.setdefault(batch_size, []).append(time.perf_counter() - start)
    medians = {b: statistics.median(t) for b, t in timings.items()}
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}",
        "threads": torch.get_num_threads(),
        "model": str(model_dir) if args.model else "tiny preset (random weights), vocab 4096",
        "parameters": sum(p.numel() for p in model.parameters()),
        "bundle": "tests/fixtures/core-sample",
        "max_per_task": args.max_per_task,
        "repeats": args.repeats,
        "median_s": {f"batch_{b}": round(s, 3) for b, s in medians.items()},
        "speedup": round(medians[1] / medians[16], 2),
        "identical_results": results[1] == results[16],
        "core": results[16]["core"],
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
