"""`scratchlm plan` for the hardware people have: GPU names as typed, cards described by their numbers, a price
with its source, a recipe's global batch kept on any number of GPUs, the fastest setting that fits with the
command (or the config) that runs it, and an exit status a script can test."""

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from helpers import REPO
from scratchlm.cli import main
from scratchlm.train.config import parse_pretrain_args
from scratchlm.train.plan import GPUS, gpu_profile

GENESIS, A100, TINY = (f"recipes/{name}/pretrain.yaml" for name in ("genesis-1b", "a100-1b", "tiny"))


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # the recipes' relative paths, as a user runs them
    monkeypatch.setattr(os, "environ", dict(os.environ))  # recipes export their env: block


def plan(capsys, *args: str, code: int = 0) -> str:
    assert main(["plan", *args]) == code
    return capsys.readouterr().out


def refused(capsys, *args: str) -> str:
    """The one line of a refusal (exit status 2, nothing on stdout)."""
    assert main(["plan", *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    return err


@pytest.mark.parametrize(
    "typed, key",
    [("3090", "3090"), ("RTX 4090", "4090"), ("rtx3090", "3090"), ("H100 SXM", "h100-sxm"), ("h100 sxm5", "h100-sxm"),
     ("A100-40GB", "a100-40gb"), ("a100 80gb", "a100-80gb"), ("L40S", "l40s"), ("4060 Ti 16GB", "4060-ti-16gb"),
     ("NVIDIA GeForce RTX 5090", "5090"), ("RTX A6000", "a6000"), ("MI300X", "mi300x"), ("4070 Ti 12GB", "4070-ti"),
     ("3090 Ti", "3090-ti"), ("H100-PCIe", "h100-pcie"), ("l4", "l4"), ("A10", "a10"), ("B200", "b200")],
)  # fmt: skip
def test_gpu_names_as_people_type_them(typed, key):
    assert gpu_profile(typed) == GPUS[key]


def test_the_cards_people_have_are_known_with_public_numbers():
    wanted = {"3090", "3090-ti", "4060-ti-16gb", "4070-ti", "4080", "4090", "5090", "a10", "a40", "a6000", "l4", "l40s",
              "a100-40gb", "a100-80gb", "h100-pcie", "h100-sxm", "h100-nvl", "h200", "b200", "mi300x"}  # fmt: skip
    assert wanted <= set(GPUS)
    assert GPUS["3090"].peak_tflops == 71.0 and GPUS["l40s"].peak_tflops == 362.0 and GPUS["b200"].peak_tflops == 2250
    assert GPUS["h100-sxm"].usd_per_hour == 2.69 and GPUS["4090"].usd_per_hour == 0.34


def test_an_open_name_says_what_it_was_taken_for_and_an_unknown_one_is_one_line(capsys):
    out = plan(capsys, "--recipe", TINY, "--gpu", "a100")
    assert "--gpu a100: planned as the A100 80GB (--gpu a100-80gb); name the card to be sure" in out
    err = refused(capsys, "--recipe", TINY, "--gpu", "GTX 1080")
    assert (
        err.startswith("error: unknown GPU 'GTX 1080'; known: 3060, 3090,") and "--gpu-memory GIB --gpu-tflops" in err
    )


def test_another_card_by_its_memory_and_peak(capsys):
    out = plan(capsys, "--recipe", GENESIS, "--gpu-memory", "20", "--gpu-tflops", "100", "--num-gpus", "2", "--json")
    planned = json.loads(out)
    assert (
        planned["memory"]["capacity"] == 20 * 2**30
        and "custom GPU (20 GiB) peak 100 TFLOP/s" in planned["tok_per_s_from"]
    )
    assert "describe it: --gpu-memory GIB --gpu-tflops" in refused(capsys, "--recipe", GENESIS, "--gpu-memory", "20")


def test_the_price_is_the_gpus_and_says_where_it_comes_from(capsys):
    h100 = json.loads(plan(capsys, "--recipe", GENESIS, "--gpu", "h100", "--json"))
    assert h100["usd_per_gpu_hour"] == 2.69 and "deploybase.ai" in h100["usd_from"]  # not the recipe's $0.35
    assert h100["cost_usd"] == pytest.approx(h100["hours"] * 2.69, rel=1e-3)
    mine = json.loads(plan(capsys, "--recipe", GENESIS, "--gpu", "h100", "--usd-per-gpu-hour", "1.5", "--json"))
    assert mine["usd_per_gpu_hour"] == 1.5 and mine["usd_from"] == "--usd-per-gpu-hour"
    out = plan(capsys, "--recipe", GENESIS, "--gpu", "a6000", "--num-gpus", "2")  # no default: the recipe's
    assert "(2 x $0.35/GPU-hour: the recipe's usd_per_gpu_hour (no default for this GPU))" in out


def test_more_gpus_keep_the_recipes_global_batch_and_say_how(capsys):
    out = plan(capsys, "--recipe", A100, "--gpu", "a100-80gb", "--num-gpus", "2")
    assert (
        "batch: the recipe's 131,072 tokens/step (its batch on one GPU) kept on 2 GPUs: per_device_train_batch_size "
        "8, gradient_accumulation_steps 4 (the recipe: per_device_train_batch_size 8, gradient_accumulation_steps 8)"
    ) in out
    assert "131,072  (8 x 2048 x 4 accumulation x 2 GPUs)" in out
    planned = json.loads(plan(capsys, "--recipe", A100, "--gpu", "a100-80gb", "--num-gpus", "4", "--json"))
    assert planned["tokens_per_step"] == 131_072 and planned["world_size"] == 4 and planned["steps"] == 90_000


def test_the_fastest_setting_that_fits_comes_with_its_launch_line_and_config(capsys, tmp_path):
    """genesis-1b on 2 A100s: its checkpointing is not needed there, and the planner drops it."""
    out = plan(capsys, "--recipe", GENESIS, "--gpu", "a100-80gb", "--num-gpus", "2")
    assert "the recipe as given fits" in out
    launch = re.search(r"^launch: (.*)$", out, re.MULTILINE).group(1).split()
    assert launch[:5] == ["accelerate", "launch", "--quiet", "--config_file", "accelerate_configs/2x4090_fsdp2.yaml"]
    assert (REPO / launch[4]).is_file() and launch[5:8] == ["recipes/pretrain.py", "--config", GENESIS]
    overrides = launch[8:]
    assert "--gradient_checkpointing" in overrides and overrides[overrides.index("--gradient_checkpointing") + 1] == (
        "false"
    )
    config = parse_pretrain_args(["--config", GENESIS, *overrides])  # the line parses as the script parses it
    assert config.tokens_per_step == 524_288 and not config.gradient_checkpointing

    written = tmp_path / "genesis-a100.yaml"
    assert main(["plan", "--recipe", GENESIS, "--gpu", "a100-80gb", "--num-gpus", "2", "--write-config",
                 str(written)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert f"wrote {written}" in out and out.rstrip().endswith(
        f"launch: accelerate launch --quiet --config_file accelerate_configs/2x4090_fsdp2.yaml recipes/pretrain.py "
        f"--config {written}"
    )
    values = yaml.safe_load(written.read_text())
    assert (
        values["gradient_checkpointing"] is False and values["env"] == yaml.safe_load(Path(GENESIS).read_text())["env"]
    )
    assert parse_pretrain_args(["--config", str(written)]) == config  # runs unchanged
    again = plan(capsys, "--recipe", str(written), "--gpu", "a100-80gb", "--num-gpus", "2")
    assert "the recipe as given is the fastest that fits" in again


def test_a_recipe_that_does_not_fit_exits_1(capsys):
    out = plan(capsys, "--recipe", GENESIS, "--gpu", "4060 Ti", code=1)
    assert "the recipe as given does NOT fit" in out and "no setting of the same tokens per step fits" in out
    assert "launch:" not in out


def test_overrides_go_with_a_recipe_and_a_horizon_inside_the_warmup_is_warned_of(capsys):
    out = plan(capsys, "--recipe", TINY, "--gpu", "4090", "--max_steps", "20")
    assert out.startswith(
        "warning: the run's 20 steps end inside its 30 warmup steps: the learning rate never reaches learning_rate"
    )
    assert "steps                               20" in out and out.rstrip().endswith(f"--config {TINY} --max_steps 20")
    err = refused(capsys, "--preset", "tiny", "--gpu", "4090", "--steps", "5", "--max_steps", "3")
    assert err == "error: plan: --max_steps overrides a recipe's key: it goes with --recipe\n"


def test_impossible_numbers_and_paths_are_refused_at_once(capsys, tmp_path):
    for flag in ("--num-gpus", "--gpu-memory", "--gpu-tflops"):
        with pytest.raises(SystemExit) as exit:
            main(["plan", "--recipe", TINY, "--gpu", "4090", flag, "0"])
        assert exit.value.code == 2 and f"argument {flag}: must be above 0, got 0" in capsys.readouterr().err
    nowhere = tmp_path / "nowhere" / "run.yaml"
    err = refused(capsys, "--recipe", TINY, "--gpu", "4090", "--write-config", str(nowhere))
    assert err == f"error: --write-config {nowhere}: its directory does not exist\n" and not nowhere.parent.exists()
