"""Small, schema-exact copies of the recipes' Hub datasets, laid out as `hf download <repo> --repo-type
dataset --local-dir DIR` leaves them, for tests that must behave as a user's downloaded snapshot would.

Each writer fills one directory with what the download holds: the dataset card README.md (YAML front
matter with `configs:` and, where the real card has it, `dataset_info`), `.gitattributes`, the parquet
files at the repository's relative paths with its column names and types, and the `.cache/huggingface/`
bookkeeping the download writes next to them (hidden; never data). Text is English written for these
fixtures, a few dozen rows per split; every run writes the same bytes (no clock, no randomness).

What each mirrors, and where the layout was read (the Hub cards and file listings, as of 2025):
- HuggingFaceFW/fineweb-edu: card `configs:` default (data/*/*), sample-10BT/100BT/350BT (sample/<N>BT/*) and
  per-dump CC-MAIN-* (data/<dump>/*), no dataset_info (card at revision 20b2c9f); datatrove's file names
  (sample/10BT/000_00000.parquet, data/CC-MAIN-2024-10/000_00000.parquet) and the older dumps'
  train-00000-of-000NN.parquet; columns text, id, dump, url, file_path, language, language_score, token_count,
  score, int_score. As on the Hub the configs overlap: 10BT is inside 100BT, 100BT inside 350BT, and every
  sampled document also sits in its dump's folder.
- HuggingFaceTB/finemath: configs finemath-3plus, finemath-4plus (each <config>/train-*), dataset_info per
  config with the 16 columns of the card (url, fetch_time, ..., language_score; int32 counts). 4plus is the
  subset of 3plus with int_score >= 4, so the two overlap.
- HuggingFaceTB/smoltalk: data/<subset>/{train,test}-*-of-*.parquet with a .gitattributes in each subset folder;
  config `all` (messages + source) holds every subset's rows again, smol-magpie-ultra carries extra columns
  (category, difficulty, quality, reward_model_score, conversation_tokens), everyday-conversations only
  messages. Two of the real subsets; the per-subset extra columns are as we read them on the Hub viewer.
- HuggingFaceH4/no_robots: data/{train,test}-00000-of-00001.parquet; prompt (string), prompt_id, messages, category.
- HuggingFaceH4/ultrafeedback_binarized: splits train_prefs/train_sft/test_prefs/test_sft/train_gen/test_gen
  (data/<split>-00000-of-00001.parquet); prompt (string), prompt_id, chosen, rejected, messages (message lists),
  score_chosen, score_rejected. train_sft holds the same rows as train_prefs (as the card's sizes say).
- trl-lib/ultrafeedback_binarized: data/{train,test}-00000-of-00001.parquet; chosen, rejected (message lists that
  begin with the user turn: an implicit prompt, no prompt column), score_chosen, score_rejected.

Files written by `datasets` (push_to_hub) carry its features in the parquet schema metadata; FineWeb-Edu's
(datatrove) do not. Both are reproduced.
"""

import hashlib
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

COMMIT = "0123456789abcdef0123456789abcdef01234567"  # the revision the .cache bookkeeping names
TIMESTAMP = "1735689600.0"
MESSAGES = datasets.List({"content": datasets.Value("string"), "role": datasets.Value("string")})
GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in ("*.7z", "*.arrow", "*.bin", "*.gz", "*.json.gz", "*.parquet", "*.safetensors", "*.zst")
)

# Rows per config and split, as the tests expect them.
FINEWEB_EDU_ROWS = {
    "default": 48,
    "sample-10BT": 12,
    "sample-100BT": 30,
    "sample-350BT": 48,
    "CC-MAIN-2024-10": 24,
    "CC-MAIN-2013-20": 24,
}
FINEMATH_ROWS = {"finemath-3plus": 24, "finemath-4plus": 12}
SMOLTALK_ROWS = {
    "all": {"train": 28, "test": 7},
    "smol-magpie-ultra": {"train": 16, "test": 4},
    "everyday-conversations": {"train": 12, "test": 3},
}
NO_ROBOTS_ROWS = {"train": 24, "test": 6}
H4_ULTRAFEEDBACK_ROWS = {
    "train_prefs": 24,
    "train_sft": 24,
    "test_prefs": 6,
    "test_sft": 6,
    "train_gen": 24,
    "test_gen": 6,
}
TRL_ULTRAFEEDBACK_ROWS = {"train": 24, "test": 6}


def write_all(root: str | Path) -> dict[str, Path]:
    """Every snapshot under ROOT/<repository name>; returns {name: directory}."""
    root = Path(root)
    writers = {
        "fineweb-edu": write_fineweb_edu,
        "finemath": write_finemath,
        "smoltalk": write_smoltalk,
        "no_robots": write_no_robots,
        "ultrafeedback_binarized-h4": write_h4_ultrafeedback,
        "ultrafeedback_binarized-trl": write_trl_ultrafeedback,
    }
    return {name: write(root / name) for name, write in writers.items()}


# --- the snapshots ------------------------------------------------------------------------------


def write_fineweb_edu(out: str | Path) -> Path:
    out = Path(out)
    docs = [_web_document(i) for i in range(48)]
    dumps = {"CC-MAIN-2024-10": docs[:24], "CC-MAIN-2013-20": docs[24:]}
    for index, doc in enumerate(docs):
        doc["dump"] = "CC-MAIN-2024-10" if index < 24 else "CC-MAIN-2013-20"
        doc["file_path"] = f"s3://commoncrawl/crawl-data/{doc['dump']}/segments/{doc['id'][-12:]}.warc.gz"
    sample_100 = docs[0:15] + docs[24:39]  # sampled from both dumps, as the Hub's samples are
    files = {
        "data/CC-MAIN-2024-10/000_00000.parquet": dumps["CC-MAIN-2024-10"],  # datatrove's naming
        "data/CC-MAIN-2013-20/train-00000-of-00002.parquet": dumps["CC-MAIN-2013-20"][:12],  # the older dumps'
        "data/CC-MAIN-2013-20/train-00001-of-00002.parquet": dumps["CC-MAIN-2013-20"][12:],
        "sample/10BT/000_00000.parquet": sample_100[0:6] + sample_100[15:21],
        "sample/100BT/000_00000.parquet": sample_100[:15],
        "sample/100BT/001_00000.parquet": sample_100[15:],
        "sample/350BT/000_00000.parquet": docs[:24],
        "sample/350BT/001_00000.parquet": docs[24:],
    }
    schema = pa.schema(
        [
            ("text", pa.string()),
            ("id", pa.string()),
            ("dump", pa.string()),
            ("url", pa.string()),
            ("file_path", pa.string()),
            ("language", pa.string()),
            ("language_score", pa.float64()),
            ("token_count", pa.int64()),
            ("score", pa.float64()),
            ("int_score", pa.int64()),
        ]
    )
    for path, rows in files.items():
        _write_parquet(out / path, pa.Table.from_pylist(rows, schema=schema))
    configs = [_config("default", {"train": "data/*/*"})]
    configs += [_config(f"sample-{n}", {"train": f"sample/{n}/*"}) for n in ("10BT", "100BT", "350BT")]
    configs += [_config(dump, {"train": f"data/{dump}/*"}) for dump in dumps]
    card = {
        "license": "odc-by",
        "task_categories": ["text-generation"],
        "language": ["en"],
        "pretty_name": "FineWeb-Edu",
        "size_categories": ["n>1T"],
        "configs": configs,
    }
    return _finish(out, card, "FineWeb-Edu: educational web pages filtered from FineWeb (test copy).")


def write_finemath(out: str | Path) -> Path:
    out = Path(out)
    docs = [_math_document(i) for i in range(24)]
    subsets = {"finemath-3plus": docs, "finemath-4plus": [d for d in docs if d["int_score"] >= 4]}
    features = datasets.Features(
        {
            "url": datasets.Value("string"),
            "fetch_time": datasets.Value("int64"),
            "content_mime_type": datasets.Value("string"),
            "warc_filename": datasets.Value("string"),
            "warc_record_offset": datasets.Value("int32"),
            "warc_record_length": datasets.Value("int32"),
            "text": datasets.Value("string"),
            "token_count": datasets.Value("int32"),
            "char_count": datasets.Value("int32"),
            "metadata": datasets.Value("string"),
            "score": datasets.Value("float64"),
            "int_score": datasets.Value("int64"),
            "crawl": datasets.Value("string"),
            "snapshot_type": datasets.Value("string"),
            "language": datasets.Value("string"),
            "language_score": datasets.Value("float64"),
        }
    )
    for name, rows in subsets.items():
        half = len(rows) // 2
        for shard, part in enumerate((rows[:half], rows[half:])):
            _write_rows(out / name / f"train-{shard:05d}-of-00002.parquet", part, features)
    card = {
        "license": "odc-by",
        "dataset_info": [_info(features, {"train": rows}, name) for name, rows in subsets.items()],
        "configs": [_config(name, {"train": f"{name}/train-*"}) for name in subsets],
    }
    return _finish(out, card, "FineMath: mathematical educational pages from Common Crawl (test copy).")


def write_smoltalk(out: str | Path) -> Path:
    out = Path(out)
    magpie = {
        "train": [_conversation(i, turns=1 + i % 2) for i in range(16)],
        "test": [_conversation(i, turns=1) for i in range(16, 20)],
    }
    for rows in magpie.values():
        for row in rows:
            row.update(
                category=CATEGORIES[len(row["messages"]) % len(CATEGORIES)].lower().replace(" ", "-"),
                difficulty="easy" if len(row["messages"]) < 4 else "medium",
                quality="good",
                reward_model_score=round(0.5 + 0.03 * len(row["messages"][-1]["content"]) % 1, 4),
                conversation_tokens=sum(len(m["content"].split()) for m in row["messages"]),
            )
    everyday = {"train": [_everyday(i) for i in range(12)], "test": [_everyday(i) for i in range(12, 15)]}
    magpie_features = datasets.Features(
        {
            "messages": MESSAGES,
            "category": datasets.Value("string"),
            "difficulty": datasets.Value("string"),
            "quality": datasets.Value("string"),
            "reward_model_score": datasets.Value("float64"),
            "conversation_tokens": datasets.Value("int64"),
        }
    )
    everyday_features = datasets.Features({"messages": MESSAGES})
    all_features = datasets.Features({"messages": MESSAGES, "source": datasets.Value("string")})
    every = {
        split: [
            {"messages": r["messages"], "source": name}
            for name, rows in (("smol-magpie-ultra", magpie), ("everyday-conversations", everyday))
            for r in rows[split]
        ]
        for split in ("train", "test")
    }
    subsets = {
        "all": (every, all_features, 2),
        "smol-magpie-ultra": (magpie, magpie_features, 1),
        "everyday-conversations": (everyday, everyday_features, 1),
    }
    for name, (splits, features, train_shards) in subsets.items():
        (out / "data" / name).mkdir(parents=True, exist_ok=True)
        (out / "data" / name / ".gitattributes").write_text(GITATTRIBUTES)
        for split, rows in splits.items():
            shards = train_shards if split == "train" else 1
            size = -(-len(rows) // shards)
            for shard in range(shards):
                path = out / "data" / name / f"{split}-{shard:05d}-of-{shards:05d}.parquet"
                _write_rows(path, rows[shard * size : (shard + 1) * size], features)
    card = {
        "language": ["en"],
        "tags": ["synthetic"],
        "pretty_name": "SmolTalk",
        "size_categories": ["1M<n<10M"],
        "configs": [
            _config(name, {"train": f"data/{name}/train-*", "test": f"data/{name}/test-*"}) for name in subsets
        ],
        "dataset_info": [_info(features, splits, name) for name, (splits, features, _) in subsets.items()],
    }
    return _finish(out, card, "SmolTalk: synthetic conversations for supervised fine-tuning (test copy).")


def write_no_robots(out: str | Path) -> Path:
    out = Path(out)
    splits = {"train": [_instruction(i) for i in range(24)], "test": [_instruction(i) for i in range(24, 30)]}
    features = datasets.Features(
        {
            "prompt": datasets.Value("string"),
            "prompt_id": datasets.Value("string"),
            "messages": MESSAGES,
            "category": datasets.Value("string"),
        }
    )
    return _write_single_config(
        out,
        splits,
        features,
        {"license": "cc-by-nc-4.0", "task_categories": ["text-generation"], "pretty_name": "No Robots"},
        "No Robots: instructions and demonstrations written by people (test copy).",
    )


def write_h4_ultrafeedback(out: str | Path) -> Path:
    out = Path(out)
    prefs = {
        "train": [_preference(i, explicit=True) for i in range(24)],
        "test": [_preference(i, explicit=True) for i in range(24, 30)],
    }
    gen = {s: [{**r, "messages": r["messages"][:1]} for r in rows] for s, rows in prefs.items()}  # the prompt turn
    splits = {
        "train_prefs": prefs["train"],
        "train_sft": prefs["train"],
        "test_prefs": prefs["test"],
        "test_sft": prefs["test"],
        "train_gen": gen["train"],
        "test_gen": gen["test"],
    }
    features = datasets.Features(
        {
            "prompt": datasets.Value("string"),
            "prompt_id": datasets.Value("string"),
            "chosen": MESSAGES,
            "rejected": MESSAGES,
            "messages": MESSAGES,
            "score_chosen": datasets.Value("float64"),
            "score_rejected": datasets.Value("float64"),
        }
    )
    return _write_single_config(
        out,
        splits,
        features,
        {
            "language": ["en"],
            "license": "mit",
            "task_categories": ["text-generation"],
            "pretty_name": "UltraFeedback Binarized",
        },
        "UltraFeedback Binarized: preference pairs scored by GPT-4 (test copy).",
    )


def write_trl_ultrafeedback(out: str | Path) -> Path:
    out = Path(out)
    splits = {
        "train": [_preference(i, explicit=False) for i in range(24)],
        "test": [_preference(i, explicit=False) for i in range(24, 30)],
    }
    features = datasets.Features(
        {
            "chosen": MESSAGES,
            "rejected": MESSAGES,
            "score_chosen": datasets.Value("float64"),
            "score_rejected": datasets.Value("float64"),
        }
    )
    return _write_single_config(out, splits, features, {}, "")


# --- files: parquet, card, .gitattributes, .cache bookkeeping -----------------------------------


def _write_single_config(out: Path, splits: dict, features, card: dict, description: str) -> Path:
    for split, rows in splits.items():
        _write_rows(out / "data" / f"{split}-00000-of-00001.parquet", rows, features)
    card = {
        **card,
        "configs": [_config("default", {split: f"data/{split}-*" for split in splits})],
        "dataset_info": _info(features, splits),
    }
    return _finish(out, card, description)


def _write_rows(path: Path, rows: list[dict], features: datasets.Features) -> None:
    """As `datasets` writes them: its features ride along in the schema metadata."""
    _write_parquet(path, pa.Table.from_pylist(rows, schema=features.arrow_schema))


def _write_parquet(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _config(name: str, splits: dict[str, str]) -> dict:
    return {"config_name": name, "data_files": [{"split": s, "path": p} for s, p in splits.items()]}


def _info(features: datasets.Features, splits: dict[str, list[dict]], config: str | None = None) -> dict:
    """The card's dataset_info, as push_to_hub writes it (features in the library's own YAML form)."""
    sizes = [
        {"name": split, "num_bytes": pa.Table.from_pylist(rows, schema=features.arrow_schema).nbytes,
         "num_examples": len(rows)}
        for split, rows in splits.items()
    ]  # fmt: skip
    info = {"features": features._to_yaml_list(), "splits": sizes}
    return {"config_name": config, **info} if config else info


def _finish(out: Path, card: dict, description: str) -> Path:
    """The card, .gitattributes, and what `hf download --local-dir` keeps in .cache/huggingface/."""
    front = yaml.safe_dump(card, sort_keys=False) if card else ""
    (out / "README.md").write_text(f"---\n{front}---\n" + (f"\n# {description}\n" if description else ""))
    (out / ".gitattributes").write_text(GITATTRIBUTES)
    bookkeeping = out / ".cache" / "huggingface"
    bookkeeping.mkdir(parents=True, exist_ok=True)
    (bookkeeping / ".gitignore").write_text("*")
    (bookkeeping / "CACHEDIR.TAG").write_text("Signature: 8a477f597d28d172789f06886806bc55\n")
    for path in sorted(p for p in out.rglob("*") if p.is_file() and ".cache" not in p.relative_to(out).parts):
        relative = path.relative_to(out).as_posix()
        etag = hashlib.sha256(path.read_bytes()).hexdigest()
        metadata = bookkeeping / "download" / f"{relative}.metadata"
        metadata.parent.mkdir(parents=True, exist_ok=True)
        metadata.write_text(f"{COMMIT}\n{etag}\n{TIMESTAMP}\n")
    return out


# --- rows ---------------------------------------------------------------------------------------


def _uuid(kind: str, index: int) -> str:
    digest = hashlib.sha256(f"{kind}-{index}".encode()).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


def _web_document(index: int) -> dict:
    """A page of one topic, or (past the topics) two related topics on one page."""
    count = len(WEB_PAGES)
    if index < count:
        title, body = WEB_PAGES[index]
    else:
        (title_a, body_a), (title_b, body_b) = WEB_PAGES[index - count], WEB_PAGES[(index - count + 7) % count]
        title, body = f"{title_a} and {title_b}", f"{body_a}\n\n{body_b}"
    text = f"{title}\n\n{body}"
    score = 2.6 + (index * 37 % 23) / 10
    slug = title.lower().replace(" ", "-").replace(",", "")
    return {
        "text": text,
        "id": f"<urn:uuid:{_uuid('web', index)}>",
        "dump": "",
        "file_path": "",
        "url": f"https://www.example-school-{index % 9}.org/lessons/{slug}",
        "language": "en",
        "language_score": round(0.90 + (index % 9) / 100, 4),
        "token_count": len(text.split()) * 4 // 3,
        "score": round(score, 4),
        "int_score": int(score + 0.5),
    }


def _math_document(index: int) -> dict:
    template, values = MATH_PAGES[index % len(MATH_PAGES)], MATH_VALUES[index // len(MATH_PAGES)]
    text = template(*values)
    int_score = 3 + index % 2  # every other page is a 4plus page
    score = int_score - 0.3 + (index % 5) / 10
    return {
        "url": f"https://math.example.net/worked-examples/{index}",
        "fetch_time": 1700000000 + 3600 * index,
        "content_mime_type": "text/html",
        "warc_filename": f"crawl-data/CC-MAIN-2024-10/{index:05d}.warc.gz",
        "warc_record_offset": 1000 * index,
        "warc_record_length": 800 + 10 * index,
        "text": text,
        "token_count": len(text.split()) * 4 // 3,
        "char_count": len(text),
        "metadata": "{}",
        "score": round(score, 4),
        "int_score": int_score,
        "crawl": "CC-MAIN-2024-10",
        "snapshot_type": "latest",
        "language": "en",
        "language_score": 0.93,
    }


def _conversation(index: int, turns: int) -> dict:
    messages = []
    for turn in range(turns):
        question, answer, _ = EXCHANGES[(index + 11 * turn) % len(EXCHANGES)]
        messages += [{"content": question, "role": "user"}, {"content": answer, "role": "assistant"}]
    return {"messages": messages}


def _everyday(index: int) -> dict:
    greeting, reply = GREETINGS[index % len(GREETINGS)]
    question, answer, _ = EXCHANGES[(3 * index + 5) % len(EXCHANGES)]
    return {
        "messages": [
            {"content": greeting, "role": "user"},
            {"content": reply, "role": "assistant"},
            {"content": question, "role": "user"},
            {"content": answer, "role": "assistant"},
        ]
    }


def _instruction(index: int) -> dict:
    question, answer, _ = EXCHANGES[index % len(EXCHANGES)]
    category = CATEGORIES[index % len(CATEGORIES)]
    messages = [{"content": question, "role": "user"}, {"content": answer, "role": "assistant"}]
    if category == "Chat":  # No Robots' chat rows open with the persona the user asked for
        messages.insert(0, {"content": "You are Sol, a patient tutor who explains things simply.", "role": "system"})
    return {
        "prompt": question,
        "prompt_id": hashlib.sha256(question.encode()).hexdigest(),
        "messages": messages,
        "category": category,
    }


def _preference(index: int, explicit: bool) -> dict:
    question, good, poor = EXCHANGES[index % len(EXCHANGES)]
    user = {"content": question, "role": "user"}
    chosen = [user, {"content": good, "role": "assistant"}]
    rejected = [user, {"content": poor, "role": "assistant"}]
    scores = {"score_chosen": 8.0 + index % 3 / 2, "score_rejected": 4.0 + index % 4 / 2}
    row = {"chosen": chosen, "rejected": rejected, **scores}
    if explicit:  # H4's copy: the prompt as a string too, and the chosen conversation as `messages`
        row = {
            "prompt": question,
            "prompt_id": hashlib.sha256(question.encode()).hexdigest(),
            **row,
            "messages": chosen,
        }
    return row


# --- English, written for these fixtures --------------------------------------------------------

CATEGORIES = [
    "Generation",
    "Open QA",
    "Brainstorm",
    "Chat",
    "Rewrite",
    "Summarize",
    "Coding",
    "Classify",
    "Closed QA",
    "Extract",
]

WEB_PAGES = [
    (
        "How Plants Make Food",
        "Plants make their own food through photosynthesis. Inside the leaves, chlorophyll "
        "captures energy from sunlight and uses it to turn water and carbon dioxide into sugar. Oxygen is released "
        "as a by-product, which is why forests are sometimes called the lungs of the planet.",
    ),
    (
        "The Water Cycle",
        "Water is always moving between the ground, the oceans and the sky. The sun warms lakes "
        "and seas, and some of the water evaporates into vapour. As the vapour rises it cools and condenses into "
        "clouds, and eventually it falls again as rain or snow.",
    ),
    (
        "Roman Aqueducts",
        "The Romans built aqueducts to carry fresh water into their cities from springs many "
        "miles away. Engineers gave each channel a very gentle slope so that gravity alone kept the water flowing. "
        "Some of these structures are still standing after nearly two thousand years.",
    ),
    (
        "Why Continents Move",
        "The outer shell of the Earth is broken into large plates that float on hotter rock "
        "below. They move only a few centimetres each year, about as fast as fingernails grow. Over millions of "
        "years this slow drift opens oceans, raises mountains and causes earthquakes.",
    ),
    (
        "How Vaccines Work",
        "A vaccine teaches the immune system to recognise a germ without making the person "
        "ill. It contains a harmless piece or weakened form of the germ. If the real germ arrives later, the body "
        "already knows how to fight it and can respond much faster.",
    ),
    (
        "The Printing Press",
        "Before the printing press, books were copied by hand and were rare and expensive. "
        "Around 1450 Johannes Gutenberg combined movable metal type with a screw press. Printed books spread "
        "quickly across Europe and helped ideas travel further than ever before.",
    ),
    (
        "Inside a Volcano",
        "A volcano forms where melted rock, called magma, rises through cracks in the crust. "
        "Gas trapped in the magma builds up pressure, much like the bubbles in a shaken bottle. When the pressure "
        "is released, lava, ash and gas burst out of the vent.",
    ),
    (
        "The Life of a Honeybee",
        "A honeybee colony can contain tens of thousands of workers and a single queen. "
        "Young workers clean the hive and feed the larvae, while older ones fly out to collect nectar and pollen. "
        "Bees tell each other where flowers are by performing a waggle dance.",
    ),
    (
        "Causes of the French Revolution",
        "By the late eighteenth century France was deeply in debt and bread was "
        "expensive. Ordinary people paid heavy taxes while nobles and clergy paid very little. In 1789 anger "
        "boiled over, and the storming of the Bastille became a symbol of the revolution.",
    ),
    (
        "How the Heart Pumps Blood",
        "The heart is a muscle with four chambers that works as two pumps side by "
        "side. The right side sends blood to the lungs to pick up oxygen, and the left side pushes it around the "
        "rest of the body. Valves between the chambers stop the blood from flowing backwards.",
    ),
    (
        "Tides and the Moon",
        "Twice a day the sea rises and falls along most coasts. These tides are caused "
        "mainly by the pull of the moon's gravity on the oceans. When the sun and moon line up, their pulls add "
        "together and produce especially high spring tides.",
    ),
    (
        "Tropical Rainforests",
        "Rainforests cover a small part of the land but hold more than half of the world's "
        "plant and animal species. The tall canopy catches most of the sunlight, so the forest floor is dark and "
        "damp. Many medicines were first discovered in rainforest plants.",
    ),
    (
        "Simple Electric Circuits",
        "An electric circuit is a closed loop that lets current flow from a battery "
        "through wires and back again. If the loop is broken, for example by opening a switch, the current stops. "
        "A bulb in the circuit glows because the current heats its thin filament.",
    ),
    (
        "Trade on the Silk Road",
        "The Silk Road was a network of routes linking China with Central Asia, Persia "
        "and the Mediterranean. Merchants carried silk, spices, paper and glass along it, usually passing goods "
        "from one trader to the next. Religions, languages and inventions travelled the same roads.",
    ),
    (
        "Soil Erosion",
        "Soil erosion happens when wind or water carries away the top layer of earth. This layer "
        "holds most of the nutrients that crops need, and it can take centuries to form again. Planting trees and "
        "ploughing along the contours of a hill help keep the soil in place.",
    ),
    (
        "What Sound Is",
        "Sound is a vibration that travels through air, water or solid objects as a wave. When a "
        "guitar string is plucked, it pushes the air molecules around it back and forth. Our ears detect these "
        "tiny changes in pressure and the brain turns them into the sounds we hear.",
    ),
    (
        "Building the Pyramids",
        "The great pyramids of Egypt were built more than four thousand years ago as "
        "tombs for kings. Workers cut huge limestone blocks and moved them on sledges, probably wetting the sand "
        "to reduce friction. The builders were skilled labourers, not slaves as was once believed.",
    ),
    (
        "What DNA Does",
        "DNA is a long molecule that carries the instructions for building and running a living "
        "thing. It is shaped like a twisted ladder, and the order of its rungs spells out genes. Cells copy their "
        "DNA before they divide so that each new cell receives a full set.",
    ),
    (
        "How Glaciers Shape Land",
        "A glacier is a slow river of ice that forms where more snow falls than melts. "
        "As it creeps downhill, it scrapes the rock beneath it and carries stones along. When glaciers retreat "
        "they leave behind U-shaped valleys, lakes and piles of rubble called moraines.",
    ),
    (
        "Why Recycling Matters",
        "Recycling turns used materials such as paper, glass and aluminium into new "
        "products. Making a can from recycled aluminium uses far less energy than making one from raw ore. "
        "Sorting rubbish carefully at home makes the whole process cheaper and cleaner.",
    ),
    (
        "Bird Migration",
        "Every autumn many birds fly thousands of kilometres to warmer places where food is "
        "easier to find. They navigate using the sun, the stars and even the Earth's magnetic field. Some small "
        "songbirds cross entire deserts and seas without stopping to rest.",
    ),
    (
        "The Industrial Revolution",
        "The Industrial Revolution began in Britain in the eighteenth century when "
        "machines started to replace hand tools. Steam engines powered factories, mines and later railways. Towns "
        "grew rapidly as people moved from farms to work in the new mills.",
    ),
    (
        "Coral Reefs",
        "Coral reefs are built by tiny animals called polyps that produce hard skeletons of "
        "limestone. Colourful algae live inside the polyps and provide them with food from sunlight. When the "
        "water becomes too warm, the corals expel the algae and turn white, a process called bleaching.",
    ),
    (
        "Helping Children Read",
        "Children learn to read more easily when adults read aloud to them every day. "
        "Pointing at words while reading shows that print runs from left to right. Asking simple questions about "
        "the story helps young readers think about what the words mean.",
    ),
    (
        "How Telescopes Work",
        "A telescope gathers more light than the human eye can on its own. Refracting "
        "telescopes use lenses to bend the light, while reflecting telescopes use curved mirrors. The larger the "
        "main lens or mirror, the fainter the objects the telescope can reveal.",
    ),
    (
        "Sleep and Memory",
        "Sleep is not just rest; it is when the brain sorts and stores what it learned during "
        "the day. Studies show that students who sleep well after studying remember more the next morning. "
        "Teenagers need around eight to ten hours of sleep each night.",
    ),
    (
        "Why Bridges Stand",
        "Every bridge must carry its own weight as well as the traffic that crosses it. Arch "
        "bridges push the load outwards into strong supports at each end. Suspension bridges hang the road from "
        "steel cables that are anchored firmly into the ground.",
    ),
    (
        "The First Writing",
        "The earliest known writing was developed in Mesopotamia over five thousand years ago. "
        "Scribes pressed wedge-shaped marks into wet clay tablets to record harvests and trades. Over time these "
        "marks, called cuneiform, came to record laws, letters and stories.",
    ),
    (
        "How Clouds Form",
        "Clouds form when moist air rises and cools until its water vapour condenses on tiny "
        "specks of dust. Each cloud droplet is far smaller than a raindrop. Only when many droplets merge do they "
        "become heavy enough to fall as rain.",
    ),
    (
        "Mapping the World",
        "Early maps were drawn from travellers' descriptions and were often full of errors. "
        "Later, surveyors measured angles and distances carefully to draw accurate coastlines. Today satellites "
        "photograph the whole planet, and maps can be updated within days.",
    ),
]

MATH_PAGES = [
    lambda a, b, c, d: (
        f"## Adding fractions\n\nTo add $\\frac{{{a}}}{{{b}}} + \\frac{{{c}}}{{{d}}}$ we first find a "
        f"common denominator. Multiplying the denominators gives {b * d}, so the sum is "
        f"$\\frac{{{a * d} + {c * b}}}{{{b * d}}} = \\frac{{{a * d + c * b}}}{{{b * d}}}$. Always check "
        "whether the answer can be simplified."
    ),
    lambda a, b, c, d: (
        f"**Solving a linear equation.** Solve ${a}x + {b} = {a * c + b}$. Subtract {b} from both "
        f"sides to get ${a}x = {a * c}$, then divide both sides by {a}. The solution is $x = {c}$, "
        f"and substituting it back gives ${a} \\cdot {c} + {b} = {a * c + b}$, as required."
    ),
    lambda a, b, c, d: (
        f"The area of a rectangle is its length times its width. A garden that is {a + 2} metres "
        f"long and {b + 1} metres wide has an area of ${a + 2} \\times {b + 1} = {(a + 2) * (b + 1)}$ "
        f"square metres. Its perimeter is $2({a + 2} + {b + 1}) = {2 * (a + b + 3)}$ metres."
    ),
    lambda a, b, c, d: (
        f"### Percentages\n\nTo find {5 * a}% of {20 * d}, write the percentage as a fraction: "
        f"$\\frac{{{5 * a}}}{{100}} \\times {20 * d} = {a * d}$. A quick check: 10% of {20 * d} is "
        f"{2 * d}, and {5 * a}% is {a / 2:g} times that."
    ),
    lambda a, b, c, d: (
        f"By the Pythagorean theorem, a right triangle with legs {3 * a} and {4 * a} has a "
        f"hypotenuse of $\\sqrt{{{9 * a * a} + {16 * a * a}}} = \\sqrt{{{25 * a * a}}} = {5 * a}$. "
        "The theorem only holds when one angle is exactly ninety degrees."
    ),
    lambda a, b, c, d: (
        f"The mean of a list is its sum divided by how many numbers it holds. For {a}, {b}, {c} "
        f"and {d} the sum is {a + b + c + d}, so the mean is $\\frac{{{a + b + c + d}}}{{4}} = "
        f"{(a + b + c + d) / 4:g}$. The mean can be a value that is not in the list."
    ),
    lambda a, b, c, d: (
        f"Simple interest is principal times rate times time. Saving {100 * d} dollars at {a}% a "
        f"year for {b} years earns ${100 * d} \\times 0.0{a} \\times {b} = {d * a * b}$ dollars "
        f"of interest, for a total of {100 * d + d * a * b} dollars."
    ),
    lambda a, b, c, d: (
        f"Converting units means multiplying by a fraction equal to one. Since 1 km = 1000 m, "
        f"{a + b} km is ${a + b} \\times 1000 = {1000 * (a + b)}$ m, and {c * 60} minutes is "
        f"$\\frac{{{c * 60}}}{{60}} = {c}$ hours. Writing the units at every step avoids mistakes."
    ),
]
MATH_VALUES = [(1, 3, 1, 4), (2, 5, 3, 7), (3, 4, 5, 6)]

GREETINGS = [
    ("Hi there!", "Hello! How can I help you today?"),
    ("Good morning.", "Good morning! What would you like to talk about?"),
    ("Hey, are you free to chat?", "Of course. What is on your mind?"),
    ("Hello, I have a quick question.", "Sure, ask away and I will do my best."),
    ("Hi! Hope you're well.", "I am doing well, thank you for asking. What can I do for you?"),
]

EXCHANGES = [  # (question, a good answer, a worse one)
    (
        "What is the capital of Australia?",
        "The capital of Australia is Canberra.",
        "The capital of Australia is Sydney, its largest city.",
    ),
    ("How many legs does a spider have?", "A spider has eight legs.", "Spiders have six legs, like other insects."),
    (
        "Give me a tip for falling asleep faster.",
        "Keep a regular bedtime and put screens away for half an hour before you sleep.",
        "Drink a strong coffee before bed so you feel relaxed.",
    ),
    (
        "Why is the sky blue?",
        "Air scatters blue sunlight more than red light, so blue reaches our eyes from every direction.",
        "The sky is blue because it reflects the colour of the oceans.",
    ),
    (
        "Write a haiku about autumn.",
        "Red leaves drift and fall\ncool wind hums through empty trees\nthe year breathes out slow",
        "Autumn is a season. It comes after summer. Leaves fall.",
    ),
    (
        "What does a thermometer measure?",
        "A thermometer measures temperature.",
        "A thermometer measures how heavy something is.",
    ),
    (
        "How do I boil an egg?",
        "Place the egg in boiling water for about nine minutes, then cool it in cold water before peeling.",
        "Put the egg in the microwave for ten minutes without water.",
    ),
    ("Translate 'thank you' into Spanish.", "'Thank you' in Spanish is 'gracias'.", "It is 'merci'."),
    (
        "Summarize the story of Cinderella in one sentence.",
        "A kind young woman mistreated by her stepfamily attends a royal ball with a fairy godmother's help and "
        "marries the prince who finds her by her lost glass slipper.",
        "Cinderella is a story about a girl.",
    ),
    (
        "Write a Python function that returns the square of a number.",
        "def square(x):\n    return x * x",
        "def square(x):\n    return x + x",
    ),
    (
        "Is a tomato a fruit or a vegetable?",
        "Botanically a tomato is a fruit, because it grows from the flower and holds seeds, though cooks treat it "
        "as a vegetable.",
        "A tomato is a root vegetable.",
    ),
    (
        "Suggest a name for a friendly robot.",
        "How about Pip? It is short, cheerful and easy to remember.",
        "Robot Number Seven Thousand Four Hundred.",
    ),
    ("What is 15 multiplied by 4?", "15 multiplied by 4 is 60.", "15 multiplied by 4 is 45."),
    (
        "Rewrite this sentence more politely: 'Give me the report now.'",
        "Could you please send me the report when you have a moment?",
        "Report. Now. Please.",
    ),
    (
        "Classify the animal: a dolphin.",
        "A dolphin is a mammal; it breathes air and feeds its young with milk.",
        "A dolphin is a fish.",
    ),
    (
        "Name three primary colours.",
        "Red, blue and yellow are the traditional primary colours.",
        "Green, purple and orange.",
    ),
    (
        "How can I make my houseplants healthier?",
        "Give them bright indirect light, water only when the top of the soil is dry, and feed them in spring.",
        "Water them every hour and keep them in a dark cupboard.",
    ),
    ("Extract the date from: 'The meeting moved to 4 March 2024.'", "The date is 4 March 2024.", "The meeting moved."),
    (
        "Explain what a noun is to a child.",
        "A noun is a word for a person, a place or a thing, like 'teacher', 'park' or 'ball'.",
        "A noun is a kind of verb.",
    ),
    (
        "What should I pack for a day hike?",
        "Bring water, snacks, a map, sun cream, a light jacket and a charged phone.",
        "Just bring a large umbrella.",
    ),
    (
        "Brainstorm three themes for a birthday party.",
        "A space adventure, a jungle safari, or a pirate treasure hunt.",
        "A party.",
    ),
    (
        "Why do we have seasons?",
        "The Earth's axis is tilted, so each hemisphere leans towards the sun for part of the year and away from it "
        "for the rest.",
        "We have seasons because the Earth gets closer to the sun in summer.",
    ),
    (
        "Write a short thank-you note to a neighbour who watered my plants.",
        "Dear Sam, thank you so much for watering my plants while I was away. They look wonderful, and I owe you "
        "a coffee!",
        "Thanks.",
    ),
    (
        "What is the boiling point of water at sea level?",
        "Water boils at 100 degrees Celsius, or 212 degrees Fahrenheit, at sea level.",
        "Water boils at 50 degrees Celsius.",
    ),
    (
        "How do I reverse a list in Python?",
        "Use my_list.reverse() to reverse it in place, or my_list[::-1] for a reversed copy.",
        "Python lists cannot be reversed.",
    ),
    (
        "Recommend a book for someone who likes mysteries.",
        "Try 'The Hound of the Baskervilles' by Arthur Conan Doyle, a classic Sherlock Holmes case.",
        "Read a dictionary.",
    ),
    (
        "What is the largest planet in the solar system?",
        "Jupiter is the largest planet in the solar system.",
        "Mars is the largest planet.",
    ),
    ("Give me a synonym for 'happy'.", "'Joyful' is a good synonym for 'happy'.", "'Sad'."),
    (
        "How long should I rest between sets at the gym?",
        "For general strength, resting about one to two minutes between sets works well for most people.",
        "Never rest; rest makes muscles weaker.",
    ),
    (
        "Describe the smell of rain in one sentence.",
        "Rain smells fresh and earthy, like wet stone and green leaves after a long dry spell.",
        "It smells wet.",
    ),
    ("Who wrote 'Romeo and Juliet'?", "William Shakespeare wrote 'Romeo and Juliet'.", "Charles Dickens wrote it."),
    ("Convert 3 kilometres to metres.", "3 kilometres is 3,000 metres.", "3 kilometres is 300 metres."),
    (
        "What is a good way to start learning to draw?",
        "Start with simple shapes, draw a little every day, and copy objects you can see in front of you.",
        "Buy the most expensive pencils first.",
    ),
    (
        "Why do cats purr?",
        "Cats purr when they are content, but also to soothe themselves when they are stressed or hurt.",
        "Cats purr because they are about to bark.",
    ),
    ("Fix the grammar: 'She don't like apples.'", "She doesn't like apples.", "She not like apples."),
    (
        "What causes thunder?",
        "Lightning heats the air so quickly that it expands with a bang, and that sound is thunder.",
        "Thunder is the sound of clouds bumping into each other.",
    ),
]
