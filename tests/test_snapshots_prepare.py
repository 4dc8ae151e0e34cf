"""`scratchlm data prepare` on local copies of the recipes' Hub datasets (tests/snapshots.py), as a user
who ran `hf download --local-dir` would point the recipes at them: a snapshot reads as its Hub id, a
folder reads its own files and only its split, and whatever would train on the wrong data or on the
same data twice is refused before any work, naming what and where."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import datasets
import numpy as np
import pytest
import yaml
from transformers import AutoTokenizer

import snapshots
from scratchlm.cli import main

REPO = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    return snapshots.write_all(tmp_path_factory.mktemp("hub"))


@pytest.fixture(scope="module")
def tokenizer(default_tokenizer):
    return AutoTokenizer.from_pretrained(default_tokenizer)


def run_prepare(tmp_path, tokenizer_dir, sources, **settings):
    """The CLI as a user runs it; returns (exit code, stderr, output directory)."""
    config = tmp_path / "data.yaml"
    spec = {"tokenizer": str(tokenizer_dir), "sources": sources, "num_proc": 1, "val_fraction": 0, **settings}
    config.write_text(yaml.safe_dump(spec))
    out = tmp_path / "shards"
    return main(["data", "prepare", "--config", str(config), "--out", str(out)]), out


def refused(capsys, code, out, *fragments):
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1, errors  # one line, whatever progress bars printed before it
    error = errors[0]
    for fragment in fragments:
        assert fragment in error, (fragment, error)
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()  # nothing left behind


def documents(out, name, tokenizer, split="train"):
    """Every document of a prepared source, decoded (BOS and EOS stripped)."""
    ids = np.fromfile(out / name / f"{split}.bin", dtype=np.uint16).tolist()
    docs, start = [], 0
    for end in (i for i, t in enumerate(ids) if t == tokenizer.eos_token_id):
        assert ids[start] == tokenizer.bos_token_id
        docs.append(tokenizer.decode(ids[start + 1 : end]))
        start = end + 1
    return docs


def rendered(tokenizer, conversations):
    return [tokenizer.apply_chat_template(c, tokenize=False).removeprefix(tokenizer.bos_token) for c in conversations]


# --- a snapshot is its Hub id ----------------------------------------------------------------------


@pytest.mark.parametrize("config", ["sample-10BT", "sample-100BT", "CC-MAIN-2024-10", None])
def test_a_snapshot_reads_exactly_its_config(tmp_path, capsys, hub, default_tokenizer, tokenizer, config):
    code, out = run_prepare(
        tmp_path, default_tokenizer, [{"name": "web", "path": str(hub["fineweb-edu"]), "config": config}]
    )
    assert code == 0, capsys.readouterr().err
    expected = datasets.load_dataset(str(hub["fineweb-edu"]), config, split="train")["text"]  # None: the card's default
    assert len(expected) == snapshots.FINEWEB_EDU_ROWS[config or "default"]
    assert sorted(documents(out, "web", tokenizer)) == sorted(expected)
    assert json.loads((out / "manifest.json").read_text())["sources"][0]["train"]["documents"] == len(expected)


def test_a_snapshot_reads_the_split_its_card_defines(tmp_path, capsys, hub, default_tokenizer, tokenizer):
    source = {
        "path": str(hub["ultrafeedback_binarized-h4"]),
        "split": "test_prefs",
        "format": "chat",
        "column": "chosen",
    }
    code, out = run_prepare(tmp_path, default_tokenizer, [{"name": "prefs", **source}])
    assert code == 0, capsys.readouterr().err
    chosen = datasets.load_dataset(str(hub["ultrafeedback_binarized-h4"]), split="test_prefs")["chosen"]
    assert documents(out, "prefs", tokenizer) == rendered(tokenizer, chosen)


@pytest.mark.parametrize(
    "source, message",
    [
        ({"path": "fineweb-edu", "config": "sample-10T"}, "its dataset card has no config 'sample-10T' (configs: "),
        ({"path": "smoltalk", "format": "chat"}, "its dataset card has several configs; set config to one of"),
        (
            {"path": "smoltalk", "config": "all", "split": "validation"},
            "has no split 'validation' (splits: train, test)",
        ),
        ({"path": "fineweb-edu/sample/10BT/000_00000.parquet", "config": "x"}, "'config' does not apply to a single"),
    ],
)
def test_a_snapshot_refuses_what_its_card_does_not_define(tmp_path, capsys, hub, default_tokenizer, source, message):
    name, _, rest = source["path"].partition("/")
    source = {**source, "path": str(hub[name] / rest) if rest else str(hub[name])}
    code, out = run_prepare(tmp_path, default_tokenizer, [source])
    refused(capsys, code, out, message, f"source '{source['path']}")


def test_tokenizer_training_names_a_snapshot_config_as_it_names_a_hub_one(tmp_path, capsys, hub):
    web, math = f"{hub['fineweb-edu']}:sample-10BT", f"{hub['finemath']}:finemath-4plus"  # DIR[:config][@split]
    out = ["--vocab-size", "300", "--out", str(tmp_path / "tok")]
    assert main(["tokenizer", "train", "--input", web, math, *out]) == 0
    stats = json.loads(capsys.readouterr().out.split(": ", 1)[1])
    assert stats["documents"] == snapshots.FINEWEB_EDU_ROWS["sample-10BT"] + snapshots.FINEMATH_ROWS["finemath-4plus"]
    chat = f"{hub['smoltalk']}:all@test"
    assert main(["tokenizer", "train", "--input", chat, *out]) == 2  # its conversations hold no text column
    assert f"source '{chat}' has no column 'text' (columns: messages, source)" in capsys.readouterr().err


# --- without a card: a folder's own files, its split, a config only as a subfolder -------------------


def test_a_snapshot_without_its_card_refuses_to_guess(tmp_path, capsys, hub, default_tokenizer):
    copy = tmp_path / "fineweb-edu"
    shutil.copytree(hub["fineweb-edu"], copy)
    (copy / "README.md").unlink()
    code, out = run_prepare(tmp_path, default_tokenizer, [{"path": str(copy), "config": "sample-10BT"}])
    refused(capsys, code, out, "no dataset card", "no folder named 'sample-10BT' (subfolders: data, sample)")
    code, out = run_prepare(tmp_path, default_tokenizer, [{"path": str(copy)}])  # train-* beside 000_*: which?
    refused(capsys, code, out, "holds files of splits (train) and files of none", "000_00000.parquet")


def test_a_folder_reads_only_its_split(tmp_path, capsys, hub, default_tokenizer, tokenizer):
    folder = str(hub["smoltalk"] / "data" / "all")  # train-0000[01]-of-00002.parquet, test-00000-of-00001.parquet
    sources = [{"name": s, "path": folder, "split": s, "format": "chat"} for s in ("train", "test")]
    code, out = run_prepare(tmp_path, default_tokenizer, sources)
    assert code == 0, capsys.readouterr().err
    for split, rows in snapshots.SMOLTALK_ROWS["all"].items():
        expected = datasets.load_dataset(str(hub["smoltalk"]), "all", split=split)["messages"]
        assert documents(out, split, tokenizer) == rendered(tokenizer, expected) and len(expected) == rows


def test_a_folder_without_a_card_takes_a_config_as_its_subfolder(tmp_path, capsys, hub, default_tokenizer, tokenizer):
    copy = tmp_path / "smoltalk"
    shutil.copytree(hub["smoltalk"], copy)
    (copy / "README.md").unlink()
    source = {"name": "mag", "path": str(copy), "config": "smol-magpie-ultra", "split": "test", "format": "chat"}
    code, out = run_prepare(tmp_path, default_tokenizer, [source])
    assert code == 0, capsys.readouterr().err
    expected = datasets.load_dataset(str(hub["smoltalk"]), "smol-magpie-ultra", split="test")["messages"]
    assert documents(out, "mag", tokenizer) == rendered(tokenizer, expected)


def test_split_folders_and_globs_follow_the_hub_split_names(tmp_path, capsys, default_tokenizer, tokenizer):
    data = tmp_path / "mine"
    texts = {split: [f"A {split} page about rivers, number {i}." for i in range(5)] for split in ("train", "test")}
    for split, rows in texts.items():  # data/<split>/part-N.jsonl, as datasets' own resolution reads it
        for i, row in enumerate(rows):
            (data / "data" / split).mkdir(parents=True, exist_ok=True)
            (data / "data" / split / f"part-{i}.jsonl").write_text(json.dumps({"text": row}) + "\n")
    (data / "README.md").write_text("# My pages\n\nNotes for people, not data.\n")  # a card with no configs
    sources = [
        {"name": "folder", "path": str(data), "split": "test"},
        {"name": "glob", "path": str(data / "data" / "*" / "*.jsonl")},  # both splits matched: train is read
    ]
    code, out = run_prepare(tmp_path, default_tokenizer, sources)
    assert code == 0, capsys.readouterr().err
    assert sorted(documents(out, "folder", tokenizer)) == texts["test"]
    assert sorted(documents(out, "glob", tokenizer)) == texts["train"]


def test_a_folder_of_python_files_is_one_document_per_file(tmp_path, capsys, default_tokenizer, tokenizer):
    code_dir = tmp_path / "python-edu"
    files = {
        "a1b2.py": 'def greet(name):\n    """Say hello."""\n    return f"Hello, {name}!"\n',
        "pkg/c3d4.py": "import math\n\n\ndef area(r):\n    return math.pi * r * r\n\n\nprint(area(2))\n",
        "test_greet.py": "from a1b2 import greet\n\n\ndef test_greet():\n    assert greet('Ada') == 'Hello, Ada!'\n",
        "pkg/__init__.py": "from .c3d4 import area\n",
        "pkg/empty.py": "",
        "pkg/__pycache__/c3d4.cpython-311.pyc": "not source",
    }
    for name, text in files.items():
        (code_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (code_dir / name).write_text(text)
    code, out = run_prepare(tmp_path, default_tokenizer, [{"path": str(code_dir)}])
    assert code == 0, capsys.readouterr().err
    expected = [files[name] for name in ("a1b2.py", "pkg/__init__.py", "pkg/c3d4.py", "test_greet.py")]
    assert documents(out, "python-edu", tokenizer) == expected  # test_*.py is code, not a split


def test_files_with_other_columns_are_refused_naming_the_file(tmp_path, capsys, hub, default_tokenizer):
    code, out = run_prepare(tmp_path, default_tokenizer, [{"path": str(hub["smoltalk"] / "data"), "format": "chat"}])
    refused(capsys, code, out, "everyday-conversations/train-00000-of-00001.parquet' does not have the columns of",
            "data/all/train-00000-of-00002.parquet", "only in the first: source (string)")  # fmt: skip
    pages = tmp_path / "pages"  # JSON lines: the first file's types are what datasets casts the rest to
    pages.mkdir()
    (pages / "a.jsonl").write_text(json.dumps({"text": "A page on tides.", "author": None}) + "\n")
    (pages / "b.jsonl").write_text(json.dumps({"text": "A page on glaciers.", "author": "Ada"}) + "\n")
    code, out = run_prepare(tmp_path, default_tokenizer, [{"path": str(pages)}])
    refused(capsys, code, out, "b.jsonl' does not have the columns of", "types differ: author: null vs string")


# --- the same data twice --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "first, second, message",
    [
        ({"path": "fineweb-edu"}, {"path": "fineweb-edu", "config": "CC-MAIN-2024-10"},
         "sources 'a' and 'b' read the same file '{d}/data/CC-MAIN-2024-10/000_00000.parquet'"),
        ({"path": "fineweb-edu", "config": "sample-10BT"}, {"path": "fineweb-edu/sample/10BT"},
         "sources 'a' and 'b' read the same file '{d}/sample/10BT/000_00000.parquet'"),
        ({"path": "h4", "split": "train_prefs"}, {"path": "h4", "split": "train_sft"},
         "read the same content twice: '{d}/data/train_prefs-00000-of-00001.parquet' and "),
        ({"path": "HuggingFaceFW/fineweb-edu", "config": "sample-10BT"},
         {"path": "HuggingFaceFW/fineweb-edu", "config": "sample-10BT"},
         "sources 'a' and 'b' both read HuggingFaceFW/fineweb-edu:sample-10BT"),
    ],
)  # fmt: skip
def test_sources_that_read_the_same_data_are_refused(tmp_path, capsys, hub, default_tokenizer, first, second, message):
    where = {"fineweb-edu": hub["fineweb-edu"], "h4": hub["ultrafeedback_binarized-h4"]}

    def local(source, name):
        head, _, rest = source["path"].partition("/")
        if head not in where:  # a Hub id: refused before anything is opened (these tests are offline)
            return {**source, "name": name}
        chat = {"format": "chat", "column": "chosen"} if head == "h4" else {}
        return {**source, **chat, "name": name, "path": str(where[head] / rest)}

    code, out = run_prepare(tmp_path, default_tokenizer, [local(first, "a"), local(second, "b")])
    directory = where.get(first["path"].partition("/")[0], "")
    refused(capsys, code, out, message.format(d=os.path.realpath(directory) if directory else ""))


@pytest.mark.parametrize(("first", "second"), [("sample-10BT", "sample-100BT"), ("sample-100BT", "sample-10BT")])
def test_sources_that_share_rows_in_other_files_are_refused(tmp_path, capsys, hub, default_tokenizer, first, second):
    """FineWeb-Edu's sample-10BT is a subset of sample-100BT, in other files: found by the documents themselves."""
    sources = [{"name": c, "path": str(hub["fineweb-edu"]), "config": c} for c in (first, second)]
    code, out = run_prepare(tmp_path, default_tokenizer, sources)
    refused(capsys, code, out, "overlap: document", "training would see them twice")


def test_sources_without_shared_rows_pass_the_overlap_check(tmp_path, capsys, hub, default_tokenizer):
    sources = [{"name": "web", "path": str(hub["fineweb-edu"]), "config": "sample-10BT"},
               {"name": "math", "path": str(hub["finemath"]), "config": "finemath-4plus"}]  # fmt: skip
    code, out = run_prepare(tmp_path, default_tokenizer, sources)
    assert code == 0 and (out / "manifest.json").is_file(), capsys.readouterr().err


# --- smaller checks -------------------------------------------------------------------------------


def test_a_source_too_small_for_its_validation_split_is_refused(tmp_path, capsys, hub, default_tokenizer):
    source = {"name": "web", "path": str(hub["fineweb-edu"]), "config": "sample-10BT"}
    code, out = run_prepare(tmp_path, default_tokenizer, [source], val_fraction=0.01)
    refused(capsys, code, out, "source 'web' has 12 documents, too few for a validation split", "1/12")
    code, out = run_prepare(
        tmp_path, default_tokenizer, [{**source, "config": None, "max_documents": 40}], val_fraction=0.01
    )
    refused(capsys, code, out, "source 'web' has 40 documents, too few")  # known at start-up: refused before work
    code, out = run_prepare(tmp_path, default_tokenizer, [source], val_fraction=1 / 12)
    assert code == 0 and json.loads((out / "manifest.json").read_text())["sources"][0]["val"]["documents"] == 1


def test_prepare_before_a_tokenizer_exists_says_how_to_make_one(tmp_path, capsys, hub):
    code, out = run_prepare(tmp_path, tmp_path / "runs" / "tokenizer", [{"path": str(hub["fineweb-edu"])}])
    refused(capsys, code, out, "does not exist", "scratchlm tokenizer train", "tokenizer_vocab_size")


@pytest.mark.parametrize(
    "message_list, error",
    [
        ([{"role": "user", "content": "Hi"}, {"role": "robot", "content": "Beep."}], "row 3: unknown role 'robot'"),
        ([{"role": "user", "content": "Hi"}, {"role": "assistent", "content": "Hello."}],
         "row 3: unknown role 'assistent' (did you mean 'assistant'?)"),
        ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": None}],
         "row 3: assistant message without content"),
        ([{"role": "user", "content": "Hi"}, {"role": "assistant"}], "row 3: assistant message without content"),
        ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}], "row 3: assistant message"),
    ],
)  # fmt: skip
def test_chat_rows_with_unknown_roles_or_no_reply_are_refused_naming_the_row(
    tmp_path, capsys, default_tokenizer, message_list, error
):
    good = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4."}]
    rows = [good, good, good, message_list, good]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps({"messages": m}) + "\n" for m in rows))
    code, out = run_prepare(tmp_path, default_tokenizer, [{"path": str(tmp_path / "chat.jsonl"), "format": "chat"}])
    refused(capsys, code, out, f"source '{tmp_path / 'chat.jsonl'}' {error}")


# --- the recipes' chains on local copies ------------------------------------------------------------


@pytest.mark.parametrize("recipe", ["genesis-1b/data.yaml", "genesis-1b/midtrain-data.yaml", "a100-1b/data.yaml",
                                    "a100-1b/midtrain-data.yaml"])  # fmt: skip
def test_recipe_data_configs_prepare_from_local_snapshots(tmp_path, capsys, hub, default_tokenizer, recipe):
    """The recipe as written, its Hub ids replaced by the downloaded snapshots (scaled down: validation
    every 10th document, since a fixture has dozens of documents, not millions)."""
    spec = yaml.safe_load((REPO / "recipes" / recipe).read_text())
    code_dir = tmp_path / "python-edu"
    code_dir.mkdir()
    for i in range(12):
        (code_dir / f"blob{i:02d}.py").write_text(f"def f{i}(x):\n    return x * {i}\n")
    local = {"HuggingFaceFW/fineweb-edu": hub["fineweb-edu"], "HuggingFaceTB/finemath": hub["finemath"],
             "HuggingFaceTB/smoltalk": hub["smoltalk"], "data/python-edu": code_dir}  # fmt: skip
    for source in spec["sources"]:
        source["path"] = str(local[source["path"]])
    code, out = run_prepare(tmp_path, default_tokenizer, spec["sources"], val_fraction=0.1)
    assert code == 0, capsys.readouterr().err
    expected = {"sample-100BT": 30, "sample-10BT": 12, "finemath-4plus": 12, "all": 28, None: 12}
    for source, made in zip(spec["sources"], json.loads((out / "manifest.json").read_text())["sources"], strict=True):
        assert made["train"]["documents"] + made["val"]["documents"] == expected[source.get("config")], source
        assert made["val"]["documents"] >= 1


# --- the lm-eval task of the embedded default -------------------------------------------------------


def test_lm_eval_task_reads_the_copy_it_sits_in(tmp_path, capsys, small_model_dir):
    original, moved = tmp_path / "original", tmp_path / "moved"
    assert main(["data", "default", "--out", str(original), "--tokens", "20000", "--countries", "5"]) == 0
    shutil.copytree(original, moved)
    shutil.rmtree(original)  # a copied run whose original is gone: the copy must read its own probes
    probes = (moved / "probes.jsonl").read_text().splitlines()[:7]
    (moved / "probes.jsonl").write_text("\n".join(probes) + "\n")
    command = [
        shutil.which("lm_eval"),
        "--model", "hf",
        "--model_args", f"pretrained={small_model_dir},add_bos_token=True",
        "--tasks", "scratchlm_probes",
        "--include_path", str(moved / "lm_eval"),
        "--device", "cpu",
        "--batch_size", "8",
        "--output_path", str(tmp_path / "results"),
        "--log_samples",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    samples = next((tmp_path / "results").rglob("samples_scratchlm_probes_*.jsonl")).read_text().splitlines()
    assert [json.loads(s)["doc"] for s in samples] == [json.loads(p) for p in probes]
