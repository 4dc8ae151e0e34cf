"""Data pipeline throughput on this machine, written to benchmarks/results/data_throughput.json.

    python benchmarks/data_throughput.py [--work DIR]

Measures, side by side in one run: tokenizer training (MB/s) on the embedded default and on ~10 MB
of real text (this Python's standard library: code and docstrings); `data prepare` with 1 and 2
processes (MB/s, tokens/s); the loader (tokens/s); and how fast the tiny model consumes tokens in a
CPU training step, so the loader/model ratio says whether data can ever be the bottleneck.
"""

import argparse
import json
import os
import platform
import statistics
import sysconfig
import tempfile
import time
from pathlib import Path

import torch

from scratchlm.data.default import write_default
from scratchlm.data.loader import WindowLoader
from scratchlm.data.prepare import prepare, read_prepare_config
from scratchlm.data.shards import TokenShards
from scratchlm.data.sources import Source
from scratchlm.model import ScratchForCausalLM
from scratchlm.model.presets import build_config
from scratchlm.tokenization import train_tokenizer

RESULTS = Path(__file__).parent / "results" / "data_throughput.json"
SEQ_LEN, MICRO_BATCH = 512, 8


def stdlib_text(limit_bytes: int = 10_000_000) -> list[str]:
    docs, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        text = path.read_text(errors="ignore")
        docs.append(text)
        total += len(text.encode())
        if total >= limit_bytes:
            break
    return docs


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", default=None, help="scratch directory (default: a temporary one)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="scratchlm-bench-"))
    results = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__}}

    write_default(work / "default")
    results["tokenizer_train_default"] = train_tokenizer(
        Source(str(work / "default" / "pretrain")).values(), 4096, work / "tokenizer"
    )
    results["tokenizer_train_stdlib_10mb"] = train_tokenizer(stdlib_text(), 32000, work / "tokenizer-stdlib")

    sources = [{"path": str(work / "default" / "pretrain" / f"{name}.jsonl")} for name in ("world", "math", "code")]
    for processes in (1, 2):
        config = read_prepare_config(
            {"tokenizer": str(work / "tokenizer"), "sources": sources, "num_proc": processes}, where="benchmark"
        )
        manifest = prepare(config, work / f"shards-{processes}", progress=False)
        size = sum(s[split]["bytes"] for s in manifest["sources"] for split in ("train", "val"))
        tokens = sum(s[split]["tokens"] for s in manifest["sources"] for split in ("train", "val"))
        results[f"prepare_{processes}_process"] = {
            "mb": round(size / 1e6, 2),
            "tokens": tokens,
            "seconds": manifest["seconds"],
            "mb_per_s": round(size / 1e6 / manifest["seconds"], 2),
            "tokens_per_s": round(tokens / manifest["seconds"]),
        }

    loader = WindowLoader(TokenShards(work / "shards-1"), seq_len=SEQ_LEN, micro_batch=MICRO_BATCH)
    batches = 2000
    seconds = median_seconds(lambda: [next(loader) for _ in range(batches)], repeats=3)
    loader_tps = batches * MICRO_BATCH * SEQ_LEN / seconds
    results["loader"] = {"seq_len": SEQ_LEN, "micro_batch": MICRO_BATCH, "tokens_per_s": round(loader_tps)}

    torch.manual_seed(0)
    model = ScratchForCausalLM(build_config({"preset": "tiny"}))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = next(loader)

    def train_step():
        loss = model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    train_step()  # warm-up
    step = median_seconds(train_step, repeats=5)
    model_tps = MICRO_BATCH * SEQ_LEN / step
    results["tiny_model_train_step"] = {
        "seconds": round(step, 3),
        "tokens_per_s": round(model_tps),
        "threads": torch.get_num_threads(),
    }
    results["loader_over_model"] = round(loader_tps / model_tps, 1)

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
