"""What `scratchlm sft|dpo` refuses, and that it refuses exactly what TRL would: the arguments as TRL's own
parser reads them, the data through TRL's own trainer (on the recipes' Hub datasets, as schema-exact
snapshots), accelerate's mixed precision; each refusal one line, before TRL starts."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from transformers import AutoTokenizer

import snapshots
from scratchlm.cli import main
from scratchlm.posttrain import command_path

REPO = Path(__file__).resolve().parents[1]


def tiny_recipe(tmp_path: Path, stage: str, model: Path, data: Path, **overrides) -> Path:
    values = yaml.safe_load((REPO / "recipes" / "tiny" / f"{stage}.yaml").read_text())
    values["datasets"][0]["data_files"] = str(data)
    values.update(model_name_or_path=str(model), output_dir=str(tmp_path / stage), **overrides)
    path = tmp_path / f"{stage}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def gpu_recipe(tmp_path: Path, name: str, model: Path, **overrides) -> Path:
    """recipes/h100-d20/NAME.yaml as written, on this CPU: one process without the GPUs' accelerate config,
    in float32, one short step, at test paths."""
    values = yaml.safe_load((REPO / "recipes" / "h100-d20" / f"{name}.yaml").read_text())
    del values["accelerate_config"]
    tmp_path.mkdir(parents=True, exist_ok=True)
    short = {"model_name_or_path": str(model), "output_dir": str(tmp_path / name), "num_processes": 1,
             "bf16": False, "dtype": "float32", "gradient_checkpointing": False, "report_to": "none", "max_steps": 1,
             "save_steps": 1, "logging_steps": 1, "max_length": 64, "per_device_train_batch_size": 2,
             "gradient_accumulation_steps": 1}  # fmt: skip
    values.update({**short, **overrides})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def refusal(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: ") and "Traceback" not in error
    return error


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    out = tmp_path_factory.mktemp("hub")
    return {
        "smoltalk": snapshots.write_smoltalk(out / "smoltalk"),
        "no_robots": snapshots.write_no_robots(out / "no_robots"),
        "h4": snapshots.write_h4_ultrafeedback(out / "h4"),
        "trl": snapshots.write_trl_ultrafeedback(out / "trl"),
    }


@pytest.fixture(scope="module")
def template_without_generation(tmp_path_factory, small_model_dir):
    model = tmp_path_factory.mktemp("plain_template") / "model"
    shutil.copytree(small_model_dir, model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.chat_template = "{{ messages[0]['content'] }}"
    (model / "chat_template.jinja").unlink()
    tokenizer.save_pretrained(model)
    return model


# --- the arguments, as TRL reads them -------------------------------------------------------------------


@pytest.mark.parametrize(
    "template, override, message",
    [
        ("plain", [], "assistant_only_loss needs {% generation %}"),  # the recipe's own value: true
        ("plain", ["--assistant_only_loss", "false"], "Column name ['messages'] not in the dataset"),
        ("plain", ["--assistant_only_loss=False"], "Column name ['messages'] not in the dataset"),
        ("ours", ["--trust_remote_code", "false"], "set trust_remote_code: true"),
        ("ours", ["--trust_remote_code=false"], "set trust_remote_code: true"),
        ("ours", ["--model_name_or_path=MODEL"], "model_name_or_path MODEL is not an exported model directory"),
    ],
)
def test_overrides_mean_what_they_mean_to_trl(
    tmp_path, capsys, scratch_model_dir, template_without_generation, default_dir, template, override, message
):
    """`--key=value` is read, and `false` is false: the checks see the model and the flags TRL trains with.
    With assistant_only_loss off, a template without {% generation %} passes and the check after it (the
    data, text rows here) speaks."""
    model = template_without_generation if template == "plain" else scratch_model_dir
    elsewhere = str(tmp_path / "elsewhere")
    override, message = [o.replace("MODEL", elsewhere) for o in override], message.replace("MODEL", elsewhere)
    config = tiny_recipe(tmp_path, "sft", model, default_dir / "pretrain" / "math.jsonl")
    assert message in refusal(capsys, ["sft", "--config", str(config), *override])
    assert not (tmp_path / "sft").exists()


def test_help_prints_ours_and_trls(capsys):
    assert main(["sft", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("scratchlm sft --config RECIPE.yaml") and "done:" not in out
    assert "Runs `trl sft` with the same arguments" in out
    assert "--assistant_only_loss" in out and "--model_name_or_path" in out and "usage: scratchlm sft" in out
    assert main(["dpo", "-h"]) == 0 and "--beta" in capsys.readouterr().out


def test_bad_values_and_unknown_keys_are_one_line(tmp_path, capsys, small_model_dir, default_dir):
    config = tiny_recipe(tmp_path, "sft", small_model_dir, default_dir / "chat" / "train.jsonl", warmup_stepz=3)
    error = refusal(capsys, ["sft", "--config", str(config)])
    assert f"{config} (trl sft or accelerate): unknown key 'warmup_stepz' (did you mean 'warmup_steps'?)" in error
    config = tiny_recipe(tmp_path, "sft", small_model_dir, default_dir / "chat" / "train.jsonl")
    error = refusal(capsys, ["sft", "--config", str(config), "--max_steps", "ten"])
    assert "scratchlm sft: argument --max_steps/--max-steps: invalid int value: 'ten'" in error
    assert "unknown key 'learnin_rate' (did you mean 'learning_rate'?)" in refusal(
        capsys, ["sft", "--config", str(config), "--learnin_rate=3e-4"]
    )


# --- accelerate's mixed precision ------------------------------------------------------------------------


def test_an_accelerate_config_cannot_override_the_recipes_bf16(tmp_path, capsys, small_model_dir, default_dir):
    accelerate = REPO / "accelerate_configs" / "single_gpu.yaml"  # mixed_precision: bf16
    data = default_dir / "chat" / "train.jsonl"
    config = tiny_recipe(tmp_path, "sft", small_model_dir, data, accelerate_config=str(accelerate))
    error = refusal(capsys, ["sft", "--config", str(config)])
    assert f"bf16 and fp16 are off, but the accelerate config {accelerate} sets mixed_precision: bf16" in error
    config = tiny_recipe(tmp_path, "sft", small_model_dir, data)
    error = refusal(capsys, ["sft", "--config", str(config), "--mixed_precision", "bf16"])
    assert "but --mixed_precision sets mixed_precision: bf16" in error


# --- the rows, through TRL's own trainer -------------------------------------------------------------------


def spoil(rows: list[dict], case: str) -> list[dict]:
    rows = json.loads(json.dumps(rows))
    if case == "misspelled_role":
        rows[5]["messages"][1]["role"] = "asistant"
    elif case == "no_content":
        del rows[2]["messages"][1]["content"]
    else:
        del rows[3]["rejected"]
    return rows


@pytest.mark.parametrize(
    "case, stage, message",
    [
        ("misspelled_role", "sft", "row 5 (from 0), field 'messages' (2 messages: user, asistant): TRL's sft "
                                   "preparation fails on it: RuntimeError: You're using `assistant_only_loss=True`, "
                                   "but at least one example has no assistant tokens"),
        ("no_content", "sft", "row 2 (from 0), field 'messages' (2 messages: user, assistant without content): "
                              "TRL's sft preparation fails on it: UndefinedError"),
        ("no_rejected", "dpo", "row 3 (from 0), field 'rejected' (missing): TRL's dpo preparation fails on it: "
                               "TypeError: can only concatenate list"),
    ],
)  # fmt: skip
def test_a_bad_row_is_named_by_file_row_and_field(tmp_path, capsys, small_model_dir, default_dir, case, stage, message):
    source = default_dir / ("chat" if stage == "sft" else "preference") / "train.jsonl"
    rows = [json.loads(line) for line in source.read_text().splitlines()[:12]]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in spoil(rows, case)))
    config = tiny_recipe(tmp_path, stage, small_model_dir, data)
    assert f"error: dataset {data} split train, {message}" in refusal(capsys, [stage, "--config", str(config)])
    assert not (tmp_path / stage).exists()  # TRL never started


@pytest.mark.parametrize("case", ["eval_split", "streamed"])
def test_eval_splits_and_streamed_rows_are_checked_too(tmp_path, capsys, small_model_dir, default_dir, case):
    """The rows TRL evaluates on go through its trainer beside the training rows; a streamed dataset, which
    TRL prepares only as it reads it, is read through."""
    rows = [json.loads(line) for line in (default_dir / "chat" / "train.jsonl").read_text().splitlines()[:12]]
    data = tmp_path / "data"
    data.mkdir()
    spoilt = "test" if case == "eval_split" else "train"
    for split in ("train", "test"):
        written = spoil(rows, "misspelled_role") if split == spoilt else rows
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in written))
    values = yaml.safe_load((REPO / "recipes" / "tiny" / "sft.yaml").read_text())
    del values["datasets"]
    values.update(model_name_or_path=str(small_model_dir), output_dir=str(tmp_path / "sft"), dataset_name=str(data))
    values.update({"eval_strategy": "steps", "eval_steps": 1} if case == "eval_split" else {"dataset_streaming": True})
    values["max_steps"] = 3  # a stream has no length to count epochs in
    config = tmp_path / "sft.yaml"
    config.write_text(yaml.safe_dump(values))
    error = refusal(capsys, ["sft", "--config", str(config)])
    assert f"error: dataset {data} split {spoilt}, row 5 (from 0), field 'messages' (2 messages: user, asist" in error
    assert "TRL's sft preparation fails on it: RuntimeError: You're using `assistant_only_loss=True`" in error
    assert not (tmp_path / "sft").exists()  # TRL never started


def test_the_probes_run_on_the_cpu_and_write_nothing_of_the_runs(tmp_path, monkeypatch, small_model_dir, default_dir):
    """The trainers that probe the rows are built in this process, which `accelerate launch` did not start:
    beside several GPUs (faked here) they would be nn.DataParallel, which DPOTrainer refuses, and hold GPU
    memory while TRL trains. They write into a scratch directory and start no tracker."""
    import torch

    from scratchlm.posttrain import probe_arguments

    data = default_dir / "preference" / "train.jsonl"
    config = tiny_recipe(tmp_path, "dpo", small_model_dir, data, report_to="wandb", push_to_hub=True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    args = probe_arguments("dpo", ["--config", str(config), "--num_processes", "1"], str(tmp_path / "scratch"))
    assert args.device.type == "cpu" and args.n_gpu == 0 and not args.bf16 and not args.fp16
    assert args.output_dir == str(tmp_path / "scratch") and args.report_to == [] and not args.push_to_hub
    assert not args.precompute_ref_log_probs and args.max_length == 256  # the rest as the recipe says


def test_the_recipes_hub_layouts_trl_cannot_train_are_refused(tmp_path, capsys, small_model_dir, hub):
    # H4's copy of UltraFeedback: a string prompt beside conversations.
    config = gpu_recipe(tmp_path, "dpo", small_model_dir)
    h4 = ["dpo", "--config", str(config), "--dataset_name", str(hub["h4"])]
    assert f"dataset {hub['h4']} has no split 'train' (its splits: train_prefs, train_sft" in refusal(capsys, h4)
    error = refusal(capsys, [*h4, "--dataset_train_split", "train_prefs"])
    assert f"dataset {hub['h4']} split train_prefs, row 0 (from 0): TRL's dpo preparation fails on it:" in error
    assert "(its fields: prompt: text of" in error and "the next rows fail alone too" in error
    # The No Robots step as sft.yaml once documented it: SmolTalk's config carried over, then its string prompt.
    config = gpu_recipe(tmp_path, "sft", small_model_dir)
    no_robots = ["sft", "--config", str(config), "--dataset_name", str(hub["no_robots"])]
    assert "(config all) split train could not be opened: BuilderConfig 'all' not found" in refusal(capsys, no_robots)
    error = refusal(capsys, [*no_robots, "--dataset_config", "default"])
    assert f"dataset {hub['no_robots']} (config default) split train, row 0 (from 0): TRL's sft preparation" in error


def test_trl_itself_fails_on_the_layouts_refused(tmp_path, small_model_dir, hub):
    """The other half of agreeing with TRL: `trl` run on what the test above refuses stops with an error
    (which one varies: TRL's is_conversational picks a column from a set, whose order is per process)."""
    runs = {
        "dpo": ["--dataset_name", str(hub["h4"]), "--dataset_train_split", "train_prefs"],
        "sft": ["--dataset_name", str(hub["no_robots"]), "--dataset_config", "default"],
    }
    for stage, args in runs.items():
        config = gpu_recipe(tmp_path / stage, stage, small_model_dir)
        result = subprocess.run([command_path("trl"), stage, "--config", str(config), *args], capture_output=True,
                                text=True, timeout=600)  # fmt: skip
        assert result.returncode != 0 and "Traceback" in result.stderr, result.stderr[-3000:]
        assert any(e in result.stderr for e in ("TypeError", "AttributeError", "KeyError: 'completion'", "ValueError"))
        assert not list((tmp_path / stage).glob("*/checkpoint-*"))


@pytest.mark.parametrize(
    "name, dataset",
    [("sft", {"dataset_name": "smoltalk"}), ("sft-hq", {"datasets": "no_robots"}), ("dpo", {"dataset_name": "trl"})],
)
def test_the_recipes_hub_datasets_train_as_written(tmp_path, monkeypatch, capsys, small_model_dir, hub, name, dataset):
    """What the checks accept, TRL trains on: each recipe's own dataset keys (SmolTalk's `all` config; No
    Robots through `columns: [messages]`; trl-lib's UltraFeedback, whose prompt TRL extracts from the pairs).
    The DPO run also reports to wandb without a key, offline, as pretraining does."""
    ((key, snapshot),) = dataset.items()
    values = yaml.safe_load((REPO / "recipes" / "h100-d20" / f"{name}.yaml").read_text())
    overrides = {"report_to": "wandb"} if name == "dpo" else {}
    if key == "datasets":
        overrides["datasets"] = [{**values["datasets"][0], "path": str(hub[snapshot])}]
    else:
        overrides["dataset_name"] = str(hub[snapshot])
    config = gpu_recipe(tmp_path, name, small_model_dir, **overrides)
    monkeypatch.chdir(tmp_path)  # wandb writes ./wandb
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert main(["dpo" if name == "dpo" else "sft", "--config", str(config)]) == 0
    assert (tmp_path / name / "export" / "model.safetensors").is_file()
    if name == "dpo":
        assert "no wandb API key: trl dpo logs to wandb offline" in capsys.readouterr().out
        assert list((tmp_path / "wandb").glob("offline-run-*"))


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*/sft-hq.yaml")), ids=lambda p: p.parent.name)
def test_the_no_robots_recipes_continue_from_sft_on_its_conversations(path):
    from trl.scripts.sft import make_parser

    script, training, model, mixture = make_parser().parse_args_and_config(["--config", str(path), "--bf16", "false"],
                                                                          fail_with_unknown_args=False)  # fmt: skip
    run = path.parent.name
    assert model.model_name_or_path == f"runs/{run}/sft/export" and training.output_dir == f"runs/{run}/sft-hq"
    assert not script.dataset_name and [(d.path, d.columns) for d in mixture.datasets] == [
        ("HuggingFaceH4/no_robots", ["messages"])
    ]
