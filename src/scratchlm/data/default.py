"""`scratchlm data default`: the embedded default dataset, generated offline from a seed.

    DIR/pretrain/{world,math,code}.jsonl   documents ({"text"}), about --tokens tokens in all
    DIR/chat/{train,test}.jsonl            Q&A conversations for SFT ({"messages"}; test rows also carry "answer")
    DIR/chat/mid.jsonl                     open conversations with long replies, for midtraining
    DIR/preference/{train,test}.jsonl      DPO pairs ({"prompt", "chosen", "rejected"}, conversational)
    DIR/probes.jsonl                       {"prompt": "The capital of Veloria is", "answer": " Tamsin"}
    DIR/core/                              a CORE bundle: core.yaml, eval_meta_data.csv, eval_data/
    DIR/lm_eval/scratchlm_probes.yaml      the probes as an lm-evaluation-harness task (--include_path DIR/lm_eval),
    DIR/lm_eval/scratchlm_probes_data.py   with the loader that finds probes.jsonl relative to itself

Facts asked about anywhere appear in pretraining text; the evaluation items themselves never do:
probes and CORE use phrasings of their own, chat test questions ask about facts no training
conversation asks about, and arithmetic evaluation uses pairs of numbers training never contains.
"""

import csv
import json
import os
import random
from functools import partial
from pathlib import Path

import yaml

from .world import ANSWER, PRETRAIN, PROBE, QUESTION, Fact, World, arithmetic_pair, make_world

CHARS_PER_TOKEN = 4  # a rough size estimate for English-like text under a small BPE
PRETRAIN_SHARES = {"world": 0.85, "math": 0.10, "code": 0.05}
SYSTEM_PROMPTS = ["You are a helpful assistant.", "Answer briefly and correctly.", "You know the atlas of the world."]
FILLER = [
    "Travellers often describe the markets as lively.",
    "The winters there are long and quiet.",
    "Many songs have been written about its valleys.",
    "Its roads are old but well kept.",
    "Scholars still argue about its early history.",
    "The people are known for their hospitality.",
]


def write_default(out_dir: str | Path, seed: int = 0, tokens: int = 2_000_000, countries: int = 16) -> dict:
    out = Path(out_dir)
    rng = random.Random(seed)
    world = make_world(seed, countries)
    counts = {}
    for name, share in PRETRAIN_SHARES.items():
        make_doc = {"world": world_document, "math": math_document, "code": code_document}[name]
        docs = generate_until(lambda make=make_doc: make(rng, world), int(tokens * share * CHARS_PER_TOKEN))
        counts[f"pretrain/{name}"] = write_jsonl(out / "pretrain" / f"{name}.jsonl", [{"text": d} for d in docs])

    facts = list(world.facts)
    rng.shuffle(facts)
    held_out = facts[: len(facts) // 5]  # chat and preference test questions ask only about these
    trained = facts[len(facts) // 5 :]
    counts["chat/mid"] = write_jsonl(out / "chat" / "mid.jsonl", [mid_conversation(rng, world) for _ in range(3000)])
    counts["chat/train"] = write_jsonl(
        out / "chat" / "train.jsonl", [conversation(rng, world, trained) for _ in range(4000)]
    )
    tests = [test_conversation(rng, trained, fact, warm_up) for fact in held_out for warm_up in (False, True)]
    counts["chat/test"] = write_jsonl(out / "chat" / "test.jsonl", tests)
    pairs = {
        split: [preference(rng, world, f, wrong) for f in facts for wrong in (True, False)]
        for split, facts in (("train", trained), ("test", held_out))
    }
    for split, rows in pairs.items():
        counts[f"preference/{split}"] = write_jsonl(out / "preference" / f"{split}.jsonl", rows)
    probes = [{"prompt": f.sentence(PROBE[f.relation]), "answer": " " + f.object} for f in world.facts]
    counts["probes"] = write_jsonl(out / "probes.jsonl", probes)
    write_lm_eval_task(out / "lm_eval", out / "probes.jsonl")
    counts["core"] = write_core_bundle(out / "core", rng, world)
    (out / "world.json").write_text(
        json.dumps({"seed": seed, "countries": world.countries, "people": world.people}, indent=1)
    )
    return counts


def write_lm_eval_task(out: Path, probes: Path) -> None:
    """The probes for lm-evaluation-harness: its `acc` for a loglikelihood task is "every answer token
    is the greedy one", what `scratchlm eval probes` measures.

    lm-eval resolves a task's `data_files` against the working directory, not the YAML, so a path
    written there either breaks when the folder moves or (absolute) silently reads the original.
    What lm-eval does resolve next to the YAML is `!function` code: a small loader there finds the
    probes relative to its own file, so a copied or moved folder reads its own copy."""
    task = {
        "task": "scratchlm_probes",
        "test_split": "test",
        "output_type": "loglikelihood",
        "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{answer}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }
    out.mkdir(parents=True, exist_ok=True)
    relative = Path(os.path.relpath(probes.resolve(), out.resolve())).as_posix()
    (out / "scratchlm_probes_data.py").write_text(LM_EVAL_LOADER.format(relative=relative))
    (out / "scratchlm_probes.yaml").write_text(
        yaml.safe_dump(task, sort_keys=False) + "custom_dataset: !function scratchlm_probes_data.load_probes\n"
    )


LM_EVAL_LOADER = '''"""The data of scratchlm_probes.yaml, found relative to this file (by `scratchlm data default`)."""

from pathlib import Path

import datasets


def load_probes(**kwargs):
    probes = Path(__file__).resolve().parent / "{relative}"
    return datasets.load_dataset("json", data_files={{"test": str(probes)}})
'''


def generate_until(make, chars: int) -> list[str]:
    docs, total = [], 0
    while total < chars:
        docs.append(make())
        total += len(docs[-1])
    return docs


def write_jsonl(path: Path, rows: list[dict]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(rows)


# --- pretraining documents ---------------------------------------------------------------------


def state(rng: random.Random, fact: Fact) -> str:
    return fact.sentence(rng.choice(PRETRAIN[fact.relation]))


def world_document(rng: random.Random, world: World, country: dict | None = None) -> str:
    kind = 0.0 if country else rng.random()
    if kind < 0.45:
        country = country or rng.choice(world.countries)
        sentences = [state(rng, f) for f in world.facts_about(country["name"])]
        sentences.append(
            f"Other cities in {country['name']} include {country['cities'][0]} and {country['cities'][1]}."
        )
        sentences += rng.sample(FILLER, 2)
        rng.shuffle(sentences)
        return f"{country['name']}\n\n" + " ".join(sentences)
    if kind < 0.7:
        index = rng.randrange(len(world.people))
        return f"{world.people[index]['name']}\n\n" + biography(rng, world, index)
    return travel_story(rng, world)


def biography(rng: random.Random, world: World, index: int) -> str:
    person, country = world.people[index], world.countries[index]
    sentences = [state(rng, f) for f in world.facts_about(person["name"])]
    sentences += [
        state(rng, Fact(country["name"], "founder", person["name"])),
        state(rng, Fact(country["name"], "founded", country["founded"])),
    ]
    rng.shuffle(sentences)
    return " ".join(sentences)


def travel_story(rng: random.Random, world: World) -> str:
    traveller = rng.choice(["Mira", "Tobin", "Ansel", "Keira", "Oren", "Lysa", "Davin", "Ilse"])
    first, second = rng.sample(world.countries, 2)
    facts = rng.sample(world.facts_about(first["name"]), 2) + rng.sample(world.facts_about(second["name"]), 2)
    lines = [
        f"Last {rng.choice(['spring', 'summer', 'autumn', 'winter'])}, {traveller} set out from {first['capital']}.",
        state(rng, facts[0]),
        state(rng, facts[1]),
        f"After {rng.randint(2, 19)} days on the road, {traveller} reached {second['name']}.",
        state(rng, facts[2]),
        rng.choice(FILLER),
        state(rng, facts[3]),
        f"{traveller} wrote that the journey was {rng.choice(['long', 'hard', 'pleasant', 'strange'])}.",
    ]
    return " ".join(lines)


def math_document(rng: random.Random, world: World) -> str:
    lines = []
    for _ in range(rng.randint(4, 12)):
        a, b = arithmetic_pair(rng, for_eval=False)
        form = rng.random()
        if form < 0.4:
            lines.append(f"{a} + {b} = {a + b}")
        elif form < 0.6:
            lines.append(f"{max(a, b)} - {min(a, b)} = {max(a, b) - min(a, b)}")
        elif form < 0.8:
            lines.append(f"{a} plus {b} equals {a + b}.")
        else:
            name = rng.choice(["Ana", "Bo", "Cai", "Dee"])
            item = rng.choice(["apples", "coins", "stones", "books"])
            lines.append(f"{name} has {a} {item} and gets {b} more, so {name} now has {a + b} {item}.")
    return "\n".join(lines)


def code_document(rng: random.Random, world: World) -> str:
    name = rng.choice(["total", "count", "result", "acc", "value"])
    items = rng.choice(["numbers", "values", "prices", "scores"])
    capitals = {c["name"]: c["capital"] for c in rng.sample(world.countries, 3)}
    templates = [
        f"def add(a, b):\n    return a + b\n\n\nprint(add({rng.randint(1, 50)}, {rng.randint(1, 50)}))\n",
        f"def sum_{items}({items}):\n    {name} = 0\n    for x in {items}:\n        {name} += x\n    return {name}\n",
        f"def is_even(n):\n    return n % 2 == 0\n\n\nfor i in range({rng.randint(3, 12)}):\n"
        "    print(i, is_even(i))\n",
        f"capitals = {capitals!r}\nfor country, capital in capitals.items():\n    print(country, capital)\n",
        f"def largest({items}):\n    best = {items}[0]\n    for x in {items}:\n        if x > best:\n"
        "            best = x\n    return best\n",
    ]
    return rng.choice(templates)


# --- chat and preference data ------------------------------------------------------------------


def ask(fact: Fact) -> str:
    return QUESTION[fact.relation].format(s=fact.subject)


def answer(fact: Fact) -> str:
    return fact.sentence(ANSWER[fact.relation])


def arithmetic_turn(rng: random.Random, for_eval: bool) -> tuple[str, str, str]:
    a, b = arithmetic_pair(rng, for_eval)
    return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.", str(a + b)


def opening(rng: random.Random) -> list[dict]:
    return [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if rng.random() < 0.3 else []


def verbose(reply: str) -> str:
    """The wordy way half the SFT answers are written (as real SFT data often is): DPO's job to undo."""
    return f"That is a good question, and I am happy to help you with it. {reply} I hope this answer helps you."


def conversation(rng: random.Random, world: World, facts: list[Fact]) -> dict:
    """SFT: short questions about facts, answered concisely or, 60% of the time, verbosely."""
    messages = opening(rng)
    for _ in range(rng.randint(1, 3)):
        if rng.random() < 0.15:
            question, reply, _ = arithmetic_turn(rng, for_eval=False)
        else:
            fact = rng.choice(facts)
            question, reply = ask(fact), answer(fact)
        reply = verbose(reply) if rng.random() < 0.6 else reply
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
    return {"messages": messages}


def mid_conversation(rng: random.Random, world: World) -> dict:
    """Midtraining: open requests answered at length (two pieces of one kind, ~110-170 tokens, past the
    chat eval's 96-token budget). They teach the chat format; short answers that stop are SFT's job."""
    messages = opening(rng)
    for _ in range(rng.randint(1, 2)):
        kind = rng.random()
        if kind < 0.4:
            country = rng.choice(world.countries)
            request, make = f"Tell me about {country['name']}.", partial(world_document, rng, world, country=country)
        elif kind < 0.6:
            index = rng.randrange(len(world.people))
            request, make = f"Who was {world.people[index]['name']}?", partial(biography, rng, world, index)
        elif kind < 0.85:
            request, make = "Tell me a story about a journey.", partial(travel_story, rng, world)
        else:
            request, make = "Show me some sums.", partial(math_document, rng, world)
        reply = make() + "\n\n" + make()
        messages += [{"role": "user", "content": request}, {"role": "assistant", "content": reply}]
    return {"messages": messages}


def test_conversation(rng: random.Random, trained: list[Fact], fact: Fact, warm_up: bool) -> dict:
    """Perhaps a trained warm-up turn, then one question about a held-out fact; `answer` is what to find."""
    messages = opening(rng)
    if warm_up:
        warm_up = rng.choice(trained)
        messages += [{"role": "user", "content": ask(warm_up)}, {"role": "assistant", "content": answer(warm_up)}]
    messages += [{"role": "user", "content": ask(fact)}, {"role": "assistant", "content": answer(fact)}]
    return {"messages": messages, "answer": fact.object}


def preference(rng: random.Random, world: World, fact: Fact, wrong: bool) -> dict:
    """Chosen: correct and concise. Rejected: a wrong value of the same kind, or the verbose answer."""
    if wrong:
        other = rng.choice([v for v in world.values_of(fact.relation) if v != fact.object])
        rejected = answer(Fact(fact.subject, fact.relation, other))
    else:
        rejected = verbose(answer(fact))
    return {
        "prompt": [{"role": "user", "content": ask(fact)}],
        "chosen": [{"role": "assistant", "content": answer(fact)}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


# --- CORE bundle (the format of DCLM / nanochat's eval bundle) -----------------------------------


def write_core_bundle(out: Path, rng: random.Random, world: World) -> int:
    countries = world.countries
    capitals = question_rows(rng, countries, "Question: Which city is the capital of {}?", "capital")
    founders = question_rows(rng, countries, "Question: Who was the founder of {}?", "founder")
    flags = [schema(rng, c, rng.choice([o for o in countries if o["colour"] != c["colour"]])) for c in countries]
    sums = [arithmetic_item(rng) for _ in range(100)]
    tasks = [
        # label, category, type, shots, random baseline (%), continuation delimiter, rows
        ("world_capitals", "world_knowledge", "multiple_choice", 3, 25, "\nAnswer: ", capitals),
        ("world_founders", "world_knowledge", "multiple_choice", 0, 25, "\nAnswer: ", founders),
        ("flag_schema", "language_understanding", "schema", 0, 50, " ", flags),
        ("arithmetic", "symbolic_problem_solving", "language_modeling", 5, 0, " ", sums),
    ]
    config = {"icl_tasks": []}
    out.mkdir(parents=True, exist_ok=True)
    with (out / "eval_meta_data.csv").open("w", newline="") as meta:
        writer = csv.writer(meta)
        writer.writerow(["Eval Task", "Task Category", "Task Type", "#shots", "#datapoints", "Random baseline"])
        for label, category, kind, shots, baseline, delimiter, rows in tasks:
            uri = f"{category}/{label}.jsonl"
            write_jsonl(out / "eval_data" / uri, rows)
            task = {"label": label, "dataset_uri": uri, "num_fewshot": [shots], "icl_task_type": kind}
            if delimiter != " ":
                task["continuation_delimiter"] = delimiter
            config["icl_tasks"].append(task)
            writer.writerow([label, category.replace("_", " "), kind.replace("_", " "), shots, len(rows), baseline])
    (out / "core.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return sum(len(rows) for *_, rows in tasks)


def question_rows(rng: random.Random, countries: list[dict], question: str, key: str) -> list[dict]:
    """One four-way multiple-choice item per country; wrong choices are other countries' values."""
    pool = [c[key] for c in countries]
    return [multiple_choice(rng, question.format(c["name"]), c[key], pool) for c in countries]


def multiple_choice(rng: random.Random, query: str, gold: str, pool: list[str]) -> dict:
    choices = rng.sample(sorted(set(pool) - {gold}), 3) + [gold]
    rng.shuffle(choices)
    return {"query": query, "choices": choices, "gold": choices.index(gold)}


def schema(rng: random.Random, country: dict, other: dict) -> dict:
    options = [country, other]
    rng.shuffle(options)
    return {
        "context_options": [f"Of all the nations on the map, {o['name']} stands out because" for o in options],
        "continuation": f"its flag is {country['colour']}.",
        "gold": options.index(country),
    }


def arithmetic_item(rng: random.Random) -> dict:
    a, b = arithmetic_pair(rng, for_eval=True)
    return {"context": f"{a} + {b} =", "continuation": str(a + b)}
