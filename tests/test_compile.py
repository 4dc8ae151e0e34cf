"""Compile that really compiles: every decoder block of the loop's wrap_model becomes a graph under every
activation-checkpointing policy, with and without FSDP2, with no graph break inside it, and the loop's step
gives eager's loss and gradients; the same for the compiled loss. Counted from what dynamo hands the backend."""

import pytest
import torch
import torch.distributed as dist
from torch._dynamo.utils import counters

from helpers import small_config
from scratchlm.model import ScratchForCausalLM
from scratchlm.train.config import PretrainConfig
from scratchlm.train.parallel import World, unwrapped, wrap_model
from scratchlm.train.step import Stepper

CAPTURED = []  # per graph dynamo made: the ops in it, higher-order operators' bodies included


def ops_in(graph: torch.fx.GraphModule) -> int:
    """Calls in a graph and in every subgraph it holds (a checkpoint region is one higher-order op whose
    body is a subgraph)."""
    own = sum(node.op in ("call_function", "call_method") for node in graph.graph.nodes)
    return own + sum(ops_in(child) for child in graph.children() if isinstance(child, torch.fx.GraphModule))


def recording(graph, example_inputs):
    from torch._dynamo.backends.debugging import aot_eager

    CAPTURED.append(ops_in(graph))
    return aot_eager(graph, example_inputs)


torch._dynamo.register_backend(recording, name="recording")


def batch():
    generator = torch.Generator().manual_seed(1)
    rows = torch.randint(0, 1024, (2, 33), generator=generator)
    positions = torch.cat([torch.arange(16), torch.arange(16)]).repeat(2, 1)  # two documents per window
    windows = torch.zeros(2, 2, dtype=torch.long)
    return {"input_ids": rows[:, :-1], "labels": rows[:, 1:], "position_ids": positions, "window_ids": windows}


def step(policy: str, fsdp: bool, compiled: bool):
    """One step of the loop's Stepper on the loop's wrap_model: (loss, gradient norm, a layer's gradient)."""
    torch.manual_seed(0)
    model = ScratchForCausalLM(small_config(max_position_embeddings=64))
    model.config._attn_implementation = "sdpa"
    config = PretrainConfig(
        output_dir="unused", model_preset="tiny", data_dir="unused", max_steps=1, per_device_train_batch_size=2,
        gradient_checkpointing=policy != "none", gradient_checkpointing_policy="full" if policy == "none" else policy,
        torch_compile=compiled, torch_compile_backend="recording",
    )  # fmt: skip
    world = World(rank=0, size=1, local_rank=0, device=torch.device("cpu"), fsdp=fsdp, bf16=False)
    wrapped = wrap_model(model, world, config)
    optimizer = torch.optim.SGD(unwrapped(wrapped).parameters(), lr=0.0)
    grads = {}
    optimizer.step = lambda: grads.update(  # what the step hands the optimizer, before zero_grad
        {n: p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad.clone()
         for n, p in unwrapped(wrapped).named_parameters()})  # fmt: skip
    stepper = Stepper(model=wrapped, optimizer=optimizer, loader=iter([batch()]), accumulation=1, world=world,
                      config=config)  # fmt: skip
    result = stepper.step(1, False, lambda: None)
    return result.loss, grads


@pytest.fixture(scope="module")
def process_group():
    """FSDP2 over a gloo process group of one, as a one-GPU FSDP launch has (NCCL there)."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("fsdp", [False, True], ids=["one-process", "fsdp2"])
@pytest.mark.parametrize("policy", ["none", "full", "selective"])
def test_every_block_compiles_under_every_checkpointing_policy(policy, fsdp, process_group):
    torch._dynamo.reset()
    counters.clear()
    CAPTURED.clear()
    eager_loss, eager_grads = step(policy, fsdp, compiled=False)
    assert not CAPTURED
    loss, grads = step(policy, fsdp, compiled=True)
    breaks = dict(counters["graph_break"])
    assert not breaks, breaks  # nothing of a block or of the loss ran eager
    # Two graphs: the decoder block (one graph serves both layers) and the loss. The block's holds the
    # whole layer: its attention, MLP and norms (checkpointed: inside the checkpoint's body).
    assert len(CAPTURED) == 2, CAPTURED
    block, loss_ops = CAPTURED
    assert block >= 50 and loss_ops >= 10, CAPTURED
    assert counters["stats"]["unique_graphs"] == 2
    assert loss == pytest.approx(eager_loss, rel=1e-5)
    assert grads.keys() == eager_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, eager_grads[name], rtol=1e-4, atol=1e-6, msg=name)
