import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from helpers import small_config
from scratchlm.errors import ScratchError
from scratchlm.model import ScratchForCausalLM
from scratchlm.model.files import init_model, load_model, save_model
from scratchlm.model.info import model_stats
from scratchlm.model.presets import PRESETS, build_config


def expected_params(p: dict) -> int:
    """The Llama parameter count written out by hand, independent of any module."""
    d, layers, vocab, ffn = p["hidden_size"], p["num_hidden_layers"], p["vocab_size"], p["intermediate_size"]
    head_dim = d // p["num_attention_heads"]
    attention = 2 * d * d + 2 * d * p["num_key_value_heads"] * head_dim
    per_layer = attention + 3 * d * ffn + 2 * d
    return layers * per_layer + d + vocab * d * (1 if p["tie_word_embeddings"] else 2)


def test_preset_parameter_counts_are_exact():
    counts = {name: model_stats(build_config({"preset": name}))["params_total"] for name in PRESETS}
    assert counts["bitnet-95m"] == 95_367_936
    assert counts["genesis-1b"] == 1_000_441_344
    assert counts["gpuburnout-1b"] == 1_045_014_528
    assert counts["h100-d20"] == 564_317_440
    assert counts["tiny"] == 5_049_600 <= 10_000_000
    for name, values in PRESETS.items():
        assert counts[name] == expected_params(values), name


def test_stats_flops_follow_the_convention():
    config = build_config({"preset": "genesis-1b"})
    stats = model_stats(config, seq_len=1024)
    d, layers, vocab = 1536, 32, 49152
    matmul = stats["params_total"] - vocab * d - (2 * layers + 1) * d + vocab * d  # - embedding - norms + head
    assert stats["params_matmul"] == matmul
    assert stats["params_non_embedding"] == stats["params_total"] - vocab * d
    assert stats["flops_per_token"] == 6 * matmul + 12 * layers * d * 1024


@pytest.mark.parametrize("tied", [True, False])
def test_same_logits_as_stock_llama_with_the_same_weights(tied):
    torch.manual_seed(0)
    ours = ScratchForCausalLM(small_config(tie_word_embeddings=tied)).eval()
    stock = LlamaForCausalLM(
        LlamaConfig(**{k: v for k, v in ours.config.to_dict().items() if k in LlamaConfig.__dataclass_fields__})
    ).eval()
    stock.load_state_dict(ours.state_dict())
    ids = torch.randint(0, 1024, (2, 33))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, stock(ids).logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("softcap", [None, 15.0])
def test_generation_with_kv_cache_equals_without(softcap):
    torch.manual_seed(0)
    model = ScratchForCausalLM(small_config(logit_softcap=softcap)).eval()
    prompt = torch.randint(0, 1024, (1, 7))
    kwargs = {"max_new_tokens": 24, "do_sample": False, "pad_token_id": 0, "eos_token_id": None}
    with_cache = model.generate(prompt, use_cache=True, **kwargs)
    without = model.generate(prompt, use_cache=False, **kwargs)
    assert with_cache.shape == (1, 31)
    assert torch.equal(with_cache, without)


def test_softcap_is_cap_times_tanh_of_plain_logits():
    torch.manual_seed(0)
    capped = ScratchForCausalLM(small_config(logit_softcap=2.0)).eval()
    plain = ScratchForCausalLM(small_config()).eval()
    plain.load_state_dict(capped.state_dict())
    ids = torch.randint(0, 1024, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(capped(ids).logits, 2.0 * torch.tanh(plain(ids).logits / 2.0))


def run_fresh(code: str, tmp_path) -> dict:
    """Run `code` in a new interpreter that must never import scratchlm; it prints one JSON line."""
    guard = "import sys, json\n" + code + "\nassert 'scratchlm' not in sys.modules, 'scratchlm was imported'\n"
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home")}
    result = subprocess.run(
        [sys.executable, "-c", guard], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def reference_logits(model_dir, ids):
    model, _ = load_model(model_dir)
    with torch.no_grad():
        return model(torch.tensor(ids)).logits


IDS = [[0, 5, 17, 300, 42, 9, 511]]


def test_scratch_checkpoint_loads_without_scratchlm(small_model_dir, tmp_path):
    scratch = save_model(*load_model(small_model_dir), tmp_path / "scratch", format="scratch")
    out = run_fresh(
        f"""
import torch
from transformers import AutoModelForCausalLM, pipeline
model = AutoModelForCausalLM.from_pretrained({str(scratch)!r}, trust_remote_code=True)
with torch.no_grad():
    logits = model(torch.tensor({IDS})).logits
generator = pipeline("text-generation", model={str(scratch)!r}, trust_remote_code=True)
text = generator("The capital of", max_new_tokens=5, do_sample=False)[0]["generated_text"]
print(json.dumps({{"class": type(model).__name__, "module": type(model).__module__,
                  "logits": logits.tolist(), "text": text, "pipe_class": type(generator.model).__name__}}))
""",
        tmp_path,
    )
    assert out["class"] == out["pipe_class"] == "ScratchForCausalLM"
    assert out["module"].startswith("transformers_modules")  # the code saved in the checkpoint
    assert out["text"].startswith("The capital of")
    torch.testing.assert_close(torch.tensor(out["logits"]), reference_logits(small_model_dir, IDS))


def test_llama_export_loads_with_no_remote_code(small_model_dir, tmp_path):
    model, tokenizer = load_model(small_model_dir)
    save_model(model, tokenizer, tmp_path / "llama", format="llama")
    assert not list((tmp_path / "llama").glob("*.py"))
    out = run_fresh(
        f"""
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained({str(tmp_path / "llama")!r}, trust_remote_code=False)
with torch.no_grad():
    logits = model(torch.tensor({IDS})).logits
print(json.dumps({{"type": model.config.model_type, "logits": logits.tolist()}}))
""",
        tmp_path,
    )
    assert out["type"] == "llama"
    torch.testing.assert_close(torch.tensor(out["logits"]), reference_logits(small_model_dir, IDS), rtol=0, atol=1e-6)


def test_cpu_models_use_sdpa_attention(small_model_dir):
    model, _ = load_model(small_model_dir)
    assert model.config._attn_implementation == "sdpa"


def test_llama_export_refused_for_features_llama_lacks(tmp_path, tokenizer_dir):
    model, tokenizer = init_model(small_config(logit_softcap=15.0), tmp_path / "capped", tokenizer_dir)
    with pytest.raises(ScratchError, match="logit_softcap=15.0.*--format scratch"):
        save_model(model, tokenizer, tmp_path / "llama", format="llama")
    assert not (tmp_path / "llama").exists()
