"""Run by torchrun in tests: the loop's optimizer (train/optimizer.py's build_optimizer and set_hyperparameters)
stepping through the loop's Stepper on CPU processes (gloo), under DDP or FSDP2 as `accelerate launch` sets them
up, on a fixed global stream of windows (parallel_worker.batches: each rank takes its slice).

    torchrun --nproc_per_node N tests/optimizer_worker.py OUT RUN[,RUN...] [key=value ...]

RUN: plain (one process: no wrapper; N processes: DDP), fsdp2, or either followed by +compile; the runs share one
launch (one process group), each from the same initial weights. Options: optimizer=adamw|muon, steps=N,
accumulation=N. For each RUN, OUT/RUN.safetensors: every parameter after the last step, whole (gathered from
the shards under FSDP2); OUT/RUN.json: each step's loss, and how many parameters were sharded (DTensors).
"""

import dataclasses
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from helpers import small_config
from parallel_worker import VOCAB, batches
from scratchlm.model import ScratchForCausalLM
from scratchlm.train.config import PretrainConfig
from scratchlm.train.optimizer import build_optimizer, set_hyperparameters
from scratchlm.train.parallel import World, start_world, unwrapped, wrap_model
from scratchlm.train.step import Stepper


def train(world: World, out: Path, label: str, options: dict) -> None:
    config = PretrainConfig(
        output_dir=str(out), model_preset="tiny", data_dir="unused", max_steps=1, bf16=False,
        optimizer=options["optimizer"], learning_rate=1e-3, weight_decay=0.1, max_grad_norm=1.0,
        torch_compile=label.endswith("+compile"), torch_compile_backend="aot_eager",
    )  # fmt: skip
    torch.manual_seed(0)
    model = ScratchForCausalLM(small_config(vocab_size=VOCAB, tie_word_embeddings=False))
    model.config._attn_implementation = "sdpa"
    # What `accelerate launch` with `distributed_type: FSDP`, fsdp_version 2, makes start_world report.
    wrapped = wrap_model(model, dataclasses.replace(world, fsdp=label.startswith("fsdp2")), config)
    optimizer = build_optimizer(unwrapped(wrapped), config)
    accumulation, steps = int(options["accumulation"]), int(options["steps"])
    stepper = Stepper(model=wrapped, optimizer=optimizer, loader=batches(world, accumulation, steps),
                      accumulation=accumulation, world=world, config=config)  # fmt: skip
    losses = []
    for step in range(steps):  # the lr rises and Muon's momentum warms up: the schedule reaches every group
        set_hyperparameters(optimizer, lr=1e-3 * (step + 1) / steps, weight_decay=0.1, step=step * 100)
        losses.append(stepper.step(step + 1, False, lambda: None).loss)
    weights, sharded = {}, 0
    for name, param in unwrapped(wrapped).named_parameters():
        sharded += hasattr(param, "full_tensor")
        whole = param.full_tensor() if hasattr(param, "full_tensor") else param
        weights[name] = whole.detach().float().contiguous().clone()
    if world.main:
        save_file(weights, str(out / f"{label}.safetensors"))
        (out / f"{label}.json").write_text(json.dumps({"losses": losses, "sharded": sharded}))


def main() -> None:
    out, labels = Path(sys.argv[1]), sys.argv[2].split(",")
    options = {"optimizer": "muon", "steps": "4", "accumulation": "2"}
    options.update(arg.split("=", 1) for arg in sys.argv[3:])
    world = start_world(bf16=False)  # as the config: the updates compare in fp32
    if any(label.startswith("fsdp2") for label in labels) and not torch.distributed.is_initialized():
        raise SystemExit("fsdp2 runs need torchrun's process group")
    for label in labels:
        train(world, out, label, options)
    world.close()


if __name__ == "__main__":
    main()
