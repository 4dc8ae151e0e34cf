"""Document masking: a packed document's logits equal the document's alone, in the forwards the loop and the
evaluations run (the training step and bits-per-byte), on every attention backend a CPU has, with and without
activation checkpointing and compiled. The old training forward (a cache left on) let documents attend to each
other: its differences are printed for comparison."""

import pytest
import torch
import torch.nn.functional as F

from helpers import small_config
from scratchlm.data.loader import document_positions
from scratchlm.errors import ScratchError
from scratchlm.eval.bpb import token_nats
from scratchlm.model import ScratchForCausalLM
from scratchlm.train.config import PretrainConfig
from scratchlm.train.parallel import World, wrap_model
from scratchlm.train.step import Stepper

WORLD = World(rank=0, size=1, local_rank=0, device=torch.device("cpu"), fsdp=False, bf16=False)
BOS = 0
TOLERANCE = 1e-4  # fp32; equal up to the order of floating-point sums


def documents():
    generator = torch.Generator().manual_seed(0)
    first = [BOS] + torch.randint(5, 1000, (28,), generator=generator).tolist()
    second = [BOS] + torch.randint(5, 1000, (35,), generator=generator).tolist()
    return first, second


def packed_batch():
    """Two 64-token windows as the loader makes them: a+b and b+a (65 tokens each, 64 inputs and labels)."""
    first, second = documents()
    rows = torch.tensor([first + second, second + first])
    inputs = rows[:, :-1]
    return {
        "input_ids": inputs,
        "labels": rows[:, 1:],
        "position_ids": torch.from_numpy(document_positions(inputs.numpy(), BOS)),
        "window_ids": torch.tensor([[0, 0], [0, 1]]),
    }


def model_with(attn: str) -> ScratchForCausalLM:
    torch.manual_seed(0)
    config = small_config(max_position_embeddings=128)
    config._attn_implementation = attn
    return ScratchForCausalLM(config)


def alone(model, document: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([document])).logits[0]


def differences(packed_logits: torch.Tensor, model) -> float:
    """Largest difference between each document's logits in both windows and its logits alone."""
    first, second = documents()
    a, b = alone(model, first), alone(model, second)
    return max(
        (packed_logits[0, : len(first)] - a).abs().max().item(),
        (packed_logits[0, len(first) :] - b[: 64 - len(first)]).abs().max().item(),
        (packed_logits[1, : len(second)] - b).abs().max().item(),
        (packed_logits[1, len(second) :] - a[: 64 - len(second)]).abs().max().item(),
    )


# flex_attention has no backward on a CPU (torch 2.13): its training step is in the device check.
CASES = [
    ("sdpa", False, False),
    ("sdpa", True, False),
    ("eager", False, False),
    ("eager", True, False),
    ("sdpa", False, True),  # compiled per block with inductor, as GPU recipes run
]


@pytest.mark.parametrize(("attn", "checkpointing", "compiled"), CASES)
def test_the_training_step_keeps_packed_documents_apart(attn, checkpointing, compiled):
    model = model_with(attn)
    config = PretrainConfig(
        output_dir="unused", model_preset="tiny", data_dir="unused", max_steps=1, per_device_train_batch_size=2,
        gradient_checkpointing=checkpointing, torch_compile=compiled,
    )  # fmt: skip
    trained = wrap_model(model, WORLD, config)
    reference = model_with(attn)  # the same weights, never wrapped
    captured = []

    def loss_keeping_logits(hidden, head, labels):
        logits = head(hidden)
        captured.append(logits.detach())
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten())

    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    stepper = Stepper(
        model=trained,
        optimizer=optimizer,
        loader=iter([packed_batch()]),
        accumulation=1,
        world=WORLD,
        config=config,
        loss_fn=loss_keeping_logits,
    )
    result = stepper.step(1, False, lambda: None)
    assert result.loss > 0 and result.grad_norm > 0  # it did train on the batch
    assert differences(captured[0], reference) <= TOLERANCE


@pytest.mark.parametrize("attn", ["sdpa", "eager", "flex_attention"])
def test_the_evaluation_forward_keeps_packed_documents_apart(attn):
    model = model_with(attn).eval()
    batch = packed_batch()
    with torch.no_grad():
        nats = token_nats(model, batch["input_ids"], batch["labels"], batch["position_ids"])
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    assert differences(logits, model) <= TOLERANCE
    first, second = documents()
    alone_nats = F.cross_entropy(alone(model, second)[:-1], torch.tensor(second[1:]), reduction="none")
    torch.testing.assert_close(nats[0, len(first) : len(first) + len(second) - 1], alone_nats, rtol=0, atol=TOLERANCE)


def test_a_cache_left_on_lets_documents_attend_to_each_other():
    """What the loop did before: `model(input_ids, position_ids)` with transformers' default use_cache=True."""
    model = model_with("sdpa")
    batch = packed_batch()
    with torch.no_grad():
        leaky = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    assert differences(leaky, model) > 0.1


def test_flash_attention_with_packed_micro_batches_is_refused_at_start_up():
    with pytest.raises(ScratchError, match="flash_attention_2 needs per_device_train_batch_size 1"):
        PretrainConfig(output_dir="x", model_preset="tiny", data_dir="x", max_steps=1,
                       attn_implementation="flash_attention_2", per_device_train_batch_size=4)  # fmt: skip
    PretrainConfig(output_dir="x", model_preset="tiny", data_dir="x", max_steps=1,
                   attn_implementation="flash_attention_2", per_device_train_batch_size=1)  # fmt: skip
