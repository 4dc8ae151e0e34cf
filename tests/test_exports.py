"""Every export loads the same way: the pretraining loop's exports and `scratchlm export` of its training
checkpoints, in every format, load with plain transformers in a process that never imported scratchlm
(model, tokenizer, generation config) and compute what scratchlm computes from the same directory. They
carry a model card, and the length the model was trained with, which `eval bpb` measures at by default."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from helpers import RUN_MODEL, launch, small_run
from scratchlm.cli import main
from scratchlm.model.bitnet import bitnet_stats
from scratchlm.model.files import load_model, load_model_from
from scratchlm.run_dir import RunDir

IDS = [[0, 5, 17, 300, 42, 9, 511, 3]]
TEXT = "The capital of Veloria is Tamsin."
CONVERSATION = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory, shards_dir):
    """12 steps of a model without custom options, exported by the loop as stock llama; checkpoints 8 and 12."""
    tmp_path = tmp_path_factory.mktemp("plain")
    launch(tmp_path, "--config", str(small_run(tmp_path, shards_dir, export_format="llama", eval_steps=4)))
    return tmp_path / "run"


@pytest.fixture(scope="module")
def bitnet_run(tmp_path_factory, shards_dir):
    """The same with BitNet b1.58 layers, exported by the loop packed at 2 bits per weight."""
    tmp_path = tmp_path_factory.mktemp("bitnet")
    config = small_run(tmp_path, shards_dir, export_format="bitnet-packed")
    (tmp_path / "model.yaml").write_text(yaml.safe_dump({**RUN_MODEL, "bitnet": True}))
    launch(tmp_path, "--config", str(config))
    return tmp_path / "run"


FRESH = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
path, ids, text, conversation, llama = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4]), \
    sys.argv[5] == "llama"
model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=not llama).eval()
# The tokenizer needs no code: a llama export says so by itself, ours when asked not to run any (see the README).
no_code = {} if llama else {"trust_remote_code": False}
tokenizer = AutoTokenizer.from_pretrained(path, **no_code)
generation = GenerationConfig.from_pretrained(path)
with torch.no_grad():
    logits = model(torch.tensor(ids)).logits
assert "scratchlm" not in sys.modules, "scratchlm was imported"
print(json.dumps({
    "class": type(model).__name__, "module": type(model).__module__, "logits": logits.tolist(),
    "tokens": tokenizer.encode(text),
    "chat": tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_dict=False),
    "eos": generation.eos_token_id, "pad": generation.pad_token_id, "model_eos": model.generation_config.eos_token_id,
    "training_seq_len": getattr(model.config, "training_seq_len", None),
}))
"""


def load_fresh(export, tmp_path) -> dict:
    """What a process with transformers and no scratchlm makes of `export` (stdin closed: nothing to answer)."""
    llama = json.loads((export / "config.json").read_text())["model_type"] == "llama"
    argv = [str(export), json.dumps(IDS), TEXT, json.dumps(CONVERSATION), "llama" if llama else "scratch"]
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", FRESH, *argv],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "custom code" not in result.stdout + result.stderr  # no question about running code was asked
    return json.loads(result.stdout.strip().splitlines()[-1])


def assert_loads_like_scratchlm(export, tmp_path, *, code: bool) -> dict:
    fresh = load_fresh(export, tmp_path)
    model, tokenizer = load_model(export)
    with torch.no_grad():
        ours = model(torch.tensor(IDS)).logits
    torch.testing.assert_close(torch.tensor(fresh["logits"]), ours, rtol=0, atol=1e-6)
    assert fresh["module"].startswith("transformers_modules") == code  # the code saved in the export, or stock
    assert fresh["tokens"] == tokenizer.encode(TEXT)
    assert fresh["chat"] == tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True, return_dict=False)
    stops = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert fresh["eos"] == fresh["model_eos"] == stops and fresh["pad"] == tokenizer.pad_token_id
    return fresh


def test_the_loops_exports_load_without_scratchlm(plain_run, bitnet_run, tmp_path):
    llama = assert_loads_like_scratchlm(plain_run / "export", tmp_path, code=False)
    assert llama["class"] == "LlamaForCausalLM" and not list((plain_run / "export").glob("*.py"))
    packed = assert_loads_like_scratchlm(bitnet_run / "export", tmp_path, code=True)
    assert packed["class"] == "ScratchForCausalLM"
    assert (bitnet_run / "export" / "model.bitnet.safetensors").is_file()
    assert not (bitnet_run / "export" / "model.safetensors").exists()
    for run in (plain_run, bitnet_run):
        assert "## Training" in (run / "export" / "README.md").read_text()


@pytest.mark.parametrize("run_name, step, format", [("plain", 8, "scratch"), ("plain", 8, "llama"),
                                                   ("bitnet", 12, "bitnet-packed")])  # fmt: skip
def test_scratchlm_export_of_a_checkpoint_loads_without_scratchlm(
    plain_run, bitnet_run, tmp_path, capsys, run_name, step, format
):
    run = {"plain": plain_run, "bitnet": bitnet_run}[run_name]
    checkpoint = RunDir(run).checkpoint(step)
    out = tmp_path / format
    assert main(["export", str(checkpoint), "--out", str(out), "--format", format]) == 0
    assert f"wrote {out} ({format}) with its model card README.md" in capsys.readouterr().out
    fresh = assert_loads_like_scratchlm(out, tmp_path, code=format != "llama")
    assert fresh["training_seq_len"] == 32  # the run's seq_len, not the model's context (64)
    trained, _ = load_model_from(checkpoint)  # the checkpoint itself computes the same (packing: to 1e-5)
    with torch.no_grad():
        expected = trained(torch.tensor(IDS)).logits
    tolerance = 1e-5 if format == "bitnet-packed" else 1e-6
    torch.testing.assert_close(torch.tensor(fresh["logits"]), expected, rtol=tolerance, atol=tolerance)

    card = (out / "README.md").read_text()
    total = RunDir(run).read_plan()["total_steps"]
    steps = "the end of its" if step == total else f"step {step} of the {total} steps of its"
    for expected_text in (f"this export is {steps} **pretrain** stage", "2 layers × 64", "trained on windows of 32",
                          "- data: world (", f"over {step} steps", "![loss curve](loss.png)"):  # fmt: skip
        assert expected_text in card, expected_text
    assert ("trust_remote_code=True" in card) == (format != "llama")
    assert ("packed four to a byte" in card) == (format == "bitnet-packed")
    assert (out / "loss.png").stat().st_size > 5000


def test_a_model_directory_without_a_run_gets_a_card_from_its_config(small_model_dir, tmp_path, capsys):
    assert main(["export", str(small_model_dir), "--out", str(tmp_path / "x")]) == 0
    card = (tmp_path / "x" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: text-generation\n")
    for expected in ("2 layers × 64", "context 512", "No training run is recorded"):
        assert expected in card, expected
    assert "trust_remote_code" not in card  # a model Llama can express is saved as one (--format auto)
    assert "trained on windows" not in card and not (tmp_path / "x" / "loss.png").exists()


def test_a_checkpoint_copied_out_of_its_run_still_exports(plain_run, tmp_path):
    import shutil

    copy = tmp_path / "downloaded" / "step_00000008"
    shutil.copytree(RunDir(plain_run).checkpoint(8), copy)
    assert main(["export", str(copy), "--out", str(tmp_path / "x")]) == 0
    assert "No training run is recorded" in (tmp_path / "x" / "README.md").read_text()


def test_eval_bpb_measures_at_the_trained_length_and_agrees_with_the_run(plain_run, shards_dir, tmp_path, capsys):
    out = tmp_path / "step8"
    assert main(["export", str(RunDir(plain_run).checkpoint(8)), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", "bpb", "--model", str(out), "--data", str(shards_dir)]) == 0
    printed = capsys.readouterr()
    assert "windows of 32 tokens (the length it was trained with" in printed.err
    result = json.loads(printed.out)
    logged = next(m for m in RunDir(plain_run).metrics() if m["step"] == 8 and "val_bpb" in m)
    assert result["seq_len"] == 32
    assert result["val_bpb"] == pytest.approx(logged["val_bpb"], rel=1e-5)  # the run's own number, at its length
    assert main(["eval", "bpb", "--model", str(out), "--data", str(shards_dir), "--seq-len", "64"]) == 0
    printed = capsys.readouterr()
    assert "windows of 64 tokens (--seq-len; it was trained on 32)" in printed.err
    other = json.loads(printed.out)  # another length measures something else (in the 4th digit, this early)
    assert other["seq_len"] == 64 and other["val_bpb"] != pytest.approx(logged["val_bpb"], rel=1e-5)


def test_a_bitnet_run_logs_its_metrics_and_exports_packed(bitnet_run):
    metrics = RunDir(bitnet_run).training_metrics()
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    for m in metrics:
        assert 0 < m["bitnet_zero_fraction"] < 1 and m["bitnet_weight_scale"] > 0
        assert 0 < m["bitnet_act_clip_rate"] < 0.5
    assert json.loads((bitnet_run / "export" / "bitnet_packed.json").read_text())["packed_bytes"] > 0
    model, _ = load_model(bitnet_run / "export")
    assert model.config.bitnet
    # The last record was logged after the last step: the exported weights give back its numbers.
    exported = bitnet_stats(model, torch.randint(0, 1000, (1, 16)))
    assert exported["bitnet_zero_fraction"] == metrics[-1]["bitnet_zero_fraction"]
    assert exported["bitnet_weight_scale"] == pytest.approx(metrics[-1]["bitnet_weight_scale"], rel=1e-5)
