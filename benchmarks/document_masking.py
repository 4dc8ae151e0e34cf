"""What document masking costs a training step on this machine, written to benchmarks/results/document_masking.json.

    python benchmarks/document_masking.py [--steps N] [--repeats R]

The loop's own step (train/step.py's Stepper, the chunked loss) on the tiny preset (6 x 256, seq 256,
micro-batch 8, fp32, sdpa) over windows that pack documents of ~100 tokens, with `document_masking`
on (position ids restart at each document: transformers builds a B x 1 x T x T mask, and sdpa leaves
its causal fast path) and off (one causal attention over the window). Interleaved repeats; medians.
On a GPU the choice is different: with masking the loop picks flex_attention (a block mask), without
it sdpa's flash kernel; benchmarks/gpu_check.py measures that.
"""

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from scratchlm.data.loader import document_positions
from scratchlm.model import ScratchForCausalLM
from scratchlm.model.presets import build_config
from scratchlm.train.config import PretrainConfig
from scratchlm.train.parallel import World
from scratchlm.train.step import Stepper

BOS, SEQ, MICRO_BATCH = 0, 256, 8
OUT = Path(__file__).parent / "results" / "document_masking.json"


def windows(count: int):
    generator = torch.Generator().manual_seed(0)
    for _ in range(count):
        rows = torch.randint(5, 4096, (MICRO_BATCH, SEQ + 1), generator=generator)
        rows[:, ::100] = BOS  # a document starts every 100 tokens
        inputs = rows[:, :-1]
        yield {"input_ids": inputs, "labels": rows[:, 1:], "window_ids": torch.zeros(MICRO_BATCH, 2, dtype=torch.int64),
               "position_ids": torch.from_numpy(document_positions(inputs.numpy(), BOS))}  # fmt: skip


def time_steps(masking: bool, steps: int) -> float:
    torch.manual_seed(0)
    model = ScratchForCausalLM(build_config({"preset": "tiny"}))
    model.config._attn_implementation = "sdpa"
    config = PretrainConfig(output_dir="unused", model_preset="tiny", data_dir="unused", max_steps=steps,
                            document_masking=masking)  # fmt: skip
    world = World(rank=0, size=1, local_rank=0, device=torch.device("cpu"), fsdp=False, bf16=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    stepper = Stepper(
        model=model,
        optimizer=optimizer,
        loader=windows(steps + 1),
        accumulation=1,
        world=world,
        config=config,
    )
    stepper.step(0, False, lambda: None)  # warm-up
    start = time.perf_counter()
    for step in range(steps):
        stepper.step(step + 1, False, lambda: None)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    seconds = {"masked": [], "unmasked": []}
    for _ in range(args.repeats):
        for name, masking in (("masked", True), ("unmasked", False)):
            seconds[name].append(time_steps(masking, args.steps))
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    tokens = MICRO_BATCH * SEQ
    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "shape": f"tiny preset (6 x 256), seq {SEQ}, micro-batch {MICRO_BATCH}, fp32, sdpa, documents of 100 tokens",
        "step_s": {name: round(value, 4) for name, value in medians.items()},
        "tok_per_s": {name: round(tokens / value) for name, value in medians.items()},
        "masked_over_unmasked_time": round(medians["masked"] / medians["unmasked"], 3),
        "all_step_s": {name: [round(v, 4) for v in values] for name, values in seconds.items()},
    }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
