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
    height = 0.8 / max(len(providers), 1)
    for i, p in enumerate(providers):
        ys = [n + i * height for n, label in enumerate(labels) if (label, p) in values]
        xs = [values[label, p] * scale for label in labels if (label, p) in values]
        ax.barh(ys, xs, height=height, label=p, color=colors[p])
    ax.set_yticks([n + 0.4 - height / 2 for n in range(len(labels))], labels, fontsize=7)
    ax.invert_yaxis()
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
    n = max(len(speed[0]), len(ceiling[0]), 1)
    fig = Figure(figsize=(13, 1.2 + 0.28 * n * max(1, len(ceiling[1])) ** 0.5), dpi=100)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    if speed[0]:
        _bars(left, *speed, colors)
        left.set_xscale("log", base=2)
        left.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}x"))
        left.axvline(1.0, color="black", lw=0.8)
        left.legend(fontsize=7, loc="lower right")
    left.set_xlabel("speed vs the torch reference (x, > 1 is faster)")
    if ceiling[0]:
        _bars(right, *ceiling, colors, scale=100)
        right.legend(fontsize=7, loc="lower right")
    right.set_xlabel("% of the measured ceiling (read bandwidth or matmul rate)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with writing(path), atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
