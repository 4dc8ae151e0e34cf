"""Plots of a run: the loss curve (training and validation) as a PNG."""

from pathlib import Path

from .errors import ScratchError
from .train.status import read_jsonl


def plot_loss(run_dir: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    train = [m for m in metrics if "loss" in m]
    evals = [m for m in metrics if "val_loss" in m]
    if not train:
        raise ScratchError(f"{run_dir} has no training metrics yet (metrics.jsonl)")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot([m["step"] for m in train], [m["loss"] for m in train], label="train loss", linewidth=1)
    if evals:
        ax.plot([m["step"] for m in evals], [m["val_loss"] for m in evals], "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(run_dir.name)
    ax.grid(alpha=0.3)
    ax.legend()
    out = run_dir / "plots" / "loss.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
