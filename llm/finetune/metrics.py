"""Classification metrics: accuracy, per-class precision / recall / F1, the confusion matrix;
as a printed table, a dict for JSON, and a PNG (matplotlib Agg figure, no pyplot state)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..fileio import atomic_path


@dataclass
class ClassificationMetrics:
    labels: list[str]
    confusion: list[list[int]]  # [true][predicted] counts
    loss: float | None = None

    @classmethod
    def from_predictions(cls, labels: list[str], true: torch.Tensor, pred: torch.Tensor,
                         loss: float | None = None) -> "ClassificationMetrics":
        k = len(labels)
        counts = torch.bincount(true.long() * k + pred.long(), minlength=k * k).view(k, k)
        return cls(list(labels), counts.tolist(), loss)

    @property
    def total(self) -> int:
        return sum(map(sum, self.confusion))

    @property
    def accuracy(self) -> float:
        correct = sum(self.confusion[i][i] for i in range(len(self.labels)))
        return correct / self.total if self.total else 0.0

    def per_class(self) -> list[dict]:
        """Per label: precision, recall, F1 (0 where undefined) and support (true count)."""
        rows = []
        for i, label in enumerate(self.labels):
            tp = self.confusion[i][i]
            predicted = sum(row[i] for row in self.confusion)
            support = sum(self.confusion[i])
            p = tp / predicted if predicted else 0.0
            r = tp / support if support else 0.0
            f1 = 2 * p * r / (p + r) if p + r else 0.0
            rows.append({"label": label, "precision": p, "recall": r, "f1": f1, "support": support})
        return rows

    @property
    def macro_f1(self) -> float:
        rows = self.per_class()
        return sum(r["f1"] for r in rows) / len(rows)

    def summary(self) -> str:
        loss = f"loss {self.loss:.4f}, " if self.loss is not None else ""
        return f"{loss}accuracy {self.accuracy:.2%}, macro F1 {self.macro_f1:.3f}"

    def to_dict(self) -> dict:
        return {"loss": self.loss, "accuracy": self.accuracy, "macro_f1": self.macro_f1, "n": self.total,
                "per_class": self.per_class(), "labels": self.labels, "confusion": self.confusion}

    def table(self) -> str:
        """Per-class scores and the confusion matrix, as text."""
        w = max(8, *(len(label) for label in self.labels))
        lines = [f"{'label':<{w}}  precision  recall     f1  support"]
        for r in self.per_class():
            lines.append(f"{r['label']:<{w}}  {r['precision']:9.3f}  {r['recall']:6.3f}  {r['f1']:5.3f}  "
                         f"{r['support']:7d}")
        lines.append(f"confusion (rows: true, columns: predicted):")
        lines.append(" " * w + "  " + "  ".join(f"{label:>{w}}" for label in self.labels))
        for label, row in zip(self.labels, self.confusion):
            lines.append(f"{label:<{w}}  " + "  ".join(f"{c:>{w}d}" for c in row))
        return "\n".join(lines)


def write_confusion_png(path: Path, metrics: ClassificationMetrics, title: str = "") -> None:
    """The confusion matrix as a heat map with the counts written in, atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = len(metrics.labels)
    fig = Figure(figsize=(2.2 + 0.7 * k, 1.8 + 0.6 * k), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    counts = torch.tensor(metrics.confusion, dtype=torch.float64)
    ax.imshow(counts.numpy(), cmap="Blues")
    top = counts.max().item() or 1.0
    for i in range(k):
        for j in range(k):
            c = int(counts[i, j])
            ax.text(j, i, str(c), ha="center", va="center", color="white" if c > top / 2 else "black")
    ax.set_xticks(range(k), metrics.labels, rotation=45 if k > 4 else 0)
    ax.set_yticks(range(k), metrics.labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"accuracy {metrics.accuracy:.1%}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
