"""Start-up settings: the CPU threads a training process computes with, under `accelerate launch`."""

import os
import shutil
import subprocess
import sys

import pytest

THREADS = "from scratchlm.train.hardware import prepare_environment; prepare_environment(); import torch; " \
          "print(torch.get_num_threads())"  # fmt: skip


def threads_under_accelerate(tmp_path, *flags: str, env: dict | None = None) -> int:
    script = tmp_path / "threads.py"
    script.write_text(THREADS)
    command = [shutil.which("accelerate"), "launch", "--num_processes", "1", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", *flags, str(script)]  # fmt: skip
    environment = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | (env or {})
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return int(result.stdout.split()[-1])


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores to tell the cases apart")
def test_a_thread_count_the_user_set_is_respected(tmp_path):
    cores = os.cpu_count()
    assert threads_under_accelerate(tmp_path) == cores  # accelerate's own OMP_NUM_THREADS=1 is not the user's
    assert threads_under_accelerate(tmp_path, env={"OMP_NUM_THREADS": "1"}) == 1
    assert threads_under_accelerate(tmp_path, "--num_cpu_threads_per_process", "1") == 1
    plain = subprocess.run([sys.executable, "-c", THREADS], capture_output=True, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)  # fmt: skip
    assert int(plain.stdout.split()[-1]) == 1
