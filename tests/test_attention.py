"""One owner for the attention backend (model/attention.py): the memory planner estimates the backend the
loop gives the run, for the same config, planned on this CPU or on a GPU (faked: torch.cuda.is_available
and the flash-attn probe); a CPU trains with sdpa and refuses flex_attention; a named backend is checked."""

from types import SimpleNamespace

import pytest
import torch

from scratchlm.errors import ScratchError
from scratchlm.model import attention
from scratchlm.model.presets import build_config
from scratchlm.train import loop
from scratchlm.train.config import PretrainConfig
from scratchlm.train.memory import setup_for_run
from scratchlm.train.plan import plan_run


class Tokenizer:
    """What build_model reads of a tokenizer."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __len__(self):
        return 100


def pretrain_config(**overrides) -> PretrainConfig:
    return PretrainConfig(output_dir="x", model_preset="tiny", data_dir="x", max_steps=1, **overrides)


def planned_attention(config: PretrainConfig, model_config) -> str:
    """The attention `scratchlm plan --recipe` estimates memory for (train/plan.py recipe_plan)."""
    return setup_for_run(config, model_config, plan_run(config, model_config, 1)[0]).attention


def on_a_gpu(monkeypatch, flash_attn: bool | None):
    """This process as a GPU machine: CUDA available, and flash-attn working (True), not (False), or probed
    for real (None: here it is not installed, or cannot run without CUDA)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    attention.flash_attention_works.cache_clear()  # the probe's answer is cached per process
    if flash_attn is not None:
        monkeypatch.setattr(attention, "flash_attention_works", lambda: flash_attn)


@pytest.fixture(autouse=True)
def fresh_probe():
    attention.flash_attention_works.cache_clear()
    yield
    attention.flash_attention_works.cache_clear()


@pytest.mark.parametrize("requested", ["", "eager"])
@pytest.mark.parametrize("masking", [True, False])
@pytest.mark.parametrize("planned_on", ["cpu", "gpu", "gpu with flash-attn"])
def test_the_planner_estimates_the_backend_the_loop_gives_the_gpu_run(monkeypatch, planned_on, masking, requested):
    """On a GPU the planner and the loop run on the same machine; from a CPU the planner plans the GPU run,
    where flash-attn cannot be probed (the loop's GPU is then faked with the real probe)."""
    config = pretrain_config(document_masking=masking, attn_implementation=requested)
    flash = {"cpu": None, "gpu": False, "gpu with flash-attn": True}[planned_on]
    if planned_on == "cpu":
        planned = planned_attention(config, build_config({"preset": config.model_preset}))
        on_a_gpu(monkeypatch, flash)  # the run it plans
    else:
        on_a_gpu(monkeypatch, flash)
        planned = planned_attention(config, build_config({"preset": config.model_preset}))
    built = []  # the model's constructor: flash_attention_2 cannot be built where flash-attn is absent
    monkeypatch.setattr(loop, "ScratchForCausalLM", lambda c: built.append(c) or SimpleNamespace(config=c))
    _, model_config = loop.build_model(config, None, Tokenizer())
    expected = requested or ("flex_attention" if masking else "flash_attention_2" if flash else "sdpa")
    assert planned == model_config._attn_implementation == built[-1]._attn_implementation == expected


def test_a_cpu_trains_with_sdpa_and_refuses_flex_attention():
    model, model_config = loop.build_model(pretrain_config(document_masking=True), None, Tokenizer())
    assert model.config._attn_implementation == model_config._attn_implementation == "sdpa"
    with pytest.raises(ScratchError, match="flex_attention trains only on a GPU"):
        loop.build_model(pretrain_config(attn_implementation="flex_attention"), None, Tokenizer())


def test_a_backend_the_config_does_not_know_is_refused_with_the_names():
    with pytest.raises(ScratchError) as refused:
        pretrain_config(attn_implementation="flash_attention_3")
    assert str(refused.value).endswith(
        "'attn_implementation' must be one of '' (chosen for the hardware), sdpa, eager, flex_attention, "
        "flash_attention_2, got 'flash_attention_3'"
    )
