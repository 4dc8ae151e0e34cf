"""The model card every export carries: README.md with what the model is, what it was trained on, how
far, its evaluations, how to load it, and its loss curve (loss.png)."""

import json
from pathlib import Path

from ..report import EVAL_COLUMNS, fmt, plot_curves, run_summary
from ..run_dir import RunDir


def write_model_card(run: RunDir, data: list[str], export: Path | None = None) -> Path:
    """EXPORT/README.md (+ loss.png): what the exported model is, what it was trained on and how far, its
    evaluations so far, and how to use it. `run` is the run it comes from, `data` describes the training
    data (a line each), `export` is the directory (the run's export/ unless given)."""
    export = Path(export) if export is not None else run.export
    run_dir = run.path
    summary = run_summary(run_dir)
    config = json.loads((export / "config.json").read_text())
    plot_curves([run_dir], "loss", export / "loss.png")
    shape = (
        f"{config['num_hidden_layers']} layers × {config['hidden_size']}, {config['num_attention_heads']}/"
        f"{config['num_key_value_heads']} heads, FFN {config['intermediate_size']}, vocab {config['vocab_size']}, "
        f"context {config['max_position_embeddings']}, {'tied' if config.get('tie_word_embeddings') else 'untied'}"
        + (", BitNet b1.58 layers" if config.get("bitnet") else "")
    )
    evals = [
        f"| {heading} | {fmt(summary['evals'][key])} |" for key, heading in EVAL_COLUMNS if key in summary["evals"]
    ]
    remote = config.get("model_type") != "llama"
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags: [scratchlm, llama, from-scratch]",
        "---",
        "",
        f"# {run_dir.name}",
        "",
        f"A Llama-style language model trained from scratch with scratchlm; this export is the end of its "
        f"**{summary['stage']}** stage. {fmt(summary.get('parameters'), 'int')} parameters: {shape}.",
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
        "## Use",
        "",
        "```python",
        "from transformers import pipeline",
        f'generate = pipeline("text-generation", model="PATH"{", trust_remote_code=True" if remote else ""})',
        "```",
        "",
        "The tokenizer carries a chat template (`<|im_start|>role ... <|im_end|>`); generation stops at `<|im_end|>` "
        "and `<|endoftext|>`.",
        "",
        "## Intended use",
        "",
        "Research and teaching: studying how a small model learns, stage by stage. It is small, trained on little data "
        "and not aligned for safety; do not rely on what it says.",
        "",
    ]
    (export / "README.md").write_text("\n".join(lines))
    return export / "README.md"
