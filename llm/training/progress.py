"""What a run shows while it trains: log lines, the progress bar and `loss.png`.

tqdm and matplotlib are imported when first used, not with the package.
"""

from __future__ import annotations

from pathlib import Path

from ..fileio import atomic_path, writing


def write_loss_plot(path: Path, train_losses, val_losses, title: str = "") -> None:
    """`loss.png`: training loss per step and validation loss (Agg canvas, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if train_losses:
        s, l = zip(*train_losses)
        ax.plot(s, l, lw=0.8, alpha=0.8, label="train")
    if val_losses:
        s, l = zip(*val_losses)
        ax.plot(s, l, "o-", ms=3, label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    # written beside the old plot and renamed over it: a viewer never reads half a file
    with writing(path), atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def logger(enabled: bool):
    """print() for log lines that does not tear the progress bar (a no-op when disabled)."""
    if not enabled:
        return lambda msg: None
    from tqdm import tqdm

    return tqdm.write


def progress_bar(enabled: bool, initial: int, total: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step",
                dynamic_ncols=True, smoothing=0.1)
