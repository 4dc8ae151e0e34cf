"""Two machines, for real: two `accelerate launch`es of accelerate_configs/multinode.yaml (FSDP2), machine_rank
0 and 1 on this host, one CPU process each talking gloo over TCP. They train, save, resume and export, and
give the losses of one machine's two processes."""

import os
import shutil
import subprocess

import pytest

from helpers import REPO, launch, small_run, train_losses
from scratchlm.run_dir import RunDir


def two_machines(cwd, config, *args: str, port: int, timeout: int = 600) -> None:
    multinode, script = REPO / "accelerate_configs" / "multinode.yaml", REPO / "recipes" / "pretrain.py"

    def command(rank: int) -> list[str]:
        return [shutil.which("accelerate"), "launch", "--config_file", str(multinode), "--num_processes", "2",
                "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
                str(script), "--config", str(config), *args]  # fmt: skip

    env = {**os.environ, "WANDB_MODE": "offline"}
    machines = [subprocess.Popen(command(rank), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for rank in (0, 1)]  # fmt: skip
    outputs = [machine.communicate(timeout=timeout) for machine in machines]
    for machine, (out, err) in zip(machines, outputs, strict=True):
        assert machine.returncode == 0, out[-2000:] + err[-4000:]
    return outputs


def test_two_machines_train_save_resume_and_export_like_one(tmp_path, shards_dir):
    one = small_run(tmp_path / "one", shards_dir, max_steps=8, save_steps=4)
    launch(tmp_path / "one", "--config", str(one), processes=2)
    two = small_run(tmp_path / "two", shards_dir, max_steps=8, save_steps=4)
    first, _ = two_machines(tmp_path / "two", two, "--stop_at_step", "4", port=29611)
    assert "x 2 processes" in first[0]  # machine 0 reports the whole world
    second, _ = two_machines(tmp_path / "two", two, port=29612)
    assert "at step 4" in second[0] and "resuming from" in second[0]

    run = RunDir(tmp_path / "two" / "run")
    assert run.has_export() and [p.name for p in run.complete_checkpoints()] == ["step_00000004", "step_00000008"]
    assert len(list((run.checkpoint(8) / "optimizer").glob("*.safetensors"))) == 2  # FSDP2: a shard per machine
    single, multi = train_losses(tmp_path / "one" / "run"), train_losses(run.path)
    assert sorted(single) == sorted(multi) == list(range(1, 9))
    for step in single:  # DDP on one machine, FSDP2 across two: the same sums in another order
        assert multi[step]["loss"] == pytest.approx(single[step]["loss"], rel=1e-5), step
        assert multi[step]["windows_checksum"] == single[step]["windows_checksum"]


def test_the_slurm_example_is_bash_and_runs_the_command_tested_here():
    script = REPO / "recipes" / "slurm.sbatch"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    for flag in ("--config_file accelerate_configs/multinode.yaml", "--machine_rank", "--main_process_ip",
                 "--num_processes", "recipes/pretrain.py --config"):  # fmt: skip
        assert flag in text, flag
