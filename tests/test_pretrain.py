"""Pretraining as users run it: `accelerate launch recipes/pretrain.py --config ...` in subprocesses."""

import json
import math
import runpy
import shutil
import signal
import subprocess
import sys
import time

import pytest

from helpers import REPO, launch, launch_command, small_run, train_losses
from scratchlm import run_dir
from scratchlm.run_dir import RunDir, read_jsonl


def test_tiny_recipe_runs_from_nothing_and_learns(tmp_path):
    """The real tiny recipe, shortened: data, tokenizer and shards are made on the fly."""
    (tmp_path / "recipes").symlink_to(REPO / "recipes")
    result = launch(
        tmp_path,
        "--config",
        "recipes/tiny/pretrain.yaml",
        "--max_steps",
        "40",
        "--seq_len",
        "128",
        "--eval_steps",
        "40",
        "--sample_steps",
        "40",
        "--save_steps",
        "20",
        "--logging_steps",
        "5",
    )
    run = tmp_path / "runs" / "tiny" / "pretrain"
    losses = train_losses(run)
    vocab = json.loads((run / "export" / "config.json").read_text())["vocab_size"]
    assert abs(losses[1]["loss"] - math.log(vocab)) < 0.3  # a fresh model is uniform over its vocabulary
    # 2.5 nats below uniform is below the corpus's unigram entropy (~4.8 nats for the tiny mix):
    # by step 40 the model predicts from context, not only from token frequencies (4.46 measured).
    assert losses[40]["loss"] < math.log(vocab) - 2.5
    assert "horizon: 40 steps = 40,960 tokens" in result.stdout
    evals = [m for m in read_jsonl(run / "metrics.jsonl") if "val_bpb" in m]
    assert len(evals) == 1 and evals[0]["val_bpb"] < 2.5
    assert 0 <= evals[0]["probe_accuracy"] <= 1 and -1 <= evals[0]["core"] <= 1  # the recipe's in-training evals
    samples = read_jsonl(run / "samples.jsonl")
    assert {(s["prompt"], s["mode"]) for s in samples} == {
        (p, m) for p in ("The capital of", "12 + 7 =") for m in ("greedy", "sampled")
    }
    keys = {
        "step",
        "tokens",
        "loss",
        "lr",
        "grad_norm",
        "tok_per_s",
        "mfu",
        "mem_allocated_gb",
        "mem_reserved_gb",
        "mem_peak_gb",
        "elapsed_s",
        "cost_usd",
    }
    assert keys <= losses[40].keys()
    assert [p.name for p in RunDir(run).complete_checkpoints()] == ["step_00000020", "step_00000040"]


def test_exact_resume_in_a_fresh_process(tmp_path, shards_dir):
    straight = small_run(tmp_path / "a", shards_dir)
    launch(tmp_path / "a", "--config", str(straight))
    paused = small_run(tmp_path / "b", shards_dir)
    launch(tmp_path / "b", "--config", str(paused), "--stop_at_step", "6")
    assert max(train_losses(tmp_path / "b" / "run")) == 6
    assert not (tmp_path / "b" / "run" / "export").exists()
    result = launch(tmp_path / "b", "--config", str(paused))
    assert "resuming from" in result.stdout and "step_00000006 at step 6" in result.stdout
    a, b = train_losses(tmp_path / "a" / "run"), train_losses(tmp_path / "b" / "run")
    assert sorted(a) == sorted(b) == list(range(1, 13))
    for step in a:
        assert (a[step]["loss"], a[step]["grad_norm"], a[step]["lr"]) == (
            b[step]["loss"],
            b[step]["grad_norm"],
            b[step]["lr"],
        ), step
        assert a[step]["windows_checksum"] == b[step]["windows_checksum"]
    assert (tmp_path / "b" / "run" / "export" / "model.safetensors").is_file()


def test_resume_without_optimizer_state_is_refused(tmp_path, shards_dir):
    config = small_run(tmp_path, shards_dir, max_steps=8)
    launch(tmp_path, "--config", str(config), "--stop_at_step", "4")
    # A checkpoint that was written without optimizer state (its manifest lists no optimizer files).
    checkpoint = tmp_path / "run" / "checkpoints" / "step_00000004"
    shutil.rmtree(checkpoint / "optimizer")
    files = run_dir.checkpoint_files(checkpoint)
    run_dir.write_manifest(checkpoint, 4, {name: run_dir.file_digest(checkpoint / name) for name in files})
    result = launch(tmp_path, "--config", str(config), fails=True)
    assert "step_00000004 has no optimizer state" in result.stderr and "--reset_optimizer true" in result.stderr
    assert max(train_losses(tmp_path / "run")) == 4  # nothing trained
    launch(tmp_path, "--config", str(config), "--reset_optimizer", "true")
    assert max(train_losses(tmp_path / "run")) == 8


def test_a_failed_checkpoint_write_is_never_picked(tmp_path, shards_dir):
    config = small_run(tmp_path, shards_dir, max_steps=8)
    launch(tmp_path, "--config", str(config), "--stop_at_step", "4")
    run = tmp_path / "run"
    good = RunDir(run).latest_checkpoint()
    # A write that dies half-way: the weights are on disk, the optimizer is not, no COMPLETE marker.
    partial = run / "checkpoints" / "step_00000005.tmp"
    shutil.copytree(good / "model", partial / "model")
    assert RunDir(run).latest_checkpoint() == good
    # The same for a process killed at an arbitrary moment while it checkpoints every step.
    killed = small_run(tmp_path / "killed", shards_dir, max_steps=400, save_steps=1, save_total_limit=1)
    command = [sys.executable, str(REPO / "recipes" / "pretrain.py"), "--config", str(killed)]
    reached = 0
    for extra in (0.13, 0.37, 0.71):
        process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 240
        while time.time() < deadline:  # wait until it is checkpointing, beyond where the last one stopped
            latest = RunDir(tmp_path / "killed" / "run").latest_checkpoint()
            if latest is not None and run_dir.checkpoint_step(latest) >= reached + 2:
                break
            time.sleep(0.05)
        time.sleep(extra)
        process.send_signal(signal.SIGKILL)
        process.wait()
        latest = RunDir(tmp_path / "killed" / "run").latest_checkpoint()
        assert latest is not None and (latest / run_dir.COMPLETE).is_file()
        state = json.loads((latest / "trainer_state.json").read_text())
        assert state["step"] == run_dir.checkpoint_step(latest) >= reached + 2
        assert (latest / "optimizer" / "param_groups.json").is_file()
        reached = state["step"]
    result = launch(
        tmp_path,
        "--config",
        str(killed),
        "--max_steps",
        "400",
        "--stop_at_step",
        str(run_dir.checkpoint_step(latest) + 1),
    )
    assert f"at step {run_dir.checkpoint_step(latest)}" in result.stdout


def test_two_processes_match_one_with_the_same_global_batch(tmp_path, shards_dir):
    core = {"eval_steps": 10, "core_bundle": str(REPO / "tests" / "fixtures" / "core-sample"), "core_max_per_task": 8}
    one = small_run(
        tmp_path / "one",
        shards_dir,
        per_device_train_batch_size=8,
        tokens_per_step=256,
        max_steps=10,
        report_to="wandb",
        **core,
    )
    two = small_run(
        tmp_path / "two", shards_dir, per_device_train_batch_size=4, tokens_per_step=256, max_steps=10, **core
    )
    launch(tmp_path / "one", "--config", str(one))
    result = launch(tmp_path / "two", "--config", str(two), processes=2)
    assert "4 x 32 tokens x 1 accumulation x 2 processes = 256 tokens/step" in result.stdout
    a, b = train_losses(tmp_path / "one" / "run"), train_losses(tmp_path / "two" / "run")
    for step in range(1, 11):
        assert b[step]["tokens"] == a[step]["tokens"] == 256 * step
        assert b[step]["windows_checksum"] == a[step]["windows_checksum"]  # the same windows, each once
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], rel=1e-4), step
    core_one, core_two = (
        [m["core"] for m in read_jsonl(t / "run" / "metrics.jsonl") if "core" in m]
        for t in (tmp_path / "one", tmp_path / "two")
    )
    assert len(core_one) == 1 and core_one == pytest.approx(core_two, abs=1e-6)  # CORE at eval_steps, both ranks alike
    assert list((tmp_path / "one" / "run" / "wandb").glob("offline-run-*"))  # wandb logged, offline
    # Half on one process, the rest on two: the same global stream and losses.
    mixed = small_run(tmp_path / "mixed", shards_dir, per_device_train_batch_size=4, tokens_per_step=256, max_steps=10)
    launch(tmp_path / "mixed", "--config", str(mixed), "--stop_at_step", "5")
    launch(tmp_path / "mixed", "--config", str(mixed), processes=2)
    c = train_losses(tmp_path / "mixed" / "run")
    for step in range(1, 11):
        assert c[step]["windows_checksum"] == a[step]["windows_checksum"]
        assert c[step]["loss"] == pytest.approx(a[step]["loss"], rel=1e-4), step
    # A run whose batch is per-device x accumulation (8 x 1 on one process) resumed on two with nothing changed:
    # the checkpoint's 256 tokens/step are kept (4 x 1 x 2), and said; the same stream and losses again.
    moved = small_run(tmp_path / "moved", shards_dir, per_device_train_batch_size=8, gradient_accumulation_steps=1,
                      max_steps=10)  # fmt: skip
    launch(tmp_path / "moved", "--config", str(moved), "--stop_at_step", "5")
    result = launch(tmp_path / "moved", "--config", str(moved), processes=2)
    assert (
        "resuming on 2 processes a run trained on 1: its 256 tokens/step kept with per_device_train_batch_size 4, "
        "gradient_accumulation_steps 1 (it trained with 8 x 1 accumulation x 1)"
    ) in result.stdout
    assert "4 x 32 tokens x 1 accumulation x 2 processes = 256 tokens/step" in result.stdout
    d = train_losses(tmp_path / "moved" / "run")
    for step in range(1, 11):
        assert d[step]["windows_checksum"] == a[step]["windows_checksum"]
        assert d[step]["loss"] == pytest.approx(a[step]["loss"], rel=1e-4), step


def test_schedule_extension_and_two_stage_checkpoints(tmp_path, shards_dir):
    config = small_run(
        tmp_path,
        shards_dir,
        max_steps=10,
        lr_scheduler_type="two_stage",
        stage_boundary=6,
        stage1_final_lr=1e-3,
        stage2_weight_decay=0.0,
        weight_decay=0.1,
        save_steps=0,
        save_total_limit=1,
    )
    launch(tmp_path, "--config", str(config))
    run = tmp_path / "run"
    steps = [run_dir.checkpoint_step(p) for p in RunDir(run).complete_checkpoints()]
    assert steps == [5, 6, 10]  # both sides of the boundary survive save_total_limit 1
    metrics = train_losses(run)
    assert [metrics[s]["weight_decay"] for s in (6, 7)] == [0.1, 0.0]
    assert metrics[7]["schedule_phase"] == "stage 2" and metrics[6]["lr"] == pytest.approx(1e-3)
    result = launch(tmp_path, "--config", str(config), "--extend_to", "14")
    assert "extending the run from 10 to 14 steps" in result.stdout
    assert max(train_losses(run)) == 14
    assert json.loads((run / "plan.json").read_text())["total_steps"] == 14
    saved = json.loads((RunDir(run).latest_checkpoint() / "trainer_state.json").read_text())
    assert saved["schedule"]["total_steps"] == 14  # the Checkpointer records the extended schedule
    again = launch(tmp_path, "--config", str(config))  # the original command keeps the extended horizon
    assert "keeping the run's" in again.stdout and max(train_losses(run)) == 14


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_non_finite_loss(tmp_path, shards_dir, mode):
    config = small_run(
        tmp_path,
        shards_dir,
        max_steps=6,
        learning_rate=1e4,
        warmup_steps=0,
        min_lr=0.0,
        max_grad_norm=0.0,
        on_nonfinite=mode,
        save_steps=2,
    )
    result = launch(tmp_path, "--config", str(config), fails=mode == "stop")
    if mode == "stop":
        assert "non-finite loss" in result.stderr and "stopped before the optimizer step" in result.stderr
        assert "last good checkpoint: " in result.stderr
    else:
        last = train_losses(tmp_path / "run")[6]
        assert last["skipped_steps"] > 0 and "batch skipped" in result.stderr + result.stdout


@pytest.mark.parametrize(
    "override, message",
    [
        (["--max_step", "5"], "command line: unknown key 'max_step' (did you mean 'max_steps'?)"),
        (["--lr_scheduler_type", "linear"], "'lr_scheduler_type' must be one of cosine, wsd, two_stage, constant"),
        (["--learning_rate", "-1"], "'learning_rate' must be positive"),
        (["--tokens_per_step", "1000"], "tokens_per_step 1,000 is not a multiple of"),
        (["--seq_len", "100"], "seq_len 100 exceeds the model's context (max_position_embeddings 64)"),
        (["--max_steps", "0"], "set exactly one horizon"),
    ],
)
def test_bad_config_fails_before_training(tmp_path, shards_dir, override, message, monkeypatch, capsys):
    """The script's own main() in this process: each launch would spend ~10 s importing what is imported here
    already. The launcher's path for a refusal is test_unknown_yaml_key_names_the_file's."""
    config = small_run(tmp_path, shards_dir)
    script = runpy.run_path(str(REPO / "recipes" / "pretrain.py"), run_name="pretrain")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["pretrain.py", "--config", str(config), *override])
    assert script["main"]() == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_unknown_yaml_key_names_the_file(tmp_path, shards_dir):
    config = small_run(tmp_path, shards_dir, warmup_step=3)
    result = launch(tmp_path, "--config", str(config), fails=True)
    assert f"{config}: unknown key 'warmup_step' (did you mean 'warmup_steps'?)" in result.stderr


def test_status_plot_timed_saves_and_checkpoint_export(tmp_path, shards_dir):
    import torch

    from scratchlm.cli import main
    from scratchlm.model.files import load_model
    from scratchlm.train.status import summarize

    config = small_run(
        tmp_path,
        shards_dir,
        max_steps=6,
        sample_steps=6,
        sample_prompts=["The"],
        eval_steps=6,
        save_steps=0,
        save_minutes=0.0001,
        save_total_limit=10,
        gradient_checkpointing=True,
    )
    launch(tmp_path, "--config", str(config))
    run = tmp_path / "run"
    reasons = [json.loads((p / "trainer_state.json").read_text())["reason"] for p in RunDir(run).complete_checkpoints()]
    assert "timed" in reasons and reasons[-1] == "end"  # save_minutes: 6 ms, less than any step
    assert main(["plot", str(run)]) == 0
    assert (run / "plots" / "loss.png").stat().st_size > 5000
    text = summarize(run)
    assert "step 6 / 6 (100.0%), 768 tokens" in text and "val bpb" in text
    assert "latest checkpoint: step_00000006" in text and "[greedy] 'The' ->" in text
    # A training checkpoint exports like a model directory, to the same weights as the run's export.
    assert (
        main(
            [
                "export",
                str(run / "checkpoints" / "step_00000006"),
                "--out",
                str(tmp_path / "llama"),
                "--format",
                "llama",
            ]
        )
        == 0
    )
    ids = torch.tensor([[0, 5, 9, 200, 3]])
    exported, _ = load_model(run / "export")
    llama, _ = load_model(tmp_path / "llama")
    assert llama.config.model_type == "llama"
    torch.testing.assert_close(llama(ids).logits, exported(ids).logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("optimizer", "resume_processes"), [("adamw", 2), ("adamw", 1), ("muon", 1)])
def test_fsdp2_sharded_checkpoint_resumes_exactly_at_any_world_size(tmp_path, optimizer, resume_processes):
    def run(mode: str, processes: int) -> dict:
        command = [
            shutil.which("torchrun"),
            "--nproc_per_node",
            str(processes),
            "--master_port",
            "29561",
            str(REPO / "tests" / "fsdp_worker.py"),
            str(tmp_path),
            mode,
            optimizer,
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return {int(k): v for k, v in json.loads((tmp_path / f"losses_{mode}.json").read_text()).items()}

    straight = run("straight", 2)
    run("save", 2)
    saved = RunDir(tmp_path).latest_checkpoint()
    shards = sorted(p.name for p in (saved / "optimizer").glob("*.safetensors"))
    assert len(shards) == 2  # each rank wrote its own shard of the AdamW moments (Muon's momentum)
    resumed = run("resume", resume_processes)
    assert sorted(resumed) == [5, 6, 7, 8]
    for step, loss in resumed.items():
        assert loss == pytest.approx(straight[step], rel=1e-5, abs=1e-6), step


def test_midtraining_starts_from_an_export_or_a_checkpoint(tmp_path, shards_dir, tokenizer_dir):
    base = small_run(tmp_path / "base", shards_dir, max_steps=30, usd_per_gpu_hour=3600.0)
    launch(tmp_path / "base", "--config", str(base))
    pretrained = train_losses(tmp_path / "base" / "run")
    last = pretrained[30]
    assert last["cost_usd"] == pytest.approx(last["elapsed_s"], rel=1e-6)  # $3600/h = $1 per second
    for source in (tmp_path / "base" / "run" / "export", tmp_path / "base" / "run" / "checkpoints" / "step_00000030"):
        mid = small_run(
            tmp_path / source.name,
            shards_dir,
            max_steps=3,
            learning_rate=1e-4,
            warmup_steps=0,
            min_lr=1e-5,
            model_config="",
            init_from=str(source),
        )
        launch(tmp_path / source.name, "--config", str(mid))
        first = train_losses(tmp_path / source.name / "run")[1]["loss"]
        assert first < pretrained[1]["loss"] - 1.0  # it starts from the trained weights, not from scratch
        assert json.loads((tmp_path / source.name / "run" / "plan.json").read_text())["total_steps"] == 3
    # Data prepared with another tokenizer than the model's is refused before training.
    foreign = tmp_path / "foreign"
    shutil.copytree(tmp_path / "base" / "run" / "export", foreign)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, foreign / name)
    other = small_run(tmp_path / "other", shards_dir, model_config="", init_from=str(foreign))
    result = launch(tmp_path / "other", "--config", str(other), fails=True)
    assert "was trained with another tokenizer" in result.stderr


def test_torch_compile_trains_checkpoints_and_resumes(tmp_path, shards_dir, monkeypatch):
    """Compiled as the GPU recipes are (per block, with checkpointing), evaluations and samples included:
    they run eager, so the only recompile is training's batch with one document (no mask to pass). Before,
    validation, sampling and its KV cache made seven more and hit torch's recompile limit."""
    config = small_run(tmp_path, shards_dir, max_steps=4, torch_compile=True, save_steps=2, eval_steps=2,
                       eval_windows=2, sample_steps=2, sample_prompts=["The capital of"], sample_max_new_tokens=4,
                       gradient_checkpointing=True)  # fmt: skip
    monkeypatch.setenv("TORCH_LOGS", "recompiles,graph_breaks")
    first = launch(tmp_path, "--config", str(config))
    assert "recompile_limit" not in first.stderr
    # Checkpointed blocks compile whole (tests/test_compile.py counts their graphs and ops): dynamo reports
    # no graph break (transformers' checkpointed layer made one in every block, which then ran eager).
    assert "Graph break" not in first.stderr, first.stderr[-3000:]
    assert first.stderr.count("Recompiling function") <= 1, first.stderr[-3000:]
    launch(tmp_path, "--config", str(config), "--extend_to", "6")
    losses = train_losses(tmp_path / "run")
    assert sorted(losses) == [1, 2, 3, 4, 5, 6] and losses[6]["loss"] < losses[1]["loss"]
    assert (tmp_path / "run" / "export" / "model.safetensors").is_file()


def test_bad_input_under_accelerate_is_one_line_and_the_last(tmp_path, shards_dir):
    """`accelerate launch --quiet` (the README's form): our line is all a user sees, no launcher traceback."""
    config = small_run(tmp_path, shards_dir, learning_rate=-1.0, per_device_train_batch_size=0)
    result = subprocess.run(launch_command("--config", str(config)), capture_output=True, text=True, timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and "Traceback" not in result.stderr  # the launcher's 1, as the README says
    assert lines[-1] == (
        "error: config: 'per_device_train_batch_size' must be positive, got 0; "
        "'learning_rate' must be positive, got -1.0"
    )  # every problem at once, in one line


def test_a_yaml_1_1_exponent_trains_as_the_number_it_means(tmp_path):
    from scratchlm.train.config import parse_pretrain_args

    (tmp_path / "run.yaml").write_text(
        "output_dir: x\nmodel_preset: tiny\ndata_dir: d\nmax_steps: 1\nlearning_rate: 3e-4\n"
    )
    assert parse_pretrain_args(["--config", str(tmp_path / "run.yaml")]).learning_rate == 0.0003
