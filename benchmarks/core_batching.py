"""CORE evaluation, the fast path against the plain one, written to benchmarks/results/core_batching.json.

    python benchmarks/core_batching.py [--max-per-task N] [--repeats R]

Runs `evaluate_core` on the core-sample bundle (tests/fixtures/core-sample) with batch size 1 (the
plain computation: every sequence alone, whole, as nanochat scores it) and batch size 16 (shared
prefixes through the KV cache, padded batches, LM head only where needed), interleaved, and reports
the median wall time of each, the speed-up and whether the results are identical. The model is the
tiny preset with random weights (scoring speed does not depend on what the weights know) at two
context lengths: 512, the tiny preset's, where this bundle's 10-shot arc and bigbench prompts
(~750-1,200 tokens with a tokenizer trained on the embedded default) are cropped on the left so
their options cannot share a prefix; and 2048, every GPU recipe's, where nothing is cropped.
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
CONTEXTS = (512, 2048)


def tiny_models(work: Path) -> dict[int, Path]:
    write_default(work / "default", seed=0, tokens=300_000, countries=16)
    train_tokenizer(Source(str(work / "default" / "pretrain")).values(), 4096, work / "tokenizer")
    models = {}
    for context in CONTEXTS:
        config = build_config({"preset": "tiny", "vocab_size": 4096, "max_position_embeddings": context})
        models[context] = work / f"model-{context}"
        init_model(config, models[context], work / "tokenizer", seed=0)
    return models


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-per-task", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tasks = load_bundle(BUNDLE)
    by_context = {}
    for context, model_dir in tiny_models(Path(tempfile.mkdtemp(prefix="scratchlm-core-"))).items():
        model, tokenizer = load_model(model_dir)
        timings, results = {}, {}
        for _ in range(args.repeats):  # interleaved, so both see the same machine state
            for batch_size in (1, 16):
                start = time.perf_counter()
                results[batch_size] = evaluate_core(model, tokenizer, tasks, args.max_per_task, batch_size)
                timings.setdefault(batch_size, []).append(time.perf_counter() - start)
        medians = {b: statistics.median(t) for b, t in timings.items()}
        by_context[context] = {
            "median_s": {f"batch_{b}": round(s, 3) for b, s in medians.items()},
            "speedup": round(medians[1] / medians[16], 2),
            "identical_results": results[1] == results[16],
            "core": results[16]["core"],
        }
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}",
        "threads": torch.get_num_threads(),
        "model": "tiny preset (random weights), vocab 4096",
        "parameters": sum(p.numel() for p in model.parameters()),
        "bundle": "tests/fixtures/core-sample",
        "max_per_task": args.max_per_task,
        "repeats": args.repeats,
        "by_context": by_context,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
