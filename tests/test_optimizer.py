"""AdamW's parameter groups and the schedule's hyperparameters on them: matrices decay, norms and biases never
do, the embeddings (and a tied or untied LM head) only when asked."""

import torch

from helpers import small_config
from scratchlm.model import ScratchForCausalLM
from scratchlm.train.config import PretrainConfig
from scratchlm.train.optimizer import build_optimizer, set_hyperparameters


def groups(tied: bool, embedding_weight_decay: bool) -> tuple[set[str], set[str], torch.optim.Optimizer]:
    model = ScratchForCausalLM(small_config(tie_word_embeddings=tied))
    config = PretrainConfig(output_dir="x", model_preset="tiny", data_dir="x", max_steps=1, weight_decay=0.1,
                            embedding_weight_decay=embedding_weight_decay)  # fmt: skip
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
    set_hyperparameters(optimizer, lr=2e-4, weight_decay=0.05)
    assert [g["lr"] for g in optimizer.param_groups] == [2e-4, 2e-4]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]  # norms stay at zero


def test_a_step_decays_only_the_decayed_group():
    model = ScratchForCausalLM(small_config())
    config = PretrainConfig(output_dir="x", model_preset="tiny", data_dir="x", max_steps=1, weight_decay=0.5)
    optimizer = build_optimizer(model, config)
    set_hyperparameters(optimizer, lr=0.1, weight_decay=0.5)
    norm, matrix = model.model.norm.weight, model.model.layers[0].mlp.up_proj.weight
    before = norm.detach().clone(), matrix.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # no gradient: only weight decay can move a parameter
    optimizer.step()
    torch.testing.assert_close(norm, before[0], rtol=0, atol=0)
    torch.testing.assert_close(matrix, before[1] * (1 - 0.1 * 0.5), rtol=1e-6, atol=0)
