"""The model card every export carries: README.md with what the model is, what it was trained on, how
far, its evaluations, how to load it, and its loss curve (loss.png).

An export from a run (the training loop's, TRL's, or `scratchlm export` of a training checkpoint) is
described by its run; a plain model directory (`scratchlm model init`, a model from elsewhere) has no
run, so its card says only what its config and tokenizer say. (It is here, not in the model package, because
it is written from the run's report: the model does not depend on reporting.)
"""

import json
from pathlib import Path

from .report import EVAL_COLUMNS, fmt, parameters, plot_curves, run_summary
from .run_dir import RunDir


def write_model_card(run: RunDir, data: list[str], export: Path | None = None, step: int | None = None) -> Path:
    """EXPORT/README.md (+ loss.png): what the exported model is, what it was trained on and how far, its
    evaluations so far, and how to use it. `run` is the run it comes from, `data` describes the training
    data (a line each), `export` is the directory (the run's export/ unless given), `step` the checkpoint
    it was exported from (the run's end unless given)."""
    export = Path(export) if export is not None else run.export
    run_dir = run.path
    summary = run_summary(run_dir, until_step=step)
    if step is not None:  # plan.json describes the run's latest session, which may have other hardware
        summary["hardware"] = _checkpoint_hardware(run, step) or summary.get("hardware")
    config = json.loads((export / "config.json").read_text())
    plot_curves([run_dir], "loss", export / "loss.png")
    evals = [
        f"| {heading} | {fmt(summary['evals'][key])} |" for key, heading in EVAL_COLUMNS if key in summary["evals"]
    ]
    if summary.get("finished") is False:
        where = f"step {summary['steps']:,} of the {fmt(summary.get('total_steps'), 'int')} steps of its"
    else:
        where = "the end of its"
    lines = [
        *_front_matter(),
        f"# {run_dir.name}",
        "",
        f"A Llama-style language model trained from scratch with scratchlm; this export is {where} "
        f"**{summary['stage']}** stage. {fmt(summary.get('parameters'), 'int')} parameters: {_shape(config)}.",
        "",
        "## Training",
        "",
        *[f"- data: {line}" for line in data],
        f"- tokens seen in this stage: {fmt(summary.get('tokens'), 'int')} over {summary['steps']:,} steps",
        f"- final training loss: {fmt(summary['final_loss'])}",
        f"- hardware: {summary.get('hardware', '—')}; wall time {fmt(summary.get('wall_s'), 'time')}",
        "",
        "![loss curve](loss.png)",
        "",
        "## Evaluation",
        "",
        *(["| metric | value |", "|---|---|", *evals] if evals else ["Not evaluated at export time."]),
        "",
        *_use(config, export),
    ]
    (export / "README.md").write_text("\n".join(lines))
    return export / "README.md"


def _checkpoint_hardware(run: RunDir, step: int) -> str | None:
    """What the checkpoint of `step` was trained on, as its session recorded it (None for a TRL checkpoint)."""
    state = run.checkpoint(step) / "trainer_state.json"
    return json.loads(state.read_text()).get("hardware") if state.is_file() else None


def write_plain_model_card(export: Path) -> Path:
    """EXPORT/README.md for a model directory with no run behind it: its shape and how to use it."""
    export = Path(export)
    config = json.loads((export / "config.json").read_text())
    lines = [
        *_front_matter(),
        f"# {export.name}",
        "",
        f"A Llama-style language model made with scratchlm. {fmt(parameters(export), 'int')} parameters: "
        f"{_shape(config)}.",
        "",
        "## Training",
        "",
        "No training run is recorded with this model: it was exported from a model directory (a random "
        "initialisation from `scratchlm model init`, or a model whose run is elsewhere), so nothing is known "
        "here about its data, its training or its quality.",
        "",
        *_use(config, export),
    ]
    (export / "README.md").write_text("\n".join(lines))
    return export / "README.md"


def _front_matter() -> list[str]:
    return [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags: [scratchlm, llama, from-scratch]",
        "---",
        "",
    ]


def _shape(config: dict) -> str:
    trained = f", trained on windows of {config['training_seq_len']}" if config.get("training_seq_len") else ""
    return (
        f"{config['num_hidden_layers']} layers × {config['hidden_size']}, {config['num_attention_heads']}/"
        f"{config['num_key_value_heads']} heads, FFN {config['intermediate_size']}, vocab {config['vocab_size']}, "
        f"context {config['max_position_embeddings']}{trained}, "
        f"{'tied' if config.get('tie_word_embeddings') else 'untied'}"
        + (", BitNet b1.58 layers" if config.get("bitnet") else "")
    )


def _use(config: dict, export: Path) -> list[str]:
    remote = config.get("model_type") != "llama"
    packed = (export / "bitnet_packed.json").is_file()
    template = (export / "chat_template.jinja").is_file() or "chat_template" in _tokenizer_config(export)
    return [
        "## Use",
        "",
        "```python",
        "from transformers import pipeline",
        f'generate = pipeline("text-generation", model="PATH"{", trust_remote_code=True" if remote else ""})',
        "```",
        "",
        *(
            [
                "The weights are BitNet b1.58's ternary values, packed four to a byte (`model.bitnet.safetensors`); "
                "the model code saved here unpacks them when it loads.",
                "",
            ]
            if packed
            else []
        ),
        *(
            [
                "The tokenizer carries a chat template (`<|im_start|>role ... <|im_end|>`); generation stops at "
                "`<|im_end|>` and `<|endoftext|>`.",
                "",
            ]
            if template
            else []
        ),
        "## Intended use",
        "",
        "Research and teaching: studying how a small model learns, stage by stage. It is small, trained on little data "
        "and not aligned for safety; do not rely on what it says.",
        "",
    ]


def _tokenizer_config(export: Path) -> dict:
    path = export / "tokenizer_config.json"
    return json.loads(path.read_text()) if path.is_file() else {}
