"""BitNet b1.58: the quantizers on known tensors, straight-through gradients, checkpoints that load
without scratchlm, the packed export, and the metrics a training run logs (a BitNet run itself, shared with
its exports' tests, is in test_exports.py)."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from helpers import SMALL_MODEL, small_config
from scratchlm.errors import ScratchError
from scratchlm.model import ScratchForCausalLM
from scratchlm.model.bitnet import bitlinears, bitnet_stats, clip_rate, load_packed, pack_ternary
from scratchlm.model.files import load_model, save_model
from scratchlm.model.modeling_scratch import BitLinear, int8_activations, ternary_weights, unpack_ternary


def bitnet_model(seed: int = 0) -> ScratchForCausalLM:
    torch.manual_seed(seed)
    return ScratchForCausalLM(small_config(bitnet=True)).eval()


def test_weights_quantize_by_their_absmean_to_ternary():
    weight = torch.tensor([[0.5, -1.5, 0.0, 2.0], [0.25, -0.25, 1.0, -2.5]])  # mean |w| = 1.0
    ternary, scale = ternary_weights(weight)
    assert scale.item() == 1.0
    # w / 1.0 rounded half to even, then clamped: 0.5 -> 0, -1.5 -> -2 -> -1, 2 -> 1, -2.5 -> -2 -> -1
    assert ternary.tolist() == [[0, -1, 0, 1], [0, 0, 1, -1]]


def test_activations_quantize_per_token_by_their_absmax_to_int8():
    x = torch.tensor([[1.0, -0.5, 0.25, 0.0], [0.0, 0.0, -4.0, 2.0]])
    codes, scale = int8_activations(x)
    assert scale.flatten().tolist() == [127.0, 127.0 / 4]
    assert codes.tolist() == [[127, -64, 32, 0], [0, 0, -127, 64]]  # -63.5 and 63.5 round half to even
    assert ((codes / scale) - x).abs().max() <= 0.5 / scale.min()


def test_gradients_pass_straight_through_both_quantizers():
    torch.manual_seed(0)
    layer = BitLinear(8, 3, bias=False, eps=1e-5)
    x = torch.randn(5, 8, requires_grad=True)
    layer(x).sum().backward()
    normed = layer.input_norm(x).detach()
    codes, scale = int8_activations(normed)
    # d(sum out)/dW = sum over tokens of the quantized input, as if the ternary weight were W itself
    assert torch.allclose(layer.weight.grad, (codes / scale).sum(0).expand(3, 8), atol=1e-6)
    ternary, w_scale = ternary_weights(layer.weight.detach())
    # d/dx goes through the norm as if the input quantizer were the identity
    x_ref = x.detach().clone().requires_grad_(True)
    F.linear(layer.input_norm(x_ref), ternary * w_scale).sum().backward()
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-6) and x.grad.abs().sum() > 0


def test_bitnet_replaces_only_the_decoder_linears():
    model = bitnet_model()
    layers = bitlinears(model)
    assert len(layers) == 7 * SMALL_MODEL["num_hidden_layers"]  # q, k, v, o, gate, up, down
    assert not isinstance(model.lm_head, BitLinear) and type(model.model.embed_tokens) is torch.nn.Embedding
    assert model.config.llama_incompatibilities() == ["bitnet=True"]


def test_pack_and_unpack_are_inverse_for_any_length():
    for count in (1, 4, 7, 1001):
        values = torch.randint(-1, 2, (count,), dtype=torch.int8)
        packed = pack_ternary(values)
        assert packed.dtype == torch.uint8 and packed.numel() == (count + 3) // 4
        assert torch.equal(unpack_ternary(packed, count), values)


def test_saved_checkpoint_loads_without_scratchlm_and_gives_the_same_logits(tmp_path, tokenizer_dir):
    from scratchlm.tokenization import load_tokenizer

    model = bitnet_model()
    save_model(model, load_tokenizer(tokenizer_dir), tmp_path / "model")
    ids = torch.randint(0, 1000, (2, 24))
    expected = model(ids).logits
    loaded, _ = load_model(tmp_path / "model")
    assert torch.equal(loaded(ids).logits, expected)
    torch.save(ids, tmp_path / "ids.pt")
    script = (
        "import sys, torch; from transformers import AutoModelForCausalLM\n"
        f"model = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'model')!r}, trust_remote_code=True)\n"
        f"ids = torch.load({str(tmp_path / 'ids.pt')!r}, weights_only=True)\n"
        "assert 'scratchlm' not in sys.modules\n"
        f"torch.save(model.eval()(ids).logits.detach(), {str(tmp_path / 'logits.pt')!r})\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})
    assert torch.allclose(torch.load(tmp_path / "logits.pt", weights_only=True), expected, atol=1e-6)


def test_packed_export_is_ternary_at_two_bits_and_gives_the_same_logits(tmp_path, tokenizer_dir):
    from scratchlm.tokenization import load_tokenizer

    model = bitnet_model()
    with torch.no_grad():  # trained-looking weights: not all the same size
        for layer in bitlinears(model).values():
            layer.weight.mul_(torch.rand_like(layer.weight) * 3)
    save_model(model, load_tokenizer(tokenizer_dir), tmp_path / "packed", format="bitnet-packed")
    sizes = json.loads((tmp_path / "packed" / "bitnet_packed.json").read_text())
    loaded = load_packed(tmp_path / "packed")
    for name, layer in bitlinears(loaded).items():  # the same ternary values and scale, exactly
        ternary, scale = ternary_weights(layer.weight)
        original, original_scale = ternary_weights(bitlinears(model)[name].weight)
        assert torch.equal(ternary, original) and set(ternary.unique().tolist()) <= {-1.0, 0.0, 1.0}
        assert scale.item() == pytest.approx(original_scale.item(), rel=1e-6)
    ids = torch.randint(0, 1000, (2, 24))
    assert torch.allclose(loaded(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)
    ternary_bytes = sizes["ternary_weights"] // 4
    assert sizes["packed_bytes"] < sizes["full_precision_bytes"] - 3 * ternary_bytes  # 32 bits -> 2 per weight
    assert not (tmp_path / "packed" / "model.safetensors").exists()  # a loader without our code finds no weights
    again, _ = load_model(tmp_path / "packed")  # every command reads packed directories too
    assert torch.allclose(again(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)


def test_a_packed_export_that_does_not_fit_its_config_is_refused(tmp_path, tokenizer_dir):
    from scratchlm.tokenization import load_tokenizer

    save_model(bitnet_model(), load_tokenizer(tokenizer_dir), tmp_path / "packed", format="bitnet-packed")
    config = json.loads((tmp_path / "packed" / "config.json").read_text())
    # Fewer key/value heads: only the k and v projections change shape, and nothing else would notice.
    (tmp_path / "packed" / "config.json").write_text(json.dumps({**config, "num_key_value_heads": 1}))
    with pytest.raises(ScratchError, match=r"k_proj.weight is not \(16, 64\) ternary weights"):
        load_model(tmp_path / "packed")


def test_bitnet_stats_are_the_zero_share_the_mean_scale_and_the_clip_rate():
    model = bitnet_model()
    layers = list(bitlinears(model).values())
    with torch.no_grad():
        for index, layer in enumerate(layers):  # |w| of 0.1 and 1.0 alternating: a third of them round to 0
            pattern = torch.tensor([0.1, 1.0, -1.0] * (layer.weight.numel() // 3 + 1))[: layer.weight.numel()]
            layer.weight.copy_(pattern.view_as(layer.weight) * (index + 1))
    expected_zeros = sum(int((ternary_weights(m.weight)[0] == 0).sum()) for m in layers)
    stats = bitnet_stats(model, torch.randint(0, 1000, (1, 16)))
    assert stats["bitnet_zero_fraction"] == expected_zeros / sum(m.weight.numel() for m in layers)
    assert 0.33 < stats["bitnet_zero_fraction"] < 0.34  # mean |w| is 0.7 x the layer's factor: 0.1 x it rounds to 0
    assert stats["bitnet_weight_scale"] == pytest.approx(0.7 * (len(layers) + 1) / 2, rel=1e-3)
    # One outlier per token puts one of its features at the end of the int8 range; ties put two there.
    assert clip_rate(torch.tensor([[1.0, 0.5, 0.2, 0.1], [0.3, -2.0, 0.0, 1.0]])) == 0.25
    assert clip_rate(torch.tensor([[1.0, -1.0, 0.5, 0.5]])) == 0.5


def test_a_packed_export_loads_through_from_pretrained_s_own_arguments(tmp_path, tokenizer_dir):
    from scratchlm.tokenization import load_tokenizer

    save_model(bitnet_model(), load_tokenizer(tokenizer_dir), tmp_path / "packed", format="bitnet-packed")
    full = ScratchForCausalLM.from_pretrained(tmp_path / "packed")
    half, info = ScratchForCausalLM.from_pretrained(tmp_path / "packed", dtype=torch.bfloat16, output_loading_info=True)
    assert full.dtype == torch.float32 and half.dtype == torch.bfloat16
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"])
    for name, layer in bitlinears(half).items():  # bf16 keeps the ternary values: they are exact in any dtype
        assert torch.equal(ternary_weights(layer.weight.float())[0], ternary_weights(bitlinears(full)[name].weight)[0])
    assert half.generation_config.eos_token_id == full.generation_config.eos_token_id != half.config.eos_token_id
