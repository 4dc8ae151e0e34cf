"""Run by torchrun in tests: the loop's parallel code (train/parallel.py's wrap_model, train/step.py's Stepper)
on CPU processes with gloo, FSDP2 when asked, exactly as `accelerate launch` with an FSDP config sets it up.

    torchrun --nproc_per_node N tests/parallel_worker.py OUT MODE [key=value ...]
    MODE grads:   one step of `accumulation` micro-batches; OUT/grads.safetensors holds the full gradients
    MODE compile: `steps` steps; OUT/compile.json holds the losses, recompiles and compiled graph calls per step

Options: fsdp=0|1, bf16=0|1, reduce_dtype=float32|bfloat16, accumulation=N, compile=0|1, layers=N, steps=N.
The global batch is the same for every world size: each rank takes its slice, as WindowLoader does.
"""

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from helpers import small_config
from scratchlm.model import ScratchForCausalLM
from scratchlm.train.config import PretrainConfig
from scratchlm.train.parallel import start_world, unwrapped, wrap_model
from scratchlm.train.step import Stepper

MICRO_BATCH, SEQ, VOCAB = 2, 32, 512


class RecordingOptimizer:
    """Keeps the gradients the step would apply (whole, gathered from every rank's shards), changes nothing."""

    def __init__(self, model):
        self.model, self.grads = model, []

    def step(self):
        grads = {}
        for name, param in self.model.named_parameters():
            grad = param.grad
            grads[name] = (grad.full_tensor() if hasattr(grad, "full_tensor") else grad).detach().float().clone()
        self.grads.append(grads)

    def zero_grad(self, set_to_none=True):
        self.model.zero_grad(set_to_none=set_to_none)


def batches(world, accumulation: int, steps: int):
    """Rank r's micro-batches of a fixed global stream of windows."""
    generator = torch.Generator().manual_seed(1)
    per_step = MICRO_BATCH * world.size * accumulation
    windows = torch.randint(4, VOCAB, (steps * per_step, SEQ + 1), generator=generator)
    for start in range(0, len(windows), MICRO_BATCH * world.size):
        mine = windows[start + world.rank * MICRO_BATCH : start + (world.rank + 1) * MICRO_BATCH]
        yield {
            "input_ids": mine[:, :-1],
            "labels": mine[:, 1:],
            "position_ids": torch.arange(SEQ).repeat(MICRO_BATCH, 1),
            "window_ids": torch.zeros(MICRO_BATCH, 2, dtype=torch.int64),
        }


def counting_backend():
    """aot_eager, counting how often compiled graphs run (forward and backward) and how many were made."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    stats = {"graphs": 0, "calls": 0}

    def compiler(graph, example_inputs):
        stats["graphs"] += 1

        def run(*args):
            stats["calls"] += 1
            return graph(*args)

        return make_boxed_func(run)

    torch._dynamo.register_backend(aot_autograd(fw_compiler=compiler, bw_compiler=compiler), name="counting")
    return stats


def main() -> None:
    out, mode = Path(sys.argv[1]), sys.argv[2]
    options = {"fsdp": "0", "bf16": "0", "reduce_dtype": "float32", "accumulation": "4", "compile": "0",
               "layers": "2", "steps": "1"}  # fmt: skip
    options.update(arg.split("=", 1) for arg in sys.argv[3:])
    if options["fsdp"] == "1":  # what `accelerate launch` sets for `distributed_type: FSDP`, fsdp_version 2
        os.environ.update({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"})
    config = PretrainConfig(
        output_dir=str(out), model_preset="tiny", data_dir="unused", max_steps=1, max_grad_norm=0.0,
        torch_compile=options["compile"] == "1", torch_compile_backend="counting",
        reduce_dtype=options["reduce_dtype"], bf16=options["bf16"] == "1",
    )  # fmt: skip
    world = start_world(bf16=config.bf16)  # as the loop starts it
    stats = counting_backend()
    torch.manual_seed(0)
    model = ScratchForCausalLM(small_config(vocab_size=VOCAB, num_hidden_layers=int(options["layers"])))
    model.config._attn_implementation = "sdpa"
    wrapped = wrap_model(model, world, config)
    accumulation, steps = int(options["accumulation"]), int(options["steps"])
    loader = batches(world, accumulation, steps)
    if mode == "grads":
        optimizer = RecordingOptimizer(unwrapped(wrapped))
        Stepper(
            model=wrapped,
            optimizer=optimizer,
            loader=loader,
            accumulation=accumulation,
            world=world,
            config=config,
        ).step(1, False, lambda: None)
        if world.main:
            save_file({k: v.contiguous() for k, v in optimizer.grads[0].items()}, str(out / "grads.safetensors"))
    else:
        from torch._dynamo.utils import get_compilation_metrics

        optimizer = torch.optim.AdamW(unwrapped(wrapped).parameters(), lr=1e-3)
        stepper = Stepper(
            model=wrapped,
            optimizer=optimizer,
            loader=loader,
            accumulation=accumulation,
            world=world,
            config=config,
        )
        record = {"losses": [], "calls": [], "graphs": [], "recompiles": []}
        for step in range(1, steps + 1):
            before = stats["calls"]
            record["losses"].append(stepper.step(step, False, lambda: None).loss)
            record["calls"].append(stats["calls"] - before)
            record["graphs"].append(stats["graphs"])
            # A recompilation is a compile made because a guard of an earlier one failed: it has a reason.
            record["recompiles"].append(sum(bool(m.recompile_reason) for m in get_compilation_metrics()))
        if world.main:
            (out / "compile.json").write_text(json.dumps(record))
    world.close()


if __name__ == "__main__":
    main()
