"""The PNG chart of a run: for every case (op, mode, shape), each provider's speed against
the reference (left, log scale, 1 = as fast as the reference) and the fraction of the
machine's ceiling it reaches (right: GB/s of the read bandwidth, or TFLOPS of the matmul
rate, both measured in the run). A matplotlib Agg figure, no pyplot state; matplotlib is
imported when a chart is drawn.
"""

from __future__ import annotations

from pathlib import Path

from ..fileio import atomic_path, writing

REFERENCES = ("torch", "llm[torch]")  # the provider names of the reference path


def case_label(row: dict) -> str:
    return " ".join(str(row[k]) for k in ("op", "mode", "shape") if row.get(k) not in (None, ""))


def _series(rows: list[dict], key: str, skip=()) -> tuple[list[str], list[str], dict]:
    """(case labels, providers, {(label, provider): value}) of the rows that have `key`,
    leaving out the providers in `skip`."""
    labels, providers, values = [], [], {}
    for r in rows:
        v = r.get(key)
        if v is None or r["provider"] in skip:
            continue
        label = case_label(r)
        if label not in labels:
            labels.append(label)
        if r["provider"] not in providers:
            providers.append(r["provider"])
        values[label, r["provider"]] = v
    return labels, providers, values


def _bars(ax, labels, providers, values, colors: dict, scale: float = 1.0) -> None:
    """One group of horizontal bars per case label, only the providers it has, top down."""
    y, ticks, seen = 0.0, [], set()
    for label in labels:
        present = [p for p in providers if (label, p) in values]
        ticks.append(y + 0.4 * (len(present) - 1))
        for p in present:
            ax.barh(y, values[label, p] * scale, height=0.8, color=colors[p], label=None if p in seen else p)
            seen.add(p)
            y += 0.8
        y += 0.8  # a gap between cases
    ax.set_yticks(ticks, labels, fontsize=7)
    ax.set_ylim(y - 0.8, -0.8)
    ax.grid(axis="x", alpha=0.3)


def write_chart(path: str | Path, rows: list[dict], title: str = "") -> Path:
    """Draw the chart of `rows` (keys op, mode, shape, provider, vs_ref, of_ceiling) to
    `path` (written whole, through a temporary file)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    path = Path(path)
    speed = _series(rows, "vs_ref", skip=REFERENCES)  # the reference's own bars would all be 1
    ceiling = _series(rows, "of_ceiling")
    names = list(dict.fromkeys(r["provider"] for r in rows))
    colors = {p: f"C{i % 10}" for i, p in enumerate(names)}  # one colour per provider in both panels
    bars = max(len(speed[2]) + len(speed[0]), len(ceiling[2]) + len(ceiling[0]), 1)
    fig = Figure(figsize=(13, 1.6 + 0.13 * bars), dpi=100)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    for ax, (labels, providers, values), scale in ((left, speed, 1.0), (right, ceiling, 100.0)):
        if labels:
            _bars(ax, labels, providers, values, colors, scale)
            ax.set_xscale("log", base=2)  # ratios, and fractions from a few % to beyond 100%
            ax.legend(fontsize=7, loc="lower right")
    left.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:.2g}x"))
    left.axvline(1.0, color="black", lw=0.8)
    left.set_xlabel("speed vs the torch reference (x, > 1 is faster)")
    right.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}%"))
    right.axvline(100.0, color="black", lw=0.8)
    right.set_xlabel("% of the measured ceiling (read bandwidth or matmul rate)")
    for ax in (left, right):
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    with writing(path), atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
