"""The rehearsal (train/rehearse.py): the loop's own step and evaluations on fake tensors over a fake process
group, and the formula planner held to it."""

from dataclasses import replace

import pytest
import torch
import torch.distributed as dist

from helpers import REPO, small_config
from scratchlm.errors import ScratchError
from scratchlm.train import rehearse as rehearsal
from scratchlm.train.config import PretrainConfig, parse_pretrain_args
from scratchlm.train.memory import GIB, setup_for_run
from scratchlm.train.parallel import World, wrap_model
from scratchlm.train.plan import gpu_profile, model_config_of, plan_run
from scratchlm.train.step import Stepper

# genesis-1b's CI rehearsal keeps 4 of its 32 decoder layers (the whole model takes 40-90 s on a CPU thread):
# every other size is the recipe's (width, vocabulary, micro-batch 4 x 2048, accumulation, 2 FSDP2 ranks,
# checkpointing, bf16, flex attention with document masking). benchmarks/rehearsal.py runs every recipe whole.
CI_LAYERS = 4


def recipe_run(name: str, num_gpus: int, **model_overrides):
    config = parse_pretrain_args(["--config", str(REPO / "recipes" / name / "pretrain.yaml")])
    model_config = model_config_of(config)
    for key, value in model_overrides.items():
        setattr(model_config, key, value)
    plan, _ = plan_run(config, model_config, num_gpus)
    return config, model_config, plan, setup_for_run(config, model_config, plan)


def compile_elsewhere() -> None:
    """A small model compiled under FSDP2 (a gloo group of one) and run, as a test of compile or the GPU check
    may have done in this process before a rehearsal: the rehearsal must count what a fresh process does."""
    from scratchlm.model import ScratchForCausalLM

    model = ScratchForCausalLM(small_config(max_position_embeddings=64))
    model.config._attn_implementation = "sdpa"
    config = PretrainConfig(output_dir="unused", model_preset="tiny", data_dir="unused", max_steps=1,
                            gradient_checkpointing=True, gradient_checkpointing_policy="selective",
                            torch_compile=True, torch_compile_backend="aot_eager")  # fmt: skip
    world = World(rank=0, size=1, local_rank=0, device=torch.device("cpu"), fsdp=True, bf16=False)
    tokens = torch.randint(0, 256, (2, 17))
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        wrap_model(model, world, config)(input_ids=tokens[:, :-1], labels=tokens[:, 1:]).loss.backward()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def genesis():
    compile_elsewhere()  # without a fresh compile state the weights below came out 7.6% off the planner's
    config, model_config, plan, setup = recipe_run("genesis-1b", 2, num_hidden_layers=CI_LAYERS)
    report = rehearsal.rehearse(config, model_config, plan, setup, gpu_profile("4090").memory_bytes)
    return report, setup, model_config


def test_the_planner_is_within_5_percent_of_the_rehearsal_in_total_and_per_family(genesis):
    report, _, _ = genesis
    differences = rehearsal.compare_with_planner(report)
    assert set(differences) == {"total", "weights", "gradients", "optimizer", "activations", "loss"}
    assert all(abs(d) <= 0.05 for d in differences.values()), differences


def test_every_phase_is_rehearsed_and_training_holds_the_unsharded_fp32_gradients(genesis):
    report, setup, model_config = genesis
    assert [p.name for p in report.phases] == list(rehearsal.PHASES)
    from scratchlm.train.memory import parameter_counts

    params = parameter_counts(model_config).total
    training = report.phases[0]
    # accumulation 32 under FSDP2: the micro-batch without gradient sync leaves every parameter's fp32 gradient
    # unsharded on each rank until the last one reduce-scatters.
    assert training.families["gradients"] == pytest.approx(4 * params, rel=0.01)
    assert training.families["optimizer"] == pytest.approx(8 * params / 2, rel=0.01)  # AdamW's moments, sharded
    assert report.peak.name == "training" and all(p.peak > training.families["weights"] for p in report.phases)
    assert report.checkpoint_host["checkpoint_per_rank"] == pytest.approx(12 * params / 2, rel=0.01)
    assert report.checkpoint_host["export_rank0"] == 4 * params


def test_the_rehearsal_runs_the_loops_micro_steps_without_then_with_gradient_sync(monkeypatch):
    """The Stepper's own micro_step, called by its accumulate: one micro-batch without sync, one with."""
    calls = []
    original = Stepper.micro_step

    def spy(self, batch, sync):
        calls.append((sync, tuple(batch["input_ids"].shape), type(batch["input_ids"]).__name__))
        return original(self, batch, sync)

    monkeypatch.setattr(Stepper, "micro_step", spy)
    config, model_config, plan, setup = recipe_run(
        "genesis-1b", 2, num_hidden_layers=1, hidden_size=64, intermediate_size=128, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, vocab_size=512,
    )  # fmt: skip
    config = replace(config, torch_compile=False)  # compiled, a first micro-step traces before the tracker starts
    report = rehearsal.rehearse(config, model_config, plan, setup, 24 * GIB)
    assert calls == [(False, (4, 2048), "FakeTensor"), (True, (4, 2048), "FakeTensor")]
    assert report.phases[0].families["gradients"] > 0


def test_a_phase_that_does_not_fit_is_named_with_settings_that_would(genesis):
    from scratchlm.train.memory import settings_that_fit

    report, setup, _ = genesis
    need = {p.name: rehearsal.device_bytes(p.peak, report.world_size) for p in report.phases}
    capacity = sorted(need.values())[-2] - 1  # the two phases that need the most do not fit
    small = replace(report, capacity=capacity)
    text = rehearsal.describe(small, setup, "RTX 4090", tokens_per_step=True).splitlines()
    failing = sorted(name for name, bytes_ in need.items() if bytes_ > capacity)
    assert len(failing) == 2
    assert sorted(line.split()[1] for line in text if "does NOT fit" in line) == failing
    advice = settings_that_fit(setup, capacity, headroom=0.1, tokens_per_step=True)
    assert text[-1] == "same tokens per step that would fit (10% headroom): " + (
        " or ".join(advice) or "no micro-batch fits"
    )
    assert rehearsal.describe(report, setup, "RTX 4090", tokens_per_step=True).endswith("every phase fits")


def test_a_model_that_cannot_be_built_is_one_line():
    config, model_config, plan, setup = recipe_run("genesis-1b", 2, num_hidden_layers=1)
    model_config.intermediate_size = -5  # a typo in a model YAML: no layer of that width exists
    with pytest.raises(ScratchError) as raised:
        rehearsal.rehearse(config, model_config, plan, setup, 24 * GIB)
    assert str(raised.value).startswith("rehearse: the run's model cannot be built")


def test_fake_mode_leaves_no_process_group_behind():
    import torch.distributed as dist

    assert not dist.is_initialized()
    assert torch.get_default_dtype() == torch.float32


def test_real_tensors_on_a_cpu_count_what_fake_tensors_count_and_measure_speed():
    """The real-tensor mode with tiny shapes: the same phases give the same peaks as on fake tensors (the
    rehearsal is the run, less the data), and a few of the loop's steps give tok/s."""
    config, model_config, plan, setup = recipe_run(
        "tiny", 1, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, vocab_size=1024,
    )  # fmt: skip
    setup = replace(setup, attention="sdpa")  # torch has no CPU backward for flex_attention
    fake = rehearsal.rehearse(config, model_config, plan, setup, 12 * GIB)
    real = rehearsal.rehearse_real(config, model_config, plan, setup, 12 * GIB, steps=2)
    assert [p.name for p in real.phases] == list(rehearsal.PHASES)
    peaks = {p.name: (p.peak, f.peak) for p, f in zip(real.phases, fake.phases, strict=True)}
    for name in ("training", "validation", "sampling"):  # to the byte
        assert peaks[name][0] == peaks[name][1], (name, peaks)
    # Probes and CORE pass no attention mask: real tensors show transformers there is no padding (no mask,
    # causal sdpa); fake ones cannot, so it builds a causal mask and CPU sdpa takes its math path (the
    # scores materialised). The fake count is then the higher, never the lower.
    for name in ("probes", "core"):
        assert peaks[name][1] >= peaks[name][0], (name, peaks)
    # The roofline counts the same step's ops on real tensors: the same FLOPs; bytes within a few 0-d tensors.
    counted = {name: (s.flops, s.bytes) for name, s in fake.roofline_sections.items()}
    assert {name: s.flops for name, s in real.roofline_sections.items()} == {n: f for n, (f, _) in counted.items()}
    for name, section in real.roofline_sections.items():
        assert section.bytes == pytest.approx(counted[name][1], abs=256), name
    assert all(p.measured is None for p in real.phases)  # torch.cuda.max_memory_allocated exists on a GPU only
    assert real.real["tok_per_s"] > 0 and real.real["steps"] == 2 and real.real["all_reduce"] is None
    assert real.real["mfu"] is None  # no GPU, no peak FLOP/s
    text = rehearsal.describe(real, setup, "CPU", tokens_per_step=False)
    assert "tok/s" in text


def test_plan_rehearse_runs_every_phase_of_the_tiny_recipe(capsys):
    """The command users run, on the smallest shipped recipe at full scale, as JSON."""
    import json

    from scratchlm.cli import main

    recipe = str(REPO / "recipes" / "tiny" / "pretrain.yaml")
    assert main(["plan", "--recipe", recipe, "--gpu", "3060", "--rehearse", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    plan, rehearsed = json.loads(lines[0]), json.loads(lines[-1])["rehearsal"]
    assert [p["name"] for p in rehearsed["phases"]] == list(rehearsal.PHASES) and rehearsed["fits"]
    assert rehearsed["estimate"]["allocated_peak"] == plan["memory"]["allocated_peak"]
    assert all(p["peak"] > 0 for p in rehearsed["phases"]) and rehearsed["world_size"] == 1
    step = rehearsed["step_time"]  # the roofline beside the planner's time on the chosen card, and on every card
    assert step["gpu"] == "RTX 3060 12GB" and step["roofline_s"] == rehearsed["roofline"]["seconds_per_step"]["3060"]
    assert step["planner_s"] > 0 and step["flops"] == rehearsed["roofline"]["flops_per_step"] > 0
    # One micro-batch per step: the loss's logits come before any gradient exists, which the planner counts.
    assert all(abs(d) <= 0.05 for d in rehearsed["planner_vs_rehearsal"].values()), rehearsed["planner_vs_rehearsal"]


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        (["--recipe", "recipes/genesis-1b/midtrain.yaml", "--gpu", "4090", "--num-gpus", "2"], "has no config.json"),
        (["--recipe", "recipes/genesis-1b/pretrain.yaml", "--gpu", "4091"], "unknown GPU '4091'; known: 3060,"),
        (["--recipe", "recipes/genesis-1b/pretrain.yaml", "--gpu", "4090", "--num-gpus", "3"], "is not a multiple of"),
        (["--preset", "tiny", "--gpu", "4090", "--steps", "10"], "--rehearse rehearses a recipe's run"),
    ],
)
def test_plan_rehearse_refuses_bad_input_in_one_line(arguments, says, capsys, monkeypatch):
    from scratchlm.cli import main

    monkeypatch.chdir(REPO)
    assert main(["plan", *arguments, "--rehearse"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err


def test_the_planner_counts_the_flex_paths_repeated_k_and_v_without_checkpointing():
    """genesis-1b has 12 query heads over 6 kv heads: transformers' flex path repeats k and v to every head
    itself (its kernel's GQA needs a power of two of heads), and saves the copies. One layer, eager."""
    config, model_config, plan, _ = recipe_run("genesis-1b", 2, num_hidden_layers=1)
    config = replace(config, gradient_checkpointing=False, torch_compile=False)
    setup = setup_for_run(config, model_config, plan)
    assert setup.attention == "flex_attention" and not setup.gradient_checkpointing
    report = rehearsal.rehearse(config, model_config, plan, setup, 24 * GIB)
    assert abs(rehearsal.compare_with_planner(report)["activations"]) <= 0.01


def test_the_planner_counts_what_compiled_bitlinear_layers_save():
    """bitnet-95m compiles its blocks: every BitLinear saves its own normalised, quantised input (q, k, v, o,
    gate and up each one), which inductor's partitioner keeps for backward. Two layers (with one, the tracked
    step recompiles the block: the warm-up sees a different global), 4 x 256 tokens."""
    config, model_config, _, _ = recipe_run("bitnet-95m", 1, num_hidden_layers=2)
    config = replace(config, per_device_train_batch_size=4)
    plan, _ = plan_run(config, model_config, 1)
    setup = setup_for_run(config, model_config, plan)
    assert setup.compile and setup.model.bitnet and not setup.gradient_checkpointing
    report = rehearsal.rehearse(config, model_config, plan, setup, 12 * GIB)
    assert abs(rehearsal.compare_with_planner(report)["activations"]) <= 0.01


def test_the_rehearsal_counts_the_state_each_optimizer_keeps():
    """Muon's one momentum buffer for the hidden matrices and AdamW's two moments for the rest, sharded over
    2 FSDP2 ranks, as train/optimizer.py's state_bytes says and the planner reads; AdamW keeps two moments for
    everything. One layer of genesis-1b's kind at width 64."""
    from scratchlm.model import ScratchForCausalLM
    from scratchlm.train.optimizer import state_bytes

    config, model_config, plan, setup = recipe_run(
        "genesis-1b", 2, num_hidden_layers=1, hidden_size=64, intermediate_size=128, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, vocab_size=512,
    )  # fmt: skip
    with torch.device("meta"):
        model = ScratchForCausalLM(model_config)
    counted = {}
    for name in ("adamw", "muon"):
        run = replace(config, optimizer=name, torch_compile=False)
        report = rehearsal.rehearse(run, model_config, plan, replace(setup, optimizer=name), 24 * GIB)
        counted[name] = report.phases[0].families["optimizer"]
        assert counted[name] == pytest.approx(sum(state_bytes(name, model).values()) / 2, rel=0.01), name
        assert abs(rehearsal.compare_with_planner(report)["optimizer"]) <= 0.01, name
    matrices = sum(p.numel() for n, p in model.named_parameters() if n.endswith("proj.weight"))
    assert counted["adamw"] - counted["muon"] == pytest.approx(4 * matrices / 2, rel=0.01)  # one fp32 buffer fewer
