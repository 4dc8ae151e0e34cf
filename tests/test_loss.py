"""The chunked loss is the plain loss: same value and gradients, through the training forward
(model.model + lm_loss), for every head we build; and it never holds the micro-batch's logits.

Run as a script under torchrun it is the FSDP2 worker of the last test.
"""

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from scratchlm.model import loss as loss_module
from scratchlm.model.loss import default_chunk_tokens, lm_loss, plain_lm_loss
from scratchlm.model.modeling_scratch import ScratchForCausalLM
from scratchlm.model.presets import build_config

REPO = Path(__file__).resolve().parents[1]
SHAPE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64)


def tiny_model(vocab=300, tied=True, softcap=None, seed=0):
    config = build_config(
        {**SHAPE, "vocab_size": vocab, "max_position_embeddings": 64, "tie_word_embeddings": tied},
        logit_softcap=softcap,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return ScratchForCausalLM(config)


def batch(vocab=300, rows=3, seq=21, seed=1):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (rows, seq), generator=generator)
    labels = torch.randint(0, vocab, (rows, seq), generator=generator)
    labels[0, :5] = -100  # a prompt that is not trained on
    labels[2, -1] = -100
    positions = torch.arange(seq).repeat(rows, 1)
    positions[:, 12:] -= 12  # two packed documents per row
    return ids, positions, labels


def loss_and_grads(model, loss_fn, data, **kwargs):
    """The training forward and backward; the gradients of every parameter, by name."""
    model.zero_grad(set_to_none=True)
    ids, positions, labels = data
    hidden = model.model(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state
    loss = loss_fn(hidden, model.lm_head, labels, **kwargs)
    (loss * 0.37).backward()  # not 1: the stored gradients must be scaled by what flows back
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


# 63 tokens: 1 and 8 chunk them unevenly (8 does not divide 63), 63 is one chunk, 1000 more than all.
@pytest.mark.parametrize("chunk_tokens", [1, 8, 63, 1000])
@pytest.mark.parametrize("tied,softcap", [(True, None), (False, None), (True, 30.0), (False, 5.0)])
def test_chunked_loss_equals_the_plain_loss_in_fp32(chunk_tokens, tied, softcap):
    model, data = tiny_model(tied=tied, softcap=softcap), batch()
    expected, expected_grads = loss_and_grads(model, plain_lm_loss, data)
    got, grads = loss_and_grads(model, lm_loss, data, chunk_tokens=chunk_tokens)
    assert relative_error(got, expected) <= 1e-5
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():  # the embeddings (tied: the head too), every layer, the norm
        assert relative_error(grad, expected_grads[name]) <= 1e-5, name
    if tied:
        assert model.lm_head.weight is model.model.embed_tokens.weight


def test_a_batch_without_labels_is_nan_as_in_cross_entropy():
    model, (ids, positions, labels) = tiny_model(), batch()
    hidden = model.model(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state
    nothing = torch.full_like(labels, -100)
    assert lm_loss(hidden, model.lm_head, nothing).isnan() and plain_lm_loss(hidden, model.lm_head, nothing).isnan()


def test_evaluation_without_grad_gives_the_same_loss_and_backward_twice_is_refused():
    model, (ids, positions, labels) = tiny_model(softcap=10.0), batch()
    with torch.no_grad():
        hidden = model.model(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state
        assert lm_loss(hidden, model.lm_head, labels, chunk_tokens=5) == pytest.approx(
            float(plain_lm_loss(hidden, model.lm_head, labels)), rel=1e-6
        )
    hidden = model.model(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state
    loss = lm_loss(hidden, model.lm_head, labels)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward twice"):
        loss.backward()


def test_bf16_autocast_is_as_close_to_fp32_as_the_plain_autocast_loss():
    """Under autocast both compute the logits from bf16 matmuls (8-bit mantissa: relative error
    ~2^-8 = 0.4% per value), so neither equals fp32. Ours computes the softcap and the softmax in
    fp32 and sums its weight-gradient chunks in fp32, the plain loss's bf16 head output is capped in
    bf16: ours must be within 2% of the fp32 result and at most 1.5x the plain loss's own error."""
    model, data = tiny_model(vocab=500, softcap=30.0), batch(vocab=500)
    truth, truth_grads = loss_and_grads(model, plain_lm_loss, data)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain, plain_grads = loss_and_grads(model, plain_lm_loss, data)
        ours, grads = loss_and_grads(model, lm_loss, data, chunk_tokens=16)
    assert relative_error(ours, truth) <= max(0.02, 1.5 * relative_error(plain, truth))
    for name, grad in grads.items():
        ours_error, plain_error = (
            relative_error(grad, truth_grads[name]),
            relative_error(plain_grads[name], truth_grads[name]),
        )
        assert ours_error <= 0.02 and ours_error <= 1.5 * plain_error + 1e-3, (name, ours_error, plain_error)


def peak_bytes_of(function, *inputs) -> int:
    """Peak bytes of tensors alive while `function` runs, above its inputs (torch's MemTracker)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    tracker.track_external(*inputs)
    with tracker:
        before = tracker.get_tracker_snapshot()[torch.device("cpu")]["Total"]
        function()
        return tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"] - before


@pytest.mark.parametrize("loss_fn", [lm_loss, plain_lm_loss])
def test_only_one_chunk_of_logits_ever_exists(loss_fn):
    """Doubling the tokens must not add their logits (2,048 x 4,096 fp32 = 32 MiB) to the peak of the
    loss's forward and backward: ours grows by the gradient w.r.t. the hidden states only (256 KiB),
    and its peak stays a few chunks of logits (64 x 4,096). The plain loss, measured the same way,
    shows what materialising them looks like."""
    vocab, width, chunk = 4096, 32, 64
    head = torch.nn.Linear(width, vocab, bias=False)
    kwargs = {"chunk_tokens": chunk} if loss_fn is lm_loss else {}

    def peak(tokens: int) -> int:
        hidden = torch.randn(tokens, width, requires_grad=True)
        labels = torch.randint(0, vocab, (tokens,))
        head.zero_grad(set_to_none=True)
        return peak_bytes_of(lambda: loss_fn(hidden, head, labels, **kwargs).backward(), head, hidden, labels)

    small, large = peak(2048), peak(4096)
    all_logits = 2048 * vocab * 4
    if loss_fn is plain_lm_loss:
        assert large - small >= all_logits  # the measurement sees materialised logits
        return
    assert large - small <= 2 * 2048 * width * 4
    chunk_logits = chunk * vocab * 4
    weight_gradient = vocab * width * 4
    assert small <= 3 * chunk_logits + 3 * weight_gradient + 4096 * width * 4 * 2


def test_default_chunk_keeps_one_chunk_of_fp32_logits_under_256_mib():
    assert default_chunk_tokens(65536) == 1024 and default_chunk_tokens(32005) == 2048
    assert default_chunk_tokens(49152) == 1024 and default_chunk_tokens(10**9) == 1
    for vocab in (4096, 32000, 49152, 65536, 151_936):
        assert default_chunk_tokens(vocab) * vocab * 4 <= 256 * 2**20


def test_liger_is_used_on_cuda_when_installed_with_fp32_accumulation_and_the_softcap(monkeypatch):
    assert loss_module.liger_loss(torch.device("cpu")) is None  # its Triton kernels need CUDA
    calls = []
    functional = types.ModuleType("liger_kernel.transformers.functional")
    functional.liger_fused_linear_cross_entropy = lambda *args, **kwargs: calls.append((args, kwargs)) or "loss"
    for name in ("liger_kernel", "liger_kernel.transformers"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.functional", functional)
    monkeypatch.setattr(loss_module.importlib.util, "find_spec", lambda name: object())
    fused = loss_module.liger_loss(torch.device("cuda"))
    hidden, weight, labels = torch.zeros(4, 8), torch.zeros(16, 8), torch.zeros(4, dtype=torch.long)
    assert fused(hidden, weight, labels, 30.0) == "loss"
    (args, kwargs) = calls[0]
    assert args == (hidden, weight, labels)
    assert kwargs == {"ignore_index": -100, "softcap": 30.0, "accum_dtype": torch.float32}


def test_chunked_loss_under_fsdp2_matches_one_process(tmp_path):
    """Two processes, fully_shard per decoder layer and at the root, bf16 parameters, fp32 gradient
    reduction: the loss runs inside the root's forward, where the head weight is the unsharded bf16
    parameter. Loss and gathered gradients equal one process running the same bf16 model."""
    command = [shutil.which("torchrun"), "--nproc_per_node", "2", "--master_port", "29577", __file__, str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "fsdp.json").read_text())
    # bf16 either way; the reference's Module.to(bfloat16) also casts RoPE's inv_freq buffer, which
    # FSDP2 leaves in fp32, so the two differ at bf16's resolution (2^-8), not more.
    assert report["loss_error"] <= 1e-3
    assert report["sharded"]  # each rank held half of the parameters
    for name, error in report["grad_errors"].items():
        assert error <= 2e-2, (name, error)


class RootForward(torch.nn.Module):
    """The training forward as the root module's forward, so FSDP2 unshards the root's parameters
    (embeddings, head, final norm) around it."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids, positions, labels):
        hidden = self.model.model(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state
        return lm_loss(hidden, self.model.lm_head, labels, chunk_tokens=8)


def fsdp_worker(out: Path) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    data = batch()
    reference = tiny_model(softcap=30.0).to(torch.bfloat16)
    expected, expected_grads = loss_and_grads(reference, lm_loss, data, chunk_tokens=8)
    model = tiny_model(softcap=30.0)
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in model.model.layers:
        fully_shard(layer, mp_policy=policy)
    root = fully_shard(RootForward(model), mp_policy=policy)
    loss = root(*data)  # the same batch on both ranks: the averaged gradient is each rank's
    (loss * 0.37).backward()
    grads = {name.removeprefix("model."): p.grad.full_tensor() for name, p in root.named_parameters()}
    local = sum(p.to_local().numel() for p in root.parameters())
    if rank == 0:
        report = {
            "loss_error": abs(float(loss) - float(expected)) / abs(float(expected)),
            "sharded": local < sum(p.numel() for p in root.parameters()),
            "grad_errors": {name: relative_error(g, expected_grads[name].float()) for name, g in grads.items()},
        }
        (out / "fsdp.json").write_text(json.dumps(report))
    dist.destroy_process_group()


if __name__ == "__main__":
    fsdp_worker(Path(sys.argv[1]))
