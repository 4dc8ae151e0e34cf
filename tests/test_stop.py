"""Ctrl-C and SIGTERM under the real `accelerate launch --num_processes 1`, with a step and a save slower than the
5 seconds the launcher waits before its SIGKILL: the stop still ends in a checkpoint of the step that was running,
and the launcher exits with 128 + the signal, without a traceback."""

import json
import os
import shutil
import signal
import subprocess
import textwrap
import time

import pytest

from helpers import REPO, small_run
from scratchlm.run_dir import RunDir

# Runs recipes/pretrain.py as the launcher's script, its steps from the one given on taking 6 s and each save 2 s
# more (a sleep around the real ones): what a 1B model's step and save cost on a GPU.
SLOW = textwrap.dedent(
    """
    import runpy, sys, time
    from scratchlm.train import checkpoint, step

    slow_from, step_call, save_call = int(sys.argv[1]), step.Stepper.step, checkpoint.Checkpointer.save

    def slow_step(self, number, *args, **kwargs):
        if number >= slow_from:
            time.sleep(6)
        return step_call(self, number, *args, **kwargs)

    def slow_save(self, *args, **kwargs):
        time.sleep(2)
        return save_call(self, *args, **kwargs)

    step.Stepper.step, checkpoint.Checkpointer.save = slow_step, slow_save
    sys.argv = sys.argv[2:]
    runpy.run_path(sys.argv[0], run_name="__main__")
    """
)


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.parametrize("target", ["terminal", "trainer"])
def test_a_stop_keeps_its_checkpoint_however_long_the_step(tmp_path, shards_dir, target):
    """terminal: Ctrl-C, i.e. SIGINT to the launcher's whole process group; trainer: SIGINT to the process
    training alone (before, the launcher then printed the run's log as a traceback and exited 1)."""
    config = small_run(tmp_path, shards_dir, max_steps=100, save_steps=50, logging_steps=1)
    (tmp_path / "slow.py").write_text(SLOW)
    command = [shutil.which("accelerate"), "launch", "--num_processes", "1", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", str(tmp_path / "slow.py"), "3",
               str(REPO / "recipes" / "pretrain.py"), "--config", str(config)]  # fmt: skip
    launcher = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True, env={**os.environ, "WANDB_MODE": "offline"})  # fmt: skip
    run = RunDir(tmp_path / "run")
    wait_for(lambda: len(run.training_metrics()) >= 2, timeout=180, what="two steps")  # step 3 is now sleeping
    trainer = run.holder()["pid"]
    assert trainer != launcher.pid
    if target == "terminal":
        os.killpg(launcher.pid, signal.SIGINT)
    else:
        os.kill(trainer, signal.SIGINT)
    out, err = launcher.communicate(timeout=120)  # the trainer writes to both pipes: their end is its end
    assert launcher.returncode == 128 + signal.SIGINT, err[-3000:]
    assert "Traceback" not in err and "CalledProcessError" not in err, err[-3000:]
    assert f"scratchlm: SIGINT: pid {trainer} stops after this step, with a checkpoint" in out
    stopped = "scratchlm: stopped by SIGINT at step 3; re-run the command to continue"
    assert stopped in out + err  # on stdout when the launcher, and its pipe for our stderr, went first
    latest = run.latest_checkpoint()
    assert latest is not None and latest.name == "step_00000003" and (latest / "COMPLETE").is_file()
    state = json.loads((latest / "trainer_state.json").read_text())
    assert state["reason"] == "stop" and state["step"] == 3
    assert run.holder() is None and [m["step"] for m in run.training_metrics()] == [1, 2, 3]


def test_help_keeps_its_status_under_the_launcher(tmp_path):
    """The script's own exits pass through the process kept beside the launcher: argparse's --help exits 0 there
    (it raises SystemExit, as argparse's refusals do with 2), not 1 with the launcher's traceback."""
    launch = [shutil.which("accelerate"), "launch", "--num_processes", "1", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO / "recipes" / "pretrain.py")]  # fmt: skip
    shown = subprocess.run([*launch, "--help"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert shown.returncode == 0 and "--config FILE" in shown.stdout, shown.stderr[-2000:]
