"""What post-training buys, measured: the tiny recipe's four stages on a smaller embedded default
(6 countries instead of 16, every stage shortened to fit CI), through the entry points users call.

At this size SFT teaches the turn to end and DPO widens the chosen/rejected margin; held-out chat
accuracy and preference accuracy need the full recipe's pretraining to bind names to facts (its
numbers are in the README), so they are printed here but not asserted. Thresholds sit well below
the measured values quoted in each test.
"""

import json

import pytest
import yaml

from scratchlm.cli import main
from test_pretrain import REPO, launch


def stage_args(steps: int) -> list[str]:
    return [
        "--max_steps",
        str(steps),
        "--eval_steps",
        str(steps),
        "--sample_steps",
        str(steps),
        "--save_steps",
        str(steps),
    ]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    work = tmp_path_factory.mktemp("gains")
    (work / "recipes").symlink_to(REPO / "recipes")
    data = work / "runs" / "tiny" / "data"
    assert main(["data", "default", "--out", str(data), "--countries", "6", "--tokens", "400000"]) == 0
    launch(work, "--config", "recipes/tiny/pretrain.yaml", *stage_args(150))
    launch(work, "--config", "recipes/tiny/midtrain.yaml", *stage_args(60))
    runs = work / "runs" / "tiny"
    for stage, steps in (("sft", 40), ("dpo", 24)):
        config = REPO / "recipes" / "tiny" / f"{stage}.yaml"
        overrides = {
            "model_name_or_path": str(runs / ("mid" if stage == "sft" else "sft") / "export"),
            "output_dir": str(runs / stage),
            "max_steps": str(steps),
            "save_steps": str(steps),
        }
        assert main([stage, "--config", str(recipe_in(work, config, overrides))]) == 0
    results = {}
    for stage in ("mid", "sft"):
        out = runs / stage / "evals" / "chat.json"
        main(
            [
                "eval",
                "chat",
                "--model",
                str(runs / stage / "export"),
                "--data",
                str(data / "chat" / "test.jsonl"),
                "--out",
                str(out),
            ]
        )
        results[stage] = json.loads(out.read_text())
    for stage in ("sft", "dpo"):
        out = runs / stage / "evals" / "preference.json"
        reference = str(runs / "sft" / "export")
        main(["eval", "preference", "--model", str(runs / stage / "export"), "--reference", reference,
              "--data", str(data / "preference" / "test.jsonl"), "--out", str(out)])  # fmt: skip
        results.setdefault(stage, {}).update(json.loads(out.read_text()))
    print(json.dumps({s: {k: v for k, v in r.items() if k != "examples"} for s, r in results.items()}, indent=1))
    return results


def recipe_in(work, recipe, overrides: dict):
    """The recipe with its relative paths resolved in `work` (TRL runs in this process's directory)."""
    values = yaml.safe_load(recipe.read_text())
    for entry in values["datasets"]:
        entry["data_files"] = str(work / entry["data_files"])
    path = work / recipe.name
    path.write_text(yaml.safe_dump({**values, **overrides}))
    return path


def test_sft_teaches_the_model_to_end_its_turn(pipeline):
    # Measured: stop rate 0.06 after midtraining (its long replies run past the budget), 1.0 after SFT.
    assert pipeline["sft"]["stop_rate"] >= pipeline["mid"]["stop_rate"] + 0.5


def test_dpo_widens_the_margin_between_chosen_and_rejected(pipeline):
    # Measured: reward margin 0 (the SFT model is the reference) -> 13.0; log-prob margin 30 -> 160.
    sft, dpo = pipeline["sft"], pipeline["dpo"]
    assert dpo["reward_margin"] > 3.0
    assert dpo["logprob_margin"] > 2 * sft["logprob_margin"]
