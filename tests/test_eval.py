"""The evaluation commands on a trained run, lm-evaluation-harness on its export, and the report built
from what they and the run wrote."""

import json
import os
import shutil
import subprocess

import pytest
import torch
from PIL import Image

from helpers import launch, small_run
from scratchlm.cli import main
from scratchlm.eval.probes import probe_accuracy
from scratchlm.model.files import load_model


@pytest.fixture(scope="module")
def run(tmp_path_factory, shards_dir, default_dir):
    tmp_path = tmp_path_factory.mktemp("report")
    config = small_run(
        tmp_path,
        shards_dir,
        max_steps=16,
        eval_steps=8,
        sample_steps=8,
        sample_prompts=["The", "In"],
        probes=str(default_dir / "probes.jsonl"),
    )
    launch(tmp_path, "--config", str(config))
    return tmp_path / "run"


def test_eval_commands_write_into_the_run(run, shards_dir, default_dir):
    model = str(run / "export")
    assert (
        main(["eval", "bpb", "--model", model, "--data", str(shards_dir), "--out", str(run / "evals" / "bpb.json")])
        == 0
    )
    bpb = json.loads((run / "evals" / "bpb.json").read_text())
    last = [
        m for m in (json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()) if "val_bpb" in m
    ][-1]
    assert 0 < bpb["val_bpb"] < 10 and set(bpb["sources"]) == set(last["sources"])
    probes = default_dir / "probes.jsonl"
    assert (
        main(["eval", "probes", "--model", model, "--data", str(probes), "--out", str(run / "evals" / "probes.json")])
        == 0
    )
    result = json.loads((run / "evals" / "probes.json").read_text())
    assert result["probe_accuracy"] == last["probe_accuracy"]  # the same number in training and after
    assert result["n"] == len(probes.read_text().splitlines())


def test_probe_accuracy_counts_exact_greedy_answers(run):
    model, tokenizer = load_model(run / "export")
    prompt = "The capital of Veloria is"
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    greedy = tokenizer.decode(model.generate(ids, max_new_tokens=3, do_sample=False)[0, ids.shape[1] :])
    rows = [{"prompt": prompt, "answer": greedy}, {"prompt": prompt, "answer": greedy + " zzqx"}]
    assert probe_accuracy(model, tokenizer, rows)["probe_accuracy"] == 0.5


def test_lm_eval_harness_runs_on_an_export_and_agrees_with_probe_accuracy(run, default_dir, tmp_path):
    command = [
        shutil.which("lm_eval"),
        "--model", "hf",
        "--model_args", f"pretrained={run / 'export'},add_bos_token=True",
        "--tasks", "scratchlm_probes",
        "--include_path", str(default_dir / "lm_eval"),
        "--device", "cpu",
        "--batch_size", "16",
        "--output_path", str(tmp_path),
        "--log_samples",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads(next(tmp_path.rglob("results_*.json")).read_text())["results"]["scratchlm_probes"]
    model, tokenizer = load_model(run / "export")
    rows = [json.loads(line) for line in (default_dir / "probes.jsonl").read_text().splitlines()]
    assert scores["acc,none"] == probe_accuracy(model, tokenizer, rows)["probe_accuracy"]
    for line in next(tmp_path.rglob("samples_scratchlm_probes_*.jsonl")).read_text().splitlines()[:10]:
        sample = json.loads(line)  # lm-eval's log p(answer | prompt), against ours with the same BOS
        prompt, full = (
            tokenizer.encode(t) for t in (sample["doc"]["prompt"], sample["doc"]["prompt"] + sample["target"])
        )
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([full])).logits[0, :-1], -1)
        ours = sum(logprobs[i - 1, full[i]].item() for i in range(len(prompt), len(full)))
        assert float(sample["filtered_resps"][0][0]) == pytest.approx(ours, abs=1e-4)


def test_report_shows_what_was_measured_and_nothing_else(run, tmp_path):
    (run / "evals").mkdir(exist_ok=True)
    (run / "evals" / "chat.json").write_text(json.dumps({"chat_accuracy": 0.25, "stop_rate": 0.5, "examples": []}))
    assert main(["report", str(run), "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    summary = report["stages"]["pretrain"]
    assert summary["steps"] == 16 and summary["tokens"] == 16 * 4 * 32 and summary["parameters"] > 0
    assert summary["hardware"].startswith("CPU") and "mfu" not in summary and "cost_usd" not in summary  # not measured
    assert summary["chat_accuracy"] == 0.25 and "probe_accuracy" in summary and report["wall_s"] > 0
    assert [p["steps"] for p in summary["phases"]] == ["1-2", "2-4", "4-8", "8-16"]

    def no_nulls(value):
        return (
            all(map(no_nulls, value.values() if isinstance(value, dict) else value))
            if isinstance(value, (dict, list))
            else value is not None
        )

    assert no_nulls(report)
    text = (tmp_path / "report.md").read_text()
    for heading in (
        "What each stage cost",
        "Evaluations",
        "Samples: pretrain",
        "Diminishing returns: pretrain",
        "Configuration: pretrain",
    ):
        assert f"## {heading}" in text
    assert "| step 8 | step 16 |" in text and "| 0.25 | 0.5 |" in text
    for plot in ("loss", "bpb"):
        width, height = Image.open(tmp_path / "plots" / f"{plot}.png").size
        assert width >= 600 and height >= 400


def test_the_export_is_complete_with_a_model_card(run):
    export = run / "export"
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "loss.png"):
        assert (export / name).is_file(), name
    assert "{% generation %}" in (export / "chat_template.jinja").read_text()
    card = (export / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: text-generation\n")
    for expected in ("**pretrain** stage", "2 layers × 64", "- data: world (", "seen in this stage: 2,048 over 16",
                     "final training loss: ", "![loss curve](loss.png)", "| probe acc |",
                     "## Intended use"):  # fmt: skip
        assert expected in card, expected
    assert "trust_remote_code" not in card  # a stock llama checkpoint: nothing to trust
    generation = json.loads((export / "generation_config.json").read_text())
    tokenizer = json.loads((export / "tokenizer_config.json").read_text())
    assert generation["pad_token_id"] is not None and len(generation["eos_token_id"]) == 2
    assert tokenizer["eos_token"] == "<|endoftext|>"


def test_a_checkpoints_card_names_the_hardware_that_trained_it(run, tmp_path):
    """plan.json says the latest session's hardware; a later session on 2 GPUs must not relabel step 12."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("export", "step_00000016"))
    plan = json.loads((copy / "plan.json").read_text())
    trained_on = plan["hardware"]
    assert trained_on.startswith("CPU: ") and trained_on.endswith(", 1 process(es)")
    (copy / "plan.json").write_text(json.dumps({**plan, "hardware": "2 x NVIDIA H100 80GB HBM3"}))
    out = tmp_path / "step12"
    assert main(["export", str(copy / "checkpoints" / "step_00000012"), "--out", str(out)]) == 0
    card = (out / "README.md").read_text()
    assert f"- hardware: {trained_on}; wall time " in card and "H100" not in card
