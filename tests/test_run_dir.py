"""The run directory's rules: what counts as a complete checkpoint, deletion that cannot leave a half-deleted
one looking complete, TRL's checkpoints, records kept exactly once on resume, and the lock."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from scratchlm.errors import ScratchError
from scratchlm.run_dir import (
    COMPLETE,
    RunDir,
    RunLock,
    checkpoint_files,
    checkpoint_step,
    damaged_files,
    file_digest,
    is_complete,
    write_manifest,
)


def fake_checkpoint(run: RunDir, step: int, files: dict[str, bytes] | None = None):
    path = run.checkpoint(step)
    files = files or {
        "model/model.safetensors": b"weights" * 100,
        "model/aliases.json": b"{}",
        "trainer_state.json": b"{}",
    }
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    write_manifest(path, step, {name: file_digest(path / name) for name in checkpoint_files(path)})
    return path


def test_complete_means_every_listed_file_with_its_size(tmp_path):
    run = RunDir(tmp_path)
    a, b = fake_checkpoint(run, 10), fake_checkpoint(run, 20)
    assert run.complete_checkpoints() == [a, b] and run.latest_checkpoint() == b
    manifest = json.loads((b / COMPLETE).read_text())
    assert set(manifest["files"]) == {"model/model.safetensors", "model/aliases.json", "trainer_state.json"}
    (b / "model" / "aliases.json").unlink()  # what a prune killed mid-rmtree left behind
    assert not is_complete(b) and run.latest_checkpoint() == a
    (a / "model" / "model.safetensors").write_bytes(b"short")  # truncated
    assert run.complete_checkpoints() == []


def test_flipped_bytes_keep_the_size_but_not_the_checksum(tmp_path):
    run = RunDir(tmp_path)
    path = fake_checkpoint(run, 5)
    weights = path / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100:164] = bytes(64)
    weights.write_bytes(bytes(data))
    assert is_complete(path)  # the cheap rule used for listings
    assert damaged_files(path) == ["model/model.safetensors"]  # the rule used on resume


def test_deletion_renames_first_and_unfinished_folders_are_cleaned(tmp_path):
    run = RunDir(tmp_path)
    path = fake_checkpoint(run, 3)
    run.delete_checkpoint(path)
    assert not path.exists() and not path.with_name(path.name + ".deleting").exists()
    # A kill during the rmtree leaves only a `.deleting` folder: never a checkpoint, removed at start-up.
    survivor = fake_checkpoint(run, 4)
    os.replace(survivor, survivor.with_name(survivor.name + ".deleting"))
    (run.checkpoints / "step_00000009.tmp").mkdir()
    assert run.complete_checkpoints() == []
    run.remove_unfinished()
    assert list(run.checkpoints.iterdir()) == []


def test_trl_checkpoints_need_their_trainer_state(tmp_path):
    run = RunDir(tmp_path)
    for n in (5, 10, 40):
        (tmp_path / f"checkpoint-{n}").mkdir()
    for n in (5, 40):
        (tmp_path / f"checkpoint-{n}" / "trainer_state.json").write_text("{}")
    assert [checkpoint_step(p) for p in run.trl_checkpoints()] == [5, 40]  # by number, not by name
    (tmp_path / "checkpoint-40" / "trainer_state.json").unlink()  # killed while TRL wrote it
    assert run.latest_trl_checkpoint() == tmp_path / "checkpoint-5"
    with pytest.raises(ScratchError, match="not a checkpoint folder"):
        checkpoint_step(tmp_path / "export")


def test_a_resume_drops_the_records_of_later_steps(tmp_path):
    run = RunDir(tmp_path)
    for step in range(1, 21):
        run.append_metrics({"step": step, "loss": 1.0 / step})
    run.append_metrics({"step": 10, "val_loss": 0.5})
    run.append_samples([{"step": 10, "mode": "greedy", "text": "a"}, {"step": 20, "mode": "greedy", "text": "b"}])
    run.drop_records_after(10)
    assert [m["step"] for m in run.training_metrics()] == list(range(1, 11))
    assert [m for m in run.metrics() if "val_loss" in m] == [{"step": 10, "val_loss": 0.5}]
    assert [s["step"] for s in run.samples()] == [10]


def test_plan_and_records_are_read_through_the_run(tmp_path):
    run = RunDir(tmp_path / "r")
    with pytest.raises(ScratchError, match="r: no such directory"):
        run.read_plan()
    run.path.mkdir()
    with pytest.raises(ScratchError, match="not a run directory"):
        run.read_plan()
    run.write_plan({"stage": "pretrain", "total_steps": 3})
    assert run.read_plan() == {"stage": "pretrain", "total_steps": 3}
    run.metrics_file.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')  # a line being written
    assert run.metrics() == [{"step": 1, "loss": 2.0}]


HOLD = textwrap.dedent(
    """
    import sys, time
    from scratchlm.run_dir import RunDir, RunLock
    lock = RunLock(RunDir(sys.argv[1]))
    lock.acquire()
    print("locked", flush=True)
    time.sleep(60)
    """
)


def test_the_lock_refuses_a_second_holder_and_dies_with_its_process(tmp_path):
    run = RunDir(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run.path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ScratchError, match=rf"in use by another run \(pid {holder.pid} on "):
            RunLock(run).acquire()
        assert run.holder()["pid"] == holder.pid
    finally:
        holder.kill()  # kill -9: no chance to clean up
        holder.wait()
    assert run.holder() is None
    lock = RunLock(run)
    lock.acquire()  # the stale lock is taken over
    assert run.holder()["pid"] == os.getpid()
    lock.release()


def test_an_output_dir_that_cannot_be_a_directory_is_named(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ScratchError, match=r"output_dir .*file.* is not a usable directory"):
        RunLock(RunDir(tmp_path / "file")).acquire()
