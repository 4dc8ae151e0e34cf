"""CORE: checked against a second, deliberately plain implementation (nanochat's Jinja templates, one
item per forward pass, losses over the whole sequence) on the real core-sample tasks."""

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from jinja2 import Template

from helpers import small_config
from scratchlm.cli import main
from scratchlm.eval.core import (
    evaluate_core,
    item_scores,
    load_bundle,
    render,
    sample_items,
    shared_prefixes,
    task_sequences,
)
from scratchlm.model.files import init_model, load_model

BUNDLE = Path(__file__).parent / "fixtures" / "core-sample"
MAX_PER_TASK = 16

TEMPLATES = {
    "multiple_choice": """
{%- for example in fewshot_examples -%}
{{ example.query }}{{ continuation_delimiter }}{{ example.choices[example.gold] }}

{% endfor -%}
{{ item.query }}{{ continuation_delimiter }}{{ choice }}""",
    "schema": """
{%- for example in fewshot_examples -%}
{{ example.context_options[example.gold] }}{{ continuation_delimiter }}{{ example.continuation }}

{% endfor -%}
{{ context }}{{ continuation_delimiter }}{{ item.continuation }}""",
    "language_modeling": """
{%- for example in fewshot_examples -%}
{{ example.context | trim }}{{ continuation_delimiter }}{{ example.continuation }}

{% endfor -%}
{{ item.context | trim }}{{ continuation_delimiter }}{% if include_continuation %}{{ item.continuation }}{% endif %}""",
}


def reference_prompts(kind, item, shots, delimiter):
    template = Template(TEMPLATES[kind].strip())
    common = {"fewshot_examples": shots, "continuation_delimiter": delimiter, "item": item}
    if kind == "multiple_choice":
        return [template.render(choice=c, **common) for c in item["choices"]]
    if kind == "schema":
        return [template.render(context=c, **common) for c in item["context_options"]]
    without = template.render(include_continuation=False, **common).strip()
    return [without, template.render(include_continuation=True, **common)]


def reference_core(model, tokenizer, bundle: Path, max_per_task: int) -> dict:
    spec = yaml.safe_load((bundle / "core.yaml").read_text())["icl_tasks"]
    with open(bundle / "eval_meta_data.csv") as f:
        baselines = {r["Eval Task"]: float(r["Random baseline"]) for r in csv.DictReader(f)}
    limit = model.config.max_position_embeddings
    results, scores = {}, {}
    for task in spec:
        kind, shots_n, delim = task["icl_task_type"], task["num_fewshot"][0], task.get("continuation_delimiter", " ")
        data = [json.loads(line) for line in (bundle / "eval_data" / task["dataset_uri"]).read_text().splitlines()]
        random.Random(1337).shuffle(data)
        data = data[:max_per_task]
        correct = 0
        for idx, item in enumerate(data):
            others = [i for i in range(len(data)) if i != idx]
            shots = [data[i] for i in random.Random(1234 + idx).sample(others, shots_n)] if shots_n else []
            prompts = reference_prompts(kind, item, shots, delim)
            tokens = [[tokenizer.bos_token_id] + tokenizer.encode(p, add_special_tokens=False) for p in prompts]
            if kind == "language_modeling":
                spans, tokens = [(len(tokens[0]), len(tokens[1]))], [tokens[1]]
            elif kind == "multiple_choice":
                start = next(i for i in range(len(tokens[0])) if len({tuple(t[: i + 1]) for t in tokens}) > 1)
                spans = [(start, len(t)) for t in tokens]
            else:
                suffix = next(i for i in range(1, len(tokens[0]) + 1) if len({tuple(t[-i:]) for t in tokens}) > 1) - 1
                spans = [(len(t) - suffix, len(t)) for t in tokens]
            losses, hits = [], []
            for t, (s, e) in zip(tokens, spans, strict=True):
                crop = max(0, len(t) - limit)
                t, s, e = t[crop:], s - crop, e - crop
                ids = torch.tensor([t])
                with torch.no_grad():
                    logits = model(ids).logits[0]
                per_token = F.cross_entropy(logits, torch.roll(ids[0], -1), reduction="none")
                losses.append(per_token[s - 1 : e - 1].mean().item())
                hits.append(bool((logits[s - 1 : e - 1].argmax(-1) == ids[0, s:e]).all()))
            correct += hits[0] if kind == "language_modeling" else losses.index(min(losses)) == item["gold"]
            scores[task["label"], idx] = list(zip(losses, hits, strict=True))
        accuracy = correct / len(data)
        b = baselines[task["label"]] / 100
        results[task["label"]] = {"accuracy": accuracy, "centered": (accuracy - b) / (1 - b)}
    return {"tasks": results, "core": sum(r["centered"] for r in results.values()) / len(results)}, scores


@pytest.fixture(scope="module", params=[512, 2048], ids=["context-512", "context-2048"])
def model_and_tokenizer(request, tmp_path_factory, tokenizer_dir):
    """At 512 the 10-shot arc and bigbench prompts are cropped on the left (only options of equal
    length can share a prefix); at 2048 nothing is, and every arc item's options share one."""
    out = tmp_path_factory.mktemp("core-model")
    init_model(small_config(max_position_embeddings=request.param), out, tokenizer_dir, seed=0)
    return load_model(out)


def test_rendering_matches_nanochats_templates():
    for task in load_bundle(BUNDLE):
        shots = task.items[5:8]  # every template with few-shot examples, whatever the task uses
        for item in task.items[:5]:
            assert render(task.kind, item, shots, task.delimiter) == reference_prompts(
                task.kind, item, shots, task.delimiter
            )


def test_core_agrees_with_a_plain_implementation(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    reference, reference_scores = reference_core(model, tokenizer, BUNDLE, MAX_PER_TASK)
    for task in load_bundle(BUNDLE):  # every option's loss, the fast paths against one at a time
        items = sample_items(task, MAX_PER_TASK)
        if task.label == "arc_easy":  # the path through a shared KV cache is taken
            shared = shared_prefixes(task_sequences(tokenizer, task, items, model.config.max_position_embeddings))
            assert len(shared) >= (MAX_PER_TASK if model.config.max_position_embeddings > 1024 else 1)
        for idx, options in item_scores(model, tokenizer, task, items, batch_size=16).items():
            expected = reference_scores[task.label, idx]
            assert [hit for _, hit in options] == [hit for _, hit in expected]
            assert [loss for loss, _ in options] == pytest.approx([loss for loss, _ in expected], rel=1e-5)
    ours = evaluate_core(model, tokenizer, load_bundle(BUNDLE), MAX_PER_TASK, batch_size=16)
    assert ours == reference and set(ours["tasks"]) == {"arc_easy", "copa", "winograd", "bigbench_operators"}
    assert evaluate_core(model, tokenizer, load_bundle(BUNDLE), MAX_PER_TASK, batch_size=1) == ours


def test_eval_core_cli_and_two_processes_agree(tmp_path, small_model_dir):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    args = ["eval", "core", "--model", str(small_model_dir), "--bundle", str(BUNDLE), "--max-per-task", "12"]
    assert main([*args, "--out", str(one)]) == 0
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "scratchlm.cli"]  # fmt: skip
    subprocess.run([*launch, *args, "--out", str(two)], check=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    single, double = json.loads(one.read_text()), json.loads(two.read_text())
    assert single == double and 0 <= single["tasks"]["copa"]["accuracy"] <= 1


def test_bad_bundle_is_named(tmp_path, capsys, small_model_dir):
    (tmp_path / "core.yaml").write_text("icl_tasks: []\n")
    assert main(["eval", "core", "--model", str(small_model_dir), "--bundle", str(tmp_path)]) == 2
    assert f"{tmp_path} is not a CORE bundle: it has no eval_meta_data.csv" in capsys.readouterr().err
