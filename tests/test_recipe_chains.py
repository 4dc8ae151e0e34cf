"""Each GPU recipe's whole chain, scaled down on CPU: the command every stage's YAML documents in its header,
run in order from a copy of the repository's recipes/ and accelerate_configs/, on local snapshots of the
recipes' datasets laid out as `hf download --local-dir` leaves them (snapshots.py).

Scaled down means a 2-layer model, 64-token windows and a few steps, at most two processes, and what a
CPU cannot do swapped for what it can. Pretraining and midtraining keep the recipes' own accelerate
configs, FSDP2 included (on gloo). TRL's stages train in fp32, since on a CPU transformers refuses bf16,
and in one process under cpu_2proc.yaml: two TRL processes on gloo sometimes do not exit after saving
(1 run in 3 here, as the process group is torn down; pytorch/pytorch#75097 reports the same), and under
2x4090_fsdp2.yaml the one run tried did not exit either. An NCCL run is the device's to check.
"""

import json
import math
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import snapshots
from helpers import REPO, SMALL_MODEL, free_port
from scratchlm.posttrain import command_path
from scratchlm.run_dir import RunDir
from scratchlm.tokenization import load_tokenizer, tokenizer_hash

STAGES = ["pretrain", "midtrain", "sft", "sft-hq", "dpo"]
MODEL = {**SMALL_MODEL, "max_position_embeddings": 128}
TRAINING = {"seq_len": 64, "max_steps": 4, "per_device_train_batch_size": 2, "tokens_per_step": 512,
            "warmup_steps": 1, "save_steps": 4, "eval_steps": 4, "eval_windows": 2, "sample_steps": 4,
            "milestones": [], "report_to": "none"}  # fmt: skip
HORIZON_AND_BATCH = ("max_tokens", "tokens_per_param", "gradient_accumulation_steps")  # the recipes' own: dropped
SCALED = {
    "pretrain": {**TRAINING, "model_preset": "", "model_config": "model-small.yaml", "tokenizer_vocab_size": 1000},
    "midtrain": TRAINING,
    "trl": {"max_length": 64, "max_steps": 2, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
            "save_steps": 2, "logging_steps": 1, "report_to": "none", "bf16": False, "dtype": "float32"},
}  # fmt: skip


def documented_command(path: Path) -> list[str]:
    """The first command in a recipe's header comment, continued over lines that end in a backslash."""
    header = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line.removeprefix("#").strip())
    text = "\n".join(header)
    match = re.search(r"^((?:accelerate launch|scratchlm) (?:[^\n]*\\\n)*[^\n]*)", text, re.MULTILINE)
    assert match, f"{path} documents no command"
    return shlex.split(match.group(1).replace("\\\n", " "))


def scale_down(work: Path, recipe: str, local: dict) -> None:
    """The copy of the recipe a CPU can run in a minute, on the local snapshots."""
    shutil.copytree(REPO / "recipes", work / "recipes")
    shutil.copytree(REPO / "accelerate_configs", work / "accelerate_configs")
    (work / "model-small.yaml").write_text(yaml.safe_dump(MODEL))
    for config in (work / "accelerate_configs").glob("*.yaml"):  # two processes at most, each launch its port
        values = yaml.safe_load(config.read_text())
        values.update(num_processes=min(values["num_processes"], 2), main_process_port=free_port())
        config.write_text(yaml.safe_dump(values))
    code = work / "data" / "python-edu"  # the recipes' path for their own copy of Python-Edu
    code.mkdir(parents=True)
    for i in range(12):
        (code / f"blob{i:02d}.py").write_text(f"def f{i}(x):\n    return x * {i}\n")
    folder = work / "recipes" / recipe
    for name in ("data.yaml", "midtrain-data.yaml"):
        spec = yaml.safe_load((folder / name).read_text())
        for source in spec["sources"]:
            source["path"] = str(local.get(source["path"], source["path"]))
        spec["val_fraction"] = 0.1  # dozens of documents, not millions
        (folder / name).write_text(yaml.safe_dump(spec))
    for stage in STAGES:
        path = folder / f"{stage}.yaml"
        values = yaml.safe_load(path.read_text())
        if stage in ("pretrain", "midtrain"):
            values = {k: v for k, v in values.items() if k not in HORIZON_AND_BATCH} | SCALED[stage]
        else:
            values.update(SCALED["trl"], accelerate_config="accelerate_configs/cpu_2proc.yaml", num_processes=1)
            if "datasets" in values:
                values["datasets"][0]["path"] = str(local[values["datasets"][0]["path"]])
            else:
                values["dataset_name"] = str(local[values["dataset_name"]])
        path.write_text(yaml.safe_dump(values))


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    hub = snapshots.write_all(tmp_path_factory.mktemp("hf"))
    return {"HuggingFaceFW/fineweb-edu": hub["fineweb-edu"], "HuggingFaceTB/finemath": hub["finemath"],
            "HuggingFaceTB/smoltalk": hub["smoltalk"], "HuggingFaceH4/no_robots": hub["no_robots"],
            "trl-lib/ultrafeedback_binarized": hub["ultrafeedback_binarized-trl"]}  # fmt: skip


@pytest.mark.parametrize("recipe", ["genesis-1b", "a100-1b", "h100-d20"])
def test_the_recipe_chain_runs_as_documented(tmp_path, local, recipe):
    scale_down(tmp_path, recipe, local)
    env = {**os.environ, "WANDB_MODE": "offline"}
    for stage in STAGES:
        command = documented_command(REPO / "recipes" / recipe / f"{stage}.yaml")
        command[0] = command_path(command[0])
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{stage}: {shlex.join(command)}\n{result.stdout[-2000:]}{result.stderr[-4000:]}"
        run = RunDir(tmp_path / "runs" / recipe / stage)
        assert (run.export / "model.safetensors").is_file(), stage
        if stage in ("pretrain", "midtrain"):
            assert [m["step"] for m in run.training_metrics()][-1] == 4, stage
            assert "recompile_limit" not in result.stderr
            continue
        state = json.loads((run.path / "checkpoint-2" / "trainer_state.json").read_text())
        assert state["global_step"] == 2 and all(math.isfinite(r.get("loss", 0.0)) for r in state["log_history"])
    # The chain kept pretraining's tokenizer to the end.
    tokenizers = [load_tokenizer(tmp_path / "runs" / recipe / where) for where in ("tokenizer", "dpo/export")]
    assert tokenizer_hash(tokenizers[0]) == tokenizer_hash(tokenizers[1])
