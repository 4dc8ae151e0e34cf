"""Every recipe and accelerate config parses, and its resolved plan is the public run's it reproduces."""

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.commands.config.config_args import load_config_from_file

from scratchlm.cli import main
from scratchlm.config import read_yaml
from scratchlm.data.prepare import read_prepare_config
from scratchlm.model.presets import build_config
from scratchlm.train.config import parse_pretrain_args
from scratchlm.train.hardware import nccl_settings
from scratchlm.train.plan import plan_run

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.parent.name for p in (REPO / "recipes").glob("*/pretrain.yaml"))
# recipe: (GPUs it is launched on, tokens per step, steps) as in the public run (recipes/*/README.md)
REFERENCE_RUNS = {
    "tiny": (1, 2048, 600),
    "genesis-1b": (2, 524_288, 40_000),
    "a100-1b": (1, 131_072, 90_000),
    "bitnet-95m": (1, 8_192, 400_000),
    "h100-d20": (8, 524_288, 21_528),
}


@pytest.fixture
def clean_environ(monkeypatch):
    """Recipes export their env: block; keep it out of other tests."""
    monkeypatch.setattr(os, "environ", dict(os.environ))


def test_every_reference_run_has_a_recipe():
    assert sorted(REFERENCE_RUNS) == RECIPES


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_parses_and_plans_like_its_reference_run(name, clean_environ):
    config = parse_pretrain_args(["--config", str(REPO / "recipes" / name / "pretrain.yaml")])
    data = read_prepare_config(read_yaml(REPO / config.data_config), where=config.data_config)
    model = build_config({"preset": config.model_preset})
    assert config.tokenizer_vocab_size <= model.vocab_size
    assert data.tokenizer.startswith(f"runs/{name}/")
    gpus, tokens_per_step, steps = REFERENCE_RUNS[name]
    plan, _ = plan_run(config, model, gpus)
    assert (plan.tokens_per_step, plan.steps) == (tokens_per_step, steps)
    assert (REPO / "recipes" / name / "README.md").is_file()


def test_genesis_recipe_sets_nccl_for_pcie_cards(clean_environ):
    parse_pretrain_args(["--config", str(REPO / "recipes" / "genesis-1b" / "pretrain.yaml")])
    assert os.environ["NCCL_P2P_DISABLE"] == "1" and os.environ["NCCL_IB_DISABLE"] == "1"


def test_every_genesis_stage_on_the_4090s_sets_nccl():
    """SFT and DPO run the same 2x4090 FSDP2 config as pretraining: a hang without peer access otherwise."""
    for path in sorted((REPO / "recipes" / "genesis-1b").glob("*.yaml")):
        values = yaml.safe_load(path.read_text())
        if "tokenizer" in values and "sources" in values:  # a data config, not a stage
            continue
        assert (values.get("env") or {}).get("NCCL_P2P_DISABLE") == "1", path.name


def test_command_line_overrides_the_recipe(clean_environ):
    recipe = str(REPO / "recipes" / "tiny" / "pretrain.yaml")
    config = parse_pretrain_args(["--config", recipe, "--learning_rate", "2e-3", "--sample_prompts", "a", "b"])
    assert config.learning_rate == 2e-3 and config.sample_prompts == ["a", "b"] and config.max_steps == 600


@pytest.mark.parametrize("path", sorted((REPO / "accelerate_configs").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_load(path):
    config = load_config_from_file(str(path))
    if "fsdp2" in path.name or path.name == "multinode.yaml":
        assert config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"


def test_nccl_settings_follow_the_machine():
    no_peer = {(0, 1): False, (1, 0): False}
    assert nccl_settings(no_peer, infiniband=False, env={}) == {"NCCL_P2P_DISABLE": "1", "NCCL_IB_DISABLE": "1"}
    assert nccl_settings({(0, 1): True, (1, 0): True}, infiniband=True, env={}) == {}
    assert nccl_settings(no_peer, infiniband=True, env={"NCCL_P2P_DISABLE": "0"}) == {}  # the user's choice stands


def test_planner_reproduces_the_genesis_numbers(capsys):
    assert (
        main(
            [
                "plan",
                "--preset",
                "genesis-1b",
                "--gpu",
                "4090",
                "--num-gpus",
                "2",
                "--steps",
                "40000",
                "--micro-batch",
                "4",
                "--usd-per-gpu-hour",
                "0.35",
                "--json",
            ]
        )
        == 0
    )
    plan = json.loads(capsys.readouterr().out)
    assert plan["tokens_per_step"] == 524_288 and plan["accumulation"] == 32
    assert plan["tokens"] == 20_971_520_000 and round(plan["tokens_per_param"], 1) == 21.0
    assert 17_000 < plan["tok_per_s"] < 20_000  # Genesis 1B measured ~19,000 tok/s
    assert plan["cost_usd"] == pytest.approx(plan["hours"] * 2 * 0.35, rel=1e-3)
    assert main(["plan", "--preset", "genesis-1b", "--gpu", "4090", "--num-gpus", "2", "--ratio", "20", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 38_164  # Genesis 1B's "~38,150 steps"


def test_plan_takes_a_recipe_s_model_and_window_as_the_loop_does(tmp_path, capsys, clean_environ):
    """train/plan.py works out a recipe's model and window for `scratchlm plan` and the loop alike: a window past
    the model's context is refused with the loop's message, and init_from is planned from its config.json."""
    recipe = yaml.safe_load((REPO / "recipes" / "tiny" / "pretrain.yaml").read_text())
    path = tmp_path / "pretrain.yaml"
    path.write_text(yaml.safe_dump({**recipe, "seq_len": 1024}))
    assert main(["plan", "--recipe", str(path), "--gpu", "4090"]) == 2
    assert "seq_len 1024 exceeds the model's context (max_position_embeddings 512)" in capsys.readouterr().err
    build_config({"preset": "tiny"}).save_pretrained(str(tmp_path / "model"))
    for init_from, code in ((str(tmp_path / "model"), 0), ("hub://me/run", 2)):
        path.write_text(yaml.safe_dump({**recipe, "model_preset": "", "init_from": init_from}))
        assert main(["plan", "--recipe", str(path), "--gpu", "4090", "--json"]) == code
    planned, refusal = capsys.readouterr()
    assert json.loads(planned)["params_total"] == 5_049_600 and "init_from hub://me/run has no config.json" in refusal


def test_spike_detector_warns_on_jumps_only():
    from scratchlm.train.monitor import SpikeDetector

    detector = SpikeDetector(factor=3.0, settle_steps=5)
    assert not any(detector.is_spike(2.0) for _ in range(10))
    assert detector.is_spike(7.0) and not detector.is_spike(2.1)
    assert detector.average == pytest.approx(2.0, abs=0.01)  # the spike did not move the average


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*/midtrain.yaml")), ids=lambda p: p.parent.name)
def test_midtrain_recipes_parse(path, clean_environ):
    config = parse_pretrain_args(["--config", str(path)])
    assert config.init_from == f"runs/{path.parent.name}/pretrain/export"
    data = read_prepare_config(read_yaml(REPO / config.data_config), where=config.data_config)
    assert any(source.format == "chat" for source in data.sources)


@pytest.mark.parametrize(
    "path",
    sorted((REPO / "recipes").glob("*/sft*.yaml")) + sorted((REPO / "recipes").glob("*/dpo.yaml")),
    ids=lambda p: f"{p.parent.name}/{p.stem}",
)
def test_trl_recipes_parse_with_trl_and_leave_only_accelerate_keys(path, clean_environ):
    import importlib
    import warnings

    from trl.cli.accelerate_config import resolve_accelerate_config_argument

    module = importlib.import_module(f"trl.scripts.{path.stem.removesuffix('-hq')}")
    cpu = [] if torch.cuda.is_available() else ["--bf16", "false"]  # TrainingArguments refuses bf16 without a GPU
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        *parsed, from_config, from_cli = module.make_parser().parse_args_and_config(
            ["--config", str(path), *cpu], return_remaining_strings=True, separate_remaining_strings=True
        )
    training = parsed[1]
    # No key transformers or TRL deprecates (each deprecated alias warns at every parse: three times a run).
    assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == []
    # The exports they start from are stock llama checkpoints: no code is trusted.
    assert not training.trust_remote_code and training.output_dir == f"runs/{path.parent.name}/{path.stem}"
    launch = resolve_accelerate_config_argument(from_config + from_cli)  # what TRL hands to accelerate
    from accelerate.commands.launch import launch_command_parser

    launch_command_parser().parse_args([*launch, "script.py"])  # accelerate accepts every leftover key
