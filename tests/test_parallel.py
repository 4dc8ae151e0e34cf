"""The loop's parallel code on CPU processes (gloo): FSDP2 gradients reduce and accumulate in fp32, and
torch.compile covers every decoder layer with one graph, under FSDP2 too."""

import json
import shutil
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from helpers import REPO


def worker(tmp_path, processes: int, mode: str, port: int, **options) -> None:
    out = tmp_path / "_".join(f"{k}{v}" for k, v in options.items()) / str(processes)
    out.mkdir(parents=True)
    script = REPO / "tests" / "parallel_worker.py"
    command = [shutil.which("torchrun"), "--nproc_per_node", str(processes), "--master_port", str(port),
               str(script), str(out), mode, *(f"{k}={v}" for k, v in options.items())]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def relative_errors(grads: dict, reference: dict) -> dict[str, float]:
    return {name: float((grads[name] - ref).norm() / ref.norm()) for name, ref in reference.items()}


def test_fsdp2_gradients_reduce_and_accumulate_in_fp32(tmp_path):
    """Two FSDP2 ranks, four micro-batches each, against one process summing all eight in fp32."""
    reference = load_file(worker(tmp_path, 1, "grads", 29581, accumulation=8) / "grads.safetensors")
    fp32 = load_file(worker(tmp_path, 2, "grads", 29582, fsdp=1) / "grads.safetensors")
    bf16 = load_file(worker(tmp_path, 2, "grads", 29583, fsdp=1, reduce_dtype="bfloat16") / "grads.safetensors")
    fp32_error, bf16_error = relative_errors(fp32, reference), relative_errors(bf16, reference)
    # fp32: only the order of the sums differs.
    assert max(fp32_error.values()) < 1e-5, fp32_error
    # bf16 (accelerate's FSDP2 default): every micro-batch's gradient rounded to 8 bits of mantissa, then summed so.
    assert min(bf16_error.values()) > 1e-4, bf16_error


@pytest.mark.parametrize("processes", [1, 2])
def test_compile_covers_every_layer_once_under_fsdp2(tmp_path, processes):
    layers, accumulation, steps = 12, 2, 3
    options = {"fsdp": 1, "layers": layers, "accumulation": accumulation, "steps": steps}
    compiled = json.loads((worker(tmp_path, processes, "compile", 29590 + processes, compile=1, **options)
                           / "compile.json").read_text())  # fmt: skip
    eager = json.loads((worker(tmp_path, processes, "compile", 29594 + processes, compile=0, **options)
                        / "compile.json").read_text())  # fmt: skip
    assert compiled["recompiles"] == [0] * steps  # 12 layers, past torch's recompile limit of 8: none
    # A forward and a backward graph for the decoder layer, and for the loss: made at the first step only.
    assert compiled["graphs"][0] == 4 and compiled["graphs"][-1] == 4
    # Every layer, and the loss, ran compiled forward and backward in every micro-batch of every step.
    assert compiled["calls"] == [2 * (layers + 1) * accumulation] * steps
    assert eager["calls"] == [0] * steps
    torch.testing.assert_close(compiled["losses"], eager["losses"], rtol=1e-5, atol=1e-6)


def test_selective_checkpointing_keeps_more_than_full_and_less_than_none_for_the_same_gradients():
    from helpers import small_config
    from scratchlm.model import ScratchForCausalLM
    from scratchlm.train.measure import measure_micro_step
    from scratchlm.train.parallel import checkpoint_layers

    generator = torch.Generator().manual_seed(0)
    windows = [torch.randint(4, 1000, (4, 129), generator=generator) for _ in range(2)]
    batches = [(w[:, :-1], torch.arange(128).repeat(4, 1), w[:, 1:]) for w in windows]
    measured, grads = {}, {}
    for policy in ("none", "full", "selective"):
        torch.manual_seed(0)
        model = ScratchForCausalLM(small_config(max_position_embeddings=128)).train()
        if policy != "none":
            checkpoint_layers(model, policy)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        measured[policy] = measure_micro_step(model, optimizer, batches, autocast=None)["live_after_forward"]
        grads[policy] = {n: p.grad.clone() for n, p in model.named_parameters()}
    print("live bytes after the forward:", measured)
    assert measured["full"] < measured["selective"] < measured["none"], measured
    for policy in ("full", "selective"):
        for name, grad in grads["none"].items():
            torch.testing.assert_close(grads[policy][name], grad, rtol=1e-5, atol=1e-7)
