"""A run's life as processes: one run per output directory, signals that stop it cleanly, and kills at the
worst moments, after which every step, evaluation and sample is recorded exactly once."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

from helpers import REPO, launch, launch_command, small_run, train_losses
from scratchlm.run_dir import RunDir
from scratchlm.train.status import summarize


def wait_for(condition, timeout: float = 240, what: str = "") -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def start(cwd: Path, config: Path) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.Popen(
        launch_command("--config", str(config)), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip


def test_one_run_per_directory_signals_stop_cleanly_and_kill_9_frees_it(tmp_path, shards_dir):
    config = small_run(tmp_path, shards_dir, max_steps=100_000, save_steps=0, logging_steps=1)
    run = RunDir(tmp_path / "run")
    first = start(tmp_path, config)
    wait_for(lambda: len(run.training_metrics()) >= 3, what="the first run to train")
    holder = run.holder()
    assert holder is not None and holder["pid"] != first.pid  # the trainer, not the launcher, holds it
    assert f"running: pid {holder['pid']} on " in summarize(run.path) and "ETA " in summarize(run.path)

    second = launch(tmp_path, "--config", str(config), fails=True, timeout=120)
    assert f"is in use by another run (pid {holder['pid']} on " in second.stderr

    # SIGTERM to `accelerate launch` kills the launcher; the trainer follows: a checkpoint, then it exits.
    first.send_signal(signal.SIGTERM)
    first.wait(timeout=60)
    wait_for(lambda: run.holder() is None, timeout=120, what="the trainer to stop after SIGTERM")
    latest = run.latest_checkpoint()
    assert latest is not None
    state = json.loads((latest / "trainer_state.json").read_text())
    assert state["reason"] == "stop" and state["step"] == max(m["step"] for m in run.training_metrics())
    stopped_at = state["step"]
    status = summarize(run.path)
    assert "not running" in status and "ETA" not in status and "running: pid" not in status

    # kill -9 leaves the lock file behind, but nobody holds it: the next launch takes over and resumes.
    third = start(tmp_path, config)
    wait_for(lambda: run.holder() is not None and max(m["step"] for m in run.training_metrics()) > stopped_at + 2,
             what="the resumed run to train")  # fmt: skip
    os.kill(run.holder()["pid"], signal.SIGKILL)
    third.wait(timeout=60)
    assert run.lock_file.is_file() and run.holder() is None
    resumed = launch(tmp_path, "--config", str(config), "--stop_at_step", str(stopped_at + 1), timeout=300)
    assert f"resuming from {latest} at step {stopped_at:,}" in resumed.stdout


def test_sigterm_to_the_speedrun_stops_the_stage_it_runs(tmp_path):
    """`kill PID` of `scratchlm speedrun` (not of its process group): the trainer it started stops with a
    checkpoint and frees its run directory, instead of training on, orphaned, after the speedrun is gone."""
    shutil.copytree(REPO / "recipes" / "tiny", tmp_path / "tiny")
    shutil.copy2(REPO / "recipes" / "pretrain.py", tmp_path / "pretrain.py")
    out, recipe = tmp_path / "out", tmp_path / "tiny"
    command = [shutil.which("scratchlm"), "speedrun", "--out", str(out), "--recipe", str(recipe)]
    speedrun = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run = RunDir(out / "runs" / "tiny" / "pretrain")
    wait_for(lambda: run.holder() is not None and run.training_metrics(), what="the speedrun's pretraining to log")
    speedrun.send_signal(signal.SIGTERM)
    output = speedrun.communicate(timeout=120)[0]
    assert speedrun.returncode == 2 and "speedrun step 'pretrain' failed" in output, output[-3000:]
    wait_for(lambda: run.holder() is None, timeout=60, what="the trainer to stop")
    state = json.loads((run.latest_checkpoint() / "trainer_state.json").read_text())
    assert state["reason"] == "stop" and state["step"] < 600
    assert "pretrain" not in json.loads((out / "speedrun.json").read_text())


# Runs recipes/pretrain.py with one method replaced by a kill -9 of the process at a given step.
DIE_AT = textwrap.dedent(
    """
    import os, runpy, signal, sys
    from scratchlm.train import checkpoint, evaluate

    owner = {"evaluate": evaluate.Evaluator, "sample": evaluate.Evaluator, "maybe_save": checkpoint.Checkpointer}
    method, step = sys.argv[1], int(sys.argv[2])
    original = getattr(owner[method], method)

    def die_at_step(self, at, *args, **kwargs):
        if at == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, at, *args, **kwargs)

    setattr(owner[method], method, die_at_step)
    sys.argv = sys.argv[3:]
    runpy.run_path(sys.argv[0], run_name="__main__")
    """
)


def test_every_step_evaluation_and_sample_is_recorded_once_across_kills(tmp_path, shards_dir):
    keys = {"max_steps": 12, "save_steps": 4, "eval_steps": 4, "eval_windows": 2, "sample_steps": 4,
            "sample_prompts": ["The", "A"], "sample_max_new_tokens": 3}  # fmt: skip
    straight = small_run(tmp_path / "straight", shards_dir, **keys)
    launch(tmp_path / "straight", "--config", str(straight))
    config = small_run(tmp_path / "killed", shards_dir, **keys)
    script = [sys.executable, "-c", DIE_AT]
    for method, step in (("evaluate", 4), ("sample", 8), ("maybe_save", 10)):
        # 4: saved, killed before its evaluation; 8: evaluated, killed before its samples; 10: logged, not saved
        died = subprocess.run([*script, method, str(step), str(REPO / "recipes" / "pretrain.py"), "--config",
                               str(config)], cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert died.returncode == -signal.SIGKILL, died.stderr[-2000:]
    launch(tmp_path / "killed", "--config", str(config))

    run = RunDir(tmp_path / "killed" / "run")
    assert [m["step"] for m in run.training_metrics()] == list(range(1, 13))
    assert [m["step"] for m in run.metrics() if "val_loss" in m] == [4, 8, 12]
    assert Counter((s["step"], s["prompt"], s["mode"]) for s in run.samples()) == Counter(
        (step, prompt, mode) for step in (4, 8, 12) for prompt in ("The", "A") for mode in ("greedy", "sampled")
    )
    a, b = train_losses(tmp_path / "straight" / "run"), train_losses(run.path)
    assert [a[s]["loss"] for s in a] == [b[s]["loss"] for s in b]  # the kills changed nothing trained
    evals = {m["step"]: m["val_loss"] for m in RunDir(tmp_path / "straight" / "run").metrics() if "val_loss" in m}
    assert evals == {m["step"]: m["val_loss"] for m in run.metrics() if "val_loss" in m}
    shutil.rmtree(tmp_path / "straight")


INSIDE_A_FULL_DISK = textwrap.dedent(
    """
    set -e
    mount -t tmpfs -o size={size} tmpfs {out}
    set +e
    {python} {script} --config {config}
    echo "exit $?"
    {python} -c "import json, sys; from scratchlm.run_dir import RunDir, damaged_files; run = RunDir('{out}/run'); \\
    print(json.dumps([[p.name, damaged_files(p)] for p in run.complete_checkpoints()]))"
    ls {out}/run/checkpoints
    """
)


def test_a_full_disk_names_the_last_good_checkpoint_and_keeps_it(tmp_path, shards_dir):
    """A real ENOSPC: the run directory on a 2.5 MB tmpfs (in a mount namespace of its own) holds one checkpoint."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"]).returncode != 0:
        raise AssertionError("this test needs `unshare -m` (util-linux) and the right to mount a tmpfs")
    out = tmp_path / "disk"
    out.mkdir()
    config = small_run(tmp_path, shards_dir, output_dir=str(out / "run"), max_steps=8, save_steps=2, save_total_limit=5)
    script = INSIDE_A_FULL_DISK.format(size="2500k", out=out, python=sys.executable, config=config,
                                       script=REPO / "recipes" / "pretrain.py")  # fmt: skip
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    lines = result.stdout.splitlines()
    assert "exit 2" in lines, result.stdout[-2000:] + result.stderr[-2000:]
    error = [line for line in result.stderr.splitlines() if line.startswith("error: ")][-1]
    assert "cannot write checkpoint step_00000004 in " in error and "no space left on the device" in error
    assert "the last good checkpoint is " in error and "step_00000002 (intact)" in error
    complete = json.loads(lines[lines.index("exit 2") + 1])
    assert complete == [["step_00000002", []]]  # whole, every checksum right
    assert lines[lines.index("exit 2") + 2 :] == ["step_00000002"]  # no half-written folder left
