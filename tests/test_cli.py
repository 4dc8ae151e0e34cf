import json
import re
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
    assert "params_total" in result.stdout and "5,049,600" in result.stdout


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
    card = (tmp_path / "l" / "README.md").read_text()  # no run behind it: what its config says, and how to load it
    assert "No training run is recorded" in card and "trust_remote_code" not in card


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


def test_help_shows_defaults_and_lists_the_presets(capsys):
    from scratchlm.model.presets import PRESETS

    def help_of(*argv) -> str:
        with pytest.raises(SystemExit) as exit:
            main([*argv, "--help"])
        assert exit.value.code == 0
        return " ".join(capsys.readouterr().out.split())  # argparse wraps lines where it likes

    generate, chat = help_of("generate"), help_of("chat")
    assert "0 for greedy (default: 0.8)" in generate and "sampling seed (default: 0)" in generate
    assert "0 for greedy (default: 0.7)" in chat and "(default: 50)" in chat and "(default: 0.95)" in chat
    assert "(default: None)" not in generate + chat  # options without a default say nothing
    for command in (("model", "info"), ("model", "init"), ("plan",)):
        assert f"a named preset: {', '.join(PRESETS)}" in help_of(*command), command


def test_model_init_needs_a_tokenizer(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["model", "init", "--preset", "tiny", "--out", str(tmp_path / "m")])
    assert exit.value.code == 2 and "the following arguments are required: --tokenizer" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_report_says_a_run_is_unfinished_and_shows_wall_time_in_minutes(tmp_path, capsys):
    from scratchlm.run_dir import RunDir

    run = RunDir(tmp_path / "pretrain")
    run.path.mkdir()
    run.write_plan({"stage": "pretrain", "total_steps": 12, "params_total": 1000})
    for step in range(1, 7):  # killed at step 6 of 12, after 38 minutes
        run.append_metrics({"step": step, "loss": 5.0 - step / 10, "tokens": 128 * step, "elapsed_s": 380.0 * step})
    assert main(["report", str(run.path), "--out", str(tmp_path)]) == 0
    assert "note: pretrain is unfinished (step 6 of 12)" in capsys.readouterr().err
    report = (tmp_path / "report.md").read_text()
    assert "**pretrain is unfinished** (step 6 of 12)" in report and "| pretrain (unfinished) |" in report
    assert "| 38.0 min |" in report and "e+03" not in report
    stage = json.loads((tmp_path / "report.json").read_text())["stages"]["pretrain"]
    assert stage["finished"] is False and stage["steps"] == 6 and stage["total_steps"] == 12
    run.append_metrics({"step": 12, "loss": 4.0, "tokens": 128 * 12, "elapsed_s": 4600.0})  # finished: 1.28 h
    assert main(["report", str(run.path), "--out", str(tmp_path)]) == 0
    assert "unfinished" not in capsys.readouterr().err + (tmp_path / "report.md").read_text()
    assert "| 1.28 h |" in (tmp_path / "report.md").read_text()


def test_long_evaluations_show_progress_as_plain_lines_in_a_log(monkeypatch, capsys, small_model_dir, default_dir):
    import itertools

    import scratchlm.progress

    clock = itertools.count(step=4.0)  # every look at the clock: 4 s later, so a 10 s interval passes every 3rd
    monkeypatch.setattr(scratchlm.progress.time, "perf_counter", lambda: float(next(clock)))
    probes = default_dir / "probes.jsonl"
    assert len(probes.read_text().splitlines()) == 160
    assert main(["eval", "probes", "--model", str(small_model_dir), "--data", str(probes)]) == 0
    err = capsys.readouterr().err  # not a terminal here, as in a log file: no bar, no carriage returns
    progress = err[err.index("eval probes: ") :]
    lines = progress.splitlines()
    assert "\r" not in progress and len(lines) >= 2
    assert re.fullmatch(r"eval probes: \d+/160 probes \(\d+%\) in 0m\d\ds, about 0m\d\ds left", lines[0]), lines[0]
    assert re.fullmatch(r"eval probes: 160/160 probes \(100%\) in 0m\d\ds", lines[-1]), lines[-1]
