"""What backing checkpoints up to the Hub costs training, written to benchmarks/results/hub_upload_overhead.json.

    python benchmarks/hub_upload_overhead.py [--steps N] [--repeats R]

Trains the tiny preset through `accelerate launch recipes/pretrain.py` on a small embedded default,
saving a full checkpoint (weights + Adam moments, ~70 MB) every 10 steps, with and without
`push_to_hub`, interleaved; the Hub is tests/hub_stub.py on this machine. Reported: the median
training throughput (tok/s over the logged intervals) and the training time of each setting (the
wait for the last uploads after the final step is shown apart: it is not training time).

An upper bound for a real link: the stand-in Hub's own work (receiving, hashing and storing every
byte) runs on the same two cores as the training, where the real Hub's runs elsewhere.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from scratchlm.data.default import write_default
from scratchlm.data.prepare import prepare, read_prepare_config
from scratchlm.data.sources import Source
from scratchlm.tokenization import train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "hub_upload_overhead.json"
sys.path.insert(0, str(ROOT / "tests"))
from hub_stub import HubStub  # noqa: E402

TOKEN = "hf_benchmark_token"


def make_shards(work: Path) -> Path:
    write_default(work / "default", seed=0, tokens=300_000, countries=16)
    train_tokenizer(Source(str(work / "default" / "pretrain")).values(), 4096, work / "tokenizer")
    sources = [{"path": str(work / "default" / "pretrain" / "world.jsonl")}]
    prepare(read_prepare_config({"tokenizer": str(work / "tokenizer"), "sources": sources}, where="benchmark"),
            work / "shards", progress=False)  # fmt: skip
    return work / "shards"


def train(work: Path, shards: Path, steps: int, hub: HubStub | None) -> dict:
    run = work / "run"
    shutil.rmtree(run, ignore_errors=True)
    config = {
        "output_dir": str(run),
        "model_preset": "tiny",
        "data_dir": str(shards),
        "seq_len": 256,
        "per_device_train_batch_size": 8,
        "max_steps": steps,
        "learning_rate": 1e-3,
        "logging_steps": 5,
        "save_steps": 10,
        "save_total_limit": 2,
        "push_to_hub": hub is not None,
        "hub_model_id": "bench/tiny" if hub else "",
    }
    (work / "run.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1"}
    env.update({"HF_ENDPOINT": hub.url, "HF_HOME": str(work / "hf_home")} if hub else {})
    launcher = ["accelerate", "launch", "--num_processes", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command = [*launcher, str(ROOT / "recipes" / "pretrain.py"), "--config", str(work / "run.yaml")]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env)
    whole = time.perf_counter() - start
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "tok_per_s" in r and r["step"] > 1]  # step 1 includes warm-up
    return {
        "tok_per_s": statistics.median(r["tok_per_s"] for r in logged),
        "training_s": logged[-1]["elapsed_s"],
        "process_s": whole,
        "uploaded_revisions": sorted(hub.repos["bench/tiny"].branches) if hub else [],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="scratchlm-hub-"))
    shards = make_shards(work)
    runs = {"local": [], "push_to_hub": []}
    for _ in range(args.repeats):  # interleaved, so both see the same machine state
        runs["local"].append(train(work, shards, args.steps, None))
        hub = HubStub(TOKEN)
        runs["push_to_hub"].append(train(work, shards, args.steps, hub))
        hub.close()
    keys = ("tok_per_s", "training_s", "process_s")
    medians = {name: {k: round(statistics.median(r[k] for r in rs), 2) for k in keys} for name, rs in runs.items()}
    newest = sorted((work / "run" / "checkpoints").glob("step_*"))[-1]
    checkpoint_mb = sum(f.stat().st_size for f in newest.rglob("*") if f.is_file())
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}",
        "model": "tiny preset, seq_len 256 x batch 8",
        "steps": args.steps,
        "checkpoint_every_steps": 10,
        "checkpoint_mb": round(checkpoint_mb / 1e6, 1),
        "repeats": args.repeats,
        "median": medians,
        "throughput_ratio": round(medians["push_to_hub"]["tok_per_s"] / medians["local"]["tok_per_s"], 3),
        "training_time_ratio": round(medians["push_to_hub"]["training_s"] / medians["local"]["training_s"], 3),
        "uploaded_revisions_last_run": runs["push_to_hub"][-1]["uploaded_revisions"],
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
