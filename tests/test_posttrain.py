"""Post-training as users run it: `scratchlm sft|dpo --config` around the real `trl sft|dpo` CLI."""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from transformers import AutoTokenizer

from scratchlm.cli import main
from scratchlm.disk import read_rows
from scratchlm.eval.chat import chat_eval, preference_eval
from scratchlm.model.files import load_model
from scratchlm.posttrain import command_path
from scratchlm.run_dir import RunDir, checkpoint_step, read_jsonl
from scratchlm.train.status import summarize

REPO = Path(__file__).resolve().parents[1]
SHORT = {"max_steps": 3, "save_steps": 3, "logging_steps": 1, "max_length": 128}  # a recipe cut to test size


def recipe(tmp_path: Path, stage: str, model: Path, data: Path, **overrides) -> Path:
    """The tiny recipe of a stage, pointed at test paths and shortened."""
    values = yaml.safe_load((REPO / "recipes" / "tiny" / f"{stage}.yaml").read_text())
    values["model_name_or_path"] = str(model)
    values["datasets"][0]["data_files"] = str(data)
    values["output_dir"] = str(tmp_path / stage)
    values.update(overrides)
    path = tmp_path / f"{stage}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, small_model_dir, default_dir):
    tmp_path = tmp_path_factory.mktemp("sft")
    config = recipe(
        tmp_path,
        "sft",
        small_model_dir,
        default_dir / "chat" / "train.jsonl",
        **{**SHORT, "max_steps": 6, "logging_steps": 2},
    )
    assert main(["sft", "--config", str(config)]) == 0
    return tmp_path / "sft"


def test_sft_runs_through_trl_and_lays_out_the_run(sft_run, small_model_dir):
    assert sorted(p.name for p in sft_run.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    metrics = read_jsonl(sft_run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [2, 4, 6] and RunDir(sft_run).read_plan()["stage"] == "sft"
    samples = read_jsonl(sft_run / "samples.jsonl")
    assert {s["step"] for s in samples} == {3, 6} and len(samples) == 6  # 3 prompts x 2 checkpoints
    model, tokenizer = load_model(sft_run / "export")
    assert model.config.model_type == "llama" and tokenizer.chat_template  # as it came in: Llama can express it
    assert model.generation_config.eos_token_id == [
        tokenizer.eos_token_id,
        tokenizer.convert_tokens_to_ids("<|im_end|>"),
    ]
    assert "step 6 / 6 (100.0%)" in summarize(sft_run)
    assert main(["plot", str(sft_run)]) == 0


def test_dpo_runs_through_trl_from_the_sft_export(tmp_path, sft_run, default_dir):
    config = recipe(
        tmp_path,
        "dpo",
        sft_run / "export",
        default_dir / "preference" / "train.jsonl",
        max_steps=2,
        save_steps=2,
        logging_steps=1,
        per_device_train_batch_size=4,
        max_length=128,
    )
    assert main(["dpo", "--config", str(config)]) == 0
    metrics = read_jsonl(tmp_path / "dpo" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2] and "rewards/margins" in metrics[-1]
    model, _ = load_model(tmp_path / "dpo" / "export")
    rows = read_rows(default_dir / "preference" / "test.jsonl", ("prompt", "chosen", "rejected"))[:8]
    reference, tokenizer = load_model(sft_run / "export")
    result = preference_eval(model, tokenizer, rows, reference=reference)
    assert 0 <= result["preference_accuracy"] <= 1 and "reward_margin" in result


def test_chat_eval_scores_answers_and_stops(sft_run, default_dir):
    model, tokenizer = load_model(sft_run / "export")
    rows = read_rows(default_dir / "chat" / "test.jsonl", ("messages", "answer"))[:6]
    result = chat_eval(model, tokenizer, rows, max_new_tokens=8)
    assert result["n"] == 6 and 0 <= result["chat_accuracy"] <= 1 and 0 <= result["stop_rate"] <= 1

    # A model that parrots the expected answer and stops is scored 1.0 on both.
    class Parrot:
        def eval(self):
            return self

        def generate(self, input_ids, **kwargs):
            import torch

            replies = [tokenizer(f" {r['answer']}.<|im_end|>", add_special_tokens=False).input_ids for r in rows]
            width = max(len(r) for r in replies)
            padded = [r + [tokenizer.pad_token_id] * (width - len(r)) for r in replies]
            return torch.cat([input_ids, torch.tensor(padded)], dim=1)

    perfect = chat_eval(Parrot(), tokenizer, rows)
    assert perfect["chat_accuracy"] == 1.0 and perfect["stop_rate"] == 1.0


@pytest.mark.parametrize(
    "case, message",
    [
        ("no_messages", "Column name ['messages'] not in the dataset. Columns in the dataset: ['text']"),
        ("not_exported", "is not an exported model directory"),
        ("no_template", "has no chat template"),
        ("no_generation_tag", "assistant_only_loss needs {% generation %}"),
        ("no_remote_code", "set trust_remote_code: true"),
    ],
)
def test_sft_bad_input_fails_before_training(
    tmp_path, capsys, small_model_dir, scratch_model_dir, default_dir, case, message
):
    model, data = tmp_path / "model", default_dir / "chat" / "train.jsonl"
    shutil.copytree(scratch_model_dir if case == "no_remote_code" else small_model_dir, model)
    overrides = {}
    if case == "no_messages":
        data = default_dir / "pretrain" / "math.jsonl"
    elif case == "not_exported":
        model = tmp_path
    elif case in ("no_template", "no_generation_tag"):
        tokenizer = AutoTokenizer.from_pretrained(model)
        tokenizer.chat_template = None if case == "no_template" else "{{ messages[0]['content'] }}"
        (model / "chat_template.jinja").unlink()
        tokenizer.save_pretrained(model)
    else:
        overrides["trust_remote_code"] = False
    config = recipe(tmp_path, "sft", model, data, **overrides)
    assert main(["sft", "--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error
    assert not (tmp_path / "sft").exists()  # TRL never started


def test_dpo_refuses_conversations_without_preferences(tmp_path, capsys, small_model_dir, default_dir):
    data = default_dir / "chat" / "train.jsonl"
    config = recipe(tmp_path, "dpo", small_model_dir, data)
    assert main(["dpo", "--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert f"dataset {data} split train, row 0 (from 0): TRL's dpo preparation fails on it: KeyError: 'chosen'" in error
    assert "(its fields: messages: 2 messages: user, assistant)" in error and "the next rows fail alone too" in error


def test_recipes_name_the_previous_stage_export():
    chain = {"midtrain": "init_from", "sft": "model_name_or_path", "dpo": "model_name_or_path"}
    expected = {
        "midtrain": "runs/tiny/pretrain/export",
        "sft": "runs/tiny/midtrain/export",
        "dpo": "runs/tiny/sft/export",
    }
    for stage, key in chain.items():
        values = yaml.safe_load((REPO / "recipes" / "tiny" / f"{stage}.yaml").read_text())
        assert values[key] == expected[stage]
    sft = yaml.safe_load((REPO / "recipes" / "tiny" / "sft.yaml").read_text())
    assert sft["assistant_only_loss"] is True and sft["packing"] is True


def test_lora_sft_merges_the_adapter_into_the_export(tmp_path, small_model_dir, default_dir):
    import torch

    config = recipe(
        tmp_path,
        "sft",
        small_model_dir,
        default_dir / "chat" / "train.jsonl",
        **SHORT,
        use_peft=True,
        lora_r=4,
        lora_alpha=8,
        lora_target_modules=["q_proj", "v_proj"],
        learning_rate=1e-2,
    )
    assert main(["sft", "--config", str(config)]) == 0
    assert (tmp_path / "sft" / "adapter_config.json").is_file()  # TRL saved only the adapter
    merged, _ = load_model(tmp_path / "sft" / "export")
    base, _ = load_model(small_model_dir)
    assert not any("lora" in name for name in merged.state_dict())
    ids = torch.tensor([[0, 5, 9, 200]])
    with torch.no_grad():
        assert not torch.allclose(merged(ids).logits, base(ids).logits)  # the adapter's training is in it


def test_the_same_command_after_kill_9_resumes_from_the_newest_checkpoint(tmp_path, small_model_dir, default_dir):
    data = default_dir / "chat" / "train.jsonl"
    # Every checkpoint kept (no save_total_limit), so the one resumed from can be seen untouched afterwards.
    config = recipe(tmp_path, "sft", small_model_dir, data, max_steps=12, save_steps=4, logging_steps=1,
                    gradient_accumulation_steps=1, save_total_limit=None, max_length=128)  # fmt: skip
    command, run = [command_path("scratchlm"), "sft", "--config", str(config)], RunDir(tmp_path / "sft")
    log = tmp_path / "killed.log"
    with log.open("w") as out:
        killed = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        while run.latest_trl_checkpoint() is None:
            assert killed.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        os.killpg(killed.pid, signal.SIGKILL)  # scratchlm, trl, accelerate and the training process
        killed.wait()
    latest = run.latest_trl_checkpoint()
    assert checkpoint_step(latest) < 12 and not run.export.exists()
    written = {p.name: p.stat().st_mtime_ns for p in latest.iterdir()}

    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    assert f"resuming from {latest}, the newest complete checkpoint" in again.stdout
    assert f"--resume_from_checkpoint {latest}" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in latest.iterdir()} == written  # read, not trained again
    state = json.loads((run.path / "checkpoint-12" / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "loss" in e] == list(range(1, 13))  # complete, once each
    assert [m["step"] for m in run.training_metrics()] == list(range(1, 13))


def test_plain_trl_dpo_trains_from_what_trl_sft_saved(tmp_path, sft_run, default_dir):
    """The TRL-only route the recipes document: no export/ without scratchlm, so `trl dpo` is given the
    model `trl sft` saved in its output_dir (what `scratchlm sft` ran, untouched by it)."""
    config = recipe(tmp_path, "dpo", Path("runs/tiny/sft/export"), default_dir / "preference" / "train.jsonl",
                    max_steps=1, save_steps=1, max_length=128)  # fmt: skip
    command = [command_path("trl"), "dpo", "--config", str(config), "--model_name_or_path", str(sft_run)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert (tmp_path / "dpo" / "checkpoint-1" / "trainer_state.json").is_file()
