import json
import shutil
import subprocess
import sys

import pytest

from scratchlm.cli import main
from scratchlm.model.files import load_model


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_model_info_json(capsys):
    code, out, _ = run(capsys, "model", "info", "--preset", "bitnet-95m", "--json")
    stats = json.loads(out)
    assert code == 0
    assert stats["params_total"] == 95_367_936
    assert {"params_total", "params_non_embedding", "params_matmul", "flops_per_token"} <= stats.keys()


def test_console_script_is_installed():
    result = subprocess.run(
        [shutil.which("scratchlm") or "scratchlm", "model", "info", "--preset", "tiny"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "params_total" in result.stdout and "5,770,496" in result.stdout


def test_model_init_with_tokenizer_and_export(tmp_path, capsys, tokenizer_dir):
    config = tmp_path / "model.yaml"
    config.write_text("preset: tiny\nnum_hidden_layers: 2\nvocab_size: 1024\n")
    code, out, err = run(
        capsys,
        "model",
        "init",
        "--config",
        str(config),
        "--out",
        str(tmp_path / "m"),
        "--tokenizer",
        str(tokenizer_dir),
    )
    assert code == 0, err
    model, tokenizer = load_model(tmp_path / "m")
    assert model.config.num_hidden_layers == 2
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )
    assert tokenizer.model_max_length == 512
    assert model.generation_config.eos_token_id == [
        tokenizer.eos_token_id,
        tokenizer.convert_tokens_to_ids("<|im_end|>"),
    ]
    code, _, err = run(capsys, "export", str(tmp_path / "m"), "--out", str(tmp_path / "l"), "--format", "llama")
    assert code == 0, err
    assert json.loads((tmp_path / "l" / "config.json").read_text())["model_type"] == "llama"
    code, out, _ = run(capsys, "generate", "--model", str(tmp_path / "l"), "--prompt", "The", "--max-new-tokens", "3")
    assert code == 0


def bad_input_cases(tmp_path, small_model_dir, tokenizer_dir):
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("preset: tiny\nnum_hiden_layers: 2\n")
    typed = tmp_path / "typed.yaml"
    typed.write_text("preset: tiny\nhidden_size: wide\n")
    broken_yaml = tmp_path / "broken.yaml"
    broken_yaml.write_text("preset: [tiny\n")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(small_model_dir, corrupt)
    (corrupt / "config.json").write_text('{"model_type": "scratch", "hidden_size": 6')
    no_weights = tmp_path / "no_weights"
    shutil.copytree(small_model_dir, no_weights)
    (no_weights / "model.safetensors").write_bytes(b"not a safetensors file")
    small = tmp_path / "small.yaml"
    small.write_text("preset: tiny\nvocab_size: 512\n")
    return [
        (["model", "info", "--preset", "gpt5"], "unknown preset 'gpt5'; known presets: tiny, bitnet-95m"),
        (
            ["model", "info", "--config", str(unknown)],
            "unknown key 'num_hiden_layers' (did you mean 'num_hidden_layers'?)",
        ),
        (["model", "info", "--config", str(typed)], "Field 'hidden_size' expected int, got str"),
        (["model", "info", "--config", str(broken_yaml)], f"{broken_yaml} is not valid YAML"),
        (["export", str(corrupt), "--out", str(tmp_path / "x")], f"{corrupt}/config.json is corrupt: not valid JSON"),
        (["export", str(no_weights), "--out", str(tmp_path / "x")], f"cannot load the model in {no_weights}"),
        (["export", str(tmp_path), "--out", str(tmp_path / "x")], f"{tmp_path} is not a model directory"),
        (
            ["model", "init", "--config", str(small), "--out", str(tmp_path / "x"), "--tokenizer", str(tokenizer_dir)],
            "tokenizer has 1024 tokens but the model's vocab_size is 512",
        ),
    ]


def test_bad_input_is_one_clear_line(tmp_path, capsys, small_model_dir, tokenizer_dir):
    for argv, message in bad_input_cases(tmp_path, small_model_dir, tokenizer_dir):
        code, _, err = run(capsys, *argv)
        assert code == 2, argv
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and message in lines[0], (argv, err)
        assert "Traceback" not in err
        assert not (tmp_path / "x").exists()


def test_loading_a_model_whose_tokenizer_outgrew_it(tmp_path, small_model_dir):
    from transformers import AutoTokenizer

    from scratchlm.errors import ScratchError

    grown = tmp_path / "grown"
    shutil.copytree(small_model_dir, grown)
    tokenizer = AutoTokenizer.from_pretrained(grown)
    tokenizer.add_tokens([f"<|tool_{i}|>" for i in range(6)], special_tokens=True)
    tokenizer.save_pretrained(grown)
    with pytest.raises(ScratchError, match="tokenizer has 1030 tokens but the model's vocab_size is 1024"):
        load_model(grown)


def test_weights_that_do_not_match_the_config(tmp_path, capsys, small_model_dir):
    shrunk = tmp_path / "shrunk"
    shutil.copytree(small_model_dir, shrunk)
    config = json.loads((shrunk / "config.json").read_text())
    (shrunk / "config.json").write_text(json.dumps({**config, "hidden_size": 128}))
    code, _, err = run(capsys, "export", str(shrunk), "--out", str(tmp_path / "x"))
    assert code == 2 and f"error: cannot load the model in {shrunk}" in err


def test_python_dash_m_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "scratchlm.cli", "model", "info", "--preset", "nope"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: unknown preset 'nope'; known presets: tiny, bitnet-95m, genesis-1b, gpuburnout-1b, h100-d20"
    )
