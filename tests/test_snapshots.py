"""The snapshot fixtures read, through `datasets` itself, as their Hub datasets do: configs and splits as
the cards define them, the real column names and types, and the overlaps the Hub's configs have."""

import datasets
import pytest

import snapshots

EXPECTED = {
    "fineweb-edu": {config: {"train": rows} for config, rows in snapshots.FINEWEB_EDU_ROWS.items()},
    "finemath": {config: {"train": rows} for config, rows in snapshots.FINEMATH_ROWS.items()},
    "smoltalk": snapshots.SMOLTALK_ROWS,
    "no_robots": {"default": snapshots.NO_ROBOTS_ROWS},
    "ultrafeedback_binarized-h4": {"default": snapshots.H4_ULTRAFEEDBACK_ROWS},
    "ultrafeedback_binarized-trl": {"default": snapshots.TRL_ULTRAFEEDBACK_ROWS},
}
MESSAGES = datasets.List({"content": datasets.Value("string"), "role": datasets.Value("string")})
COLUMNS = {
    ("fineweb-edu", "sample-10BT"): {
        "text": datasets.Value("string"), "id": datasets.Value("string"), "dump": datasets.Value("string"),
        "url": datasets.Value("string"), "file_path": datasets.Value("string"), "language": datasets.Value("string"),
        "language_score": datasets.Value("float64"), "token_count": datasets.Value("int64"),
        "score": datasets.Value("float64"), "int_score": datasets.Value("int64"),
    },
    ("smoltalk", "all"): {"messages": MESSAGES, "source": datasets.Value("string")},
    ("smoltalk", "everyday-conversations"): {"messages": MESSAGES},
    ("no_robots", "default"): {
        "prompt": datasets.Value("string"), "prompt_id": datasets.Value("string"), "messages": MESSAGES,
        "category": datasets.Value("string"),
    },
    ("ultrafeedback_binarized-h4", "default"): {
        "prompt": datasets.Value("string"), "prompt_id": datasets.Value("string"), "chosen": MESSAGES,
        "rejected": MESSAGES, "messages": MESSAGES, "score_chosen": datasets.Value("float64"),
        "score_rejected": datasets.Value("float64"),
    },
    ("ultrafeedback_binarized-trl", "default"): {
        "chosen": MESSAGES, "rejected": MESSAGES, "score_chosen": datasets.Value("float64"),
        "score_rejected": datasets.Value("float64"),
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    return snapshots.write_all(tmp_path_factory.mktemp("hub"))


def load(directory, config, split):
    return datasets.load_dataset(str(directory), None if config == "default" else config, split=split)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_config_and_split_loads_with_its_rows_and_columns(hub, name):
    assert set(datasets.get_dataset_config_names(str(hub[name]))) == set(EXPECTED[name])
    for config, splits in EXPECTED[name].items():
        assert set(datasets.get_dataset_split_names(str(hub[name]), None if config == "default" else config)) == set(
            splits
        )
        for split, rows in splits.items():
            dataset = load(hub[name], config, split)
            assert len(dataset) == rows, (name, config, split)
            if (name, config) in COLUMNS:
                assert dataset.features == datasets.Features(COLUMNS[name, config])


def test_configs_overlap_as_on_the_hub(hub):
    ids = {c: set(load(hub["fineweb-edu"], c, "train")["id"]) for c in snapshots.FINEWEB_EDU_ROWS}
    assert ids["sample-10BT"] < ids["sample-100BT"] < ids["sample-350BT"] == ids["default"]
    assert ids["sample-100BT"] & ids["CC-MAIN-2024-10"] and ids["sample-100BT"] & ids["CC-MAIN-2013-20"]
    math = {c: set(load(hub["finemath"], c, "train")["text"]) for c in snapshots.FINEMATH_ROWS}
    assert math["finemath-4plus"] < math["finemath-3plus"]
    every = load(hub["smoltalk"], "all", "train")
    for subset in ("smol-magpie-ultra", "everyday-conversations"):
        rows = load(hub["smoltalk"], subset, "train")["messages"]
        assert rows == [r["messages"] for r in every if r["source"] == subset]


def test_rows_are_english_conversations_and_pages(hub):
    trl = load(hub["ultrafeedback_binarized-trl"], "default", "train")
    assert "prompt" not in trl.column_names  # an implicit prompt: both lists open with the same user turn
    for row in trl:
        assert row["chosen"][0] == row["rejected"][0] and row["chosen"][0]["role"] == "user"
        assert row["chosen"][1]["role"] == "assistant" and row["chosen"][1] != row["rejected"][1]
    robots = load(hub["no_robots"], "default", "train")
    assert any(r["messages"][0]["role"] == "system" for r in robots)  # the Chat category's personas
    assert all(r["prompt"] == next(m for m in r["messages"] if m["role"] == "user")["content"] for r in robots)
    pages = load(hub["fineweb-edu"], "default", "train")["text"]
    assert len(set(pages)) == len(pages) and all(len(p.split()) > 30 for p in pages)


def test_snapshots_hold_what_a_download_leaves_and_are_deterministic(tmp_path, hub):
    for name, directory in hub.items():
        assert (directory / ".gitattributes").is_file() and (directory / "README.md").read_text().startswith("---\n")
        assert (directory / ".cache" / "huggingface" / "download" / "README.md.metadata").is_file(), name
    assert (hub["smoltalk"] / "data" / "all" / ".gitattributes").is_file()
    again = snapshots.write_all(tmp_path)
    for name in hub:
        files = sorted(p.relative_to(hub[name]) for p in hub[name].rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(again[name]) for p in again[name].rglob("*") if p.is_file())
        for path in files:
            assert (hub[name] / path).read_bytes() == (again[name] / path).read_bytes(), path
