"""The memory estimator (src/scratchlm/train/memory.py) against the real training forward.

For several small shapes (hidden, layers, heads / kv heads, FFN, vocab, sequence, batch) and ways to
run (bf16 autocast over fp32 weights, bf16 weights as under FSDP2, fp32; activation checkpointing;
torch.compile per decoder block; softcap, BitNet, no document masking, the plain loss) it builds
ScratchForCausalLM, runs the training forward as the loop's Stepper does (the model's forward with
loss_from_hidden=lm_loss: the decoder, then the chunked loss), and compares:
- saved: the bytes autograd saves for backward (saved-tensor hooks, by storage while alive), split
  into activations (+ weight copies) and the loss's saved gradients; compiled rows too;
- live / peak (eager rows): bytes held after the forward and the peak over forward and backward,
  above weights, gradients and optimizer state, with torch's MemTracker
(the measuring tools are src/scratchlm/train/measure.py).

    python benchmarks/memory_validation.py            # CPU: writes benchmarks/results/memory_validation.json
    python benchmarks/memory_validation.py --cuda     # GPU: the rows scaled up (CUDA_SCALE), and
                                                      # torch.cuda.max_memory_allocated per row

Every ratio is estimate / measurement; the estimator promises 0.85-1.15.
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from scratchlm.model.modeling_scratch import ScratchForCausalLM
from scratchlm.model.presets import build_config
from scratchlm.train.measure import SavedTensors, measure_micro_step, training_forward
from scratchlm.train.memory import TrainingSetup, estimate_memory, parameter_counts
from scratchlm.train.parallel import checkpoint_layers

BASE = dict(hidden=64, layers=2, heads=4, kv_heads=2, ffn=176, vocab=1000, seq=64, batch=2)
# On a GPU the same rows, larger: hundreds of MB a row, well above cuBLAS's workspace and the
# allocator's 512-byte rounding (head_dim 128 as in the recipes).
CUDA_SCALE = dict(hidden=8, ffn=8, vocab=32, seq=16)
# (name, shape overrides, run overrides)
ROWS = [
    ("autocast", {}, {}),
    ("autocast wide", dict(hidden=128, heads=8, kv_heads=8, ffn=352, seq=48, batch=3), {}),
    ("autocast deep", dict(layers=4, vocab=3000, seq=96), {}),
    ("autocast mqa", dict(heads=8, kv_heads=1, hidden=96, ffn=256, batch=4, seq=32), {}),
    ("autocast no doc mask", dict(seq=128), dict(document_masking=False)),
    ("autocast eager attention", {}, dict(attention="eager")),
    ("autocast softcap", dict(vocab=2500), dict(softcap=15.0)),
    ("autocast plain loss", dict(vocab=1500), dict(loss="plain")),
    ("autocast checkpointing", dict(layers=3), dict(gradient_checkpointing=True)),
    ("autocast checkpointing long", dict(seq=256, batch=1), dict(gradient_checkpointing=True)),
    ("bf16 weights (FSDP2)", dict(hidden=96, ffn=256), dict(precision="bf16-weights")),
    ("bf16 weights checkpointing", {}, dict(precision="bf16-weights", gradient_checkpointing=True)),
    ("fp32", dict(seq=80, batch=3), dict(precision="fp32")),
    ("fp32 checkpointing", {}, dict(precision="fp32", gradient_checkpointing=True)),
    ("bitnet autocast", dict(hidden=96, ffn=256), dict(bitnet=True)),
    ("bitnet fp32", {}, dict(precision="fp32", bitnet=True)),
    ("compiled autocast", {}, dict(compile=True)),
    ("compiled fp32", dict(hidden=96, ffn=256), dict(precision="fp32", compile=True)),
    ("compiled bf16 weights", {}, dict(precision="bf16-weights", compile=True)),
]


def build(shape: dict, run: dict, device: str):
    config = build_config(
        dict(
            hidden_size=shape["hidden"],
            num_hidden_layers=shape["layers"],
            num_attention_heads=shape["heads"],
            num_key_value_heads=shape["kv_heads"],
            intermediate_size=shape["ffn"],
            vocab_size=shape["vocab"],
            max_position_embeddings=shape["seq"],
            tie_word_embeddings=True,
            logit_softcap=run.get("softcap"),
            bitnet=run.get("bitnet", False),
        )
    )
    config._attn_implementation = run.get("attention", "sdpa")
    torch.manual_seed(0)
    model = ScratchForCausalLM(config).to(device)
    precision = run.get("precision", "autocast")
    if precision == "bf16-weights":
        model = model.to(torch.bfloat16)
    if run.get("gradient_checkpointing"):
        checkpoint_layers(model)
    if run.get("compile"):
        for layer in model.model.layers:
            layer.compile()
    model.train()
    setup = TrainingSetup(
        model=config,
        seq_len=shape["seq"],
        micro_batch=shape["batch"],
        accumulation=2,
        sharded=precision == "bf16-weights",  # FSDP2's param_dtype=bf16 on one rank: bf16 weights
        gradient_checkpointing=run.get("gradient_checkpointing", False),
        compile=run.get("compile", False),
        bf16=precision != "fp32",
        loss=run.get("loss", "chunked"),
        attention=config._attn_implementation,
        document_masking=run.get("document_masking", True),
    )
    return model, setup, (torch.bfloat16 if precision == "autocast" else None)


def batch(shape: dict, masking: bool, device: str, seed: int):
    generator = torch.Generator().manual_seed(seed)
    b, t, v = shape["batch"], shape["seq"], shape["vocab"]
    ids = torch.randint(0, v, (b, t), generator=generator)
    positions = torch.arange(t).repeat(b, 1)
    if masking:  # three packed documents per row: sdpa then gets a per-document mask
        for cut in (t // 3, 2 * t // 3):
            positions[:, cut:] -= positions[:, cut : cut + 1].clone()
    labels = ids.roll(-1, dims=1)
    labels[:, -1] = -100
    return ids.to(device), positions.to(device), labels.to(device)


def comparable(setup: TrainingSetup) -> dict[str, int]:
    """The estimate's terms that the measurements see: FSDP2's unsharded parameters are, here, the
    bf16 model's own parameters, so they leave the weight copies."""
    terms = dict(estimate_memory(setup).terms)
    loss_transient = terms.pop("transient")
    if setup.sharded:
        counts = parameter_counts(setup.model)
        terms["weight_copies"] -= 2 * (counts.root + min(2, setup.model.num_hidden_layers) * counts.layer)
    saved = terms["activations"] + terms["weight_copies"]
    return {
        "activations": saved,
        "loss_saved": terms["loss_saved"],
        "live_after_forward": saved + terms["loss_saved"],
        "peak_above_static": saved + terms["loss_saved"] + loss_transient,
    }


def measure(name: str, shape_overrides: dict, run: dict, device: str) -> dict:
    shape = {**BASE, **shape_overrides}
    if device == "cuda":
        shape = {key: value * CUDA_SCALE.get(key, 1) for key, value in shape.items()}
    model, setup, autocast = build(shape, run, device)
    masking = setup.document_masking
    batches = [batch(shape, masking, device, seed) for seed in (0, 1)]
    estimate = comparable(setup)
    measured = {}
    if not setup.gradient_checkpointing:  # the checkpoint's own hooks hide what it keeps from ours
        saved = SavedTensors(model)
        with torch.autocast(device, dtype=autocast or torch.float32, enabled=autocast is not None):
            loss = training_forward(model, *batches[0], saved=saved, loss=setup.loss)
        counted = saved.bytes()
        loss.backward()
        model.zero_grad(set_to_none=True)
        measured["activations"] = counted["activations"] + counted["weight_copies"]
        measured["loss_saved"] = counted["loss_saved"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    if not setup.compile:
        measured.update(measure_micro_step(model, optimizer, batches, autocast, setup.loss))
    if device == "cuda":
        measured["cuda_peak_above_static"] = cuda_peak_above_static(model, optimizer, batches, autocast, setup.loss)
        estimate["cuda_peak_above_static"] = estimate["peak_above_static"]
    rows = {
        term: {"estimated": estimate[term], "measured": value, "ratio": round(estimate[term] / value, 4)}
        for term, value in measured.items()
    }
    return {"name": name, "shape": shape, "run": run, "terms": rows}


def cuda_peak_above_static(model, optimizer, batches, autocast, loss) -> int:
    """torch.cuda.max_memory_allocated over one micro-batch above weights, gradients and AdamW state
    (a first micro-batch and step make them), as measure_micro_step counts it; compiled rows too."""

    def micro_step(batch_):
        with torch.autocast("cuda", dtype=autocast or torch.float32, enabled=autocast is not None):
            value = training_forward(model, *batch_, loss=loss)
        value.backward()

    micro_step(batches[0])
    optimizer.step()
    torch.cuda.synchronize()
    static = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    micro_step(batches[1])
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - static


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cuda", action="store_true", help="run on the GPU and add max_memory_allocated")
    parser.add_argument("--only", help="rows whose name contains this")
    parser.add_argument("--skip", help="rows whose name contains this are left out")
    parser.add_argument("--out", help="default: results/memory_validation.json (_cuda.json with --cuda)")
    args = parser.parse_args()
    device = "cuda" if args.cuda else "cpu"
    args.out = args.out or str(
        Path(__file__).parent / "results" / f"memory_validation{'_cuda' if args.cuda else ''}.json"
    )
    results, worst = [], 0.0
    for name, shape, run in ROWS:
        if (args.only and args.only not in name) or (args.skip and args.skip in name):
            continue
        start = time.perf_counter()
        row = measure(name, shape, run, device)
        row["seconds"] = round(time.perf_counter() - start, 1)
        results.append(row)
        for term, cell in row["terms"].items():
            worst = max(worst, abs(cell["ratio"] - 1))
            print(
                f"{name:30s} {term:24s} est {cell['estimated']:>11,} meas {cell['measured']:>11,} "
                f"ratio {cell['ratio']:.3f}",
                flush=True,
            )
    summary = {
        "device": torch.cuda.get_device_name() if args.cuda else f"CPU ({platform.machine()})",
        # what memory.py assumes as CUDA_CONTEXT_BYTES: the card's used memory that torch did not reserve
        "cuda_context_bytes": torch.cuda.mem_get_info()[1] - torch.cuda.mem_get_info()[0] - torch.cuda.memory_reserved()
        if args.cuda
        else None,
        "torch": torch.__version__,
        "worst_ratio_error": round(worst, 4),
        "rows": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    print(f"worst |ratio - 1| = {worst:.3f}; wrote {args.out}")
    return 0 if worst <= 0.15 else 1


if __name__ == "__main__":
    sys.exit(main())
