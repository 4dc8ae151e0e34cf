"""Files written whole or not at all (disk.py), JSON-lines files a user gives read with one-line errors, and one
line of another library's error (errors.py)."""

from pathlib import Path

import pytest

from scratchlm.disk import STAGING, publish, read_rows, staging, write_atomically
from scratchlm.errors import ScratchError, one_line
from scratchlm.run_dir import RunDir


def test_a_write_cut_short_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "plan.json"
    write_atomically(path, "old")
    real_write = Path.write_text

    def half_then_fail(self, text):
        real_write(self, text[: len(text) // 2])
        raise OSError("no space left on the device")

    monkeypatch.setattr(Path, "write_text", half_then_fail)
    with pytest.raises(OSError):
        write_atomically(path, "new, longer text")
    assert path.read_text() == "old"


def test_a_published_directory_replaces_the_old_one_whole(tmp_path):
    target = tmp_path / "export"
    (target / "stale").mkdir(parents=True)
    staged = staging(target)
    staged.mkdir()
    (staged / "model.safetensors").write_text("weights")
    publish(staged, target)
    assert sorted(p.name for p in target.iterdir()) == ["model.safetensors"] and not staged.exists()


def test_a_run_clears_what_a_killed_write_left_under_its_staging_name(tmp_path):
    run = RunDir(tmp_path / "run")
    (run.checkpoints / f"step_00000002{STAGING}").mkdir(parents=True)
    (run.checkpoints / "step_00000001").mkdir()
    run.remove_unfinished()
    assert [p.name for p in run.checkpoints.iterdir()] == ["step_00000001"]


@pytest.mark.parametrize(
    "text, error",
    [
        ('{"prompt": "a", "answer": "b"}\n{"prompt": "c", "answer"\n', r"rows.jsonl, line 2: not JSON"),
        ('{"prompt": "a", "answer": "b"}\n\n["c", "d"]\n', r"rows.jsonl, line 3: not a JSON object"),
        ('{"prompt": "a"}\n', r"rows.jsonl has no answer \(columns: prompt\)"),
        ("\n", r"rows.jsonl is empty"),
    ],
)
def test_rows_a_user_gives_are_refused_in_one_line_naming_the_file_and_line(tmp_path, text, error):
    path = tmp_path / "rows.jsonl"
    path.write_text(text)
    with pytest.raises(ScratchError, match=error):
        read_rows(path, ("prompt", "answer"))


def test_rows_are_read_in_order(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"prompt": "a", "answer": "b"}\n\n{"prompt": "c", "answer": "d"}\n')
    assert read_rows(path, ("prompt", "answer")) == [{"prompt": "a", "answer": "b"}, {"prompt": "c", "answer": "d"}]


def test_one_line_of_an_error():
    err = ValueError("\n  Validation error for field 'x':\n    TypeError: expected int, got str\n")
    assert one_line(err) == "Validation error for field 'x':"
    assert one_line(err, last=True) == "TypeError: expected int, got str"
    assert one_line(KeyError()) == "KeyError"
    assert one_line(OSError("x" * 1000)) == "x" * 300
