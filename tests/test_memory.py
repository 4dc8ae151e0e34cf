"""The memory estimator against the real training forward, its static terms against the real model
(and FSDP2's real unsharded gradients), the fit advice, the GPU profiles, and `scratchlm plan --recipe`
on every recipe: each fits its GPU with 10% headroom, and prints what its README says.

Run as a script under torchrun it is the FSDP2 worker of the gradient test.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from scratchlm.cli import main
from scratchlm.errors import ScratchError
from scratchlm.model.modeling_scratch import ScratchForCausalLM
from scratchlm.model.presets import build_config
from scratchlm.train.measure import SavedTensors, measure_micro_step, training_forward
from scratchlm.train.memory import TrainingSetup, check_fits, estimate_memory, parameter_counts
from scratchlm.train.parallel import checkpoint_layers
from scratchlm.train.plan import GPUS, device_profile, gpu_profile, peak_flops_of

REPO = Path(__file__).resolve().parents[1]
# recipe: the GPU it is written for and how many
HARDWARE = {
    "genesis-1b": ("4090", 2),
    "a100-1b": ("a100-80gb", 1),
    "h100-d20": ("h100-sxm", 8),
    "bitnet-95m": ("3060", 1),
}


@pytest.fixture
def clean_environ(monkeypatch):
    """Recipes export their env: block; keep it out of other tests."""
    monkeypatch.setattr(os, "environ", dict(os.environ))


def tiny(hidden=48, layers=2, heads=4, kv_heads=2, ffn=136, vocab=700, seq=40, **options):
    config = build_config(
        dict(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            intermediate_size=ffn,
            vocab_size=vocab,
            max_position_embeddings=seq,
            tie_word_embeddings=True,
        ),
        **options,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return config, ScratchForCausalLM(config)


def packed_batch(rows, seq, vocab, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (rows, seq), generator=generator)
    positions = torch.arange(seq).repeat(rows, 1)
    positions[:, seq // 2 :] -= seq // 2  # two documents per row: sdpa gets a document mask
    labels = ids.roll(-1, 1)
    labels[:, -1] = -100
    return ids, positions, labels


@pytest.mark.parametrize(
    "shape,options,precision",
    [
        (dict(), {}, "autocast"),
        (dict(hidden=64, heads=8, kv_heads=8, ffn=176, seq=24), {}, "autocast"),
        (dict(layers=3, vocab=1500), {"logit_softcap": 20.0}, "fp32"),
        (dict(), {}, "bf16-weights"),  # FSDP2's param_dtype=bf16
        (dict(ffn=200), {"bitnet": True}, "autocast"),
    ],
)
def test_activation_and_loss_terms_match_the_saved_tensors(shape, options, precision):
    """What the training forward saves for backward, by storage, against the estimator: within 15%
    (in eager mode the formulas are exact; benchmarks/memory_validation.py has the full table)."""
    config, model = tiny(**shape, **options)
    rows, seq = 3, config.max_position_embeddings
    if precision == "bf16-weights":
        model = model.to(torch.bfloat16)
    setup = TrainingSetup(
        config, seq, rows, sharded=precision == "bf16-weights", bf16=precision != "fp32", accumulation=2
    )
    saved = SavedTensors(model)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "autocast"):
        loss = training_forward(model, *packed_batch(rows, seq, config.vocab_size), saved=saved)
    measured = saved.bytes()  # while the graph (held by `loss`) is alive
    del loss
    terms = estimate_memory(setup).terms
    copies = terms["weight_copies"]
    if setup.sharded:  # FSDP2's unsharded bf16 parameters are, here, the model's own
        counts = parameter_counts(config)
        copies -= 2 * (counts.root + 2 * counts.layer)
    assert terms["activations"] + copies == pytest.approx(measured["activations"] + measured["weight_copies"], rel=0.15)
    assert terms["loss_saved"] == pytest.approx(measured["loss_saved"], rel=0.15)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_live_and_peak_bytes_of_a_micro_batch_match_the_estimate(checkpointing):
    """With gradients and AdamW state present (the second step on): bytes alive after the forward, and
    the peak over forward and backward, above the static terms, within 15% (MemTracker's count)."""
    config, model = tiny(layers=3, vocab=1000)
    if checkpointing:
        checkpoint_layers(model)
    model.train()
    rows, seq = 2, config.max_position_embeddings
    batches = [packed_batch(rows, seq, config.vocab_size, seed) for seed in (0, 1)]
    measured = measure_micro_step(model, torch.optim.AdamW(model.parameters()), batches, torch.bfloat16)
    setup = TrainingSetup(config, seq, rows, accumulation=2, gradient_checkpointing=checkpointing)
    terms = estimate_memory(setup).terms
    live = terms["weight_copies"] + terms["activations"] + terms["loss_saved"]
    assert live == pytest.approx(measured["live_after_forward"], rel=0.15)
    assert live + terms["transient"] == pytest.approx(measured["peak_above_static"], rel=0.15)


def test_static_terms_are_the_model_parameters_sharded_or_not():
    config = build_config({"preset": "genesis-1b"})
    with torch.device("meta"):
        model = ScratchForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())
    layer = model.model.layers[0]
    matmul = sum(m.weight.numel() for m in layer.modules() if isinstance(m, torch.nn.Linear))
    one = estimate_memory(TrainingSetup(config, 2048, 4, accumulation=32)).terms
    assert (one["weights"], one["gradients"], one["optimizer"]) == (4 * total, 4 * total, 8 * total)
    assert one["weight_copies"] == 2 * 32 * matmul  # autocast's bf16 copy of every decoder matmul weight
    fsdp = TrainingSetup(config, 2048, 4, accumulation=1, world_size=2, sharded=True)
    sharded = estimate_memory(fsdp).terms
    assert (sharded["weights"], sharded["gradients"], sharded["optimizer"]) == (2 * total, 2 * total, 4 * total)
    root = total - 32 * sum(p.numel() for p in layer.parameters())
    # the root and one layer's all-gather buffer in flight at the peak (what FSDPMemTracker counts: test_rehearse.py)
    assert sharded["weight_copies"] == 2 * (root + sum(p.numel() for p in layer.parameters()))
    # no_sync micro-batches keep every parameter's gradient unsharded in the reduce dtype (fp32)
    assert estimate_memory(replace(fsdp, accumulation=32)).terms["gradients"] == 4 * total
    assert estimate_memory(replace(fsdp, accumulation=32, reduce_dtype="bfloat16")).terms["gradients"] == 2 * total
    everything = estimate_memory(replace(fsdp, reshard_after_forward=False)).terms["weight_copies"]
    assert everything == 2 * (total + sum(p.numel() for p in layer.parameters()))  # every layer stays unsharded
    assert estimate_memory(replace(fsdp, bf16=False)).terms["weight_copies"] == 4 * (
        root + sum(p.numel() for p in layer.parameters())
    )


def test_fsdp2_keeps_unsharded_fp32_gradients_while_accumulating(tmp_path):
    """Two gloo processes, bf16 parameters, fp32 reduction: after a micro-batch without gradient sync,
    every rank holds every parameter's unsharded gradient in fp32 (what the estimator counts); after
    the synced one, only its fp32 shard."""
    command = [shutil.which("torchrun"), "--nproc_per_node", "2", "--master_port", "29579", __file__, str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "grads.json").read_text())
    config, _ = tiny()
    setup = TrainingSetup(config, 40, 3, world_size=2, sharded=True, accumulation=2)
    assert report["unsharded_accumulated_bytes"] == estimate_memory(setup).terms["gradients"]
    assert report["sharded_grad_bytes"] == estimate_memory(replace(setup, accumulation=1)).terms["gradients"]


def fsdp_worker(out: Path) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dist.init_process_group("gloo")
    config, model = tiny()
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in model.model.layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    batch = packed_batch(3, 40, config.vocab_size, seed=dist.get_rank())
    model.set_requires_gradient_sync(False)
    training_forward(model, *batch).backward()
    states = [m._get_fsdp_state() for m in [model, *model.model.layers]]
    params = [p for state in states for p in state._fsdp_param_group.fsdp_params]
    accumulated = sum(
        p.unsharded_accumulated_grad.numel() * p.unsharded_accumulated_grad.element_size() for p in params
    )
    model.set_requires_gradient_sync(True)
    training_forward(model, *batch).backward()
    sharded = sum(p.grad.to_local().numel() * p.grad.element_size() for p in model.parameters())
    if dist.get_rank() == 0:
        report = {"unsharded_accumulated_bytes": accumulated, "sharded_grad_bytes": sharded}
        (out / "grads.json").write_text(json.dumps(report))
    dist.destroy_process_group()


def test_a_run_that_cannot_fit_is_refused_with_settings_that_would():
    config = build_config({"preset": "gpuburnout-1b"})
    setup = TrainingSetup(config, 2048, 64, accumulation=1, compile=True)
    with pytest.raises(ScratchError) as refused:
        check_fits(setup, gpu_profile("a100-80gb").memory_bytes, "A100 80GB")
    message = str(refused.value)
    assert "\n" not in message and "A100 80GB has 79.1 GiB" in message and "activations" in message
    options = message.split("would fit: ")[1].split(" or ")
    assert len(options) == 2 and "gradient_checkpointing: true" in options[1]
    for option in options:  # each keeps tokens per step, and fits
        micro, accumulation = map(int, re.search(r"size (\d+), gradient_accumulation_steps (\d+)", option).groups())
        assert micro * accumulation == 64
        trial = replace(setup, micro_batch=micro, accumulation=accumulation)
        trial = replace(trial, gradient_checkpointing="gradient_checkpointing" in option)
        assert check_fits(trial, gpu_profile("a100-80gb").memory_bytes, "A100 80GB")


def plan_json(capsys, *args) -> dict:
    assert main(["plan", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name", sorted(HARDWARE))
def test_every_gpu_recipe_fits_its_hardware_with_10_percent_headroom(name, capsys, clean_environ):
    gpu, count = HARDWARE[name]
    plan = plan_json(capsys, "--recipe", f"recipes/{name}/pretrain.yaml", "--gpu", gpu, "--num-gpus", str(count))
    recipe = yaml.safe_load((REPO / "recipes" / name / "pretrain.yaml").read_text())
    assert plan["micro_batch"] == recipe["per_device_train_batch_size"]  # the recipe's own batch
    assert plan["memory"]["fits"] and plan["memory"]["device_peak"] <= 0.9 * plan["memory"]["capacity"]
    midtrain = REPO / "recipes" / name / "midtrain.yaml"
    if midtrain.exists():  # its model is the pretrained one: plan its batch on the pretraining model
        from scratchlm.train.config import parse_pretrain_args
        from scratchlm.train.memory import setup_for_run
        from scratchlm.train.plan import plan_run

        config = parse_pretrain_args(["--config", str(midtrain)])
        model = build_config({"preset": recipe["model_preset"]})
        steps, _ = plan_run(config, model, count)
        estimate = estimate_memory(setup_for_run(config, model, steps))
        assert estimate.device_peak <= 0.9 * gpu_profile(gpu).memory_bytes


def test_a_recipe_with_an_impossible_micro_batch_is_reported_with_advice(tmp_path, capsys, clean_environ):
    recipe = yaml.safe_load((REPO / "recipes" / "a100-1b" / "pretrain.yaml").read_text())
    recipe.update(per_device_train_batch_size=64, gradient_accumulation_steps=1)  # the same 131,072 tokens
    path = tmp_path / "pretrain.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["plan", "--recipe", str(path), "--gpu", "a100"]) == 1  # as given it does not fit: a script sees it
    out = capsys.readouterr().out
    assert "(64 x 2048 x 1 accumulation x 1 GPUs)" in out and "the recipe as given does NOT fit" in out
    launch = re.search(r"^launch: (.*)$", out, re.MULTILINE).group(1).split()
    assert launch[:5] == ["accelerate", "launch", "--quiet", "--config_file", "accelerate_configs/single_gpu.yaml"]
    overrides = launch[launch.index(str(path)) + 1 :]
    assert overrides[::2] == ["--per_device_train_batch_size", "--gradient_accumulation_steps"]
    assert int(overrides[1]) * int(overrides[3]) == 64  # the same 131,072 tokens per step
    plan = plan_json(capsys, "--recipe", str(path), "--gpu", "a100", *overrides)  # the launch line's setting
    assert plan["memory"]["device_peak"] <= 0.9 * plan["memory"]["capacity"] and plan["tokens_per_step"] == 131_072


@pytest.mark.parametrize("name", sorted(HARDWARE))
def test_readme_plan_commands_print_what_the_readme_says(name, capsys, clean_environ):
    readme = (REPO / "recipes" / name / "README.md").read_text()
    command = re.search(r"scratchlm plan (--recipe .*)", readme).group(1).split()
    assert main(["plan", *command]) == 0
    out = capsys.readouterr().out
    micro, seq, accumulation, gpus = re.search(r"\((\d+) × (\d+) × (\d+) accumulation × (\d+) GPU", readme).groups()
    assert f"({micro} x {seq} x {accumulation} accumulation x {gpus} GPUs)" in out
    used, capacity = re.search(r"([\d.]+) GiB of ([\d.]+) \(\d+%\)", readme).groups()
    assert re.search(rf"device peak\s+{used} GiB .* of {capacity} GiB", out)


def test_plan_config_given_a_recipe_plans_the_recipe_and_plan_flags_set_its_keys(capsys, clean_environ):
    args = ["--gpu", "4090", "--num-gpus", "2"]
    by_recipe = plan_json(capsys, "--recipe", "recipes/genesis-1b/pretrain.yaml", *args)
    assert plan_json(capsys, "--config", "recipes/genesis-1b/pretrain.yaml", *args) == by_recipe
    assert (by_recipe["micro_batch"], by_recipe["accumulation"], by_recipe["steps"]) == (4, 32, 40_000)
    # plan's own horizon and batch flags set the recipe's keys (and the launch line says so)
    short = plan_json(
        capsys, "--recipe", "recipes/genesis-1b/pretrain.yaml", *args, "--steps", "5", "--micro-batch", "2"
    )
    assert (short["steps"], short["micro_batch"], short["accumulation"], short["tokens_per_step"]) == (
        5,
        2,
        64,
        524_288,
    )
    assert "--config recipes/genesis-1b/pretrain.yaml --max_steps 5 --per_device_train_batch_size 2" in short["launch"]


def test_gpu_profiles_tell_the_h100s_apart_and_map_a_running_device():
    names = {
        "NVIDIA H100 PCIe": 756.5,
        "NVIDIA H100 80GB HBM3": 989.4,
        "NVIDIA H100 NVL": 835.5,
        "NVIDIA H200": 989.4,
        "NVIDIA A100-SXM4-80GB": 312.0,
        "NVIDIA A100-PCIE-40GB": 312.0,
        "NVIDIA GeForce RTX 4090": 165.2,
        "NVIDIA GeForce RTX 3060": 25.4,
        "NVIDIA GeForce RTX 3060 Ti": 0.0,  # another chip: no profile, no MFU
    }
    for name, tflops in names.items():
        assert peak_flops_of(name) == pytest.approx(tflops * 1e12), name
    assert {"3060", "4090", "a100-40gb", "a100-80gb", "h100-pcie", "h100-sxm", "h200"} <= set(GPUS)
    forty = device_profile("NVIDIA A100-PCIE-40GB", 42_505_273_344)
    assert forty.name == "A100 40GB" and forty.memory_bytes == pytest.approx(42_505_273_344, abs=1)
    assert device_profile("NVIDIA A100-SXM4-80GB", 85_031_714_816).name == "A100 80GB"
    unknown = device_profile("Tesla T4", 15_828_320_256)
    assert unknown.peak_tflops == 0 and unknown.memory_bytes == pytest.approx(15_828_320_256, abs=1)
    assert gpu_profile("h100") == GPUS["h100-sxm"] and gpu_profile("a100") == GPUS["a100-80gb"]


if __name__ == "__main__":
    fsdp_worker(Path(sys.argv[1]))
