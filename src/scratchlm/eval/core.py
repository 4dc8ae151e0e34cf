"""The DCLM CORE metric, computed as nanochat computes it, so our numbers compare with published ones.

A bundle is a directory with core.yaml (the tasks), eval_meta_data.csv (each task's random baseline)
and eval_data/ (JSONL items). For every task:
- items are shuffled with random.Random(1337) and cut to max_per_task; the few-shot examples of item
  idx are random.Random(1234 + idx).sample(all other items, num_fewshot);
- prompts are few-shot examples joined by a blank line, then the item, with the task's continuation
  delimiter (default " "); language-modeling contexts are trimmed; BOS comes first;
- multiple_choice (one context, several continuations) and schema (several contexts, one
  continuation) pick the option with the lowest mean loss over the continuation; language_modeling
  is correct only if greedy argmax reproduces every continuation token;
- sequences longer than the model's context lose tokens on the left;
- centered accuracy = (acc - b/100) / (1 - b/100); CORE is the mean over tasks.
Scoring is exact but does less work than one whole forward pass per sequence (batch size 1, the
plain computation): the options of an item share their common prefix (the few-shot examples and the
question) through the KV cache, so a 10-shot, 4-option item costs about one prompt instead of four;
the other sequences share padded forward passes (sorted by length, right-padded: causal attention
never looks at the padding); the LM head runs only where a continuation token is predicted. Items
are split across processes when torch.distributed is up.
"""

import copy
import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml

from ..errors import ScratchError
from ..progress import Bar

TASK_TYPES = ("multiple_choice", "schema", "language_modeling")


@dataclass
class Task:
    label: str
    kind: str
    num_fewshot: int
    delimiter: str
    baseline: float  # percent
    items: list[dict]


@dataclass
class Sequence:
    """One scored sequence: tokens, the continuation span [start, end), what it answers, and how many
    tokens it lost on the left (options can share a prefix only when they lost the same)."""

    tokens: list[int]
    start: int
    end: int
    item: int
    option: int
    cropped: int


def load_bundle(bundle: str | Path) -> list[Task]:
    bundle = Path(bundle)
    for name in ("core.yaml", "eval_meta_data.csv", "eval_data"):
        if not (bundle / name).exists():
            raise ScratchError(f"{bundle} is not a CORE bundle: it has no {name}")
    with open(bundle / "eval_meta_data.csv") as f:
        baselines = {row["Eval Task"]: float(row["Random baseline"]) for row in csv.DictReader(f)}
    tasks = []
    for spec in yaml.safe_load((bundle / "core.yaml").read_text())["icl_tasks"]:
        label, kind = spec["label"], spec["icl_task_type"]
        if kind not in TASK_TYPES:
            raise ScratchError(f"{bundle}/core.yaml: task {label} has icl_task_type {kind!r}; known: {TASK_TYPES}")
        if label not in baselines:
            raise ScratchError(f"{bundle}/eval_meta_data.csv has no random baseline for task {label}")
        path = bundle / "eval_data" / spec["dataset_uri"]
        if not path.is_file():
            raise ScratchError(f"{bundle}/core.yaml: task {label} names {path}, which does not exist")
        items = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        tasks.append(
            Task(label, kind, spec["num_fewshot"][0], spec.get("continuation_delimiter", " "), baselines[label], items)
        )
    return tasks


def sample_items(task: Task, max_per_task: int | None) -> list[dict]:
    items = list(task.items)
    random.Random(1337).shuffle(items)
    return items[:max_per_task] if max_per_task and max_per_task > 0 else items


def fewshot_examples(items: list[dict], idx: int, count: int) -> list[dict]:
    """At most all the other items: a small --max-per-task may leave fewer than the task's shots
    (where nanochat's sample() would raise)."""
    others = [i for i in range(len(items)) if i != idx]
    count = min(count, len(others))
    if count == 0:
        return []
    return [items[i] for i in random.Random(1234 + idx).sample(others, count)]


def render(kind: str, item: dict, examples: list[dict], delimiter: str) -> list[str]:
    """The prompt strings of one item: one per option (mc, schema), or [without, with] (lm)."""
    if kind == "multiple_choice":
        shots = "".join(f"{e['query']}{delimiter}{e['choices'][e['gold']]}\n\n" for e in examples)
        return [f"{shots}{item['query']}{delimiter}{choice}" for choice in item["choices"]]
    if kind == "schema":
        shots = "".join(f"{e['context_options'][e['gold']]}{delimiter}{e['continuation']}\n\n" for e in examples)
        return [f"{shots}{context}{delimiter}{item['continuation']}" for context in item["context_options"]]
    shots = "".join(f"{e['context'].strip()}{delimiter}{e['continuation']}\n\n" for e in examples)
    without = f"{shots}{item['context'].strip()}{delimiter}"
    return [without.strip(), without + item["continuation"]]


def common_length(sequences: list[list[int]], from_end: bool) -> int:
    shortest = min(len(s) for s in sequences)
    for i in range(shortest):
        position = -1 - i if from_end else i
        if any(s[position] != sequences[0][position] for s in sequences):
            return i
    return shortest


def item_sequences(kind: str, prompts: list[str], encode, item: int, max_len: int) -> list[Sequence]:
    tokens = [encode(p) for p in prompts]
    if kind == "multiple_choice":  # a shared context: the continuations start where the prompts part
        start = common_length(tokens, from_end=False)
        spans = [(start, len(t)) for t in tokens]
    elif kind == "schema":  # a shared continuation: it is the common suffix
        suffix = common_length(tokens, from_end=True)
        spans = [(len(t) - suffix, len(t)) for t in tokens]
    else:
        without, full = tokens
        if full[: len(without)] != without or len(full) <= len(without):
            raise ScratchError(f"language_modeling item {item}: the context does not tokenize as a prefix")
        tokens, spans = [full], [(len(without), len(full))]
    sequences = []
    for option, (t, (start, end)) in enumerate(zip(tokens, spans, strict=True)):
        crop = max(0, len(t) - max_len)
        sequences.append(Sequence(t[crop:], max(start - crop, 1), end - crop, item, option, crop))
    return sequences


# Sharing a prefix costs an extra forward pass per item: worth it only when it saves this many tokens
# (10-shot prompts do; the 0-shot copa and winograd items are cheaper batched with the rest).
MIN_SHARED_TOKENS = 128


def judge(predicting: torch.Tensor, targets: torch.Tensor) -> tuple[float, bool]:
    """Mean loss over a continuation and whether argmax reproduces it (row j predicts targets[j])."""
    predicting = predicting.float()
    return F.cross_entropy(predicting, targets).item(), bool((predicting.argmax(-1) == targets).all())


def shared_prefixes(sequences: list[Sequence]) -> list[tuple[list[int], int]]:
    """(sequence indices, prefix length) for the options of an item worth scoring after one shared
    prefix: same item, same crop, and a common prefix that ends before any continuation starts."""
    groups: dict[tuple[int, int], list[int]] = {}
    for index, s in enumerate(sequences):
        groups.setdefault((s.item, s.cropped), []).append(index)
    shared = []
    for indices in groups.values():
        members = [sequences[i] for i in indices]
        prefix = min(common_length([s.tokens for s in members], from_end=False), *(s.start for s in members))
        if (len(indices) - 1) * prefix >= MIN_SHARED_TOKENS:
            shared.append((indices, prefix))
    return shared


def padded(rows: list[list[int]], device) -> torch.Tensor:
    """Right-padded with token 0: under causal attention no real token ever sees the padding."""
    ids = torch.zeros((len(rows), max(len(r) for r in rows)), dtype=torch.long)
    for row, tokens in enumerate(rows):
        ids[row, : len(tokens)] = torch.tensor(tokens)
    return ids.to(device)


def score_after_prefix(model, sequences, indices, prefix, batch_size, device) -> dict:
    """The prefix once, then the rest of every sequence from a copy of its KV cache."""
    prefix_ids = torch.tensor([sequences[indices[0]].tokens[:prefix]], device=device)
    # use_cache explicitly: a model saved by TRL may say use_cache: false in its config.
    head = model(input_ids=prefix_ids, logits_to_keep=1, use_cache=True)
    results = {}
    for first in range(0, len(indices), batch_size):
        chosen = indices[first : first + batch_size]
        cache = copy.deepcopy(head.cache)
        cache.batch_repeat_interleave(len(chosen))
        ids = padded([sequences[i].tokens[prefix:] for i in chosen], device)
        logits = model(input_ids=ids, cache=cache).logits
        for row, index in enumerate(chosen):
            s = sequences[index]
            # Row 0 of `predicting` is position prefix - 1, which predicts token prefix.
            predicting = torch.cat([head.logits[0, -1:], logits[row]])[s.start - prefix : s.end - prefix]
            results[index] = judge(predicting, ids[row, s.start - prefix : s.end - prefix])
    return results


def score_padded(model, sequences, indices, batch_size, device) -> dict:
    """Whole sequences, several per forward pass, logits only at the columns some continuation needs."""
    order = sorted(indices, key=lambda i: len(sequences[i].tokens))
    results = {}
    for first in range(0, len(order), batch_size):
        chosen = order[first : first + batch_size]
        ids = padded([sequences[i].tokens for i in chosen], device)
        columns = sorted({c for i in chosen for c in range(sequences[i].start - 1, sequences[i].end - 1)})
        logits = model(input_ids=ids, logits_to_keep=torch.tensor(columns, device=device)).logits
        where = {c: k for k, c in enumerate(columns)}
        for row, index in enumerate(chosen):
            s = sequences[index]
            predicting = logits[row, [where[c] for c in range(s.start - 1, s.end - 1)]]
            results[index] = judge(predicting, ids[row, s.start : s.end])
    return results


def score_plain(model, sequences, device) -> dict:
    """The computation as nanochat does it: every sequence alone, whole, logits at every position."""
    results = {}
    for index, s in enumerate(sequences):
        ids = torch.tensor([s.tokens], device=device)
        logits = model(input_ids=ids).logits[0]
        results[index] = judge(logits[s.start - 1 : s.end - 1], ids[0, s.start : s.end])
    return results


@torch.no_grad()
def score(model, sequences: list[Sequence], batch_size: int) -> dict[int, tuple[float, bool]]:
    """Per sequence (by index): mean loss over its continuation and whether argmax reproduces it.
    batch_size 1 is the plain computation, the reference the faster paths are checked against."""
    device = next(model.parameters()).device
    if batch_size == 1:
        return score_plain(model, sequences, device)
    results = {}
    for indices, prefix in shared_prefixes(sequences):
        results.update(score_after_prefix(model, sequences, indices, prefix, batch_size, device))
    rest = [i for i in range(len(sequences)) if i not in results]
    results.update(score_padded(model, sequences, rest, batch_size, device))
    return results


def task_sequences(tokenizer, task: Task, items: list[dict], max_len: int, rank: int = 0, world_size: int = 1):
    """The scored sequences of this rank's items, BOS first."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id

    def encode(text: str) -> list[int]:
        return [bos] + tokenizer.encode(text, add_special_tokens=False)

    sequences = []
    for idx in range(rank, len(items), world_size):
        prompts = render(task.kind, items[idx], fewshot_examples(items, idx, task.num_fewshot), task.delimiter)
        sequences += item_sequences(task.kind, prompts, encode, idx, max_len)
    return sequences


def item_scores(model, tokenizer, task: Task, items: list[dict], batch_size: int, rank: int = 0, world_size: int = 1):
    """{item index: [(mean continuation loss, argmax reproduces it) per option]} for this rank's items."""
    sequences = task_sequences(tokenizer, task, items, model.config.max_position_embeddings, rank, world_size)
    scores = score(model, sequences, batch_size)
    by_item: dict[int, list[tuple[float, bool]]] = {}
    for index, s in enumerate(sequences):
        by_item.setdefault(s.item, []).append(scores[index])
    return by_item


def evaluate_task(model, tokenizer, task: Task, max_per_task: int | None, batch_size: int, split: bool) -> float:
    items = sample_items(task, max_per_task)
    split = split and dist.is_initialized()
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if split else (0, 1)
    correct = torch.zeros(2, dtype=torch.float64, device=next(model.parameters()).device)
    for idx, options in item_scores(model, tokenizer, task, items, batch_size, rank, world_size).items():
        if task.kind == "language_modeling":
            correct[0] += options[0][1]
        else:
            losses = [loss for loss, _ in options]
            correct[0] += losses.index(min(losses)) == items[idx]["gold"]
        correct[1] += 1
    if split:
        dist.all_reduce(correct)
    return (correct[0] / correct[1]).item()


def evaluate_core(
    model,
    tokenizer,
    tasks: list[Task],
    max_per_task: int | None = None,
    batch_size: int = 16,
    split: bool = True,
    progress: bool = False,
) -> dict:
    """split=False: every process scores every item, as sharded (FSDP) models need: a process with
    fewer forward passes than the others would leave their collectives waiting. `progress`: by task."""
    was_training = model.training
    model.eval()
    results = {}
    bar = Bar(len(tasks), "eval core", "tasks", enabled=progress)
    for task in tasks:
        accuracy = evaluate_task(model, tokenizer, task, max_per_task, batch_size, split)
        centered = (accuracy - task.baseline / 100) / (1 - task.baseline / 100)
        results[task.label] = {"accuracy": accuracy, "centered": centered}
        bar.advance()
    bar.close()
    model.train(was_training)
    return {"tasks": results, "core": sum(r["centered"] for r in results.values()) / len(results)}
