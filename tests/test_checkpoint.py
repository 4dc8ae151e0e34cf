"""The Checkpointer in one process: when it saves and why, what pruning keeps, what a resume restores, and
what it does with a damaged or unwritable checkpoint."""

import json
import os
import shutil

import pytest
import torch

from helpers import small_config
from scratchlm.errors import ScratchError
from scratchlm.model import ScratchForCausalLM
from scratchlm.run_dir import RunDir, checkpoint_step
from scratchlm.tokenization import load_tokenizer
from scratchlm.train.checkpoint import Checkpointer, prune_checkpoints, restore, resume_point
from scratchlm.train.config import PretrainConfig
from scratchlm.train.parallel import World
from scratchlm.train.plan import plan_run
from scratchlm.train.schedule import Schedule
from scratchlm.train.state import TrainState

WORLD = World(rank=0, size=1, local_rank=0, device=torch.device("cpu"), fsdp=False, bf16=False)


class Counter:
    """A component with state: what the Checkpointer saves and restores beside the model."""

    def __init__(self):
        self.value = 0

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


def make(tmp_path, tokenizer_dir, **keys):
    config = PretrainConfig(output_dir=str(tmp_path / "run"), model_preset="tiny", data_dir="x", max_steps=100, **keys)
    torch.manual_seed(0)
    model = ScratchForCausalLM(small_config())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    state, counter = TrainState(total_steps=100), Counter()
    checkpointer = Checkpointer(
        run=RunDir(config.output_dir), config=config, world=WORLD, model=model, optimizer=optimizer,
        model_config=model.config, tokenizer=load_tokenizer(tokenizer_dir),
        states={"train_state": state, "counter": counter}, plan=plan_run(config, model.config, WORLD.size)[0],
        schedule=Schedule.from_config(config, 100),
    )  # fmt: skip
    return checkpointer, model, optimizer, state, counter


def train_a_little(model, optimizer):
    ids = torch.randint(0, 1000, (2, 9))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def saved_steps(checkpointer) -> list[int]:
    return [checkpoint_step(p) for p in checkpointer.run.complete_checkpoints()]


def reason(checkpointer, step) -> str:
    return json.loads((checkpointer.run.checkpoint(step) / "trainer_state.json").read_text())["reason"]


def test_when_it_saves_and_what_pruning_keeps(tmp_path, tokenizer_dir):
    checkpointer, *_ = make(
        tmp_path, tokenizer_dir, save_steps=4, save_total_limit=2, milestones=[3],
        lr_scheduler_type="two_stage", stage_boundary=7, stage1_final_lr=1e-4,
    )  # fmt: skip
    assert checkpointer.forced == {3, 6, 7}  # the milestone, the two sides of the schedule's boundary
    for step in range(1, 11):
        checkpointer.maybe_save(step, done=step == 10, stopping=step == 9)
    # interval 4 and 8; milestone 3; forced 6, 7; stop 9; end 10 -> the newest two, plus milestone and forced steps
    assert saved_steps(checkpointer) == [3, 6, 7, 9, 10]
    assert [reason(checkpointer, s) for s in (3, 6, 7, 9, 10)] == ["forced", "forced", "forced", "stop", "end"]
    assert not list(checkpointer.run.checkpoints.glob("*.deleting")) and not list(
        checkpointer.run.checkpoints.glob("*.tmp")
    )


def test_prune_keeps_the_newest_and_the_kept(tmp_path, tokenizer_dir):
    checkpointer, *_ = make(tmp_path, tokenizer_dir, save_steps=1, save_total_limit=10)
    for step in range(1, 6):
        checkpointer.save(step, "interval")
    deleted = prune_checkpoints(checkpointer.run, keep_last=2, keep_steps={1})
    assert [checkpoint_step(p) for p in deleted] == [2, 3]
    assert saved_steps(checkpointer) == [1, 4, 5]


def test_timed_saves_follow_the_clock(tmp_path, tokenizer_dir):
    checkpointer, *_ = make(tmp_path, tokenizer_dir, save_steps=0, save_minutes=60.0)
    assert checkpointer.maybe_save(1, done=False, stopping=False) is None
    checkpointer._last_save -= 3601  # an hour later
    assert checkpointer.maybe_save(2, done=False, stopping=False) is not None
    assert reason(checkpointer, 2) == "timed"


def test_a_resume_restores_weights_moments_and_every_component(tmp_path, tokenizer_dir):
    checkpointer, model, optimizer, state, counter = make(tmp_path, tokenizer_dir)
    train_a_little(model, optimizer)
    state.step, state.tokens, counter.value = 7, 448, 42
    checkpointer.save(7, "interval")
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    moments = optimizer.state_dict()["state"][0]["exp_avg"].clone()

    fresh, model2, optimizer2, state2, counter2 = make(tmp_path, tokenizer_dir)
    torch.nn.init.zeros_(model2.model.embed_tokens.weight)
    train_a_little(model2, optimizer2)  # other weights, other moments
    path = resume_point(fresh.run, WORLD)
    saved = restore(path, model2, optimizer2, fresh.states)
    assert path == fresh.run.checkpoint(7) and saved["plan"] == fresh.record["plan"]
    assert saved["plan"]["tokens_per_step"] == 512 * 8 and saved["schedule"]["total_steps"] == 100
    assert (state2.step, state2.tokens, counter2.value) == (7, 448, 42)
    for name, tensor in model2.state_dict().items():
        torch.testing.assert_close(tensor, weights[name], rtol=0, atol=0)
    torch.testing.assert_close(optimizer2.state_dict()["state"][0]["exp_avg"], moments, rtol=0, atol=0)


def test_a_damaged_newest_checkpoint_is_named_and_the_one_before_used(tmp_path, tokenizer_dir, capsys):
    checkpointer, model, optimizer, *_ = make(tmp_path, tokenizer_dir, save_total_limit=5)
    checkpointer.save(2, "interval")
    newest = checkpointer.save(4, "interval")
    weights = next(newest.glob("model/*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-200:-136] = bytes(b ^ 0xFF for b in data[-200:-136])  # 64 flipped bytes inside the tensor data
    weights.write_bytes(bytes(data))
    assert resume_point(checkpointer.run, WORLD) == checkpointer.run.checkpoint(2)
    out = capsys.readouterr().out
    assert f"checkpoint {newest} is damaged ({weights.relative_to(newest)}" in out and "step_00000004.damaged" in out
    assert (newest.parent / "step_00000004.damaged").is_dir()  # kept, not deleted


def test_a_full_disk_names_the_last_good_checkpoint_and_keeps_it(tmp_path, tokenizer_dir, monkeypatch):
    checkpointer, *_ = make(tmp_path, tokenizer_dir, save_total_limit=5)
    good = checkpointer.save(1, "interval")
    before = {p.name: p.read_bytes() for p in good.rglob("*") if p.is_file()}

    real_write_text = type(good).write_text

    def full(self, *args, **kwargs):
        if self.name == "trainer_state.json":
            raise OSError(28, "No space left on device")
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(type(good), "write_text", full)
    with pytest.raises(ScratchError) as raised:
        checkpointer.save(2, "interval")
    message = str(raised.value)
    assert "cannot write checkpoint step_00000002" in message and "no space left on the device" in message
    assert f"the last good checkpoint is {good} (intact)" in message
    monkeypatch.undo()
    assert saved_steps(checkpointer) == [1] and not (checkpointer.run.checkpoints / "step_00000002.tmp").exists()
    assert {p.name: p.read_bytes() for p in good.rglob("*") if p.is_file()} == before


def test_a_checkpoint_that_lost_files_is_passed_over_loudly_or_refused(tmp_path, tokenizer_dir, capsys):
    checkpointer, *_ = make(tmp_path, tokenizer_dir, save_total_limit=5)
    older = checkpointer.save(2, "interval")
    newest = checkpointer.save(3, "interval")
    shutil.rmtree(newest / "optimizer")  # copied or synced without all its files
    assert resume_point(checkpointer.run, WORLD) == older
    assert "optimizer/" in capsys.readouterr().out and (newest.parent / "step_00000003.damaged").is_dir()
    os.remove(older / "trainer_state.json")
    with pytest.raises(ScratchError, match=r"every checkpoint in .* is damaged .*step_00000002: trainer_state.json"):
        resume_point(checkpointer.run, WORLD)  # never a silent start from step 0 beside damaged checkpoints


DIE_AT_FIRST_DELETION = """
import os, signal, sys
from scratchlm.run_dir import RunDir
from scratchlm.train.checkpoint import prune_checkpoints

real_unlink = os.unlink


def unlink_then_die(*args, **kwargs):  # kill -9 right after the first file of a prune is gone
    real_unlink(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)


os.unlink = unlink_then_die
prune_checkpoints(RunDir(sys.argv[1]), keep_last=1, keep_steps=set())
"""


def test_a_kill_in_the_middle_of_pruning_leaves_no_half_deleted_checkpoint(tmp_path, tokenizer_dir):
    import subprocess
    import sys

    checkpointer, *_ = make(tmp_path, tokenizer_dir, save_total_limit=10)
    for step in (1, 2, 3):
        checkpointer.save(step, "interval")
    killed = subprocess.run([sys.executable, "-c", DIE_AT_FIRST_DELETION, str(checkpointer.run.path)])
    assert killed.returncode == -9
    # The doomed checkpoint lost a file, but under a name that is no checkpoint: the rest are whole.
    assert [p.name for p in checkpointer.run.checkpoints.iterdir() if p.name.endswith(".deleting")] == [
        "step_00000001.deleting"
    ]
    assert saved_steps(checkpointer) == [2, 3]
    assert resume_point(checkpointer.run, WORLD) == checkpointer.run.checkpoint(3)
    assert sorted(p.name for p in checkpointer.run.checkpoints.iterdir()) == ["step_00000002", "step_00000003"]
