"""The roofline step time (train/roofline.py): FLOPs and bytes counted op by op during the rehearsal's own fake
training step, timed on the GPUs the planner knows, and printed beside the planner's time at its assumed MFU."""

import re
from collections import Counter
from dataclasses import replace

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from helpers import REPO
from scratchlm.model.info import model_stats
from scratchlm.train import rehearse as rehearsal
from scratchlm.train.memory import GIB, setup_for_run
from scratchlm.train.plan import GPUS
from scratchlm.train.roofline import BIASES, StepCounter, step_seconds
from test_rehearse import recipe_run

# genesis-1b's run (2 FSDP2 ranks, 32 micro-batches of 4 x 2048, flex attention, document masking), tiny widths.
SMALL = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 512}  # fmt: skip


@pytest.mark.parametrize("checkpointing", [False, True])
def test_a_steps_flops_are_the_planners_per_token_count_plus_what_the_kernels_recompute(checkpointing):
    """Per token the planner counts 6 N_matmul + 12 L d_attn T (model_info.model_stats). The step counts, exactly:
    that, plus 2 L d_attn T because flex attention's backward recomputes QK^T (14 instead of 12), plus, with full
    checkpointing, each layer's forward again up to its last matmul (torch's checkpoint stops recomputing once
    backward has what it needs: down_proj's output is not saved)."""
    config, model_config, plan, _ = recipe_run("genesis-1b", 2, **SMALL)
    config = replace(config, torch_compile=False, gradient_checkpointing=checkpointing)
    setup = setup_for_run(config, model_config, plan)
    assert setup.attention == "flex_attention" and plan.accumulation == 32
    report = rehearsal.rehearse(config, model_config, plan, setup, 24 * GIB)
    c, window = model_config, plan.seq_len
    stats = model_stats(c, window)
    attention = c.num_hidden_layers * c.num_attention_heads * c.head_dim * window
    per_token = stats["flops_per_token"] + 2 * attention
    if checkpointing:
        head, down = c.vocab_size * c.hidden_size, c.num_hidden_layers * c.intermediate_size * c.hidden_size
        per_token += 2 * (stats["params_matmul"] - head - down) + 4 * attention
    micro_batch = per_token * plan.micro_batch * window
    flops = {name: section.flops for name, section in report.roofline_sections.items() if section.flops}
    assert flops == {"micro-step without sync": micro_batch, "micro-step with sync": micro_batch}
    roofline = report.as_dict()["roofline"]
    assert roofline["flops_per_step"] == plan.accumulation * micro_batch
    assert set(roofline["seconds_per_step"]) == set(GPUS) and roofline["biases"] == BIASES


def test_a_matmul_takes_its_flops_at_the_peak_and_an_add_its_bytes_at_the_bandwidth():
    gpu = GPUS["h100-sxm"]
    peak, bandwidth = gpu.peak_tflops * 1e12, gpu.hbm_gbps * 1e9
    with FakeTensorMode():
        a = torch.empty(4096, 8192, dtype=torch.bfloat16)
        b = torch.empty(8192, 4096, dtype=torch.bfloat16)
        with StepCounter() as counter:
            counter.section = "matmul"
            a @ b
            counter.section = "add"
            a + a
    matmul_flops, matrix = 2 * 4096 * 8192 * 4096, 4096 * 8192 * 2
    assert counter.sections["matmul"].ops == Counter({(matmul_flops, 2 * matrix + 4096 * 4096 * 2): 1})
    assert counter.sections["add"].ops == Counter({(0, 3 * matrix): 1})  # reads a twice, writes the sum
    matmul, add = {"matmul": counter.sections["matmul"]}, {"add": counter.sections["add"]}
    assert step_seconds(matmul, 1, peak, bandwidth) == matmul_flops / peak  # compute-bound: no 1.5x discount
    assert step_seconds(add, 1, peak, bandwidth) == 3 * matrix / bandwidth


def test_views_and_look_ups_move_no_bytes_and_a_copy_moves_its_bytes():
    with FakeTensorMode():
        x = torch.empty(64, 32)
        with StepCounter() as counter:
            x.view(32, 64), x.t(), x[::2], x.expand(2, 64, 32), x.detach(), x.reshape(2048), x.unsqueeze(0)
            torch.ops.prim.device.default(x), x.size(), x.stride(), x.numel()
            counter.section = "copies"
            x.clone()
            x.expand(4, 64, 32).contiguous()  # reads the 8 KiB it expands once, writes 32 KiB
    assert set(counter.sections) == {"copies"}
    assert counter.sections["copies"].ops == Counter({(0, 2 * 8192): 1, (0, 8192 + 4 * 8192): 1})


def test_plan_rehearse_prints_the_roofline_step_time_beside_the_planners_with_its_biases(capsys):
    """The command users run, on the tiny recipe: the roofline's line for the chosen GPU, the planner's time at the
    card's assumed MFU beside it, and the biases."""
    from scratchlm.cli import main
    from scratchlm.train.config import parse_pretrain_args
    from scratchlm.train.plan import model_config_of, plan_run

    recipe = str(REPO / "recipes" / "tiny" / "pretrain.yaml")
    assert main(["plan", "--recipe", recipe, "--gpu", "3060", "--rehearse"]) == 0
    lines = capsys.readouterr().out.splitlines()
    config = parse_pretrain_args(["--config", recipe])
    plan, _ = plan_run(config, model_config_of(config), 1)
    gpu = GPUS["3060"]
    planner = plan.tokens_per_step * plan.flops_per_token / (gpu.peak_tflops * 1e12 * gpu.mfu)
    (line,) = [line for line in lines if line.startswith("step time on the RTX 3060 12GB, per rank: roofline ")]
    found = re.search(r"roofline ([\d.e-]+) s \(([\d.]+) TFLOP and ([\d.,]+) GB moved; MFU (\d+)%\), planner "
                      r"([\d.e-]+) s \(at 40% MFU\)", line)  # fmt: skip
    assert found, line
    assert float(found[1]) > 0 and float(found[3].replace(",", "")) > 0
    assert found[5] == f"{planner:.3g}"
    assert lines[lines.index(line) + 1] == f"  the roofline's biases: {BIASES}"
    assert all(bias in BIASES for bias in ("no kernel fusion", "no compute/communication overlap",
                                           "no communication time"))  # fmt: skip
