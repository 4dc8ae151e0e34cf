"""The optimizers in one process: AdamW's groups (matrices decay, norms and biases never do, embeddings only
when asked); Muon's groups by kind and their learning rates, its update against torch.optim.Muon's, its AdamW
against torch's, the schedule on every group, the state each keeps against what the planner counts, and the
models it refuses."""

import json
import math
import os
import shutil
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from helpers import REPO, free_port, launch, small_config, small_run, train_losses
from scratchlm.errors import ScratchError
from scratchlm.model import ScratchForCausalLM
from scratchlm.train.config import PretrainConfig
from scratchlm.train.optimizer import (
    build_optimizer,
    held_state_bytes,
    orthogonalize,
    set_hyperparameters,
    state_bytes,
    step_transient_bytes,
)


def pretrain_config(**keys) -> PretrainConfig:
    return PretrainConfig(output_dir="x", model_preset="tiny", data_dir="x", max_steps=1, **keys)


def groups(tied: bool, embedding_weight_decay: bool) -> tuple[set[str], set[str], torch.optim.Optimizer]:
    model = ScratchForCausalLM(small_config(tie_word_embeddings=tied))
    config = pretrain_config(weight_decay=0.1, embedding_weight_decay=embedding_weight_decay)
    optimizer = build_optimizer(model, config)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in optimizer.param_groups if g["wd_scale"] for p in g["params"]}
    kept = {names[id(p)] for g in optimizer.param_groups if not g["wd_scale"] for p in g["params"]}
    return decayed, kept, optimizer


def test_norms_never_decay_and_embeddings_only_when_asked():
    for tied in (True, False):
        decayed, kept, _ = groups(tied, embedding_weight_decay=False)
        assert all("norm" in name or "embed" in name or "lm_head" in name for name in kept), kept
        assert not any("norm" in name for name in decayed)
        assert "model.embed_tokens.weight" in kept and ("lm_head.weight" in kept or tied)
        assert "model.layers.0.self_attn.q_proj.weight" in decayed and "model.layers.1.mlp.down_proj.weight" in decayed
        decayed_too, kept_too, _ = groups(tied, embedding_weight_decay=True)
        assert "model.embed_tokens.weight" in decayed_too and ("lm_head.weight" in decayed_too or tied)
        assert all("norm" in name for name in kept_too)
        every = {n for n, _ in ScratchForCausalLM(small_config(tie_word_embeddings=tied)).named_parameters()}
        assert decayed | kept == decayed_too | kept_too == every and not decayed & kept  # each parameter once


def test_the_schedule_sets_lr_and_decay_on_every_group():
    _, _, optimizer = groups(tied=True, embedding_weight_decay=False)
    assert isinstance(optimizer, torch.optim.AdamW)  # adamw is torch's own: the same numbers as before muon
    set_hyperparameters(optimizer, lr=2e-4, weight_decay=0.05, step=10)
    assert [g["lr"] for g in optimizer.param_groups] == [2e-4, 2e-4]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]  # norms stay at zero


def test_a_step_decays_only_the_decayed_group():
    model = ScratchForCausalLM(small_config())
    optimizer = build_optimizer(model, pretrain_config(weight_decay=0.5))
    set_hyperparameters(optimizer, lr=0.1, weight_decay=0.5, step=0)
    norm, matrix = model.model.norm.weight, model.model.layers[0].mlp.up_proj.weight
    before = norm.detach().clone(), matrix.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # no gradient: only weight decay can move a parameter
    optimizer.step()
    torch.testing.assert_close(norm, before[0], rtol=0, atol=0)
    torch.testing.assert_close(matrix, before[1] * (1 - 0.1 * 0.5), rtol=1e-6, atol=0)


# --- Muon -------------------------------------------------------------------------------------------


def muon_model(**overrides):
    torch.manual_seed(0)
    model = ScratchForCausalLM(small_config(**overrides))  # hidden 64, ffn 128
    config = pretrain_config(optimizer="muon", learning_rate=1e-3, weight_decay=0.1)
    return model, build_optimizer(model, config)


def group_of(optimizer, param) -> dict:
    (group,) = [g for g in optimizer.param_groups if any(p is param for p in g["params"])]
    return group


@pytest.mark.parametrize("bitnet", [False, True])
def test_muon_takes_the_hidden_matrices_and_adamw_the_rest_at_nanochats_rates(bitnet):
    model, optimizer = muon_model(tie_word_embeddings=False, bitnet=bitnet)
    width = (64 / 768) ** -0.5
    seen = []
    for name, param in model.named_parameters():
        group = group_of(optimizer, param)
        seen.append(name)
        if name == "model.embed_tokens.weight":
            assert (group["kind"], group["lr"]) == ("adamw", pytest.approx(0.2 * width)), name
        elif name == "lm_head.weight":
            assert (group["kind"], group["lr"]) == ("adamw", pytest.approx(0.004 * width)), name
        elif param.ndim == 1:  # norms, BitNet's input norms
            assert (group["kind"], group["lr"], group["wd_scale"]) == ("adamw", 1e-3, 0.0), name
        else:
            rows, cols = param.shape
            assert group["kind"] == "muon" and group["wd_scale"] == 1.0, name
            assert group["lr"] == pytest.approx(0.02 * math.sqrt(max(1, rows / cols))), name
    assert len(seen) == sum(len(g["params"]) for g in optimizer.param_groups)  # each parameter once
    up, down = model.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.down_proj.weight
    assert group_of(optimizer, up)["lr"] == pytest.approx(0.02 * math.sqrt(2))
    assert group_of(optimizer, down)["lr"] == 0.02
    if bitnet:
        assert any("input_norm" in n for n in seen)
    tied, tied_optimizer = muon_model(tie_word_embeddings=True)  # the tied matrix is the head: the head's lr
    assert group_of(tied_optimizer, tied.model.embed_tokens.weight)["lr"] == pytest.approx(0.004 * width)


def test_the_schedule_scales_every_group_and_warms_muons_momentum():
    model, optimizer = muon_model()
    peaks = [g["lr"] for g in optimizer.param_groups]
    for step, momentum in ((0, 0.85), (150, 0.90), (300, 0.95), (5000, 0.95)):
        set_hyperparameters(optimizer, lr=0.5e-3, weight_decay=0.1, step=step)  # half the peak learning_rate
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([p / 2 for p in peaks])
        for group in optimizer.param_groups:
            assert group["weight_decay"] == 0.1 * group["wd_scale"]
            if group["kind"] == "muon":
                assert group["momentum"] == pytest.approx(momentum), step


def test_orthogonalize_brings_every_singular_value_near_one():
    """From singular values spread over 100x to about [0.7, 1.2] (the quintic's band, not exactly 1)."""
    generator = torch.Generator().manual_seed(0)
    for rows, cols in ((64, 128), (128, 64), (48, 48)):
        k = min(rows, cols)
        u, _ = torch.linalg.qr(torch.randn(rows, k, generator=generator))
        v, _ = torch.linalg.qr(torch.randn(cols, k, generator=generator))
        update = u @ torch.diag(torch.logspace(-2, 0, k)) @ v.T
        singular = torch.linalg.svdvals(orthogonalize(update, steps=5))
        assert singular.min() > 0.6 and singular.max() < 1.25, (rows, cols, singular.min(), singular.max())


def test_muons_steps_match_torchs_muon_and_its_adamw_torchs_adamw():
    """Three steps of ours against torch.optim.Muon (bf16 Newton-Schulz, hence the tolerance) and AdamW (exact
    algebra, fp32 rounding) from the same weights and gradients."""
    model, optimizer = muon_model()
    matrix, embedding = model.model.layers[1].mlp.up_proj.weight, model.model.embed_tokens.weight  # 128 x 64
    start = matrix.detach().clone()
    reference = {"matrix": matrix.detach().clone(), "embedding": embedding.detach().clone()}
    # torch's Muon scales its lr by sqrt(max(1, rows/cols)) itself: give it the unscaled 0.02.
    theirs_muon = torch.optim.Muon([reference["matrix"]], lr=0.02, weight_decay=0.1, momentum=0.95)
    theirs_adamw = torch.optim.AdamW([reference["embedding"]], lr=group_of(optimizer, embedding)["lr"],
                                     betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)  # fmt: skip
    generator = torch.Generator().manual_seed(1)
    for step in range(3):
        set_hyperparameters(optimizer, lr=1e-3, weight_decay=0.1, step=1000)  # momentum 0.95, peak lrs
        for mine, theirs in ((matrix, reference["matrix"]), (embedding, reference["embedding"])):
            mine.grad = torch.randn(mine.shape, generator=generator)
            theirs.grad = mine.grad.clone()
        optimizer.step()
        theirs_muon.step()
        theirs_adamw.step()
        torch.testing.assert_close(embedding, reference["embedding"], rtol=1e-5, atol=1e-7)
        moved = (matrix - start).norm()
        assert moved > 0.02 * math.sqrt(2) * 0.5 * (step + 1)  # each step moves it by about lr x sqrt(64)/8
        assert (matrix - reference["matrix"]).norm() / moved < 2e-2, step  # bf16 vs fp32 Newton-Schulz only


def test_the_state_each_optimizer_keeps_is_what_the_planner_counts():
    counted = {}
    for name in ("adamw", "muon"):
        torch.manual_seed(0)
        model = ScratchForCausalLM(small_config())
        optimizer = build_optimizer(model, pretrain_config(optimizer=name))
        set_hyperparameters(optimizer, lr=1e-3, weight_decay=0.1, step=0)
        ids = torch.randint(0, 1000, (2, 9))
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        counted[name] = sum(state_bytes(name, model).values())
        assert held_state_bytes(optimizer) == counted[name], name
    matrices = sum(p.numel() for n, p in model.named_parameters() if p.ndim == 2 and "embed" not in n)
    assert counted["adamw"] - counted["muon"] == 4 * matrices  # one fp32 buffer per matrix element, not two
    assert step_transient_bytes("adamw", model) == 0
    # The largest matrix is 64 x 128: fp32 gathered, then X twice (64 x 128) and three 64 x 64 in fp32.
    assert step_transient_bytes("muon", model) == 4 * 64 * 128 + 4 * (2 * 64 * 128 + 3 * 64 * 64)


def test_muon_refuses_a_hidden_weight_that_is_not_a_matrix():
    model = ScratchForCausalLM(small_config())
    model.model.layers[0].mlp.register_parameter("experts", torch.nn.Parameter(torch.zeros(2, 8, 8)))
    with pytest.raises(ScratchError) as refused:
        build_optimizer(model, pretrain_config(optimizer="muon"))
    assert str(refused.value) == (
        "optimizer muon cannot train this model: parameter model.layers.0.mlp.experts has shape (2, 8, 8); "
        "Muon updates only 2-D matrices; use optimizer: adamw"
    )
    build_optimizer(model, pretrain_config(optimizer="adamw"))  # AdamW trains any shape


def test_bad_optimizer_keys_are_one_line_each():
    with pytest.raises(ScratchError, match="'optimizer' must be one of adamw, muon, got 'sgd'"):
        pretrain_config(optimizer="sgd")
    with pytest.raises(ScratchError) as refused:
        pretrain_config(muon_lr=0.01, muon_ns_steps=4)
    assert str(refused.value) == (
        "config: muon_lr, muon_ns_steps set but optimizer is adamw; set optimizer: muon or drop them"
    )
    assert pretrain_config(optimizer="muon", muon_lr=0.01).muon_lr == 0.01


# --- across processes -------------------------------------------------------------------------------


def launch_worker(out, processes: int, runs: list[str], **options) -> dict[str, tuple[dict, dict]]:
    out.mkdir(parents=True)
    script, port = REPO / "tests" / "optimizer_worker.py", str(free_port())
    command = [shutil.which("torchrun"), "--nproc_per_node", str(processes), "--master_port", port, str(script),
               str(out), ",".join(runs), *(f"{k}={v}" for k, v in options.items())]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return {r: (load_file(str(out / f"{r}.safetensors")), json.loads((out / f"{r}.json").read_text())) for r in runs}


def test_muon_updates_agree_on_one_process_ddp_and_fsdp2_with_and_without_compile(tmp_path):
    """The same global batch (2 windows x 4 micro-batches per step) for 4 steps of the loop's Stepper: one process,
    DDP on 2, FSDP2 on 2 (sharded matrices, orthogonalised whole), FSDP2 on 2 compiled. About 80 s."""
    reference, one = launch_worker(tmp_path / "one", 1, ["plain"], accumulation=4)["plain"]
    torch.manual_seed(0)
    model = ScratchForCausalLM(small_config(vocab_size=512, tie_word_embeddings=False))
    initial = {name: param.detach() for name, param in model.named_parameters()}
    for name, weight in reference.items():  # every parameter trained: the comparisons below compare updates
        assert (weight - initial[name]).norm() > 1e-3 * initial[name].norm(), name
    moved = reference["model.layers.0.mlp.up_proj.weight"] - initial["model.layers.0.mlp.up_proj.weight"]
    assert moved.norm() > 0.1 * initial["model.layers.0.mlp.up_proj.weight"].norm()  # Muon's lr 0.02, not 1e-3
    runs = launch_worker(tmp_path / "two", 2, ["plain", "fsdp2", "fsdp2+compile"], accumulation=2)
    assert one["sharded"] == runs["plain"][1]["sharded"] == 0  # one process, then DDP: plain tensors
    assert runs["fsdp2"][1]["sharded"] == runs["fsdp2+compile"][1]["sharded"] == len(reference)
    for label, (weights, record) in runs.items():
        torch.testing.assert_close(record["losses"], one["losses"], rtol=1e-5, atol=0, msg=label)
        for name, weight in reference.items():
            error = float((weights[name] - weight).norm() / (weight - initial[name]).norm())
            assert error < 1e-4, (label, name, error)  # fp32: only the order of the sums differs


# --- checkpoints ------------------------------------------------------------------------------------


def train_steps(model, optimizer, seed: int, steps: int = 2) -> None:
    generator = torch.Generator().manual_seed(seed)
    for step in range(steps):
        set_hyperparameters(optimizer, lr=1e-3, weight_decay=0.1, step=step)
        ids = torch.randint(0, 1000, (2, 9), generator=generator)
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def test_muons_state_saves_and_resumes_bit_identically(tmp_path, tokenizer_dir):
    from scratchlm.tokenization import load_tokenizer
    from scratchlm.train.checkpoint import load_checkpoint, save_checkpoint

    model, optimizer = muon_model()
    train_steps(model, optimizer, seed=1)
    path = tmp_path / "step_00000002"
    save_checkpoint(path, model, optimizer, {"step": 2}, model.config, load_tokenizer(tokenizer_dir))
    assert json.loads((path / "optimizer" / "param_groups.json").read_text())["optimizer"] == "muon"
    other, other_optimizer = muon_model()
    train_steps(other, other_optimizer, seed=2)  # other weights, other momentum
    load_checkpoint(path, other, other_optimizer)
    buffers = {name: optimizer.state[p] for name, p in model.named_parameters()}
    for name, param in other.named_parameters():
        torch.testing.assert_close(param, dict(model.named_parameters())[name], rtol=0, atol=0)
        state = other_optimizer.state[param]
        assert state.keys() == buffers[name].keys() and state, name  # momentum_buffer, or step and two moments
        for key, value in state.items():
            torch.testing.assert_close(value, buffers[name][key], rtol=0, atol=0, msg=f"{name} {key}")
    train_steps(model, optimizer, seed=3)
    train_steps(other, other_optimizer, seed=3)
    for (name, param), resumed in zip(model.named_parameters(), other.parameters(), strict=True):
        torch.testing.assert_close(resumed, param, rtol=0, atol=0, msg=name)  # the same next steps, exactly


def test_the_other_optimizers_state_is_refused_unless_reset(tmp_path, tokenizer_dir):
    from scratchlm.tokenization import load_tokenizer
    from scratchlm.train.checkpoint import load_checkpoint, save_checkpoint

    model, optimizer = muon_model()
    train_steps(model, optimizer, seed=1)
    path = tmp_path / "step_00000002"
    save_checkpoint(path, model, optimizer, {"step": 2}, model.config, load_tokenizer(tokenizer_dir))
    adamw = build_optimizer(model, pretrain_config())
    with pytest.raises(ScratchError) as refused:
        load_checkpoint(path, model, adamw)
    assert str(refused.value) == (
        f"{path} holds muon optimizer state and this run's optimizer is adamw; set optimizer: muon to continue "
        "it, or pass --reset_optimizer true to start adamw's state from zero"
    )
    torch.nn.init.zeros_(model.model.norm.weight)
    load_checkpoint(path, model, adamw, reset_optimizer=True)
    assert model.model.norm.weight.abs().min() > 0 and not adamw.state  # the weights, and no foreign state


def test_muon_through_the_loop_resumes_exactly_and_a_resume_with_adamw_is_refused(tmp_path, shards_dir):
    """`accelerate launch recipes/pretrain.py` as users run it: 6 steps straight, and 3 + 3 in two launches."""
    straight = small_run(tmp_path / "a", shards_dir, optimizer="muon", max_steps=6, save_steps=3)
    launch(tmp_path / "a", "--config", str(straight))
    paused = small_run(tmp_path / "b", shards_dir, optimizer="muon", max_steps=6, save_steps=3)
    launch(tmp_path / "b", "--config", str(paused), "--stop_at_step", "3")
    refused = launch(tmp_path / "b", "--config", str(paused), "--optimizer", "adamw", fails=True)
    checkpoint = tmp_path / "b" / "run" / "checkpoints" / "step_00000003"
    expected = (
        f"error: {checkpoint} holds muon optimizer state and this run's optimizer is adamw; set optimizer: muon to "
        "continue it, or pass --reset_optimizer true to start adamw's state from zero"
    )
    assert expected in refused.stderr.splitlines()  # one line of its own, exit status 2, before any step
    assert max(train_losses(tmp_path / "b" / "run")) == 3  # nothing trained
    launch(tmp_path / "b", "--config", str(paused))
    a, b = train_losses(tmp_path / "a" / "run"), train_losses(tmp_path / "b" / "run")
    assert sorted(a) == sorted(b) == list(range(1, 7)) and a[6]["loss"] < a[1]["loss"] - 0.5
    for step in a:
        assert (a[step]["loss"], a[step]["grad_norm"], a[step]["lr"]) == (b[step]["loss"], b[step]["grad_norm"],
                                                                          b[step]["lr"]), step  # fmt: skip


def test_the_planner_counts_the_state_of_the_runs_optimizer():
    """No planner line assumes AdamW: a Muon run's plan keeps one fp32 buffer per matrix element, not two."""
    from types import SimpleNamespace

    from scratchlm.model.presets import build_config
    from scratchlm.train.memory import TrainingSetup, estimate_memory, setup_for_run

    config = build_config({"preset": "genesis-1b"})
    with torch.device("meta"):
        model = ScratchForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())
    matrices = sum(p.numel() for n, p in model.named_parameters() if p.ndim == 2 and "embed" not in n)
    adamw = estimate_memory(TrainingSetup(config, 2048, 4)).terms
    assert adamw["optimizer"] == 8 * total
    plan = SimpleNamespace(seq_len=2048, micro_batch=4, accumulation=1, world_size=2)
    muon = setup_for_run(pretrain_config(optimizer="muon"), config, plan)
    assert (muon.optimizer, muon.sharded) == ("muon", True)
    assert estimate_memory(muon).terms["optimizer"] == (8 * total - 4 * matrices) // 2
    # Its step gathers the largest matrix (4736 x 1536) whole in fp32 and runs Newton-Schulz on it in bf16.
    assert estimate_memory(muon).terms["transient"] >= 4 * 4736 * 1536 + 2 * (2 * 4736 * 1536 + 3 * 1536**2)
