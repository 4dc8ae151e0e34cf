"""The Hub as users meet it: `scratchlm push|pull`, checkpoints uploaded while training, and
`init_from: hub://`, through the real huggingface_hub client against tests/hub_stub.py (HF_ENDPOINT)."""

import os
import re
import subprocess
import time

import pytest

from helpers import launch, launch_command, small_run, train_losses
from hub_stub import HubStub
from scratchlm.errors import ScratchError
from scratchlm.train.config import PretrainConfig

TOKEN = "hf_stubSECRET0123456789abcdef"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The stand-in Hub, and an environment in which subprocesses reach it (and only it) with TOKEN."""
    stub = HubStub(TOKEN)
    for name, value in {
        "HF_ENDPOINT": stub.url,
        "HF_TOKEN": TOKEN,
        "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(tmp_path / "hf_home"),  # no login cache of the machine's user
        "HF_HUB_DISABLE_XET": "1",  # the stub serves LFS, not the Xet protocol
    }.items():
        monkeypatch.setenv(name, value)
    yield stub
    stub.close()


def scratchlm(*args: str, fails: bool = False, **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run(["scratchlm", *args], capture_output=True, text=True, env={**os.environ, **env})
    assert result.returncode == 2 if fails else result.returncode == 0, result.stderr[-3000:]
    assert TOKEN not in result.stdout + result.stderr
    return result


def test_push_then_pull_gives_back_the_same_files(hub, tmp_path, small_model_dir):
    pushed = scratchlm("push", str(small_model_dir), "--repo-id", "me/tiny", "--revision", "v1", "--private")
    assert f"{hub.url}/me/tiny/commit/" in pushed.stdout
    assert hub.repos["me/tiny"].private
    assert any(method == "PUT" for method, _ in hub.requests)  # the weights went through LFS
    scratchlm("pull", "me/tiny@v1", "--out", str(tmp_path / "pulled"))
    local = sorted(p.relative_to(small_model_dir) for p in small_model_dir.rglob("*") if p.is_file())
    for name in local:
        assert (tmp_path / "pulled" / name).read_bytes() == (small_model_dir / name).read_bytes(), name
    scratchlm("generate", "--model", str(tmp_path / "pulled"), "--prompt", "The", "--max-new-tokens", "3")

    def error(*args: str, **env: str) -> str:
        return scratchlm(*args, fails=True, **env).stderr

    assert "me/tiny has no revision 'nope'" in error("pull", "me/tiny@nope", "--out", str(tmp_path / "x"))
    assert "no repository me/other on the Hub" in error("pull", "me/other", "--out", str(tmp_path / "x"))
    assert "is not a Hub repository" in error("pull", "just-a-name", "--out", str(tmp_path / "x"))
    no_token = error("push", str(small_model_dir), "--repo-id", "me/tiny", HF_TOKEN="")
    assert "needs a Hugging Face token: set HF_TOKEN or run `hf auth login`" in no_token
    assert "401 Unauthorized" in error("push", str(small_model_dir), "--repo-id", "me/tiny", HF_TOKEN="hf_wrong")
    assert "is not a directory with files to push" in error("push", str(tmp_path / "missing"), "--repo-id", "me/x")
    hub.close()
    assert "Connection refused" in error("push", str(small_model_dir), "--repo-id", "me/tiny")


def test_training_backs_up_checkpoints_without_waiting_and_a_run_starts_from_hub(
    hub, tmp_path, shards_dir, monkeypatch
):
    """The first upload is held by the Hub until training and export are done, then fails once and is
    retried; meanwhile step 16 is replaced by the newer step 24, and step 8 is kept on disk (not pruned)
    while it uploads."""
    config = small_run(
        tmp_path / "a",
        shards_dir,
        max_steps=24,
        save_steps=8,
        save_total_limit=1,
        push_to_hub=True,
        hub_model_id="me/run",
        hub_retry_seconds=0.2,
        report_to="wandb",
    )
    run = tmp_path / "a" / "run"
    hub.hold.clear()
    hub.fail_commits = 1
    env = {**os.environ, "WANDB_MODE": "offline"}
    training = subprocess.Popen(
        launch_command("--config", str(config)), cwd=tmp_path / "a", env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 300
        while not (run / "export" / "README.md").is_file() and training.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert training.poll() is None  # still waiting for its uploads...
        assert max(train_losses(run)) == 24  # ...after every step and the export: training never waited
        assert not hub.repos["me/run"].branches.keys() - {"main", "step_00000008"}  # nothing committed yet
    finally:
        hub.hold.set()
        output = training.communicate(timeout=300)[0]
    assert training.returncode == 0, output[-3000:]
    assert "hub: upload of step_00000008 failed (" in output and "retry 1/4 in 0.2s" in output
    for revision in ("step_00000008", "step_00000024", "main"):
        assert f"-> me/run@{revision} in" in output, [line for line in output.splitlines() if "hub" in line]
    assert set(hub.repos["me/run"].branches) == {"main", "step_00000008", "step_00000024"}
    for step in (8, 24):  # every file of the checkpoint, byte for byte: it resumes from a pull
        local = run / "checkpoints" / f"step_{step:08d}"
        uploaded = hub.files("me/run", local.name)
        for path in local.rglob("*"):
            if path.is_file():
                assert uploaded[str(path.relative_to(local))] == path.read_bytes(), path
    main = hub.files("me/run")
    assert main["model.safetensors"] == (run / "export" / "model.safetensors").read_bytes()
    assert "README.md" in main and "loss.png" in main  # the model card came along
    assert list(run.glob("wandb/offline-run-*"))
    for path in tmp_path.rglob("*"):  # configs, metrics, wandb files, checkpoints: the token is nowhere
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    assert TOKEN not in output

    # A new run starts from the Hub's export; a revision that does not exist is refused at start-up.
    mid = small_run(tmp_path / "b", shards_dir, max_steps=2, model_config="", init_from="hub://me/run")
    launch(tmp_path / "b", "--config", str(mid))
    assert train_losses(tmp_path / "b" / "run")[1]["loss"] < train_losses(run)[1]["loss"] - 1.0
    bad = small_run(tmp_path / "c", shards_dir, model_config="", init_from="hub://me/run@nope")
    assert "me/run has no revision 'nope'" in launch(tmp_path / "c", "--config", str(bad), fails=True).stderr
    # A token the Hub refuses stops a run with push_to_hub before its first step.
    refused = small_run(tmp_path / "d", shards_dir, push_to_hub=True, hub_model_id="me/run")
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    result = launch(tmp_path / "d", "--config", str(refused), fails=True)
    assert "the Hub refused access to me/run (HTTP 401)" in result.stderr
    assert not (tmp_path / "d" / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize(
    "keys, message",
    [
        ({"push_to_hub": True}, "config: push_to_hub needs 'hub_model_id' (owner/name)"),
        ({"hub_model_id": "me/run@v1"}, "config: 'hub_model_id' is a repository (owner/name)"),
        ({"hub_model_id": "run"}, "config: 'hub_model_id': 'run' is not a Hub repository"),
        ({"model_preset": "", "init_from": "hub://me/run@"}, "config: 'init_from': 'me/run@' is not a Hub repository"),
    ],
)
def test_hub_keys_are_checked_with_the_config(keys, message):
    with pytest.raises(ScratchError, match=re.escape(message)):
        PretrainConfig(**{"output_dir": "run", "data_dir": "shards", "model_preset": "tiny", "max_steps": 1, **keys})
